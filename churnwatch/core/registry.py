"""The model registry: one folder per training run, and which one serves.

Layout (``model.registry`` in the settings, git-ignored)::

    registry/
      v20261122-141500/       one training run
        model.skops           the estimator (skops format, never a bare pickle)
        card.json             version, data window, features, label, metrics, calibration
        report.md, *.png      the training report
      promoted.json           {"version": ..., "history": [earlier promoted versions]}

Promotion rewrites ``promoted.json`` atomically; running workers poll it and
load the new version without a restart.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
MODEL_FILE = "model.skops"
PROMOTED_FILE = "promoted.json"


class RegistryError(Exception):
    """A registry operation that cannot be done: the message says why."""


def new_version(registry: Path, now: datetime | None = None) -> str:
    """A version name from the UTC time, unique in ``registry``."""
    stamp = (now or datetime.now(UTC)).strftime("v%Y%m%d-%H%M%S")
    version, n = stamp, 1
    while (registry / version).exists():
        n += 1
        version = f"{stamp}-{n}"
    return version


def _write_atomic(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(content)
    os.replace(tmp, path)


def write_card(folder: Path, card: dict[str, Any]) -> None:
    _write_atomic(folder / CARD_FILE, json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def read_card(registry: Path, version: str) -> dict[str, Any]:
    path = registry / version / CARD_FILE
    try:
        card: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(
            f"no model {version!r} in {registry} (see `churnwatch models list`)"
        ) from None
    except ValueError as exc:
        raise RegistryError(f"{path}: not valid JSON ({exc})") from None
    return card


def versions(registry: Path) -> list[str]:
    """Every trained version, oldest first."""
    if not registry.is_dir():
        return []
    return sorted(p.name for p in registry.iterdir() if (p / CARD_FILE).is_file())


def _pointer(registry: Path) -> dict[str, Any]:
    path = registry / PROMOTED_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": None, "history": []}
    except ValueError as exc:
        raise RegistryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: not a JSON object")
    version, history = data.get("version"), data.get("history", [])
    if version is not None and not (isinstance(version, str) and version.strip()):
        raise RegistryError(f"{path}: 'version' must be a version name, not {version!r}")
    if not isinstance(history, list) or not all(isinstance(v, str) for v in history):
        raise RegistryError(f"{path}: 'history' must be a list of version names")
    return data


def _write_pointer(registry: Path, version: str, history: list[str], **extra: Any) -> None:
    pointer = {
        "version": version,
        "history": history,
        "promoted_at": datetime.now(UTC).isoformat(),
        **extra,
    }
    _write_atomic(registry / PROMOTED_FILE, json.dumps(pointer, indent=2) + "\n")


def promoted_version(registry: Path) -> str | None:
    """The version that should serve, or None before the first promotion."""
    version = _pointer(registry).get("version")
    return str(version) if version else None


def promote(
    registry: Path, version: str, check: Callable[[Path], object] | None = None
) -> str | None:
    """Make ``version`` the serving model; returns the one it replaces.

    ``check(folder)`` (e.g. loading the model) runs first and may raise: then
    nothing changes.
    """
    read_card(registry, version)  # exists and has a card
    if check is not None:
        check(registry / version)
    pointer = _pointer(registry)
    previous = pointer.get("version")
    if previous == version:
        return version
    history = list(pointer.get("history", []))
    if previous:
        history.append(previous)
    _write_pointer(registry, version, history)
    return str(previous) if previous else None


def rollback(registry: Path) -> str:
    """Serve the previously promoted version again; returns it."""
    pointer = _pointer(registry)
    history = list(pointer.get("history", []))
    if not history:
        raise RegistryError(f"nothing to roll back to in {registry}: only one model was promoted")
    version = history.pop()
    _write_pointer(registry, version, history, rolled_back_from=pointer.get("version"))
    return str(version)
