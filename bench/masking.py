"""In-process throughput of the agent's result rewriter (`python -m bench.masking`).

Feeds `shared.pgwire.masking.ResultMasker` a PostgreSQL result stream cut into 64 KiB
chunks (what the agent's socket reads deliver) and prints MB/s of CPU time (10^6 bytes of
wire data per CPU second, best of a few rounds) for each stream and rule:

- streams: the bulk workload's COPY text rows (`repeat('x', 1000)`), COPY text rows of mixed
  realistic text (names, numbers, dates, no sensitive value), and the same mixed rows as
  text-format DataRows of five columns;
- rules: the bench policy's custom pattern (`EMP-\\d{6}`), `email`, all built-in detectors.

Nothing here is asserted anywhere; it is for before/after comparisons on one machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from shared.masking.spec import DETECTORS, MaskRule, MaskSpec, Strategy
from shared.masking.values import Masker
from shared.pgwire.backend import (
    CopyOutResponse,
    Field,
    command_complete,
    data_row,
    ready_for_query,
    row_description,
)
from shared.pgwire.frontend import CopyData, CopyDone
from shared.pgwire.masking import ResultMasker

CHUNK = 64 * 1024
TARGET_BYTES = 8 * 1024 * 1024
RULES = {
    "bench regex": MaskRule("bench", Strategy.REDACT, patterns=(r"EMP-\d{6}",)),
    "email": MaskRule("email", Strategy.REDACT, detectors=("email",)),
    "all detectors": MaskRule("all", Strategy.REDACT, detectors=DETECTORS),
}
_WORDS = [
    *("order", "shipped", "to", "warehouse", "customer", "invoice", "paid", "pending"),
    *("refund", "item", "quantity", "note", "Berlin", "Lyon", "Austin", "Osaka", "blue"),
    *("green", "large", "small", "delivered", "returned", "priority", "standard"),
]


def _mixed_columns(rng: random.Random) -> tuple[str, ...]:
    words = " ".join(rng.choice(_WORDS) for _ in range(130))
    return (
        str(rng.randrange(1, 10**7)),
        f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}",
        f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} 12:{rng.randrange(60):02d}:00",
        f"{rng.randrange(10**5)}.{rng.randrange(100):02d}",
        words[:900],
    )


def _copy_stream(lines: list[bytes]) -> bytes:
    out = [CopyOutResponse(0, (0,)).encode()]
    out.extend(CopyData(line).encode() for line in lines)
    out.append(CopyDone().encode() + command_complete(f"COPY {len(lines)}"))
    out.append(ready_for_query("I"))
    return b"".join(out)


def streams() -> dict[str, bytes]:
    rng = random.Random(4)
    x_rows = TARGET_BYTES // 1006
    bulk = _copy_stream([b"x" * 1000 + b"\n"] * x_rows)
    mixed = [_mixed_columns(rng) for _ in range(TARGET_BYTES // 1000)]
    copy_mixed = _copy_stream(["\t".join(row).encode() + b"\n" for row in mixed])
    fields = [Field(f"c{i}", 0, 0, 25) for i in range(5)]
    rows = (
        row_description(fields)
        + b"".join(data_row(tuple(v.encode() for v in row)) for row in mixed)
        + command_complete(f"SELECT {len(mixed)}")
        + ready_for_query("I")
    )
    return {"COPY x*1000": bulk, "COPY mixed": copy_mixed, "DataRow mixed": rows}


def _cpu_seconds(run: Callable[[], None], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def measure(stream: bytes, rule: MaskRule) -> float:
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]

    def run() -> None:
        rw = ResultMasker(Masker(MaskSpec((rule,), b"k" * 32)))
        for chunk in chunks:
            rw.feed(chunk)
        assert rw.failed is None, rw.failed

    return len(stream) / 1e6 / _cpu_seconds(run)


def main() -> None:
    data = streams()
    print(f"{'stream':<16}" + "".join(f"{name:>16}" for name in RULES) + "   (MB/s of CPU)")
    for stream_name, stream in data.items():
        cells = "".join(f"{measure(stream, rule):16.0f}" for rule in RULES.values())
        print(f"{stream_name:<16}{cells}")


if __name__ == "__main__":
    main()
