"""The policy in force: versioned in the store, the same on every gateway replica.

Every policy document applied (``wardgate apply -f``, ``PUT /v1/policy``, a rollback) becomes
a new numbered version in the store, unless it equals the newest one (same canonical JSON,
same sha256). The newest version is in force.

How the config's ``policy:`` and the store meet: when the store holds no version yet, the
config's policy (if it says anything) becomes version 1, applied by ``config``. From then on
the store wins: editing the config's ``policy:`` and restarting changes nothing (a warning
says so); apply the change with ``wardgate apply -f`` instead. A store without versions and a
config without policy means no guardrails and no budgets.

Replicas pick up a version they did not write themselves: every session open reads the newest
version number (one indexed ``max()``), and a watcher re-reads it every
``policy_check_interval`` seconds for sessions already open. Open PostgreSQL sessions switch
to the new version at their next statement; the version that judged each statement is
recorded on its ``pg.statement`` / ``pg.refused`` event (``policy_version``).

A document in the store that this gateway cannot read (written by a newer one, say) is not
applied: the gateway keeps the version it had and logs why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from gateway.policy.budgets import BudgetMeter, Exceeded, Usage, applicable, stop_offset
from gateway.policy.errors import problems
from gateway.policy.masking import MaskingRuleConfig
from gateway.policy.rules import Policy, PolicyConfig, SessionGuard, Subject
from gateway.store import Store
from gateway.store.models import PolicyVersionRecord

log = logging.getLogger(__name__)

CONFIG_AUTHOR = "config"


class PolicyDocumentError(ValueError):
    """A policy document that does not validate; the message says where."""


def canonical(config: PolicyConfig) -> tuple[str, str]:
    """(canonical JSON, sha256 hex) of a policy. Defaults are left out, so a gateway that
    learns a new optional field does not see every stored document as changed."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text, hashlib.sha256(text.encode()).hexdigest()


def parse_document(document: Any) -> PolicyConfig:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PolicyDocumentError("the policy document must be a mapping")
    try:
        return PolicyConfig.model_validate(document)
    except ValidationError as exc:
        raise PolicyDocumentError(f"invalid policy: {problems(exc, 'policy')}") from None


@dataclass(frozen=True, slots=True)
class Applied:
    record: PolicyVersionRecord
    created: bool

    def as_json(self) -> dict[str, Any]:
        return {**version_json(self.record), "status": "created" if self.created else "unchanged"}


def version_json(record: PolicyVersionRecord, *, document: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": record.version,
        "sha256": record.sha256,
        "applied_by": record.applied_by,
        "applied_at": record.applied_at.isoformat(),
        "comment": record.comment,
    }
    if document:
        out["policy"] = json.loads(record.document)
    return out


class PolicyView(Protocol):
    """What the front doors read: the policy in force and its version (0: not from the store)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def version(self) -> int: ...

    async def refresh(self) -> int: ...


class FixedPolicy:
    """A policy that never changes (tests, tools): version 0."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.version = 0

    async def refresh(self) -> int:
        return 0


def as_view(guardrails: Policy | PolicyView | None) -> PolicyView:
    if guardrails is None or isinstance(guardrails, Policy):
        return FixedPolicy(guardrails)
    return guardrails


class PolicySource:
    """The policy in force on this gateway, and the number of its store version (0: none)."""

    def __init__(self, store: Store, fallback: PolicyConfig | None = None) -> None:
        self._store = store
        self._fallback = fallback or PolicyConfig()
        self.policy = Policy(self._fallback)
        self.version = 0
        self._lock = asyncio.Lock()

    # ---- start ---------------------------------------------------------------------------

    def seed(self) -> None:
        """Blocking, at start: the config's policy becomes version 1 of an empty store."""
        text, sha = canonical(self._fallback)
        if text != "{}":
            record, created = self._store.policy.add_version(
                text,
                sha,
                applied_by=CONFIG_AUTHOR,
                comment="seeded from the config",
                only_if_empty=True,
            )
            if created:
                log.info("policy version %d seeded from the config", record.version)
            elif record.sha256 != sha:
                log.warning(
                    "the config's policy differs from the store's version %d, which stays in "
                    "force; apply the config's policy with `wardgate apply -f` to change it",
                    record.version,
                )
        self._load_newest()

    def _load_newest(self) -> None:
        record = self._store.policy.get_version()
        if record is not None:
            self._use(record)

    def _use(self, record: PolicyVersionRecord) -> None:
        try:
            config = parse_document(json.loads(record.document))
        except (PolicyDocumentError, ValueError) as exc:
            log.error(
                "policy version %d cannot be used, keeping %d: %s",
                record.version,
                self.version,
                exc,
            )
            return
        self.policy = Policy(config)
        self.version = record.version

    # ---- keeping up ----------------------------------------------------------------------

    async def refresh(self) -> int:
        """Read the newest version number and load it if it is new; returns the version."""
        latest = await self._store.io.read(self._store.policy.latest_version)
        if latest != self.version:
            async with self._lock:
                if latest != self.version:
                    record = await self._store.io.read(self._store.policy.get_version)
                    if record is not None and record.version != self.version:
                        self._use(record)
                        log.info("policy version %d in force", self.version)
        return self.version

    async def watch(self, interval: float) -> None:
        """`refresh` every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as exc:  # a store hiccup must not end the watcher
                log.warning("policy check failed: %s", exc)

    # ---- changing ------------------------------------------------------------------------

    def add_version(self, document: Any, *, applied_by: str, comment: str | None = None) -> Applied:
        """Blocking: validate `document` and make it the newest version (unless it is
        already), with its `policy.applied` event in the same store transaction (the
        caller's, when it holds one): a version is never applied unrecorded."""
        config = parse_document(document)
        text, sha = canonical(config)
        with self._store.transaction():
            record, created = self._store.policy.add_version(
                text, sha, applied_by=applied_by, comment=comment
            )
            if created:
                self._store.audit.append(
                    "policy.applied",
                    actor=applied_by,
                    data={"version": record.version, "sha256": sha, "comment": comment},
                )
        return Applied(record, created)

    async def apply(self, document: Any, *, applied_by: str, comment: str | None = None) -> Applied:
        """`add_version`, then this gateway uses the version at once."""
        applied = await self._store.io.write(
            self.add_version, document, applied_by=applied_by, comment=comment
        )
        await self.refresh()
        return applied

    async def rollback(self, version: int, *, applied_by: str) -> Applied | None:
        """Apply version `version`'s document again, as a new version; None if unknown."""
        record = await self._store.io.read(self._store.policy.get_version, version)
        if record is None:
            return None
        return await self.apply(
            json.loads(record.document),
            applied_by=applied_by,
            comment=f"rollback to version {version}",
        )


# ---- exfiltration budgets: usage in the store -----------------------------------------------

# How often a session with budgets moves its usage to the store and re-reads the day's totals
# (usage other sessions and replicas added). Between two flushes, sessions of one identity on
# different gateways can together overshoot by what they read in this time.
BUDGET_FLUSH_INTERVAL = 1.0


_Pending = dict[tuple[dt.date, str], Usage]  # (day, budget) -> usage not yet in the store


def _merge(into: _Pending, more: _Pending) -> None:
    for key, usage in more.items():
        into[key] = into.get(key, Usage()) + usage


class BudgetLedger:
    """The store's budget usage, for the event loop.

    What ended sessions still owe is not written by each session: `defer` keeps it here and
    `run` writes all of it every BUDGET_FLUSH_INTERVAL in one thread hop (and `aclose` at
    shutdown), so a session's end costs no store write of its own. Until written, it is
    added to what `totals` and `add` report, so this gateway's sessions never miss it;
    other replicas see it within the interval, like the running sessions' usage.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._deferred: dict[tuple[str, str], _Pending] = {}
        self._writing: dict[tuple[str, str], _Pending] = {}  # taken by a write in flight

    def defer(self, user: str, connection: str, pending: _Pending) -> None:
        _merge(self._deferred.setdefault((user, connection), {}), pending)

    def _unwritten(self, user: str, connection: str) -> _Pending:
        owed: _Pending = {}
        for source in (self._deferred, self._writing):
            _merge(owed, source.get((user, connection), {}))
        return owed

    async def totals(self, user: str, connection: str, day: dt.date) -> dict[str, Usage]:
        rows = await self._store.io.read(
            self._store.policy.budget_usage, day, user=user, connection=connection
        )
        totals = {budget: Usage(r, b) for _, _, budget, r, b in rows}
        for (d, budget), usage in self._unwritten(user, connection).items():
            if d == day:
                totals[budget] = totals.get(budget, Usage()) + usage
        return totals

    async def add(self, user: str, connection: str, pending: _Pending) -> _Pending:
        totals = await self._store.io.write(
            self._store.policy.add_budget_usage,
            user,
            connection,
            {key: (u.rows, u.bytes) for key, u in pending.items()},
        )
        added = {key: Usage(r, b) for key, (r, b) in totals.items()}
        owed = self._unwritten(user, connection)
        return {key: usage + owed[key] if key in owed else usage for key, usage in added.items()}

    async def flush(self) -> None:
        """Write what ended sessions owe; on failure it stays owed for the next round."""
        if not self._deferred or self._writing:
            return
        self._writing, self._deferred = self._deferred, {}
        try:
            await self._store.io.write(self._write, self._writing)
        except asyncio.CancelledError:
            self._writing = {}  # the write goes on in its thread (PostgreSQL): owing it again
            # would count it twice
            raise
        except Exception as exc:
            log.warning("budget usage of ended sessions not stored yet: %s", exc)
            for (user, connection), pending in self._writing.items():  # what is left
                self.defer(user, connection, pending)
        self._writing = {}

    def _write(self, batch: dict[tuple[str, str], _Pending]) -> None:
        # One transaction per (user, connection): each one committed leaves the batch at
        # once, so a failure further on owes only what is still in it, not the part written.
        for owner, pending in list(batch.items()):
            self._store.policy.add_budget_usage(
                *owner, {key: (u.rows, u.bytes) for key, u in pending.items()}
            )
            del batch[owner]

    async def run(self) -> None:
        """Write deferred usage every BUDGET_FLUSH_INTERVAL, until cancelled."""
        while True:
            await asyncio.sleep(BUDGET_FLUSH_INTERVAL)
            await self.flush()

    async def aclose(self) -> None:
        await self.flush()


class SessionPolicy:
    """One session's view of the policy: its guard and its budgets, following new versions.

    `current()` is called per client message and costs an attribute read unless the version
    changed; budgets are loaded from the store at start, on a version change and when the
    last read is older than `BUDGET_FLUSH_INTERVAL`.
    """

    def __init__(
        self,
        view: PolicyView,
        ledger: BudgetLedger | None,
        subject: Subject,
        connection: str,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._ledger = ledger
        self.subject = subject
        self.connection = connection
        self._clock = clock
        self._monotonic = monotonic
        self.version = -1
        self.guard: SessionGuard | None = None
        # The masking rules of the version in force that apply to this session.
        self.masking: tuple[MaskingRuleConfig, ...] = ()
        self.meter: BudgetMeter | None = None
        self._loaded_at: float | None = None
        self._flush_lock = asyncio.Lock()
        self._counted = asyncio.Event()  # usage counted since the flusher last looked
        # Unflushed usage of budgets a new version dropped: still owed to the store.
        self._leftover: dict[tuple[dt.date, str], Usage] = {}
        self.current()

    def current(self) -> SessionGuard | None:
        """The guard of the version in force (switching when a new one came)."""
        if self._view.version != self.version:
            self.version = self._view.version
            policy = self._view.policy
            self.masking = tuple(
                r for r in policy.config.masking if r.match.applies(self.subject, self.connection)
            )
            self.guard = None if policy.empty else policy.for_session(self.subject, self.connection)
            budgets = applicable(policy.config.budgets, self.subject, self.connection)
            if self._ledger is None or not budgets:
                if self.meter is not None:
                    self._owe(self.meter.take_pending())
                self.meter = None
                return self.guard
            old = self.meter
            self.meter = BudgetMeter(budgets, self._clock)
            if old is not None:
                self.meter.adopt(old.take_pending())
            self._loaded_at = None
        return self.guard

    @property
    def metered(self) -> bool:
        return self.meter is not None

    async def exhausted(self) -> Exceeded | None:
        """The budget a new statement would exceed, reading the store when the view is old."""
        meter = self.meter
        if meter is None or self._ledger is None:
            return None
        if self._loaded_at is None or self._monotonic() - self._loaded_at >= BUDGET_FLUSH_INTERVAL:
            try:
                await self.flush()
            except Exception as exc:  # judged on what this session knows; kept pending
                log.warning("budget usage not read from the store: %s", exc)
        return meter.exhausted()

    def stop_offset(self, data: bytes, partial: tuple[bytes, int]) -> int | None:
        """Where in `data` the client must stop getting rows, or None (see budgets rule 4)."""
        if self.meter is None:
            return None
        rows_left, bytes_left = self.meter.remaining()
        return stop_offset(data, partial, rows_left, bytes_left)

    def asking(self) -> tuple[str, ...]:
        return () if self.meter is None else self.meter.asking()

    def waive(self, budgets: tuple[str, ...]) -> None:
        """A review approved: the statement's result runs past these budgets (budgets rule 5)."""
        if self.meter is not None:
            self.meter.waive(budgets)

    @property
    def waiving(self) -> bool:
        return self.meter is not None and bool(self.meter.waived)

    def unwaive(self) -> None:
        if self.meter is not None:
            self.meter.unwaive()

    def count(self, rows: int, nbytes: int) -> Exceeded | None:
        if self.meter is None:
            return None
        if rows or nbytes:
            self._counted.set()  # run_flusher: there is usage to write within the interval
        return self.meter.add(rows, nbytes)

    def _owe(self, pending: dict[tuple[dt.date, str], Usage]) -> None:
        for key, usage in pending.items():
            self._leftover[key] = self._leftover.get(key, Usage()) + usage

    @property
    def pending(self) -> bool:
        return bool(self._leftover) or (self.meter is not None and self.meter.pending)

    async def flush(self) -> None:
        """Move pending usage to the store and load the day's totals (everyone's)."""
        ledger = self._ledger
        if ledger is None:
            return
        async with self._flush_lock:
            user = self.subject.user
            if self._leftover:
                leftover, self._leftover = self._leftover, {}
                try:
                    await ledger.add(user, self.connection, leftover)
                except asyncio.CancelledError:
                    raise  # the write goes on in its thread: owing it again would count twice
                except BaseException:
                    self._owe(leftover)
                    raise
            meter = self.meter
            if meter is None:
                return
            pending = meter.take_pending()
            day = meter.day
            totals: dict[str, Usage] | None = None
            if pending:
                try:
                    added = await ledger.add(user, self.connection, pending)
                except asyncio.CancelledError:
                    raise  # the write goes on in its thread: restoring would count it twice
                except BaseException:
                    meter.restore(pending)
                    raise
                # Every budget of the meter counts every row, so today's totals are all here.
                today = {name: usage for (d, name), usage in added.items() if d == day}
                if len(today) == len(meter.budgets):
                    totals = today
            if totals is None:
                totals = await ledger.totals(user, self.connection, day)
            meter.load(totals, day)
            self._loaded_at = self._monotonic()

    def release(self) -> None:
        """The session ended: what it still owes goes to the ledger, written within an interval."""
        if self._ledger is None:
            return
        owed, self._leftover = self._leftover, {}
        if self.meter is not None:
            _merge(owed, self.meter.take_pending())
        if owed:
            self._ledger.defer(self.subject.user, self.connection, owed)

    async def run_flusher(self, wake: asyncio.Event) -> None:
        """Load the budgets' usage while the session starts (not at its first statement), then
        flush at each `wake` (a budget crossed) and every interval while there is usage to
        write, until cancelled."""
        if self.meter is not None and self._loaded_at is None:
            try:
                await self.flush()
            except Exception as exc:  # the first statement tries again
                log.warning("budget usage not read from the store: %s", exc)
        while True:
            if not self.pending:
                # Idle: nothing to write until the client gets rows (or a budget is crossed,
                # which comes with rows), so no timer wakes an idle session every interval.
                await self._counted.wait()
            self._counted.clear()
            # A session without budgets (any more) owes at most a leftover, flushed at close.
            interval = BUDGET_FLUSH_INTERVAL if self.meter is not None else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await wake.wait()
            wake.clear()
            if self.pending:
                try:
                    await self.flush()
                except Exception as exc:  # kept pending; the next round retries
                    log.warning("budget usage flush failed: %s", exc)
