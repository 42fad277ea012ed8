"""The floor plan holds: no upward import between the layers, no import cycle
inside a package (the import-linter contracts in pyproject.toml, which
``make check`` runs too)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    command = str(lint) if lint.exists() else shutil.which("lint-imports")
    assert command, "lint-imports missing: `make test` installs it with the test extras"
    done = subprocess.run(
        [command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


#: The one module that may touch Faust's internals (its docstring says what and why).
FAUST_ADAPTER = "pipeline/faust_adapter.py"
_FRAMEWORK = ("faust", "aiokafka", "mode")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _faust_private_uses(path: Path) -> list[str]:
    """Private names of Faust (or the aiokafka and mode it stands on) that ``path``
    imports or reaches for: imported private names anywhere, and in a module that
    imports the framework, any private attribute not of ``self`` or ``cls``
    (``super()._x``, ``table._on_changelog_sent``) or asked for by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    uses_framework = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _FRAMEWORK:
            uses_framework = True
            parts = (node.module or "").split(".") + [a.name for a in node.names]
            found += [f"{path}:{node.lineno}: {n}" for n in parts if _private(n)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _FRAMEWORK:
                    uses_framework = True
                    found += [
                        f"{path}:{node.lineno}: {n}" for n in alias.name.split(".") if _private(n)
                    ]
    if not uses_framework:
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            found.append(f"{path}:{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(f"{path}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_only_the_faust_adapter_touches_faust_internals():
    modules = [
        path
        for folder in ("churnwatch", "pipeline", "models", "producers", "consumers")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if not path.is_symlink() and "churnwatch/pipeline" not in str(path)
    ]
    # the folders come in once, through their own names (not again through churnwatch/)
    modules = [p for p in modules if p.resolve() == p.absolute()]
    assert any(p.relative_to(ROOT).as_posix() == FAUST_ADAPTER for p in modules)
    outside = [
        use
        for path in modules
        if path.relative_to(ROOT).as_posix() != FAUST_ADAPTER
        for use in _faust_private_uses(path)
    ]
    assert not outside, "private Faust names outside the adapter:\n" + "\n".join(outside)
    # and the check sees what it looks for: the adapter itself uses them
    assert _faust_private_uses(ROOT / FAUST_ADAPTER)
