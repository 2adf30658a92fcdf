"""The one output style of the CLI: tables, `show` records, relative times, -o json|yaml."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
import yaml
from click.testing import CliRunner

from cli import output as out

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
LONG_ID = "sess_" + "0123456789abcdef" * 8  # longer than any terminal row


def test_relative_times_read_as_people_say_them() -> None:
    assert out.relative("2026-12-07T11:57:00+00:00", NOW) == "3 min ago"
    assert out.relative("2026-12-07T14:00:30+00:00", NOW) == "in 2 h"
    assert out.relative("2026-12-07T11:59:58+00:00", NOW) == "just now"
    assert out.relative("2026-12-07T11:59:15+00:00", NOW) == "45 s ago"
    assert out.relative("2026-12-01T12:00:00+00:00", NOW) == "6 d ago"
    assert out.relative(None, NOW) == "-"
    assert out.relative("not a time", NOW) == "not a time"
    # A time without a zone is the gateway's UTC.
    assert out.relative("2026-12-07T10:00:00", NOW) == "2 h ago"


def test_show_times_carry_the_exact_time_too() -> None:
    shown = out.timestamp("2026-12-07T13:00:00+01:00", NOW)
    assert shown == "just now (2026-12-07 12:00:00 UTC)"
    assert out.timestamp(None, NOW) == "-"
    assert out.clock("2026-12-07T11:57:03.5+00:00") == "11:57:03"


def test_cells_and_sizes() -> None:
    assert out.cell(None) == "-" and out.cell([]) == "-" and out.cell("") == "-"
    assert out.cell(True) == "yes" and out.cell(False) == "no"
    assert out.cell(["a", "b"]) == "a, b"
    assert out.cell({"a": 1, "b": None, "c": "x"}) == "a=1 c=x"
    assert out.cell({"caps": ["ssh", "tcp"], "n": 2}) == "caps=ssh,tcp n=2"
    assert out.size(512) == "512 B" and out.size(3 * 1024 + 400) == "3.4 KiB"
    assert out.size(5 * 1024**4) == "5120.0 GiB"
    assert out.duration(None) == "-" and out.duration(7200) == "2 h"


COLUMNS = [
    out.col("ID", "id", ident=True),
    out.num("ROWS", "rows"),
    out.when("STARTED", "started_at"),
    out.col("TEXT", "text"),
]


def _rows() -> list[dict[str, Any]]:
    return [
        {"id": LONG_ID, "rows": 7, "started_at": None, "text": "select 1"},
        {"id": "s2", "rows": None, "started_at": None, "text": "[bold]not markup[/bold] " * 20},
    ]


def test_piped_table_has_a_header_no_ansi_and_whole_values() -> None:
    text = out.render_table(_rows(), COLUMNS, tty=False)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "ROWS", "STARTED", "TEXT"]
    assert "\x1b[" not in text
    assert len(lines) == 3  # one line per row: nothing wrapped at 80 columns
    assert lines[1].startswith(LONG_ID + "  ")
    assert lines[2].endswith("[bold]not markup[/bold]")  # data is never read as markup
    assert all(line == line.rstrip() for line in lines)
    # Columns line up under their headers; numbers to the right.
    at = lines[0].index("ROWS")
    assert lines[1][at : at + 4] == "   7" and lines[2][at : at + 4] == "   -"


def test_terminal_table_keeps_ids_whole_and_wraps_text(monkeypatch: Any) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = out.render_table(_rows(), COLUMNS, tty=True)
    assert LONG_ID in text  # not folded, not shortened with an ellipsis
    assert "…" not in text


def test_empty_table_is_just_the_header() -> None:
    assert out.render_table([], COLUMNS).split() == ["ID", "ROWS", "STARTED", "TEXT"]


def test_record_aligns_labels_and_indents_mappings_and_lines() -> None:
    text = out.render_record(
        [
            ("name", "pg-main"),
            ("options", {"database": "app", "sslmode": "require"}),
            ("secrets", {}),
            ("sql", "select 1\nfrom t"),
            ("admin", False),
        ]
    )
    assert text.splitlines() == [
        "name:    pg-main",
        "options:",
        "  database: app",
        "  sslmode:  require",
        "secrets: -",
        "sql:     select 1",
        "         from t",
        "admin:   no",
    ]


DATA = [{"id": "a", "ts": "2020-12-07T11:57:00+00:00", "data": {"k": [1, 2]}}]


@click.command()
@out.output_options
def _listing(output: str | None) -> None:
    if not out.structured(DATA, output):
        out.table(DATA, [out.col("ID", "id"), out.when("TIME", "ts")])


def test_output_options_json_yaml_and_the_json_alias() -> None:
    runner = CliRunner()
    for args in (["-o", "json"], ["--output", "json"], ["--json"]):
        got = runner.invoke(_listing, args)
        assert got.exit_code == 0, got.output
        assert json.loads(got.output) == DATA
    as_yaml = runner.invoke(_listing, ["-o", "yaml"])
    assert yaml.safe_load(as_yaml.output) == DATA  # times stay ISO, as the API wrote them
    table = runner.invoke(_listing, [])
    assert table.output.splitlines()[0].split() == ["ID", "TIME"]
    assert "ago" in table.output
    bad = runner.invoke(_listing, ["-o", "xml"])
    assert bad.exit_code == 2 and "'xml' is not one of 'json', 'yaml'" in bad.output
