"""The built wheel: everything under the ``warren`` namespace, and nothing of the repository's
packages left out (``pyproject.toml`` lists them one by one, so a new sub-package must be added
there; this test is what notices)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.daemon_client import ROOT

FOLDERS = {"daemon": "warren/daemon", "protocol": "warren/protocol", "client": "warren/client"}


def test_the_wheel_installs_only_the_warren_namespace_with_every_module(tmp_path: Path) -> None:
    source = tmp_path / "src"  # setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "node_modules", "__pycache__", "build",
                                                                 "*.egg-info", ".pytest_cache", ".hypothesis"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("warren-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"warren", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert not any(n.startswith("warren/__init__") for n in names)  # a namespace: room for other warren.* packages
    for folder, installed in FOLDERS.items():
        modules = {str(p.relative_to(ROOT / folder)) for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
        assert modules, folder
        missing = {m for m in modules if f"{installed}/{m}" not in names}
        assert not missing, f"{folder}/ modules missing from the wheel (add their package to pyproject.toml): {sorted(missing)}"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "warren = warren.daemon.cli:main" in entry_points
