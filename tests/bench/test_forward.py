"""`python -m bench.forward` prints each workload direct, on the member with the agent, and
forwarded through it, with what forwarding costs over the local member."""

from __future__ import annotations

from bench.forward import COLUMNS, ROWS, table


def test_the_table_has_a_row_per_workload_with_forwarded_over_local() -> None:
    results = {
        column: {key: 10.0 * (i + 1) for key, _, _ in ROWS} for i, column in enumerate(COLUMNS)
    }
    lines = table(results).splitlines()
    assert lines[0].split() == ["direct", "local", "forwarded", "fwd/local"]
    assert len(lines) == 1 + len(ROWS)
    for (_, label, _), line in zip(ROWS, lines[1:], strict=True):
        assert line.startswith(label)
        assert line.split()[-1] == "1.50"
