"""The one session pipeline: every entry path opens sessions here.

    open:   resolve the connection -> authorize -> record (durably, before anything is
            forwarded) -> route to an agent of the connection's pool
    finish: record how it ended

A control written here is enforced on every protocol (design decision 1).

Authorization asks `gateway.policy.grants.AccessPolicy` for the identity's access to the
connection (roles -> grants; a per-connection credential or an API key's scopes narrow it);
none refuses with kind "forbidden" and a `session.refused` event, and so does a read-only
grant on a connection type whose statements cannot be checked (tcp; Kubernetes sessions are
checked per API request by their front door). The granted level is on
the `Session` (`access`), for the front doors to enforce per statement; a read-only PostgreSQL
session is also opened with `default_transaction_read_only=on` and without the client's own
startup settings, as defence in depth. `SessionBroker.access` gives the same answer without
opening or recording anything, for clients that ask before they listen (`wardgate tcp`).

Result masking (`gateway.policy.masking`) is resolved here too: the rules that apply to the
identity and connection travel in the Target to an agent with the `masking` capability;
rules a connection type cannot honour, or a token rule without `secret_key`, refuse the
session.

Draining (`gateway.app.Gateway.drain`): once `draining` is set, `open` refuses every new
session with kind "draining" (each front door says it in its protocol: PostgreSQL 57P01,
HTTP 503) while live ones go on; `wait_idle` returns once all of them have finished, and
`terminate(..., code=GATEWAY_SHUTDOWN)` ends the rest with SHUTDOWN_REASON.

Live sessions are kept per credential, so revoking a credential or disabling a user ends
them (`terminate`) within seconds: at once on this gateway, and on every replica through
`watch_revocations`, which re-checks the credentials of live sessions against the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.agents.registry import AgentConn, AgentRegistry, NoAgentError, RoutingError
from gateway.audit import RETRY_BASE, RETRY_CAP, Auditor, AuditUnavailable
from gateway.auth import Identity
from gateway.crypto import SecretBox, SecretBoxError
from gateway.policy.grants import AccessPolicy, Decision
from gateway.policy.masking import MaskingUnavailable, resolve_masking
from gateway.policy.rules import Policy, subject_for
from gateway.policystore import PolicyView, as_view
from gateway.store import ConnectionRecord, SessionRecord, Store, StoreUnavailable, new_id
from gateway.telemetry import Telemetry
from shared.backoff import Backoff
from shared.masking.spec import MaskSpec
from shared.tasks import TaskOwner
from shared.tunnel.frames import ResetCode, Target
from shared.tunnel.stream import SessionReset, TunnelStream

log = logging.getLogger(__name__)

# Why sessions ended by a gateway that drains are over, recorded as their error and shown to
# their clients (PostgreSQL words it as a 57P01 error: gateway.protocols.pgsession).
SHUTDOWN_REASON = "gateway shutting down"
DRAINING_MESSAGE = (
    "the Wardgate gateway is shutting down and takes no new sessions; connect again to "
    "reach another gateway"
)


@dataclass(frozen=True)
class _Verdict:
    """What a session open decides before anything is recorded."""

    decision: Decision  # the grant's
    blocked: str | None  # a guardrail that cannot be enforced on the connection's type
    request_expires_at: dt.datetime | None  # when the grant holds through an access request


class SessionError(Exception):
    """Why a session could not be opened, in words safe to show the client.

    `kind` lets each front door map it to its own protocol's error (a PostgreSQL SQLSTATE,
    a WebSocket close code, an HTTP status).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        # unknown_connection | wrong_type | forbidden | no_agent | unreachable | unsupported
        # | agent_lost | unavailable (the store or the audit log cannot be written)
        # | draining (this gateway is shutting down)
        self.kind = kind
        self.message = message


@dataclass(eq=False)
class Session:
    id: str
    identity: Identity
    connection: ConnectionRecord
    stream: TunnelStream
    agent: AgentConn
    access: str = "admin"  # read-only | read-write | admin: what the grant allows
    grant_expires_at: dt.datetime | None = None  # access through an approved request ends then
    target: Target | None = None  # what the agent was told to open (`open_side` reuses it)

    def describe_end(self, end: SessionReset) -> str:
        """Why the session ended, for the client: a fault detected here names the agent."""
        if end.by_peer:
            return end.message
        if end.code is ResetCode.PROTOCOL_ERROR:
            return f"agent {self.agent.name!r} broke the tunnel protocol: {end.message}"
        if end.code is ResetCode.INTERNAL:  # the stream is gone: the agent died or was cut off
            if end.message.startswith(f"agent {self.agent.name!r}"):
                return end.message  # it names the agent already (AgentConn.lost)
            return f"session lost on agent {self.agent.name!r}: {end.message}"
        return end.message


# Connection types whose front door enforces read-only per statement.
READ_ONLY_ENFORCED = frozenset({"postgres"})
# ...and per API request: the Kubernetes door lets a read-only session only get, list, watch.
READ_ONLY_BY_REQUEST = frozenset({"kubernetes"})

# Client startup parameters a read-only PostgreSQL session keeps; the others (notably
# `options`, which can carry `-c role=...` or `-c default_transaction_read_only=off`) are
# dropped.
_READ_ONLY_STARTUP = frozenset(
    {
        "startup.application_name",
        "startup.client_encoding",
        "startup.datestyle",
        "startup.DateStyle",
        "startup.timezone",
        "startup.TimeZone",
        "startup.extra_float_digits",
        "startup.intervalstyle",
        "startup.IntervalStyle",
        "startup.search_path",
        "startup.statement_timeout",
        "startup.lc_messages",
    }
)


def _target_error_kind(code: ResetCode) -> str:
    if code in (ResetCode.TARGET_UNREACHABLE, ResetCode.TARGET_REFUSED):
        return "unreachable"
    if code is ResetCode.SECRET_UNAVAILABLE:
        return "unreachable"
    if code is ResetCode.UNSUPPORTED:
        return "unsupported"
    return "agent_lost"


class SessionBroker:
    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        auditor: Auditor,
        secret_box: SecretBox | None,
        policy: AccessPolicy | None = None,
        guardrails: Policy | PolicyView | None = None,
        *,
        telemetry: Telemetry | None = None,
        member: str | None = None,
    ) -> None:
        """`member`: this member's id, recorded on its sessions (gateway.fleet.membership)."""
        self._store = store
        self._telemetry = telemetry  # sessions opened, refused and ended; their bytes
        self._member = member
        self._registry = registry
        self._audit = auditor
        self._box = secret_box
        self._policy = policy or AccessPolicy()
        self._guardrails = as_view(guardrails)
        self._live: dict[str, Session] = {}
        self._ending: dict[str, Session] = {}  # terminated, their relays not finished yet
        self._opening = 0  # opens under way (a drain waits for them too)
        self._finished = asyncio.Event()  # a session finished (for wait_idle)
        self.draining = False  # set by Gateway.drain: new sessions are refused
        self._tasks = TaskOwner("sessions")
        self._sides = 0  # side streams opened (their ids stay unique)

    async def aclose(self) -> None:
        """Stop retrying ends the store would not take (they stay open in it)."""
        await self._tasks.aclose()

    @property
    def live(self) -> list[Session]:
        return list(self._live.values())

    def is_live(self, session_id: str) -> bool:
        """The session runs on this member and has not been ended."""
        return session_id in self._live

    def is_ending(self, session_id: str) -> bool:
        """The session was terminated on this member; its relay has not finished yet."""
        return session_id in self._ending

    async def wait_idle(self) -> None:
        """Return once every session opened here has finished (its end recorded or queued)."""
        while self._live or self._ending or self._opening:
            self._finished.clear()
            await self._finished.wait()

    async def connection(self, name: str) -> ConnectionRecord | None:
        return await self._store.io.read(self._store.connections.get, name)

    def _target(
        self,
        conn: ConnectionRecord,
        extra_options: Mapping[str, str],
        forced: Mapping[str, str] | None = None,
    ) -> Target:
        resolved: dict[str, str | bytes] = {}
        for name, value in conn.secrets.items():
            if SecretBox.is_sealed(value):
                if self._box is None:
                    raise SessionError(
                        "unreachable",
                        f"connection {conn.name!r}: its secrets are sealed but the gateway "
                        "has no secret_key configured",
                    )
                try:
                    resolved[name] = self._box.open(value, context=f"{conn.name}/{name}")
                except SecretBoxError:
                    raise SessionError(
                        "unreachable", f"connection {conn.name!r}: a sealed secret does not open"
                    ) from None
            else:
                resolved[name] = value  # a reference the agent resolves
        # The connection's own settings win over the client's, and `forced` over both.
        options = {**extra_options, **conn.options, **(forced or {})}
        return Target(conn.name, conn.type, conn.host, conn.port, options, resolved)

    async def open(
        self,
        identity: Identity,
        connection: str,
        *,
        protocol: str,
        client_addr: str,
        types: tuple[str, ...] | None = None,
        extra_options: Mapping[str, str] | None = None,
    ) -> Session:
        started = time.time_ns()  # of the session.open trace span (gateway/telemetry.py)
        if self.draining:
            self._audit.submit(
                "session.refused",
                actor=identity.user,
                connection=connection,
                reason=SHUTDOWN_REASON,
                client=client_addr,
            )
            if self._telemetry is not None:
                self._telemetry.session_refused(protocol, connection, "draining", started)
            raise SessionError("draining", DRAINING_MESSAGE)
        self._opening += 1
        try:
            session = await self._open(
                identity,
                connection,
                protocol=protocol,
                client_addr=client_addr,
                types=types,
                extra_options=extra_options,
            )
        except (StoreUnavailable, AuditUnavailable) as exc:
            # Fail closed: a session that cannot be recorded is not opened.
            log.error("session to %r for %s not opened: %s", connection, identity.user, exc)
            if self._telemetry is not None:
                self._telemetry.session_refused(protocol, connection, "unavailable", started)
            raise SessionError("unavailable", f"session not opened: {exc}") from None
        except SessionError as exc:
            if self._telemetry is not None:
                self._telemetry.session_refused(protocol, connection, exc.kind, started)
            raise
        finally:
            self._opening -= 1
            self._finished.set()  # an open that failed leaves nothing to wait for
        if self._telemetry is not None:
            self._telemetry.session_opened(protocol, session, started)
        return session

    async def access(self, identity: Identity, conn: ConnectionRecord) -> Decision:
        """The access `identity` gets on `conn`, decided as `open` decides it, without
        opening or recording anything: clients ask before they listen (`wardgate tcp`)."""
        await self._refresh_policy()
        verdict = await self._decide(identity, conn)
        if verdict.blocked is not None:
            return Decision(None, f"policy: {verdict.blocked}")
        return verdict.decision

    async def _decide(self, identity: Identity, conn: ConnectionRecord) -> _Verdict:
        requested: dict[str, dt.datetime] = {}
        if self._policy.on_request:
            # Approvals: grants with `request:` terms hold only through an approved access
            # request (gateway/reviews), looked up at every open so expiry takes effect.
            requested = await self._store.io.read(
                self._store.reviews.granted_connections, identity.user, dt.datetime.now(dt.UTC)
            )
        decision = self._policy.decide(
            user=identity.user,
            groups=identity.groups,
            is_admin=identity.is_admin,
            connection=conn.name,
            bound_connection=identity.connection,
            scopes=identity.scopes,
            requested=requested,
        )
        if (
            decision.access == "read-only"
            and conn.type not in READ_ONLY_ENFORCED | READ_ONLY_BY_REQUEST
        ):
            # Fail closed: a read-only grant on a protocol we cannot inspect is no grant.
            decision = Decision(None, f"read-only access cannot be enforced on {conn.type}")
        if decision.access is not None and conn.type not in READ_ONLY_ENFORCED:
            # Likewise a guardrail meant for a connection whose statements we cannot read.
            subject = subject_for(
                self._policy, identity.user, identity.groups, machine=identity.is_machine
            )
            blocked = self._guardrails.policy.unenforceable(subject, conn.name)
            if blocked is not None:
                return _Verdict(decision, blocked[0], requested.get(conn.name))
        return _Verdict(decision, None, requested.get(conn.name))

    async def _open(
        self,
        identity: Identity,
        connection: str,
        *,
        protocol: str,
        client_addr: str,
        types: tuple[str, ...] | None,
        extra_options: Mapping[str, str] | None,
    ) -> Session:
        # Two store reads at once: the connection, and whether another replica applied a
        # new policy version (in force from the next session on).
        conn, _ = await asyncio.gather(
            self._store.io.read(self._store.connections.get, connection),
            self._refresh_policy(),
        )
        if conn is None:
            await self._audit.record(
                "session.refused",
                actor=identity.user,
                connection=connection,
                reason="unknown connection",
                client=client_addr,
            )
            raise SessionError("unknown_connection", f"connection {connection!r} does not exist")
        if types is not None and conn.type not in types:
            await self._audit.record(
                "session.refused",
                actor=identity.user,
                connection=connection,
                reason=f"type {conn.type} via {protocol}",
                client=client_addr,
            )
            raise SessionError(
                "wrong_type",
                f"connection {connection!r} is of type {conn.type!r}; "
                f"{protocol} reaches only {', '.join(types)} connections",
            )
        verdict = await self._decide(identity, conn)
        decision, blocked = verdict.decision, verdict.blocked
        if blocked is not None:
            await self._audit.record(
                "session.refused",
                actor=identity.user,
                connection=connection,
                reason=f"policy: {blocked}",
                credential=identity.token_id,
                client=client_addr,
            )
            raise SessionError("forbidden", f"policy: {blocked}")
        if decision.access is None:
            await self._audit.record(
                "session.refused",
                actor=identity.user,
                connection=connection,
                reason=decision.reason,
                credential=identity.token_id,
                client=client_addr,
            )
            detail = ""
            if decision.reason.startswith("read-only access cannot"):
                detail = f" ({decision.reason})"
            raise SessionError("forbidden", decision.refusal(identity.user, conn.name) + detail)
        options = dict(extra_options or {})
        forced: dict[str, str] = {}
        if decision.access == "read-only" and conn.type == "postgres":
            options = {k: v for k, v in options.items() if k in _READ_ONLY_STARTUP}
            forced["startup.default_transaction_read_only"] = "on"
        target = self._target(conn, options, forced)
        masking = self._guardrails.policy.config.masking
        if masking:
            try:
                target = resolve_masking(
                    masking,
                    subject_for(
                        self._policy, identity.user, identity.groups, machine=identity.is_machine
                    ),
                    target,
                    self._box.derive("masking") if self._box is not None else None,
                )
            except MaskingUnavailable as exc:
                await self._audit.record(
                    "session.refused",
                    actor=identity.user,
                    connection=connection,
                    reason=f"masking: {exc}",
                    client=client_addr,
                )
                raise SessionError("unsupported", f"masking: {exc}") from None
        session_id = new_id(12)
        now = dt.datetime.now(dt.UTC)
        # The session row and its audit event are both durable before the agent is asked to
        # open anything; neither waits for the other's commit.
        written = await asyncio.gather(
            self._store.io.write(
                self._store.sessions.create,
                SessionRecord(
                    id=session_id,
                    user=identity.user,
                    connection=conn.name,
                    protocol=protocol,
                    client_addr=client_addr,
                    started_at=now,
                    member=self._member,
                ),
            ),
            self._audit.queue(
                "session.open",
                actor=identity.user,
                session_id=session_id,
                connection=conn.name,
                protocol=protocol,
                client=client_addr,
                access=decision.access,
                credential=identity.token_id,
                login=identity.login_id,
                **(
                    {"masking": [r.name for r in target.masking.rules]}
                    if target.masking.rules
                    else {}
                ),
            ),
            return_exceptions=True,  # the other write is awaited (and retrieved) too
        )
        failure = next((o for o in written if isinstance(o, BaseException)), None)
        if failure is not None:
            # Fail closed, and leave no trace of a session as if it were running: a row that
            # was written is ended, an event that was written is followed by its failure.
            error = f"session not opened: {failure}"
            if not isinstance(written[0], BaseException):
                await self._end_refused(session_id, error)
            if not isinstance(written[1], BaseException):
                self._audit.submit(
                    "session.failed", actor=identity.user, session_id=session_id, error=error
                )
            raise failure
        try:
            stream, agent = await self._registry.open(session_id, target, conn.pool)
        except NoAgentError as exc:
            await self._fail(session_id, identity, exc.message)
            raise SessionError("no_agent", exc.message) from None
        except RoutingError as exc:
            message = f"connection {conn.name!r}: {exc.message}"
            await self._fail(session_id, identity, message)
            raise SessionError(_target_error_kind(exc.code), message) from None
        session = Session(
            session_id, identity, conn, stream, agent, access=decision.access, target=target
        )
        if decision.reason.endswith("(approved access request)"):
            session.grant_expires_at = verdict.request_expires_at  # ended then, see below
        self._live[session_id] = session
        return session

    async def _refresh_policy(self) -> None:
        try:
            await self._guardrails.refresh()
        except Exception as exc:
            log.warning(
                "policy check failed, keeping version %d: %s", self._guardrails.version, exc
            )

    async def _fail(self, session_id: str, identity: Identity, message: str) -> None:
        await self._store.io.write(
            self._store.sessions.end,
            session_id,
            status="failed",
            error=message,
            bytes_up=0,
            bytes_down=0,
        )
        await self._audit.record(
            "session.failed", actor=identity.user, session_id=session_id, error=message
        )

    async def open_side(self, session: Session, purpose: str) -> tuple[TunnelStream, AgentConn]:
        """A second stream to `session`'s target for the gateway's own questions (the
        catalog lookups of `gateway.protocols.pgfunctions`): the same connection, credential
        and startup settings, without masking; not a session of its own, so not recorded.
        End it with `close_side`. Raises RoutingError."""
        assert session.target is not None
        self._sides += 1
        target = dataclasses.replace(session.target, masking=MaskSpec())
        side_id = f"{session.id}.{purpose}{self._sides}"
        return await self._registry.open(side_id, target, session.connection.pool)

    async def open_catalog(
        self, conn: ConnectionRecord, purpose: str
    ) -> tuple[TunnelStream, AgentConn]:
        """Like `open_side`, for a connection with no session (`policy explain` reading the
        catalog): its own credential and settings, without masking. Raises RoutingError, or
        SessionError when its secrets cannot be opened."""
        self._sides += 1
        target = self._target(conn, {})
        return await self._registry.open(f"{purpose}-{new_id()}", target, conn.pool)

    async def close_side(self, stream: TunnelStream, agent: AgentConn) -> None:
        try:
            if not stream.finished:
                await stream.reset(ResetCode.CANCELLED, "done")
            await stream.aclose()
        finally:
            self._registry.release(agent)

    async def _end_refused(self, session_id: str, error: str) -> None:
        """End the row of a session refused after it was written; retried while the store
        refuses writes, so that no row stays open for a session that never ran."""
        try:
            await self._end_row(session_id, error, None)
        except StoreUnavailable as exc:
            log.error("session %s refused; ending its row later: %s", session_id, exc)
            ended_at = dt.datetime.now(dt.UTC)
            self._tasks.spawn(
                self._end_refused_later(session_id, error, ended_at), name=f"end/{session_id}"
            )

    async def _end_refused_later(self, session_id: str, error: str, ended_at: dt.datetime) -> None:
        backoff = Backoff(base=RETRY_BASE, cap=RETRY_CAP)
        while True:
            await asyncio.sleep(backoff.next_delay())
            try:
                await self._end_row(session_id, error, ended_at)
            except StoreUnavailable:
                continue
            return

    async def _end_row(self, session_id: str, error: str, ended_at: dt.datetime | None) -> None:
        await self._store.io.write(
            self._store.sessions.end,
            session_id,
            status="failed",
            error=error,
            bytes_up=0,
            bytes_down=0,
            ended_at=ended_at,
        )

    async def finish(self, session: Session, *, error: str | None = None) -> None:
        live = self._live.pop(session.id, None) is not None  # not: `terminate` ended it
        self._ending.pop(session.id, None)
        if self._telemetry is not None:
            outcome = "terminated" if not live else "failed" if error else "closed"
            self._telemetry.session_ended(session, outcome)
        self._registry.release(session.agent)
        await session.stream.aclose()
        try:
            await self._record_end(session, error)
        except (StoreUnavailable, AuditUnavailable) as exc:
            # The session is over either way; its end is written once the store takes
            # writes again (an operator freeing a full disk), not dropped, and not re-dated.
            log.error("session %s ended; recording its end later: %s", session.id, exc)
            ended_at = dt.datetime.now(dt.UTC)
            self._tasks.spawn(
                self._record_end_later(session, error, ended_at), name=f"end/{session.id}"
            )
        finally:
            self._finished.set()

    async def _record_end_later(
        self, session: Session, error: str | None, ended_at: dt.datetime
    ) -> None:
        backoff = Backoff(base=RETRY_BASE, cap=RETRY_CAP)  # as the auditor's kept events
        while True:
            await asyncio.sleep(backoff.next_delay())
            try:
                await self._record_end(session, error, ended_at)
            except (StoreUnavailable, AuditUnavailable):
                continue
            log.info("session %s: its end is recorded", session.id)
            return

    async def _record_end(
        self, session: Session, error: str | None, ended_at: dt.datetime | None = None
    ) -> None:
        await self._store.io.write(
            self._store.sessions.end,
            session.id,
            status="failed" if error else "closed",
            error=error,
            bytes_up=session.stream.bytes_out,
            bytes_down=session.stream.bytes_in,
            agent=session.agent.name,
            ended_at=ended_at,
        )
        await self._audit.record(
            "session.close",
            actor=session.identity.user,
            session_id=session.id,
            bytes_up=session.stream.bytes_out,
            bytes_down=session.stream.bytes_in,
            error=error,
        )

    # ---- revocation ------------------------------------------------------------------

    async def terminate(
        self,
        *,
        reason: str,
        user: str | None = None,
        login_id: str | None = None,
        token_ids: frozenset[str] | None = None,
        session_ids: frozenset[str] | None = None,
        code: ResetCode = ResetCode.CANCELLED,
        by: str | None = None,
    ) -> int:
        """End the live sessions of `user`, of sign-in `login_id`, or opened with one of
        `token_ids` or `session_ids`; returns how many. The relay sees the reset (`code`,
        `reason`) and tells its client. `by`: the administrator who asked, recorded in the
        events (`wardgate sessions kill`, gateway.fleet.terminate)."""
        doomed = [
            s
            for s in self._live.values()
            if (user is not None and s.identity.user == user)
            or (login_id is not None and s.identity.login_id == login_id)
            or (token_ids is not None and s.identity.token_id in token_ids)
            or (session_ids is not None and s.id in session_ids)
        ]
        # Fail closed: the sessions end first, whatever the audit log says. Their events
        # record actions already taken: an audit log that is down (a full disk) keeps them
        # for when it takes writes again, instead of leaving a session running unseen.
        for session in doomed:
            self._live.pop(session.id, None)
            self._ending[session.id] = session
            if not session.stream.finished:
                await session.stream.reset(code, reason)
        down = False
        for session in doomed:
            event = {
                "actor": session.identity.user,
                "session_id": session.id,
                "connection": session.connection.name,
                "reason": reason,
                **({"by": by} if by is not None else {}),
            }
            if not down:
                try:
                    await self._audit.record("session.terminated", **event)
                    continue
                except AuditUnavailable as exc:
                    log.error("sessions ended (%s); recording it later: %s", reason, exc)
                    down = True
            self._audit.submit("session.terminated", **event)
        return len(doomed)

    async def check_revocations(self) -> int:
        """End live sessions whose credential was revoked anywhere (any gateway replica),
        and those opened through an approved access request that has expired."""
        now = dt.datetime.now(dt.UTC)
        lapsed = frozenset(
            s.id
            for s in self._live.values()
            if s.grant_expires_at is not None and s.grant_expires_at <= now
        )
        ended = await self.terminate(reason="access request expired", session_ids=lapsed)
        return ended + await self._check_credentials()

    async def _check_credentials(self) -> int:
        token_ids = {s.identity.token_id for s in self._live.values() if s.identity.token_id}
        if not token_ids:
            return 0
        bad = await self._store.io.read(self._store.identity.invalid_credentials, token_ids)
        if not bad:
            return 0
        return await self.terminate(reason="credential revoked", token_ids=frozenset(bad))

    async def watch_revocations(self, interval: float) -> None:
        """Run `check_revocations` every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_revocations()
            except Exception as exc:  # a store hiccup must not end the watcher
                log.warning("revocation check failed: %s", exc)
