"""`python -m bench.column_masking` prints each workload with the bench policy and with a
column rule added, and their ratio; the rule it adds is one the gateway accepts."""

from __future__ import annotations

from bench.column_masking import COLUMNS, ROWS, table, with_column_rule
from bench.wardgate import POLICY
from gateway.policy.masking import MaskingRuleConfig


def test_the_table_has_a_row_per_workload_with_the_ratio() -> None:
    results = {
        column: {key: 10.0 * (i + 1) for key, _, _ in ROWS} for i, column in enumerate(COLUMNS)
    }
    lines = table(results).splitlines()
    assert len(lines) == 1 + len(ROWS)
    for (_, label, _), line in zip(ROWS, lines[1:], strict=True):
        assert line.startswith(label)
        assert line.split()[-1] == "2.00"


def test_the_column_rule_is_added_to_a_copy_of_the_bench_policy() -> None:
    policy = with_column_rule()
    assert len(policy["masking"]) == len(POLICY["masking"]) + 1
    MaskingRuleConfig.model_validate(policy["masking"][-1])
