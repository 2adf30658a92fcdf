"""Process setup shared by the long-running commands."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping
from typing import Any

# Measured (../shared/peers.md): grpc's event-engine experiments add ~40 us per message in
# Python. This must happen before grpc is imported anywhere; pin grpcio and re-measure on
# upgrade, since experiments are not a stable interface.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Measured (TunnelStream echo of 256 KiB frames over gRPC+TLS, README "Benchmarks"): with
# glibc's defaults every frame-sized buffer (a tunnel frame is up to 256 KiB; gRPC, TLS and
# the codec each hold one) is a fresh mmap, or heap the allocator hands back to the kernel at
# once, so each frame pays its pages' faults again: ~250 MB/s and ~640 us of agent CPU per
# 256 KiB round trip, against ~650 MB/s and ~200 us with these. Both are needed: setting one
# turns off glibc's dynamic adjustment of the other. The cost is up to TRIM bytes of freed
# heap kept per malloc arena.
MALLOC_MMAP_THRESHOLD = 1024 * 1024
MALLOC_TRIM_THRESHOLD = 8 * 1024 * 1024


def tune_malloc(environ: Mapping[str, str] = os.environ) -> bool:
    """Keep frame-sized buffers on the heap; False when not glibc or the operator chose."""
    if any(name.startswith("MALLOC_") for name in environ):
        return False  # glibc's own MALLOC_*_ variables (or a tuning of the operator's) win
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # musl, macOS: their allocators behave differently
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("hpack", "httpx", "httpcore", "alembic", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Coroutine[Any, Any, int | None]) -> int:
    """Run `main` on uvloop; SIGINT/SIGTERM cancel it (clean shutdown), a second one exits."""
    tune_malloc()

    async def wrapper() -> int | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                os._exit(130)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main
        except asyncio.CancelledError:
            return 0

    try:
        import uvloop

        result = uvloop.run(wrapper())
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        result = asyncio.run(wrapper())
    return int(result or 0)
