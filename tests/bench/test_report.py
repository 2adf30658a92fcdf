"""The harness's arithmetic, without processes: percentiles, schedules, rows and targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.report import Samples
from bench.routes import DIRECT, ROUTES, SSH_TUNNEL, WARDGATE, Route
from bench.runner import schedule
from bench.workloads import percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_schedule_measures_every_route_each_repeat_and_rotates_the_order() -> None:
    routes = [Route(name, "127.0.0.1", 1, "u", "p", "d", {}) for name in ROUTES]
    order = [(rep, route.name) for rep, route in schedule(routes, 3)]
    assert order == [
        (0, DIRECT),
        (0, SSH_TUNNEL),
        (0, WARDGATE),
        (1, SSH_TUNNEL),
        (1, WARDGATE),
        (1, DIRECT),
        (2, WARDGATE),
        (2, DIRECT),
        (2, SSH_TUNNEL),
    ]


def _samples() -> Samples:
    samples = Samples()
    for route, p50s in {DIRECT: [0.1, 0.3, 0.2], SSH_TUNNEL: [0.3], WARDGATE: [0.4, 0.5]}.items():
        for p50 in p50s:
            samples.add(report.LATENCY_P50, route, p50)
            samples.add(report.LATENCY_P99, route, p50 * 2)
    for route, tps in {DIRECT: 1000.0, SSH_TUNNEL: 400.0, WARDGATE: 300.0}.items():
        samples.add(report.TPS_8, route, tps)
    samples.add(report.STREAM_RSS, WARDGATE, 70.0, {"gateway": 65.0, "agent": 5.0})
    samples.add(report.STREAM_RSS, SSH_TUNNEL, 1.0, {"ssh": 0.5, "sshd": 0.5})
    return samples


def test_rows_carry_medians_ratios_added_latency_and_targets() -> None:
    rows = {row["name"]: row for row in report.build_rows(_samples(), {"cpu_count": 2})}
    p50 = rows[report.LATENCY_P50]
    assert (p50["direct"], p50["ssh_tunnel"], p50["wardgate"]) == (0.2, 0.3, 0.45)
    assert p50["added_ms_p50"] == pytest.approx(0.25)
    assert p50["added_ms_p99"] == pytest.approx(0.5)
    assert p50["ssh_tunnel_added_ms_p50"] == pytest.approx(0.1)
    assert p50["target_met"] is False
    tps = rows[report.TPS_8]
    assert tps["ratio_vs_direct"] == pytest.approx(0.3)
    assert tps["ratio_vs_ssh_tunnel"] == pytest.approx(0.75)
    assert tps["target_met"] is True
    stream = rows[report.STREAM_RSS]
    assert stream["direct"] is None and stream["ratio_vs_direct"] is None
    assert stream["detail"][WARDGATE] == {"gateway": 65.0, "agent": 5.0}
    assert stream["target_met"] is False  # each process is held to the bound, not the sum
    assert rows[report.CONNECT]["wardgate"] is None  # never measured: no value, no verdict
    assert rows[report.CONNECT]["target_met"] is None
    assert all(row["machine"] == {"cpu_count": 2} for row in rows.values())


def test_table_and_json_hold_every_row(tmp_path: Path) -> None:
    rows = report.build_rows(_samples(), {"cpu_count": 2})
    text = report.table(rows)
    assert all(f"`{spec.name}`" in text for spec in report.SPECS)
    assert "Wardgate +0.250 ms" in text
    out = tmp_path / "sub" / "results.json"
    report.write_json(out, rows, machine={"cpu_count": 2}, settings={"quick": True}, elapsed_s=1)
    document = json.loads(out.read_text())
    assert [row["name"] for row in document["measurements"]] == [s.name for s in report.SPECS]
    assert document["settings"] == {"quick": True}


def test_unknown_measurement_names_are_refused() -> None:
    with pytest.raises(KeyError):
        Samples().add("select_9clients_tps", WARDGATE, 1.0)
