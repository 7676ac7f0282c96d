"""schemas/typescript/warren-protocol.d.ts: generated from the wire types, current, and real
TypeScript that constrains: ``tsc --noEmit --strict`` accepts tests/typescript/usage.ts (a
plugin's use of it, whose ``@ts-expect-error`` lines must fail) and reports exactly the errors
marked in tests/typescript/rejected.ts.

``tsc`` is the ``typescript`` devDependency of tests/acp_ts (installed by ``make test``'s
``npm ci``; run alone, this module installs it). Skips only when ``node`` is missing (or
``npm``, when tsc is not installed yet).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from warren.protocol.events import EVENT_TYPES, event_type_name
from warren.protocol.methods import CLIENT_NOTIFICATIONS, METHODS, SERVER_REQUESTS
from warren.protocol.typescript import OUTPUT, main, render
from tests.acp_helpers import TS_DIR, node_with_packages

ROOT = Path(__file__).resolve().parent.parent
DECLARATIONS = ROOT / OUTPUT
FIXTURES = ROOT / "tests" / "typescript"
TSC = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
TSC_FLAGS = ["--noEmit", "--strict", "--target", "es2022", "--lib", "es2022", "--pretty", "false"]


def test_the_checked_in_declarations_are_current() -> None:
    assert DECLARATIONS.is_file(), f"{OUTPUT} is missing: run `make schemas`"
    assert DECLARATIONS.read_text("utf-8") == render(), f"{OUTPUT} is stale: run `make schemas`"


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "warren-protocol.d.ts"
    assert main([str(target), "--check"]) == 1
    assert main([str(target)]) == 0 and target.read_text("utf-8") == render()
    assert main([str(target), "--check"]) == 0
    target.write_text(render().replace("session_id: string;", "session_id: number;", 1), "utf-8")
    assert main([str(target), "--check"]) == 1
    assert "run `make schemas`" in capsys.readouterr().err


def test_every_method_and_event_is_declared() -> None:
    text = render()
    for name in [*METHODS, *SERVER_REQUESTS]:
        assert re.search(rf'^  "{re.escape(name)}": \{{\n    params: \w+;\n    result: [\w| ]+;', text, re.M), name
    for name in [*CLIENT_NOTIFICATIONS, "session/event"]:
        assert re.search(rf'^  "{re.escape(name)}": \w+;$', text, re.M), name
    for cls in EVENT_TYPES:
        assert f"  {event_type_name(cls)}: {cls.__name__};" in text
        assert f'export interface {cls.__name__} {{\n  type: "{event_type_name(cls)}";' in text
    assert "/** A JSON-RPC error member." in text  # docstrings are JSDoc
    assert not re.search(r"[:|<(,] *any\b", text)  # unknown, never any


def _tsc() -> list[str]:
    return [node_with_packages(TSC), str(TSC)]


def test_tsc_accepts_usage_and_reports_exactly_the_marked_errors() -> None:
    files = [DECLARATIONS, FIXTURES / "usage.ts", FIXTURES / "rejected.ts"]
    done = subprocess.run([*_tsc(), *TSC_FLAGS, *map(str, files)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    reported = set()
    for line in done.stdout.splitlines():
        match = re.match(r"^(.+?)\((\d+),\d+\): error (TS\d+):", line)
        assert match, f"unexpected tsc output: {line}\n{done.stdout}{done.stderr}"
        reported.add((Path(match.group(1)).name, int(match.group(2)), match.group(3)))
    expected = {("rejected.ts", number, code)
                for number, line in enumerate((FIXTURES / "rejected.ts").read_text().splitlines(), 1)
                for code in re.findall(r"// error (TS\d+)", line)}
    assert len(expected) >= 4
    assert done.returncode != 0, "tsc compiled rejected.ts: the declarations do not constrain"
    assert reported == expected, (
        f"tsc --strict reported errors that were not expected (usage.ts must compile, and an "
        f"unused @ts-expect-error is TS2578): {sorted(reported - expected)}; expected but not "
        f"reported: {sorted(expected - reported)}\n{done.stdout}"
    )
