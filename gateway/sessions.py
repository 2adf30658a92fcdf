"""The one session pipeline: every entry path opens sessions here.

    open:   resolve the connection -> authorize -> record (durably, before anything is
            forwarded) -> route to an agent of the connection's pool
    finish: record how it ended

A control written here is enforced on every protocol (design decision 1).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.agents.registry import AgentConn, AgentRegistry, NoAgentError, RoutingError
from gateway.audit import Auditor
from gateway.auth import Identity
from gateway.crypto import SecretBox, SecretBoxError
from gateway.store import ConnectionRecord, SessionRecord, Store
from shared.tunnel.frames import ResetCode, Target
from shared.tunnel.stream import SessionReset, TunnelStream

log = logging.getLogger(__name__)


class SessionError(Exception):
    """Why a session could not be opened, in words safe to show the client.

    `kind` lets each front door map it to its own protocol's error (a PostgreSQL SQLSTATE,
    a WebSocket close code, an HTTP status).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        # unknown_connection | wrong_type | no_agent | unreachable | unsupported | agent_lost
        self.kind = kind
        self.message = message


@dataclass(eq=False)
class Session:
    id: str
    identity: Identity
    connection: ConnectionRecord
    stream: TunnelStream
    agent: AgentConn

    def describe_end(self, end: SessionReset) -> str:
        """Why the session ended, for the client: a fault detected here names the agent."""
        if end.by_peer:
            return end.message
        if end.code is ResetCode.PROTOCOL_ERROR:
            return f"agent {self.agent.name!r} broke the tunnel protocol: {end.message}"
        if end.code is ResetCode.INTERNAL:  # the stream is gone: the agent died or was cut off
            return f"session lost on agent {self.agent.name!r}: {end.message}"
        return end.message


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
    ) -> None:
        self._store = store
        self._registry = registry
        self._audit = auditor
        self._box = secret_box

    async def connection(self, name: str) -> ConnectionRecord | None:
        return await asyncio.to_thread(self._store.get_connection, name)

    def _target(self, conn: ConnectionRecord, extra_options: Mapping[str, str]) -> Target:
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
        options = {**extra_options, **conn.options}  # the connection's own settings win
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
        conn = await asyncio.to_thread(self._store.get_connection, connection)
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
        target = self._target(conn, extra_options or {})
        session_id = secrets.token_urlsafe(12)
        now = dt.datetime.now(dt.UTC)
        await asyncio.to_thread(
            self._store.create_session,
            SessionRecord(
                id=session_id,
                user=identity.user,
                connection=conn.name,
                protocol=protocol,
                client_addr=client_addr,
                started_at=now,
            ),
        )
        await self._audit.record(
            "session.open",
            actor=identity.user,
            session_id=session_id,
            connection=conn.name,
            protocol=protocol,
            client=client_addr,
        )
        try:
            stream, agent = await self._registry.open(session_id, target, conn.pool)
        except NoAgentError as exc:
            await self._fail(session_id, identity, exc.message)
            raise SessionError("no_agent", exc.message) from None
        except RoutingError as exc:
            message = f"connection {conn.name!r}: {exc.message}"
            await self._fail(session_id, identity, message)
            raise SessionError(_target_error_kind(exc.code), message) from None
        return Session(session_id, identity, conn, stream, agent)

    async def _fail(self, session_id: str, identity: Identity, message: str) -> None:
        await asyncio.to_thread(
            self._store.end_session,
            session_id,
            status="failed",
            error=message,
            bytes_up=0,
            bytes_down=0,
        )
        await self._audit.record(
            "session.failed", actor=identity.user, session_id=session_id, error=message
        )

    async def finish(self, session: Session, *, error: str | None = None) -> None:
        self._registry.release(session.agent)
        await session.stream.aclose()
        await asyncio.to_thread(
            self._store.end_session,
            session.id,
            status="failed" if error else "closed",
            error=error,
            bytes_up=session.stream.bytes_out,
            bytes_down=session.stream.bytes_in,
            agent=session.agent.name,
        )
        await self._audit.record(
            "session.close",
            actor=session.identity.user,
            session_id=session.id,
            bytes_up=session.stream.bytes_out,
            bytes_down=session.stream.bytes_in,
            error=error,
        )
