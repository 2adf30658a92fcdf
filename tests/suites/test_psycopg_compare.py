"""The ratchet of make suite-psycopg, on made-up outcomes (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.suites.psycopg_compare import KNOWN, Outcome, Run, compare, read_known


def _run(side: str, **outcomes: str) -> Run:
    return Run(side, {f"t.py::{name}": Outcome(outcome) for name, outcome in outcomes.items()})


def test_the_committed_list_reads_and_names_a_cause_for_every_test() -> None:
    known = read_known(KNOWN)
    assert known
    assert all(why for why in known.values())


def test_known_list_lines(tmp_path: Path) -> None:
    path = tmp_path / "known.txt"
    path.write_text("# comment\n\nt.py::a # cause 2: pid\nt.py::b[x-y]\n")
    assert read_known(path) == {"t.py::a": "cause 2: pid", "t.py::b[x-y]": ""}


def test_a_listed_difference_holds(capsys: pytest.CaptureFixture[str]) -> None:
    direct = _run("direct", a="passed", b="passed", c="failed")
    through = _run("wardgate", a="passed", b="failed", c="failed")
    assert compare(direct, through, {"t.py::b": "cause 2"}, KNOWN) == 0
    assert "ratchet holds" in capsys.readouterr().out


def test_a_new_difference_fails(capsys: pytest.CaptureFixture[str]) -> None:
    direct = _run("direct", a="passed", b="passed")
    through = _run("wardgate", a="passed")  # b never ran: a hang cut the run short
    assert compare(direct, through, {}, KNOWN) == 1
    out = capsys.readouterr().out
    assert "NEW   t.py::b: not run" in out
    assert "1 new differences" in out


def test_a_listed_test_that_now_passes_fails_unless_flaky(
    capsys: pytest.CaptureFixture[str],
) -> None:
    direct = _run("direct", a="passed", b="passed")
    through = _run("wardgate", a="passed", b="passed")
    assert compare(direct, through, {"t.py::a": "flaky: timing"}, KNOWN) == 0
    assert compare(direct, through, {"t.py::b": "cause 2"}, KNOWN) == 1
    assert "remove from psycopg_known.txt: 1\n  t.py::b" in capsys.readouterr().out


def test_a_test_the_suite_marks_timing_is_shown_not_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    direct = _run("direct", a="passed", b="passed")
    through = _run("wardgate", a="failed", b="failed")
    through.timing = {"t.py::a"}
    assert compare(direct, through, {}, KNOWN) == 1  # b is a new difference
    out = capsys.readouterr().out
    assert "timing t.py::a: failed" in out and "NEW   t.py::b: failed" in out
    assert "1 new differences" in out
