"""The Prometheus text format of the gateway's metrics."""

from __future__ import annotations

import pytest

from gateway.metrics import Registry


def test_counters_and_gauges_render_in_the_text_format() -> None:
    registry = Registry()
    level = [3]
    registry.gauge("wg_open", "Open now.", lambda: level[0])
    refused = registry.counter("wg_refused_total", "Refused.", ("reason",))
    plain = registry.counter("wg_plain_total", "No labels.")
    refused.inc(reason="total")
    refused.inc(2, reason="per_address")
    level[0] = 5  # read when rendered
    assert registry.render() == (
        "# HELP wg_open Open now.\n# TYPE wg_open gauge\nwg_open 5\n"
        "# HELP wg_refused_total Refused.\n# TYPE wg_refused_total counter\n"
        'wg_refused_total{reason="per_address"} 2\nwg_refused_total{reason="total"} 1\n'
        "# HELP wg_plain_total No labels.\n# TYPE wg_plain_total counter\nwg_plain_total 0\n"
    )
    assert plain.value() == 0 and refused.value(reason="total") == 1


def test_label_values_are_escaped_and_label_names_checked() -> None:
    registry = Registry()
    counter = registry.counter("wg_x_total", "X.", ("phase",))
    counter.inc(phase='a"b\\c\nd')
    assert 'wg_x_total{phase="a\\"b\\\\c\\nd"} 1' in registry.render()
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(reason="x")
    with pytest.raises(ValueError, match="registered twice"):
        registry.counter("wg_x_total", "again")
