"""The gateway's end of the tunnel service: authenticate agent streams, serve them.

Each call carries the agent's name and secret in metadata. A control call is checked
against the store (hash of the secret, constant-time compare, not revoked); a session call
against the live control connection of the same agent, so a session stream can only join
a session that the gateway ordered from that very agent.

Fleet: the Welcome names the live members (agent-facing HOST:PORT, from the injected
`members` provider) and this member's own address; `watch_members` polls the provider every
MEMBERS_POLL seconds and tells agents that understand it (MEMBERS_CAPABILITY) when the list
changes, so each agent keeps a connection to every member (agent/fleet.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from gateway.agents.registry import AgentConn, AgentRegistry
from gateway.audit import Auditor
from gateway.store import Store
from shared.agentkey import hash_secret
from shared.tunnel.frames import (
    MEMBERS_CAPABILITY,
    PROTOCOL_VERSION,
    GatewayControl,
    Goodbye,
    Hello,
    Members,
    Ping,
    Pong,
    ResetCode,
    Welcome,
)
from shared.tunnel.rpc import (
    METADATA_AGENT,
    METADATA_SECRET,
    ProtocolViolation,
    ServerControl,
)
from shared.tunnel.stream import TunnelStream
from shared.version import __version__

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
# How long a refused control stream may take to deliver the Hello the agent sent with it.
REFUSAL_GRACE = 2.0
# Seconds between two asks of the members provider: a member that joins the fleet is told
# to the agents within this (then they dial it at once).
MEMBERS_POLL = 2.0

# The agent-facing addresses (HOST:PORT) of the fleet's live members.
MembersProvider = Callable[[], Awaitable[Sequence[str]]]


class AgentService:
    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        auditor: Auditor,
        *,
        member: str = "",
        members: MembersProvider | None = None,
    ) -> None:
        """`member`: this gateway's own agent-facing address, always one of the members;
        `members`: the others too (the store's members table, configured peers); by
        default this member alone."""
        self._store = store
        self._registry = registry
        self._audit = auditor
        self._nonce = itertools.count(1)
        self.member = member
        self._members_provider = members
        self._members: tuple[str, ...] | None = None  # the last list told to agents

    async def _fetch_members(self) -> tuple[str, ...]:
        listed = await self._members_provider() if self._members_provider is not None else ()
        return tuple(sorted({a for a in (self.member, *listed) if a}))

    async def members(self) -> tuple[str, ...]:
        """The live members as last seen; this member alone while the provider fails."""
        if self._members is None:
            try:
                self._members = await self._fetch_members()
            except Exception as exc:  # a store hiccup must not refuse agents
                log.warning("members: the provider failed: %s", exc)
                return (self.member,) if self.member else ()
        return self._members

    async def watch_members(self, interval: float = MEMBERS_POLL) -> None:
        """Poll the provider; tell every agent that understands it when the list changes.
        A failed poll keeps the last list: agents keep dialling members they know."""
        while True:
            await asyncio.sleep(interval)
            try:
                current = await self._fetch_members()
            except Exception as exc:
                log.warning("members: the provider failed, keeping the last list: %s", exc)
                continue
            if current == self._members:
                continue
            log.info("members: %s", ", ".join(current) or "-")
            self._members = current
            for conn in self._registry.connected():
                if MEMBERS_CAPABILITY in conn.capabilities:
                    conn.send(Members(current))

    async def _authenticate(self, ctl: ServerControl) -> tuple[str, str, bytes] | None:
        """(name, pool, secret hash) of a valid agent, or None after auditing the refusal."""
        name = ctl.metadata.get(METADATA_AGENT, "")
        secret = ctl.metadata.get(METADATA_SECRET, "")
        record = await self._store.io.read(self._store.agents.get, name) if name else None
        offered = hash_secret(secret)
        # Compare against a dummy when the agent is unknown so timing does not tell.
        stored = record.secret_hash if record is not None else bytes(32)
        matches = hmac.compare_digest(offered, stored) and record is not None
        if record is None or not matches or record.revoked:
            reason = (
                "unknown agent"
                if record is None
                else "revoked agent"
                if record.revoked
                else "wrong secret"
            )
            await self._audit.record(
                "agent.rejected", actor=name or "-", reason=reason, peer=ctl.peer
            )
            return None
        return record.name, record.pool, record.secret_hash

    async def control(self, ctl: ServerControl) -> None:
        if not self._registry.accepting:  # draining: the agent retries, elsewhere with luck
            await ctl.abort(grpc.StatusCode.UNAVAILABLE, "gateway shutting down")
            return
        identity = await self._authenticate(ctl)
        if identity is None:
            # Take the agent's Hello before refusing: an abort that overtakes the agent's
            # first write fails that write with a bare INTERNAL error, which the agent reads
            # as a lost connection and retries, instead of UNAUTHENTICATED, which stops it.
            with contextlib.suppress(TimeoutError, ProtocolViolation):
                async with asyncio.timeout(REFUSAL_GRACE):
                    await ctl.read()
            await ctl.abort(grpc.StatusCode.UNAUTHENTICATED, "agent key rejected")
            return
        name, pool, secret_hash = identity
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await ctl.read()
        except (TimeoutError, ProtocolViolation):
            hello = None
        if not isinstance(hello, Hello) or hello.agent_name != name:
            await self._audit.record(
                "agent.rejected", actor=name, reason="bad handshake", peer=ctl.peer
            )
            await ctl.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello naming this agent")
            return
        if hello.protocol_version != PROTOCOL_VERSION:
            await self._audit.record(
                "agent.rejected",
                actor=name,
                reason=f"protocol version {hello.protocol_version}",
                peer=ctl.peer,
            )
            await ctl.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"tunnel protocol {hello.protocol_version} unsupported; "
                f"this gateway speaks {PROTOCOL_VERSION}",
            )
            return

        conn = AgentConn(
            name=name,
            pool=pool,
            secret_hash=secret_hash,
            instance_id=hello.instance_id,
            version=hello.version,
            capabilities=frozenset(hello.capabilities),
            peer=ctl.peer,
        )
        told = await self.members()
        await ctl.write(
            Welcome(
                gateway_version=__version__,
                pool=pool,
                ping_interval_ms=int(self._registry.ping_interval * 1000),
                members=told,
                member=self.member,
            )
        )
        superseded = self._registry.register(conn)
        if (
            self._members is not None
            and self._members != told
            and (MEMBERS_CAPABILITY in conn.capabilities)
        ):  # the list changed while this agent was not registered yet
            conn.send(Members(self._members))
        await self._audit.record(
            "agent.connected",
            actor=name,
            pool=pool,
            version=hello.version,
            instance=hello.instance_id,
            capabilities=sorted(conn.capabilities),
            peer=ctl.peer,
            superseded=superseded.instance_id if superseded else None,
        )
        reason = "disconnected"
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read_loop(ctl, conn), name=f"agent/{name}/read")
                writer = tg.create_task(self._write_loop(ctl, conn), name=f"agent/{name}/write")
                watchdog = tg.create_task(self._watchdog(conn), name=f"agent/{name}/watchdog")
                await conn.closed.wait()
                # Let a Goodbye queued by register()/shutdown reach the agent.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        await conn.outbox.join()
                for task in (reader, writer, watchdog):
                    task.cancel()
        except* (ProtocolViolation, grpc.RpcError, asyncio.InvalidStateError) as group:
            reason = f"control stream failed: {group.exceptions[0]}"
        else:
            reason = conn.close_reason or reason
        finally:
            self._registry.unregister(conn)
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._audit.record("agent.disconnected", actor=name, reason=reason)
                )

    async def _read_loop(self, ctl: ServerControl, conn: AgentConn) -> None:
        while True:
            frame = await ctl.read()
            if frame is None:
                conn.close("agent closed the control stream")
                return
            conn.last_seen = time.monotonic()
            if isinstance(frame, Ping):
                conn.send(Pong(frame.nonce))
            elif isinstance(frame, Hello):
                raise ProtocolViolation("second Hello")

    async def _write_loop(self, ctl: ServerControl, conn: AgentConn) -> None:
        while True:
            frame: GatewayControl = await conn.outbox.get()
            await ctl.write(frame)
            conn.outbox.task_done()
            if isinstance(frame, Goodbye):
                conn.close(frame.message)

    async def _watchdog(self, conn: AgentConn) -> None:
        """Ping every interval; drop the agent once it has been silent for the registry's
        `silence_limit` (woken at that very moment, not at the next ping)."""
        interval, limit = self._registry.ping_interval, self._registry.silence_limit
        next_ping = time.monotonic() + interval
        while not conn.closed.is_set():
            now = time.monotonic()
            silent = now - conn.last_seen
            if silent >= limit:
                log.warning("agent %s silent for %.1fs: dropped", conn.name, silent)
                conn.lost(f"silent for {limit:g}s")
                return
            if now >= next_ping:
                conn.send(Ping(next(self._nonce)))
                next_ping = now + interval
            await asyncio.sleep(min(next_ping, conn.last_seen + limit) - now)

    async def session(self, stream: TunnelStream, metadata: dict[str, str], peer: str) -> None:
        name = metadata.get(METADATA_AGENT, "")
        conn = self._registry.get(name)
        offered = hash_secret(metadata.get(METADATA_SECRET, ""))
        authentic = conn is not None and hmac.compare_digest(offered, conn.secret_hash)
        if not authentic or not self._registry.claim(name, stream.session_id, stream):
            await self._audit.record(
                "tunnel.unknown_session",
                actor=name or "-",
                peer=peer,
                authenticated=authentic,
            )
            await stream.reset(ResetCode.UNKNOWN_SESSION, "no such session for this agent")
            return
        await stream.wait_finished()
