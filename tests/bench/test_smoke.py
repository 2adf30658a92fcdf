"""A short run of the benchmark harness, end to end: every route starts, every workload runs.

No benchmark number is asserted (they depend on the machine); what is checked is that
`python -m bench --quick` finishes, stops what it started, prints its table and writes a
results file with every measurement, the agreed keys and finite numbers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MEASUREMENTS = [
    "select_1client_latency_p50",
    "select_1client_latency_p99",
    "select_8clients_tps",
    "select_32clients_tps",
    "connection_setup_rate",
    "copy_out_500mb",
    "copy_out_1gb",
    "relay_cpu_per_1000_round_trips",
    "relay_rss_1000_idle_sessions",
    "relay_rss_per_idle_session",
    "relay_rss_growth_streaming_1gb",
    "scp_upload",
    "scp_download",
]
RELAY_ONLY = {name for name in MEASUREMENTS if name.startswith("relay_")}  # no direct value
KEYS = {
    "name",
    "unit",
    "wardgate",
    "direct",
    "ssh_tunnel",
    "ratio_vs_direct",
    "ratio_vs_ssh_tunnel",
    "machine",
}
LATENCY_KEYS = {"added_ms_p50", "added_ms_p99"}
MACHINE_KEYS = {"cpu_count", "cpu_model", "python", "grpcio", "kernel"}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _left_behind(work_dir: str) -> list[str]:
    """Processes run in, or naming, the run's working directory (gateway, agent, sshd, ...)."""
    left = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if work_dir in cmdline or work_dir in (proc.info["cwd"] or ""):
            left.append(f"{proc.pid}: {cmdline}")
    return left


def test_quick_run_writes_every_measurement_with_finite_numbers(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,  # scp adds 12 short transfers (each an SSH handshake and sign-in)
        check=False,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-6000:]}"
    assert "| measurement |" in run.stdout
    work_dir = re.search(r"working directory (\S+)", run.stderr)
    assert work_dir is not None, run.stderr
    assert not _left_behind(work_dir.group(1)), "the harness left processes behind"

    document = json.loads(out.read_text())
    rows = {row["name"]: row for row in document["measurements"]}
    assert sorted(rows) == sorted(MEASUREMENTS)
    assert document["machine"].keys() >= MACHINE_KEYS
    for name, row in rows.items():
        assert row.keys() >= KEYS, name
        assert row["machine"].keys() >= MACHINE_KEYS, name
        assert _finite(row["wardgate"]), name
        assert _finite(row["ssh_tunnel"]), name
        assert _finite(row["ratio_vs_ssh_tunnel"]) or row["ssh_tunnel"] == 0, name
        if name in RELAY_ONLY:
            assert row["direct"] is None and row["ratio_vs_direct"] is None, name
        else:
            assert _finite(row["direct"]) and row["direct"] > 0, name
            assert _finite(row["ratio_vs_direct"]), name
            assert all(len(runs) == 2 for runs in row["runs"].values()), name  # --quick repeats
        if name.startswith("select_1client_latency"):
            for key in LATENCY_KEYS:
                assert _finite(row[key]), (name, key)
    for name in ("relay_cpu_per_1000_round_trips", "relay_rss_growth_streaming_1gb"):
        assert set(rows[name]["detail"]["wardgate"]) == {"gateway", "agent"}
