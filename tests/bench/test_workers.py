"""`python -m bench.workers` prints, for each workload, 1 and 2 workers and their ratio, and
the cores gateway and agent kept busy."""

from __future__ import annotations

from bench.workers import PARTS, ROWS, table


def test_the_table_has_a_row_per_workload_with_the_ratio_and_the_cores() -> None:
    results = {
        n: {key: 100.0 * n for key, _ in ROWS}
        | {f"{key}_{part}": 0.25 * n for key, _ in ROWS for part in PARTS}
        for n in (1, 2)
    }
    lines = table(results).splitlines()
    assert lines[0].split()[-4:] == ["gateway", "cores", "agent", "cores"]
    assert len(lines) == 1 + len(ROWS)
    for (_, label), line in zip(ROWS, lines[1:], strict=True):
        assert line.startswith(label)
        assert line.split()[-4:] == ["200", "2.00", "0.25/0.50", "0.25/0.50"]
