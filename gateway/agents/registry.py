"""Connected agents, their pools, and the routing of sessions to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.tunnel.frames import (
    SESSION_WINDOW,
    SIGNAL_DONE_CAPABILITY,
    SILENT_PINGS,
    WINDOW_CAPABILITY,
    GatewayControl,
    Goodbye,
    OpenSession,
    ResetCode,
    Target,
)
from shared.tunnel.stream import Opened, OpenFailed, SessionReset, TunnelStream

log = logging.getLogger(__name__)

# Session types whose results may run at most SESSION_WINDOW ahead of the client (and their
# uploads ahead of the server); the others keep gRPC's own flow control.
WINDOWED_TYPES = frozenset({"postgres", "tcp"})


class RoutingError(Exception):
    """A session could not be opened; `code` says whose fault it was."""

    def __init__(self, code: ResetCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NoAgentError(RoutingError):
    def __init__(self, pool: str) -> None:
        super().__init__(ResetCode.UNSPECIFIED, f"no agent of pool {pool!r} is connected")
        self.pool = pool


class AgentLostError(RoutingError):
    pass


@dataclass(eq=False)
class AgentConn:
    """One live control stream of one agent."""

    name: str
    pool: str
    secret_hash: bytes
    instance_id: str
    version: str
    capabilities: frozenset[str]
    peer: str
    outbox: asyncio.Queue[GatewayControl] = field(default_factory=lambda: asyncio.Queue(1024))
    last_seen: float = field(default_factory=time.monotonic)
    active_sessions: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[str, asyncio.Future[TunnelStream]] = field(default_factory=dict)
    # The session streams it serves (the entries go with their sessions): ended when the
    # agent is found hung, since its gRPC calls would wait for keepalive (tens of seconds).
    streams: weakref.WeakSet[TunnelStream] = field(default_factory=weakref.WeakSet)
    close_reason: str = ""

    def send(self, frame: GatewayControl) -> None:
        try:
            self.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            # An agent that does not drain its control stream is as good as gone.
            self.close("control stream backlog full")

    def close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for session_id, fut in self.pending.items():
            if not fut.done():
                fut.set_exception(AgentLostError(ResetCode.INTERNAL, f"agent lost: {reason}"))
            log.debug("pending session %s failed: agent %s lost", session_id, self.name)
        self.pending.clear()

    def lost(self, reason: str) -> None:
        """The agent stopped answering: close it and end every session it serves, each with
        a reason naming the agent (its relay tells the client in its own protocol)."""
        self.close(reason)
        for stream in list(self.streams):
            stream.lost(f"agent {self.name!r} lost: {reason}")
        self.streams.clear()


# Where a session goes when no agent of its pool is usable on this member: another member
# (gateway/fleet/forward.py). Given the local failure, which it raises when nobody has one.
Elsewhere = Callable[[str, Target, str, RoutingError], Awaitable[tuple[TunnelStream, "AgentConn"]]]


class AgentRegistry:
    def __init__(
        self, *, ping_interval: float, open_timeout: float, session_window: int = SESSION_WINDOW
    ) -> None:
        self.ping_interval = ping_interval
        self.silence_limit = SILENT_PINGS * ping_interval  # an agent this silent is dead
        self.accepting = True  # False while the gateway drains: new agent streams refused
        self.open_timeout = open_timeout
        self.session_window = session_window
        self._agents: dict[str, AgentConn] = {}
        self.elsewhere: Elsewhere | None = None  # set by a member of a fleet
        self._rng = random.Random()  # noqa: S311 - load spreading, not secrecy

    # ---- membership ------------------------------------------------------------------

    def register(self, conn: AgentConn) -> AgentConn | None:
        """Add a connection; returns the one it supersedes (same agent identity)."""
        old = self._agents.get(conn.name)
        self._agents[conn.name] = conn
        if old is not None and old is not conn:
            if old.instance_id and old.instance_id == conn.instance_id:
                # The same agent process again (a fleet agent that reached this member
                # twice, through a load-balanced name and by its address): not a rival,
                # so not SUPERSEDED, which would stop it; it keeps the newer connection.
                old.send(Goodbye(ResetCode.UNSPECIFIED, "replaced by a newer connection"))
                old.close("replaced by a newer connection of the same agent")
            else:
                old.send(Goodbye(ResetCode.SUPERSEDED, "another connection with this agent key"))
                old.close("superseded")
        return old

    def unregister(self, conn: AgentConn) -> None:
        if self._agents.get(conn.name) is conn:
            del self._agents[conn.name]
        conn.close("disconnected")

    def get(self, name: str) -> AgentConn | None:
        return self._agents.get(name)

    def connected(self) -> list[AgentConn]:
        return list(self._agents.values())

    def healthy(self, pool: str, capability: str | None = None) -> list[AgentConn]:
        horizon = time.monotonic() - self.silence_limit
        return [
            a
            for a in self._agents.values()
            if a.pool == pool
            and not a.closed.is_set()
            and a.last_seen >= horizon
            and (capability is None or capability in a.capabilities)
        ]

    # ---- routing -------------------------------------------------------------------

    def _pick(self, candidates: list[AgentConn]) -> AgentConn:
        least = min(a.active_sessions for a in candidates)
        return self._rng.choice([a for a in candidates if a.active_sessions == least])

    async def open(
        self,
        session_id: str,
        target: Target,
        pool: str,
        *,
        here_only: bool = False,
        data_reports: bool = True,
    ) -> tuple[TunnelStream, AgentConn]:
        """Open a session on a healthy agent of `pool`; (stream, the agent serving it).

        An agent that vanishes between the order and its answer is skipped once; a
        target-side failure is not retried, since another agent would meet the same target.
        Without a usable agent here, the session goes `elsewhere` (unless `here_only`: a
        session another member forwarded is never forwarded again). `data_reports`: whoever
        reads the session's frames reads Data.report (False for a member that does not).
        """
        try:
            return await self._open_here(session_id, target, pool, data_reports)
        except (NoAgentError, AgentLostError) as exc:
            if here_only or self.elsewhere is None:
                raise
            return await self.elsewhere(session_id, target, pool, exc)

    async def _open_here(
        self, session_id: str, target: Target, pool: str, data_reports: bool
    ) -> tuple[TunnelStream, AgentConn]:
        tried: set[str] = set()
        while True:
            candidates = [
                a
                for a in self.healthy(pool, target.type)
                if a.name not in tried
                # Fail closed: masking goes only to agents that apply it.
                and (target.masking.empty or "masking" in a.capabilities)
            ]
            if not candidates:
                if tried:
                    raise AgentLostError(
                        ResetCode.INTERNAL, f"every agent of pool {pool!r} was lost"
                    )
                if self.healthy(pool):
                    raise RoutingError(
                        ResetCode.UNSUPPORTED,
                        f"no agent of pool {pool!r} supports {target.type!r} connections",
                    )
                raise NoAgentError(pool)
            agent = self._pick(candidates)
            tried.add(agent.name)
            try:
                stream = await self._open_on(agent, session_id, target, data_reports)
            except AgentLostError:
                continue
            return stream, agent

    async def _open_on(
        self, agent: AgentConn, session_id: str, target: Target, data_reports: bool
    ) -> TunnelStream:
        fut: asyncio.Future[TunnelStream] = asyncio.get_running_loop().create_future()
        agent.pending[session_id] = fut
        agent.active_sessions += 1
        ok = False
        try:
            window = (
                self.session_window
                if WINDOW_CAPABILITY in agent.capabilities and target.type in WINDOWED_TYPES
                else 0
            )
            acks = SIGNAL_DONE_CAPABILITY in agent.capabilities
            agent.send(OpenSession(session_id, target, window, acks, data_reports))
            try:
                async with asyncio.timeout(self.open_timeout):
                    stream = await fut
                    agent.streams.add(stream)
                    stream.negotiate(window, acks)
                    event = await stream.receive()
            except TimeoutError:
                raise AgentLostError(
                    ResetCode.INTERNAL,
                    f"agent {agent.name!r} did not answer within {self.open_timeout:g}s",
                ) from None
            if isinstance(event, Opened):
                ok = True  # the count drops in release() when the session ends
                return stream
            if isinstance(event, OpenFailed | SessionReset):
                await stream.reset(event.code, event.message)
                raise RoutingError(event.code, event.message)
            await stream.reset(ResetCode.PROTOCOL_ERROR, "expected OpenResult")
            raise RoutingError(ResetCode.PROTOCOL_ERROR, f"agent {agent.name!r} broke protocol")
        finally:
            agent.pending.pop(session_id, None)
            if not ok:
                agent.active_sessions -= 1

    def release(self, agent: AgentConn) -> None:
        """A session routed by `open` ended."""
        agent.active_sessions = max(0, agent.active_sessions - 1)

    def claim(self, agent_name: str, session_id: str, stream: TunnelStream) -> bool:
        """Hand an arriving session stream to the `open` call that waits for it."""
        agent = self._agents.get(agent_name)
        fut = agent.pending.get(session_id) if agent is not None else None
        if fut is None or fut.done():
            return False
        fut.set_result(stream)
        return True

    async def aclose(self) -> None:
        for agent in list(self._agents.values()):
            agent.send(Goodbye(ResetCode.GATEWAY_SHUTDOWN, "gateway shutting down"))
            with contextlib.suppress(Exception):
                agent.close("gateway shutting down")
        self._agents.clear()
