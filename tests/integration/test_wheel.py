"""The wheel as a user installs it: built from the checkout, installed into a fresh
virtual environment outside it, with only ``churnwatch`` importable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from churnwatch.core.broker import free_port
from tests.paths import REPO

pytestmark = pytest.mark.integration

#: Import names the card's folders would have had on their own; a user's own
#: ``models.py`` or ``pipeline/`` must not be shadowed by churnwatch.
NOT_OURS = ("pipeline", "models", "producers", "consumers", "configs")

_IMPORT_EVERYTHING = """
import importlib, pkgutil, churnwatch
names = [m.name for m in pkgutil.walk_packages(churnwatch.__path__, "churnwatch.")
         if not m.name.endswith(".__main__")]  # that one runs the CLI
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding the wheel built from this checkout (and its dependencies)."""
    home = tmp_path_factory.mktemp("user")
    wheels = home / "wheels"
    # From a copy of the checkout's files (symlinks kept): a build/ folder left in the
    # checkout by an earlier build could hold modules deleted since.
    source = home / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".*cache", ".churnwatch", "build", "*.egg-info", "__pycache__"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("churnwatch-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CHURNWATCH_"))}
    env["PATH"] = f"{home / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pip = run(
        [
            str(home / "venv" / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(REPO / "requirements.lock"),
            str(wheel),
        ],
        home,
        env,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr
    return home, env


def test_the_installed_wheel_has_one_import_name_and_every_module(installed):
    home, env = installed
    python = str(home / "venv" / "bin" / "python")
    help_ = run(["churnwatch", "--help"], home, env)
    assert help_.returncode == 0, help_.stderr
    assert "demo" in help_.stdout and "worker" in help_.stdout
    everything = run([python, "-c", _IMPORT_EVERYTHING], home, env)
    assert everything.returncode == 0, everything.stderr
    assert int(everything.stdout) > 60  # every module of every layer, not just the CLI
    for name in NOT_OURS:
        alone = run([python, "-c", f"import {name}"], home, env)
        assert alone.returncode != 0, f"`import {name}` works outside the checkout"
        assert "ModuleNotFoundError" in alone.stderr
    # the shipped settings load from the package, and point at shipped files
    shipped = run(
        [
            python,
            "-c",
            "from churnwatch.core.settings import load_settings; "
            "from pathlib import Path; s = load_settings(); "
            "print(Path(s.alerts.routing).is_file(), s.model.registry)",
        ],
        home,
        env,
    )
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout.split() == ["True", ".churnwatch/registry"]


def test_the_installed_wheel_runs_the_demo(installed):
    home, env = installed
    summary = home / "s.json"
    demo = run(
        [
            "churnwatch",
            "demo",
            "--quiet",
            "--no-web",
            "--customers",
            "40",
            "--days-per-second",
            "60",
            "--duration",
            "200",
            "--summary",
            str(summary),
        ],
        home,
        dict(env, CHURNWATCH_BROKER__PORT=str(free_port())),
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    result = json.loads(summary.read_text())
    assert result["events_processed"] == result["events_produced"] > 2000
    assert result["model_version"].startswith("v")
    assert result["notifications_sent"] > 0
    # nothing was written into the installed code
    site = next((home / "venv" / "lib").glob("python3*/site-packages/churnwatch"))
    assert not list(site.rglob("registry")), "runtime data landed inside the package"
