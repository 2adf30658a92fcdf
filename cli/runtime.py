"""Process setup shared by the long-running commands."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

# Measured (docs/architecture.md, "Tunables"): grpc's event-engine experiments add ~40 us per
# message in Python. This must happen before grpc is imported anywhere; pin grpcio and
# re-measure on upgrade, since experiments are not a stable interface.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class MallocTuning:
    mmap_threshold: int
    trim_threshold: int


# The agent moves bulk data: measured (TunnelStream echo of 256 KiB frames over gRPC+TLS,
# docs/architecture.md, "The allocator"), with glibc's defaults every frame-sized buffer (a
# tunnel frame is up to 256 KiB; gRPC, TLS and the codec each hold one) is a fresh mmap, or
# heap the allocator hands back to the kernel at once, so each frame pays its pages' faults
# again: ~250 MB/s and ~640 us of agent CPU per 256 KiB round trip, against ~650 MB/s and
# ~200 us with these. Both are set: setting one turns off glibc's dynamic adjustment of the
# other. The cost is up to the trim threshold of freed heap kept per malloc arena.
BULK = MallocTuning(mmap_threshold=1024 * 1024, trim_threshold=8 * 1024 * 1024)
# The gateway holds a TLS connection per client, and uvloop gives each a 256 KiB read buffer
# that stays mostly untouched (little RSS) only as its own mmap: hence an mmap threshold of
# exactly that size (a full tunnel frame is a little larger and is mmapped too; smaller ones
# stay on the heap). A small trim threshold hands freed heap back, which is most of what
# idle sessions cost otherwise. Measured with 300 idle sessions and 300 MB COPYs: glibc's
# defaults 98 KiB per session; BULK 141 KiB and ~300-350 MB/s; this 77 KiB and ~260-300 MB/s
# (gateway CPU 1.3-1.8 vs 2.3-2.7 ms per MB). docs/architecture.md has the scp numbers.
MANY_CONNECTIONS = MallocTuning(mmap_threshold=256 * 1024, trim_threshold=128 * 1024)


def tune_malloc(tuning: MallocTuning, environ: Mapping[str, str] = os.environ) -> bool:
    """Apply `tuning` to glibc's allocator; False when not glibc or the operator chose."""
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
        mallopt(_M_MMAP_THRESHOLD, tuning.mmap_threshold)
        and mallopt(_M_TRIM_THRESHOLD, tuning.trim_threshold)
    )


MAX_LOG_MESSAGE = 2000  # characters of one log message; the rest is counted, not written


class CappedMessages(logging.Filter):
    """Cut a log message past MAX_LOG_MESSAGE characters. What an unauthenticated peer
    sends (an SSH banner, a startup packet, a header) can reach a message; it must not
    make the gateway write megabytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LOG_MESSAGE:
            cut = len(message) - MAX_LOG_MESSAGE
            record.msg = f"{message[:MAX_LOG_MESSAGE]}... ({cut} more characters)"
            record.args = None
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per line (`--log-format json`): time (UTC, ISO 8601), level, logger,
    message, and the exception's traceback when there is one, for log shippers that index
    fields. The message is the one the text format shows (capped the same way)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


LOG_FORMATS = ("text", "json")


def set_log_format(name: str, *, worker: int | None = None) -> None:
    """Switch every root handler to `name` ("text" or "json"); `worker` (`--workers`): tag
    each line with the worker that wrote it."""
    text = TEXT_FORMAT
    if worker is not None:
        text = TEXT_FORMAT.replace(" %(name)s", f" worker-{worker} %(name)s")
    formatter = JsonLines(worker) if name == "json" else logging.Formatter(text)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=TEXT_FORMAT,
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(CappedMessages())
    # paramiko logs each peer's banner and every negotiation step at INFO: library noise,
    # and the banner is the peer's to choose.
    for noisy in ("hpack", "httpx", "httpcore", "alembic", "websockets", "paramiko"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(
    main: Coroutine[Any, Any, int | None],
    *,
    malloc: MallocTuning | None = None,
    on_first_signal: Callable[[], None] | None = None,
) -> int:
    """Run `main` on uvloop; SIGINT/SIGTERM cancel it (clean shutdown), a second one exits.
    `malloc`: the allocator tuning for what this process mostly does. `on_first_signal`
    (the gateway's drain): called at the first signal instead; the second then cancels
    `main` at once, and a third exits."""
    if malloc is not None:
        tune_malloc(malloc)

    async def wrapper() -> int | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if on_first_signal is not None and hits == 1:
                on_first_signal()
                return
            if hits > (2 if on_first_signal is not None else 1):
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
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        result = asyncio.run(wrapper())
    else:  # not in the try: an ImportError of `main`'s must not run it a second time
        result = uvloop.run(wrapper())
    return int(result or 0)
