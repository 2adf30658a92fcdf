"""The store's async face: one writer thread per store, reads where they cost the loop least.

The event loop never runs a write. On SQLite a writer waits up to the busy timeout (30 s) for
the database's one write lock, which another process (a backup, an operator's `sqlite3`
shell, a second gateway on the same file) may hold; inline on the loop that wait froze every
session and dropped agents whose pings went unanswered. So every write of a gateway process
goes to one dedicated thread, in submission order (FIFO): the audit log's group commits,
session rows, administrators' changes. One writer also means the process's writes never
queue for SQLite's lock against each other, only against other processes.

A write, once submitted, runs to completion even when its caller stops waiting (a cancelled
task): a session's end or an audit batch is never half-asked. The caller's future is settled
through `call_soon_threadsafe`, one hand-off per write; the audit log batches its events, so
the per-statement path pays that hand-off once per group commit, not per event.

Reads:

* `read`, a short indexed lookup (a credential, a connection, a grant). On SQLite it runs
  inline on the loop: in WAL mode a reader never waits for the write lock (it reads the last
  committed snapshot), and the lookup costs tens of microseconds while a thread hand-off
  costs 1.2-1.5 ms under load on this project's machine (measured at session open). On
  PostgreSQL it is a network round trip, so it runs in a worker thread.
* `scan`, a read whose size the caller does not bound (listings, verifying the chain): a
  worker thread on both, so a long read never stalls the loop either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the caller stopped waiting; the write happened all the same
        if not ok:
            log.debug("store write failed after its caller left: %s", value)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Writer:
    """One thread that runs submitted calls one at a time, in order; started on first use."""

    def __init__(self, name: str = "store-writer") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the store's writer is closed")
            if self._thread is None:
                # A daemon, so a store nobody closed does not keep the process alive.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, loop, fut = job
            try:
                result: Any = call()
                ok = True
            except BaseException as exc:  # handed to the caller, whatever it is
                result, ok = exc, False
            with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody to tell
                loop.call_soon_threadsafe(_settle, fut, ok, result)
            del job, call, fut, result  # no reference kept while waiting for the next

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the writer thread, after every call submitted before it."""
        if self._thread is None or self._closed:
            self._start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((lambda: fn(*args, **kwargs), loop, fut))
        return await fut

    def on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Run what is queued, then stop the thread (waits for it, unless called from it)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._jobs.put(None)
        if thread is not threading.current_thread():
            thread.join()


class AsyncFace:
    """How the event loop calls a store: `await store.io.write(store.end_session, ...)`."""

    def __init__(self, dialect: Literal["sqlite", "postgresql"], writer: Writer) -> None:
        self._inline_reads = dialect == "sqlite"
        self._writer = writer

    async def write(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """A call that writes (or reads and writes): on the store's one writer thread."""
        return await self._writer.run(fn, *args, **kwargs)

    async def read(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """A short read: inline on SQLite (WAL readers never wait), a thread on PostgreSQL."""
        if self._inline_reads:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def scan(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """A read of unbounded size: in a worker thread on both databases."""
        return await asyncio.to_thread(fn, *args, **kwargs)
