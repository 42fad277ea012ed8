"""Where the checkout's files are, for tests that read them (the code itself never
looks at the checkout: its settings ship as package data)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The real histories beside the checkout (../shared/data, see its README).
SHARED_DATA = REPO.parent / "shared" / "data"
