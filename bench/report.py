"""Rows of results: medians, ratios, issue 4's targets, the table for people, results.json.

Each measurement is one row: the median of its repeats for every route (``None`` where a
route has nothing to measure, such as relay CPU on the direct route), Wardgate's ratio to
direct and to ``ssh -L``, the raw runs, per-process details, the parameters it ran with and
the machine it ran on. Latency rows also carry the milliseconds Wardgate (and the tunnel)
add over direct at p50 and p99.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cli.runtime  # noqa: F401 - the GRPC_EXPERIMENTS the relays run with
from bench.routes import DIRECT, LABELS, ROUTES, SSH_TUNNEL, WARDGATE

Better = Literal["higher", "lower"]


@dataclass(frozen=True, slots=True)
class Spec:
    """What one measurement is; its name and unit are the stable interface of results.json."""

    name: str
    unit: str
    better: Better
    title: str
    routes: tuple[str, ...] = ROUTES
    target: str | None = None


LATENCY_P50 = "select_1client_latency_p50"
LATENCY_P99 = "select_1client_latency_p99"
TPS_8 = "select_8clients_tps"
TPS_32 = "select_32clients_tps"
CONNECT = "connection_setup_rate"
COPY_500MB = "copy_out_500mb"
COPY_1GB = "copy_out_1gb"
CPU = "relay_cpu_per_1000_round_trips"
IDLE_RSS = "relay_rss_1000_idle_sessions"
IDLE_PER_SESSION = "relay_rss_per_idle_session"
STREAM_RSS = "relay_rss_growth_streaming_1gb"
SCP_UP = "scp_upload"
SCP_DOWN = "scp_download"

RELAYED = (SSH_TUNNEL, WARDGATE)
SPECS: tuple[Spec, ...] = (
    Spec(LATENCY_P50, "ms", "lower", "pgbench -S, 1 client, latency p50", target="+ <= 0.15 ms"),
    Spec(LATENCY_P99, "ms", "lower", "pgbench -S, 1 client, latency p99"),
    Spec(TPS_8, "tps", "higher", "pgbench -S, 8 clients", target=">= 0.75x ssh -L"),
    Spec(TPS_32, "tps", "higher", "pgbench -S, 32 clients"),
    Spec(CONNECT, "conn/s", "higher", "connect+auth+SELECT 1+close", target=">= 0.7x direct"),
    Spec(COPY_500MB, "MB/s", "higher", "COPY TO STDOUT, 500 MB", target=">= 1.0x ssh -L"),
    Spec(COPY_1GB, "MB/s", "higher", "COPY TO STDOUT, 1 GB", target=">= 1.0x ssh -L"),
    Spec(CPU, "ms", "lower", "relay CPU per 1,000 round trips", RELAYED, "<= 100 ms"),
    Spec(IDLE_RSS, "MiB", "lower", "relay RSS, 1,000 idle sessions", RELAYED),
    Spec(IDLE_PER_SESSION, "KiB", "lower", "relay RSS per idle session", RELAYED, "<= 50 KiB"),
    Spec(STREAM_RSS, "MiB", "lower", "relay RSS growth, 1 GB COPY", RELAYED, "<= 64 MiB each"),
    # SSH (issue 7): the ssh_tunnel column is scp through an OpenSSH ProxyJump bastion.
    Spec(SCP_UP, "MB/s", "higher", "scp upload (bastion: ProxyJump)"),
    Spec(SCP_DOWN, "MB/s", "higher", "scp download (bastion: ProxyJump)"),
)
SPEC_BY_NAME: Mapping[str, Spec] = {spec.name: spec for spec in SPECS}
LATENCY_ROWS = (LATENCY_P50, LATENCY_P99)


@dataclass
class Samples:
    """Everything measured in a run, before medians: values and per-process parts by route."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    parts: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(
        self, name: str, route: str, value: float, parts: Mapping[str, float] | None = None
    ) -> None:
        if name not in SPEC_BY_NAME:
            raise KeyError(f"unknown measurement {name!r}")
        self.values.setdefault(name, {}).setdefault(route, []).append(value)
        for part, part_value in (parts or {}).items():
            by_route = self.parts.setdefault(name, {}).setdefault(route, {})
            by_route.setdefault(part, []).append(part_value)


def _median(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_rows(samples: Samples, machine: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for spec in SPECS:
        runs = samples.values.get(spec.name, {})
        medians = {route: _median(runs.get(route)) for route in ROUTES}
        row: dict[str, Any] = {
            "name": spec.name,
            "unit": spec.unit,
            "better": spec.better,
            "wardgate": medians[WARDGATE],
            "direct": medians[DIRECT],
            "ssh_tunnel": medians[SSH_TUNNEL],
            "ratio_vs_direct": _ratio(medians[WARDGATE], medians[DIRECT]),
            "ratio_vs_ssh_tunnel": _ratio(medians[WARDGATE], medians[SSH_TUNNEL]),
        }
        if spec.name in LATENCY_ROWS:
            for pct, name in (("p50", LATENCY_P50), ("p99", LATENCY_P99)):
                by_route = {r: _median(samples.values.get(name, {}).get(r)) for r in ROUTES}
                direct = by_route[DIRECT]
                for route, prefix in ((WARDGATE, ""), (SSH_TUNNEL, "ssh_tunnel_")):
                    value = by_route[route]
                    row[f"{prefix}added_ms_{pct}"] = (
                        value - direct if value is not None and direct is not None else None
                    )
        row["runs"] = {route: list(runs.get(route, [])) for route in spec.routes}
        parts = samples.parts.get(spec.name, {})
        row["detail"] = {
            route: {part: statistics.median(v) for part, v in by_part.items()}
            for route, by_part in parts.items()
        }
        row["params"] = samples.params.get(spec.name, {})
        row["target"] = spec.target
        row["target_met"] = _target_met(spec.name, row)
        row["machine"] = dict(machine)
        rows.append(row)
    return rows


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


_TARGETS: Mapping[str, Callable[[dict[str, Any]], bool | None]] = {
    LATENCY_P50: lambda row: _at_most(row["added_ms_p50"], 0.15),
    TPS_8: lambda row: _at_least(row["ratio_vs_ssh_tunnel"], 0.75),
    CONNECT: lambda row: _at_least(row["ratio_vs_direct"], 0.7),
    COPY_500MB: lambda row: _at_least(row["ratio_vs_ssh_tunnel"], 1.0),
    COPY_1GB: lambda row: _at_least(row["ratio_vs_ssh_tunnel"], 1.0),
    CPU: lambda row: _at_most(row["wardgate"], 100.0),
    IDLE_PER_SESSION: lambda row: _at_most(row["wardgate"], 50.0),
    STREAM_RSS: lambda row: _at_most(
        max(row["detail"].get(WARDGATE, {}).values(), default=None), 64.0
    ),
}


def _target_met(name: str, row: dict[str, Any]) -> bool | None:
    check = _TARGETS.get(name)
    return None if check is None else check(row)


# ---- machine facts -----------------------------------------------------------------------


def machine_facts(**extra: Any) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kib = int(meminfo.readline().split()[1])
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": importlib.metadata.version("grpcio"),
        "psycopg": importlib.metadata.version("psycopg"),
        "grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", ""),
        "wardgate_commit": _commit(),
        **extra,
    }


def _commit() -> str:
    """The commit measured, marked when the work tree had uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + uncommitted changes" if dirty else head


# ---- output ------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _target_cell(row: Mapping[str, Any]) -> str:
    if row["target"] is None:
        return ""
    verdict = {True: "met", False: "NOT met", None: "n/a"}[row["target_met"]]
    return f"{row['target']}: {verdict}"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the rows, then the latency and per-process details."""
    header = [
        "measurement",
        "unit",
        LABELS[DIRECT],
        LABELS[SSH_TUNNEL],
        LABELS[WARDGATE],
        "Wardgate / direct",
        "Wardgate / ssh -L",
        "issue 4 target",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        title = SPEC_BY_NAME[row["name"]].title
        cells = [
            f"{title} (`{row['name']}`)",
            row["unit"],
            _fmt(row["direct"]),
            _fmt(row["ssh_tunnel"]),
            _fmt(row["wardgate"]),
            _fmt_ratio(row["ratio_vs_direct"]),
            _fmt_ratio(row["ratio_vs_ssh_tunnel"]),
            _target_cell(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for row in rows:
        if row["name"] in LATENCY_ROWS:
            pct = row["name"].rsplit("_", 1)[1]
            lines.append(
                f"- added latency over direct, {pct}: Wardgate "
                f"+{_fmt(row[f'added_ms_{pct}'])} ms, ssh -L "
                f"+{_fmt(row[f'ssh_tunnel_added_ms_{pct}'])} ms"
            )
    for row in rows:
        if row["detail"]:
            parts = "; ".join(
                f"{LABELS[route]}: "
                + ", ".join(f"{part} {_fmt(value)}" for part, value in by_part.items())
                for route, by_part in row["detail"].items()
            )
            lines.append(f"- `{row['name']}` by process ({row['unit']}): {parts}")
    return "\n".join(lines)


def write_json(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    elapsed_s: float,
) -> None:
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 1),
        "settings": dict(settings),
        "machine": dict(machine),
        "measurements": list(rows),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
