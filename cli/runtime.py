"""Process setup shared by the long-running commands."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

# Measured (../shared/peers.md): grpc's event-engine experiments add ~40 us per message in
# Python. This must happen before grpc is imported anywhere; pin grpcio and re-measure on
# upgrade, since experiments are not a stable interface.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")


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
