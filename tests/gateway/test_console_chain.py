"""The session page's chain state (gateway/console/operator.py `chain_state`): events a real
SQLite store wrote match their hashes; an edited one is named by its seq."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.console.operator import chain_state
from gateway.store import Store


def test_intact_events_verify_and_an_edited_one_is_named(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        for i in range(3):
            store.audit.append("pg.statement", actor="alice", session_id="s1", data={"i": i})
            store.audit.append("test.other", actor="bob", data={"i": i})
        events = store.audit.list_all(session_id="s1")
    assert chain_state(events) == {"checked": 3, "bad": [], "intact": True}
    edited = [*events[:2], dataclasses.replace(events[2], data={"i": 99})]
    assert chain_state(edited) == {"checked": 3, "bad": [events[2].seq], "intact": False}
