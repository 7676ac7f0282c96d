"""The store's SQL at unit level, where a property needs more rows than a test should
send through the pipe."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from warren.daemon.store import sessions as tables
from warren.daemon.store.migrations import SCHEMA_VERSION, migrate
from warren.daemon.store import Connection
from warren.protocol.types import Usage


def _row(i: int, labels: dict[str, str]) -> tables.SessionRow:
    return tables.SessionRow(
        session_id=f"s{i:05d}", created_at_ms=i, updated_at_ms=1000 + (i * 7919) % 5000, provider="scripted",
        model=None, system_prompt=None, max_tokens=None, labels=labels, archived=False, message_count=0,
        usage=Usage.zero(), last_assistant_text=None, budget=None, provider_params=None, provider_state={},
        staged_prompt=None, tools=[], next_seq=1, running_turn_id=None, running_owner=None,
    )


@pytest.mark.parametrize("include_archived", [False, True])
def test_both_label_plans_give_the_same_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, include_archived: bool) -> None:
    async def main() -> None:
        db = Connection(str(tmp_path / "t.db"))
        try:
            assert await migrate(db) == 0
            await db.execute("BEGIN")
            for i in range(600):
                labels = {"repo": f"r{i % 3}", "team": "a" if i % 5 else "b"}
                if i % 50 == 0:
                    labels["rare"] = "yes"
                await tables.insert_session(db, _row(i, labels))
                if i % 11 == 0:
                    await tables.update_session(db, f"s{i:05d}", archived=1)
            await db.execute("COMMIT")
            for labels in ({"repo": "r1"}, {"repo": "r2", "team": "b"}, {"rare": "yes"}, {"rare": "yes", "repo": "r0"}, {"repo": "none"}):
                pages = {}
                for threshold in (0, 10**6):  # 0: never selective (scan); huge: always (label index)
                    monkeypatch.setattr(tables, "SELECTIVE_LABEL_ROWS", threshold)
                    got = []
                    for offset in (0, 7, 40):
                        rows, more = await tables.list_sessions(
                            db, limit=9, offset=offset, labels=labels, include_archived=include_archived
                        )
                        got.append(([r.summary.session_id for r in rows], more))
                    pages[threshold] = got
                assert pages[0] == pages[10**6], labels
                for ids, _ in pages[0]:
                    for sid in ids:
                        i = int(sid[1:])
                        assert include_archived or i % 11
            assert await migrate(db) == SCHEMA_VERSION
        finally:
            db.close()

    anyio.run(main)
