"""The Prometheus text exposition of the gateway's counters."""

from __future__ import annotations

import pytest

from gateway.metrics import Counter, render


def test_counters_render_in_the_text_format_with_escaped_labels() -> None:
    refused = Counter("wardgate_x_total", "Things refused.", ("limit", "endpoint"))
    refused.inc("address", "workload")
    refused.inc("address", "workload", amount=2)
    refused.inc("identity", 'lo"cal\n')
    assert refused.value("address", "workload") == 3
    assert render([refused]) == (
        "# HELP wardgate_x_total Things refused.\n"
        "# TYPE wardgate_x_total counter\n"
        'wardgate_x_total{limit="address",endpoint="workload"} 3\n'
        'wardgate_x_total{limit="identity",endpoint="lo\\"cal\\n"} 1\n'
    )


def test_large_counts_keep_every_digit_and_labels_are_checked() -> None:
    counter = Counter("c_total", "C.", ("kind",))
    counter.inc("a", amount=123_456_789)
    assert 'c_total{kind="a"} 123456789\n' in render([counter])
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc("a", "b")
