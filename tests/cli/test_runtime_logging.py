"""Log messages are capped: what a peer sends cannot make the gateway write megabytes; the
JSON format writes one object per line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from cli.runtime import MAX_LOG_MESSAGE, CappedMessages, JsonLines


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


def test_json_lines_carry_time_level_logger_message_and_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "gateway.audit", logging.ERROR, __file__, 1, "write %s", ("failed",), sys.exc_info()
        )
    line = JsonLines().format(record)
    assert "\n" not in line  # one object per line, whatever the traceback
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "gateway.audit"
    assert entry["message"] == "write failed"
    assert dt.datetime.fromisoformat(entry["time"]).tzinfo == dt.UTC
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


def test_a_plain_json_line_has_no_exception_key() -> None:
    entry = json.loads(JsonLines().format(_record("agent %s connected", "a1")))
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert entry["message"] == "agent a1 connected"


def test_a_workers_lines_name_it() -> None:
    from cli.runtime import set_log_format

    root = logging.getLogger()
    saved = root.handlers[:]
    handler = logging.StreamHandler(sys.stderr)
    root.handlers = [handler]  # set_log_format changes every root handler: only this one
    try:
        set_log_format("text", worker=1)
        assert handler.formatter is not None
        assert " INFO worker-1 t: hello" in handler.formatter.format(_record("hello"))
        set_log_format("json", worker=1)
        assert json.loads(handler.formatter.format(_record("hello")))["worker"] == 1
    finally:
        root.handlers = saved
