"""Audit events, written through the store's hash-chained log with group commit.

`record` returns once the event is durable: callers await it before forwarding the action
it describes (design decision 8). `submit` queues an event without waiting (results of
statements already forwarded). One writer task drains the queue: everything that arrived
while the previous transaction was committing goes into the next one, so many sessions
share one commit instead of queueing behind each other's.

A failed commit (a full disk) fails every waiting `record`, whose action then does not
happen, and keeps the `submit`ted events, whose actions did: they are written first, in
order, once the store takes writes again.

Refusals are audited too: a rejected agent key or an unknown protocol on the public port
leaves a trace, without the secret that was offered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from gateway.store import AuditEvent, Store
from gateway.telemetry import Telemetry
from shared.backoff import Backoff
from shared.tasks import TaskOwner

log = logging.getLogger(__name__)

MAX_BATCH = 512
# Events of actions already taken (`submit`) that a failed commit could not write are kept,
# in order, and written once the store takes writes again; past this many the oldest go.
MAX_KEPT = 10_000
RETRY_BASE, RETRY_CAP = 0.5, 10.0  # seconds between attempts to write what the store refused
# Events nobody waits for (statement results) ride along with the next commit that someone
# does wait for, or go out after this delay: one commit per statement instead of two.
LAZY_FLUSH_DELAY = 0.02
# Keys whose values must never reach the log, whatever a caller passes.
_SECRET_KEYS = frozenset({"secret", "password", "token", "key", "authorization"})

_Item = tuple[str, str, str | None, Mapping[str, Any], "asyncio.Future[AuditEvent] | None"]
T = TypeVar("T")


class Event(NamedTuple):
    """An event of `Auditor.change`, written in the change's transaction."""

    kind: str
    actor: str
    data: Mapping[str, Any]
    session_id: str | None = None


class AuditUnavailable(Exception):
    """The audit log could not be written; the action it would record must not happen."""


def _scrub(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k.lower() in _SECRET_KEYS else v) for k, v in data.items()}


async def durable(queued: Sequence[asyncio.Future[AuditEvent]]) -> list[AuditEvent]:
    """The events of `Auditor.queue` calls, once all are durable; the first failure raises."""
    try:
        return [await fut for fut in queued]
    finally:
        for fut in queued:  # nothing left unawaited to warn about later
            if not fut.done():
                fut.cancel()  # the event is still written; nobody waits for it
            elif not fut.cancelled():
                fut.exception()


class Auditor:
    def __init__(self, store: Store, *, telemetry: Telemetry | None = None) -> None:
        self._store = store
        self._telemetry = telemetry  # counts statements, refusals and commit latency
        # Batches commit on the store's one writer thread (gateway/store/writer.py), which
        # owns this connection: never on the loop, where a SQLite write lock held by another
        # process would stall every session for the busy timeout. Group commit makes that
        # one hand-off per batch, not per event.
        self._writer_db = store.audit.writer()
        self._pending: list[_Item] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._tasks = TaskOwner("audit")
        self._writer: asyncio.Task[None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._retry = Backoff(base=RETRY_BASE, cap=RETRY_CAP)

    def _enqueue(self, item: _Item, *, urgent: bool = True) -> None:
        if self._telemetry is not None:
            self._telemetry.audit_event(item[0], item[3])
        self._pending.append(item)
        self._idle.clear()
        if self._writer is None or self._writer.done():
            self._writer = self._tasks.spawn(self._write_loop(), name="writer")
        if urgent or len(self._pending) >= MAX_BATCH:
            self._wake.set()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                LAZY_FLUSH_DELAY, self._wake.set
            )

    async def record(
        self, kind: str, *, actor: str = "-", session_id: str | None = None, **data: Any
    ) -> AuditEvent:
        # A caller cancelled while waiting does not unwrite the event: the writer task owns it.
        return await self.queue(kind, actor=actor, session_id=session_id, **data)

    def queue(
        self, kind: str, *, actor: str = "-", session_id: str | None = None, **data: Any
    ) -> asyncio.Future[AuditEvent]:
        """`record` in two steps: queued now (in call order), durable when the future is
        done; several events queued together share one commit, without a task each."""
        fut: asyncio.Future[AuditEvent] = asyncio.get_running_loop().create_future()
        self._enqueue((kind, actor, session_id, _scrub(data), fut))
        return fut

    def submit(
        self, kind: str, *, actor: str = "-", session_id: str | None = None, **data: Any
    ) -> None:
        self._enqueue((kind, actor, session_id, _scrub(data), None), urgent=False)

    async def change(self, apply: Callable[[], T], events: Callable[[T], Iterable[Event]]) -> T:
        """Make a change in the store and write its events in one transaction (an
        administrator's: a connection, an agent, a policy version): both or neither, so a
        change is never made unrecorded. `apply` runs on the store's writer thread and makes
        its store calls there; `events` says what its result was."""

        def run() -> T:
            with self._store.transaction():
                result = apply()
                for e in events(result):
                    self._store.audit.append(
                        e.kind, actor=e.actor, session_id=e.session_id, data=_scrub(e.data)
                    )
            return result

        return await self._store.io.write(run)

    async def record_taken(self, kind: str, *, actor: str = "-", **data: Any) -> None:
        """Record an action already taken that must stand whatever the audit log says (a
        revocation): durable on return when the log takes writes; when it does not, kept
        and written once it does, like `submit`."""
        try:
            await self.record(kind, actor=actor, **data)
        except AuditUnavailable as exc:
            log.error("%s by %s done; recording it later: %s", kind, actor, exc)
            self.submit(kind, actor=actor, **data)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                items = [(k, a, s, d) for k, a, s, d, _ in batch]
                started = time.perf_counter()
                try:
                    events = await self._store.io.write(self._writer_db.append, items)
                except Exception as exc:
                    self._failed(batch, exc)
                    break
                if self._telemetry is not None:
                    self._telemetry.audit_committed(time.perf_counter() - started)
                self._retry.reset()
                for (kind, actor, session_id, _, fut), event in zip(batch, events, strict=True):
                    log.debug("audit %s actor=%s session=%s", kind, actor, session_id or "-")
                    if fut is not None and not fut.done():
                        fut.set_result(event)
            self._idle.set()

    def _failed(self, batch: list[_Item], exc: Exception) -> None:
        """Fail closed for every event someone waits on (its action must not happen), and
        keep the others, whose actions happened, for the next attempt."""
        refused = AuditUnavailable(f"audit log unavailable: {exc}")
        queued = batch + self._pending
        kept = [item for item in queued if item[4] is None]
        for *_, fut in queued:
            if fut is not None and not fut.done():
                fut.set_exception(refused)
        lost = max(0, len(kept) - MAX_KEPT)
        self._pending = kept[lost:]
        log.error(
            "audit log write failed: %d events refused, %d kept for a retry, %d lost: %s",
            len(queued) - len(kept),
            len(self._pending),
            lost,
            exc,
        )
        if self._pending and self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._retry.next_delay(), self._wake.set
            )

    async def aclose(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._pending and self._writer is not None and not self._writer.done():
            self._idle.clear()  # set already when a failed write left kept events
            self._wake.set()
            await self._idle.wait()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._pending:
            log.error("audit log: %d events not written at shutdown", len(self._pending))
        await self._tasks.aclose()
        await self._store.io.write(self._writer_db.close)
