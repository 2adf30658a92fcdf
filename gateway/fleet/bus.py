"""Messages between gateway members over the store's PostgreSQL: LISTEN/NOTIFY.

Members of one fleet share nothing but the store, so a request that reaches one member for a
session another member serves (a PostgreSQL CancelRequest through a round-robin balancer)
travels as a notification on the store's database. PostgreSQL delivers a NOTIFY to every
connection that LISTENs on its channel, within milliseconds, in the order sent; a payload is
text of at most 8,000 bytes. A notification sent while a member's listener is reconnecting
is lost to that member: callers wait for an answer with a deadline and never rely on one.

The listener keeps its own connection (iterating `notifies()` holds it) and reconnects with
backoff; the publisher has another. A SQLite store has one member: there is no bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
import sqlalchemy as sa
from psycopg import sql

from shared.backoff import Backoff
from shared.tasks import TaskOwner

log = logging.getLogger(__name__)

Handler = Callable[[str], Awaitable[None]]

MAX_PAYLOAD = 7_999  # PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more


def conninfo(url: sa.URL) -> str:
    """The libpq URI of a SQLAlchemy PostgreSQL URL (its driver suffix dropped)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Bus:
    """Publish to and subscribe on channels of one PostgreSQL database."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._handlers: dict[str, Handler] = {}
        self._publisher: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._publish_lock = asyncio.Lock()
        self._listening = asyncio.Event()
        self._tasks = TaskOwner("fleet bus")

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call `handler(payload)` for every message on `channel`; before `run` starts."""
        self._handlers[channel] = handler

    async def wait_listening(self) -> None:
        await self._listening.wait()

    async def publish(self, channel: str, payload: str) -> None:
        """Send `payload` to every member listening on `channel` (this one too)."""
        if len(payload.encode()) > MAX_PAYLOAD:
            raise ValueError(f"a bus message is at most {MAX_PAYLOAD} bytes")
        async with self._publish_lock:
            for attempt in (1, 2):  # a publisher connection that broke is made again once
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await psycopg.AsyncConnection.connect(
                            self._dsn, autocommit=True
                        )
                    await self._publisher.execute("select pg_notify(%s, %s)", (channel, payload))
                    return
                except psycopg.OperationalError:
                    if self._publisher is not None:
                        await self._publisher.close()
                    self._publisher = None
                    if attempt == 2:
                        raise

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after a lost connection."""
        backoff = Backoff(cap=5.0)  # members must hear each other again soon
        while True:
            try:
                await self._listen(backoff)
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("fleet bus: listener connection lost: %s", exc)
            self._listening.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _listen(self, backoff: Backoff) -> None:
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            for channel in self._handlers:
                await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
            self._listening.set()
            backoff.reset()
            async for note in conn.notifies():
                handler = self._handlers.get(note.channel)
                if handler is not None:
                    # Each message in a task of its own: a handler that waits (a cancel
                    # until the server acted) must not hold up the next message.
                    self._tasks.spawn(self._handle(handler, note.payload), name=note.channel)

    @staticmethod
    async def _handle(handler: Handler, payload: str) -> None:
        try:
            await handler(payload)
        except Exception:  # one bad message must not end the listener
            log.exception("fleet bus: a handler failed")

    async def aclose(self) -> None:
        await self._tasks.aclose()
        if self._publisher is not None:
            await self._publisher.close()
