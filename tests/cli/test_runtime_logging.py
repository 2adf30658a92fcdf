"""Log messages are capped: what a peer sends cannot make the gateway write megabytes."""

from __future__ import annotations

import logging

from cli.runtime import MAX_LOG_MESSAGE, CappedMessages


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args or None, None)


def test_a_long_message_is_cut_and_counted() -> None:
    record = _record("banner: %s", "A" * 300_000)
    assert CappedMessages().filter(record)
    shown = record.getMessage()
    assert len(shown) < MAX_LOG_MESSAGE + 50
    assert shown.startswith("banner: AAAA") and shown.endswith(
        f"({300_008 - MAX_LOG_MESSAGE} more characters)"
    )


def test_a_short_message_is_left_alone() -> None:
    record = _record("peer %s said %d", "x", 3)
    assert CappedMessages().filter(record)
    assert record.getMessage() == "peer x said 3" and record.args == ("x", 3)
