"""Store calls from the event loop: inline on SQLite, in a worker thread on PostgreSQL.

A SQLite call is local work (tens to hundreds of microseconds of CPU, a commit's fsync for
writes, no network), and the hand-off to a worker thread and back cost more than that on
this project's machine: 1.2-1.5 ms of wall time per call under load, mostly waiting for the
GIL and thread wake-ups (measured at session open: authentication 1.4 ms through a thread).
The audit writer commits inline for the same reason, and like it a write waits for SQLite's
write lock when another thread holds it (admin API calls run in threads). A PostgreSQL call
is a network round trip, so there the loop never waits on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from gateway.store.store import Store

P = ParamSpec("P")
T = TypeVar("T")


async def call(store: Store, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, one of `store`'s methods, run where it costs the loop least."""
    if store.dialect == "sqlite":
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
