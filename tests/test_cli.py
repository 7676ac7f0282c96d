"""The command line: the quick parser and argparse agree, and bad input is argparse's error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from warren.daemon.cli import _argparse, _quick_parse
from tests.daemon_client import ROOT, hermetic_env


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--ephemeral"],
        ["serve", "--db", "/tmp/x.db", "--max-line-bytes", "4096", "--log-level", "debug"],
        ["serve", "--config=/etc/w.toml", "--busy-timeout-ms=200", "--shutdown-grace-s", "0.5"],
    ],
)
def test_quick_parse_matches_argparse(argv: list[str]) -> None:
    quick = _quick_parse(argv)
    assert quick is not None and quick == _argparse(argv)
    if "--db" in argv:
        assert quick["db"] == Path("/tmp/x.db")


@pytest.mark.parametrize(
    "argv",
    [[], ["serve", "--db", "a", "--ephemeral"], ["serve", "--log-level", "loud"], ["serve", "--max-line-bytes", "x"],
     ["serve", "--bogus"], ["serve", "--db"], ["other"]],
)
def test_unusual_command_lines_go_to_argparse(argv: list[str]) -> None:
    assert _quick_parse(argv) is None
    proc = subprocess.run([sys.executable, "-m", "warren.daemon", *argv], capture_output=True, timeout=30, cwd=ROOT,
                          env={**hermetic_env(), "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and b"usage: warren" in proc.stderr and proc.stdout == b""


def test_help_is_argparse(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "warren.daemon", "serve", "--help"], capture_output=True, timeout=30,
                          cwd=ROOT, env={**hermetic_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and b"--max-line-bytes" in proc.stdout
