"""Member-to-member forwarding: a session runs wherever it lands, while any member has an
agent of its pool (as Teleport's proxy peering does).

Agents keep a connection to every member they can reach (agent/fleet.py), but one may not
reach them all: a network split, or a member that started a moment ago. A session that lands
on a member without a usable agent of its pool is carried over the member link, a gRPC call
on the agent-facing port of a member that has one:

* the landing member (`Forwarder`) keeps the whole session: authentication, policy, audit,
  masking orders, cancels and revocations all stay where the client is. Only its tunnel
  stream goes through the other member: the same TunnelStream as to a local agent, over the
  link call instead of an agent's Session call.
* the member with the agent (`ForwardService`) proves the caller a member (linkauth.py),
  opens the session on one of its own agents (never forwarding it again), answers with what
  it negotiated with that agent, then relays frames both ways unread. When its agent is lost
  it says so to the landing member with a Reset naming the agent; when the landing member is
  lost it resets the agent's session.

Members are tried in random order; one that has no agent of the pool either says so at once
(`ForwardAnswer.elsewhere`). A link's keepalive notices a member that hangs in at most
LINK_KEEPALIVE + LINK_KEEPALIVE_TIMEOUT seconds (3 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from gateway.agents.registry import (
    AgentConn,
    AgentLostError,
    AgentRegistry,
    NoAgentError,
    RoutingError,
)
from gateway.audit import Auditor
from gateway.fleet.linkauth import (
    METADATA_MEMBER,
    METADATA_PROOF,
    LinkKey,
    LinkRefused,
    ReplayGuard,
)
from gateway.telemetry import Telemetry
from shared.tasks import TaskOwner
from shared.tunnel.codec import (
    FrameError,
    decode_forward_answer,
    decode_forward_open,
    encode_forward_answer,
    encode_forward_open,
    encode_session_bytes,
)
from shared.tunnel.frames import ForwardAnswer, ForwardOpen, OpenResult, Reset, ResetCode, Target
from shared.tunnel.rpc import CHANNEL_OPTIONS, ClientWire, ServerWire
from shared.tunnel.session import Role
from shared.tunnel.stream import Opened, TunnelStream, Wire, WireBroken

log = logging.getLogger(__name__)

SERVICE = "wardgate.tunnel.v1.MemberLink"
FORWARD_METHOD = f"/{SERVICE}/Forward"
LINK_KEEPALIVE, LINK_KEEPALIVE_TIMEOUT = 1.0, 2.0  # seconds
OPEN_TIMEOUT = 10.0  # seconds a member link call may take to send its ForwardOpen
_LINK_OPTIONS = [
    *((k, v) for k, v in CHANNEL_OPTIONS if not k.startswith("grpc.keepalive_")),
    ("grpc.keepalive_time_ms", int(LINK_KEEPALIVE * 1000)),
    ("grpc.keepalive_timeout_ms", int(LINK_KEEPALIVE_TIMEOUT * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True, slots=True)
class Peer:
    id: str
    address: str  # agent-facing HOST:PORT, where its member link listens


class _NotThere(Exception):
    """The member asked has no usable agent of the pool either."""


class _LinkDown(Exception):
    """The member could not be reached, or broke off before answering."""


# ---- the landing member ----------------------------------------------------------------


class Forwarder:
    def __init__(
        self,
        *,
        member_id: str,
        key: LinkKey,
        peers: Callable[[], Awaitable[Sequence[Peer]]],
        roots: bytes | None,
        server_name: str | None,
        open_timeout: float,
        telemetry: Telemetry | None = None,
    ) -> None:
        """`roots` None: plaintext links (agents are plaintext too: allow_insecure_agents);
        `server_name`: the name the fleet's certificates are issued for."""
        self._member = member_id
        self._key = key
        self._peers = peers
        self._roots = roots
        self._server_name = server_name
        self._open_timeout = open_timeout
        self._telemetry = telemetry
        self._channels: dict[str, aio.Channel] = {}
        self._rng = random.Random()  # noqa: S311 - load spreading, not secrecy

    async def open(
        self, session_id: str, target: Target, pool: str, here: RoutingError
    ) -> tuple[TunnelStream, AgentConn]:
        """Open the session through another member; raises `here` (this member's own
        failure) when no member has a usable agent of `pool`."""
        peers = [p for p in await self._peers() if p.id != self._member]
        self._rng.shuffle(peers)
        for peer in peers:
            try:
                opened = await self._open_via(peer, session_id, target, pool)
            except _NotThere:
                continue
            except _LinkDown as exc:
                log.warning("member link to %s (%s): %s", peer.id, peer.address, exc)
                continue
            if self._telemetry is not None:
                self._telemetry.forwarded.labels("out").inc()
            log.info("session %s: forwarded to member %s", session_id, peer.id)
            return opened
        raise here

    def _channel(self, address: str) -> aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._roots is None:
                channel = aio.insecure_channel(address, options=_LINK_OPTIONS)
            else:
                options = list(_LINK_OPTIONS)
                if self._server_name:
                    options.append(("grpc.ssl_target_name_override", self._server_name))
                creds = grpc.ssl_channel_credentials(root_certificates=self._roots)
                channel = aio.secure_channel(address, creds, options=options)
            self._channels[address] = channel
        return channel

    async def _open_via(
        self, peer: Peer, session_id: str, target: Target, pool: str
    ) -> tuple[TunnelStream, AgentConn]:
        metadata = self._key.metadata(self._member, peer.id, session_id)
        call: Any = self._channel(peer.address).stream_stream(FORWARD_METHOD)(metadata=metadata)
        request = encode_forward_open(ForwardOpen(session_id, pool, target, data_reports=True))
        try:
            # The other member waits up to open_timeout for its agent; then it answers.
            async with asyncio.timeout(self._open_timeout + LINK_KEEPALIVE_TIMEOUT):
                await call.write(request)
                first = await call.read()
        except (TimeoutError, grpc.RpcError, asyncio.InvalidStateError) as exc:
            call.cancel()
            raise _LinkDown(_describe(exc)) from None
        if first is aio.EOF:
            raise _LinkDown(await _status(call))
        try:
            answer = decode_forward_answer(first)
        except FrameError as exc:
            call.cancel()
            raise _LinkDown(str(exc)) from None
        if not answer.ok:
            call.cancel()
            if answer.elsewhere:
                raise _NotThere
            raise RoutingError(answer.code, answer.message)
        stream = TunnelStream(session_id, Role.GATEWAY, _LinkWire(call, peer, answer.agent))
        stream.negotiate(answer.window, answer.signal_acks)
        event = await stream.receive()  # the OpenResult the other member passed on
        if not isinstance(event, Opened):
            await stream.aclose()
            raise _LinkDown(f"it broke off the opening: {event}")
        agent = AgentConn(
            name=answer.agent,
            pool=pool,
            secret_hash=b"",
            instance_id="",
            version="",
            capabilities=frozenset(),
            peer=f"through member {peer.id}",
            active_sessions=1,
        )
        return stream, agent

    async def aclose(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class _LinkWire:
    """A member link call as a session's wire: when it breaks, the error names the member
    and the agent behind it (the client reads it in its protocol's words)."""

    def __init__(self, call: Any, peer: Peer, agent: str) -> None:
        self._wire = ClientWire(call)
        self._who = f"gateway member {peer.id!r} (agent {agent!r})"

    async def read(self) -> bytes | None:
        try:
            return await self._wire.read()
        except grpc.RpcError as exc:
            raise WireBroken(f"{self._who} unreachable: {_describe(exc)}") from None

    async def write(self, message: bytes) -> None:
        try:
            await self._wire.write(message)
        except grpc.RpcError as exc:
            raise WireBroken(f"{self._who} unreachable: {_describe(exc)}") from None

    async def finish(self) -> None:
        await self._wire.finish()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    details = getattr(exc, "details", None)
    return str(details()) if callable(details) else f"{type(exc).__name__}: {exc}"


async def _status(call: Any) -> str:
    try:
        code, details = await call.code(), await call.details()
    except Exception as exc:  # a call that broke raises here too
        return _describe(exc)
    return f"{code.name}: {details}" if details else str(code.name)


# ---- the member with the agent ---------------------------------------------------------


class ForwardService:
    def __init__(
        self,
        registry: AgentRegistry,
        auditor: Auditor,
        *,
        member_id: str,
        key: LinkKey,
        is_member: Callable[[str], Awaitable[bool]],
        telemetry: Telemetry | None = None,
    ) -> None:
        self._registry = registry
        self._audit = auditor
        self._member = member_id
        self._key = key
        self._is_member = is_member
        self._telemetry = telemetry
        self._replays = ReplayGuard()
        self._relays: set[Relay] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def relaying(self) -> int:
        """Sessions this member serves for others."""
        return len(self._relays)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def end_all(self, code: ResetCode, reason: str) -> None:
        """End every relayed session, telling both ends (a drain's grace is over)."""
        for relayed in list(self._relays):
            relayed.end(code, reason)

    async def forward(self, context: aio.ServicerContext[Any, Any]) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            # Nobody is authenticated yet: a call that says nothing holds nothing for long.
            async with asyncio.timeout(OPEN_TIMEOUT):
                first = await context.read()
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no ForwardOpen in time")
            return
        try:
            if first is aio.EOF:
                raise FrameError("the call ended before its ForwardOpen")
            request = decode_forward_open(first)
        except FrameError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        try:
            caller = self._key.verify(metadata, self._member, request.session_id)
            if not self._replays.first_use(metadata[METADATA_PROOF]):
                raise LinkRefused("member proof used before")
            if not await self._is_member(caller):
                raise LinkRefused(f"{caller!r} is not a live member of this fleet")
        except LinkRefused as exc:
            await self._audit.record(
                "fleet.link_refused",
                actor=metadata.get(METADATA_MEMBER, "")[:80] or "-",
                peer=context.peer(),
                reason=str(exc),
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"member link refused: {exc}")
            return
        if not self._registry.accepting:  # draining: its agents are told to move
            await _answer(context, ForwardAnswer(False, elsewhere=True, message="member draining"))
            return
        try:
            stream, agent = await self._registry.open(
                request.session_id,
                request.target,
                request.pool,
                here_only=True,
                data_reports=request.data_reports,
            )
        except (NoAgentError, AgentLostError) as exc:
            await _answer(context, ForwardAnswer(False, elsewhere=True, message=exc.message))
            return
        except RoutingError as exc:
            await _answer(context, ForwardAnswer(False, exc.code, exc.message))
            return
        if self._telemetry is not None:
            self._telemetry.forwarded.labels("in").inc()
        relayed = Relay(stream, ServerWire(context), agent.name, caller)
        self._relays.add(relayed)
        self._idle.clear()
        try:
            ok = ForwardAnswer(
                True,
                agent=agent.name,
                window=stream.state.window,
                signal_acks=stream.state.signal_acks,
            )
            await context.write(encode_forward_answer(ok))
            await context.write(encode_session_bytes(OpenResult(ok=True)))
            await relayed.run()
        finally:
            self._relays.discard(relayed)
            if not self._relays:
                self._idle.set()
            self._registry.release(agent)
            await stream.aclose()


async def _answer(context: aio.ServicerContext[Any, Any], answer: ForwardAnswer) -> None:
    with contextlib.suppress(Exception):  # the caller may have given up already
        await context.write(encode_forward_answer(answer))


class Relay:
    """One forwarded session on the member with the agent: the frames of `stream` (opened on
    an agent here) and of the member link, carried both ways unread until either end
    finishes; an end that breaks, or `end`, resets the other."""

    def __init__(self, stream: TunnelStream, member: Wire, agent: str, caller: str) -> None:
        self._stream = stream
        self._member = member
        self._agent = stream.take_wire()
        self._agent_name = agent
        self._caller = caller
        self._ended = asyncio.Event()
        self._ending = Reset(ResetCode.UNSPECIFIED, "")

    def end(self, code: ResetCode, reason: str) -> None:
        """End the session: `run` resets both ends (after its pumps, each wire's only
        writer, have stopped) and returns."""
        self._ending = Reset(code, reason)
        self._ended.set()

    async def run(self) -> None:
        tasks = TaskOwner(f"forward/{self._stream.session_id}")
        up = tasks.spawn(_pump(self._member, self._agent), name="up")
        down = tasks.spawn(_pump(self._agent, self._member), name="down")
        lost = tasks.spawn(self._stream.wait_finished(), name="lost")
        ended = tasks.spawn(self._ended.wait(), name="ended")
        try:
            done, _ = await asyncio.wait((up, down, lost, ended), return_when="FIRST_COMPLETED")
        finally:
            await tasks.aclose()
        if ended in done:
            await _say(self._agent, self._ending)
            await _say(self._member, self._ending)
        elif lost in done:  # the agent was found hung (AgentConn.lost)
            end = self._stream.end_reason
            message = end.message if end is not None else f"agent {self._agent_name!r} lost"
            await _say(self._member, Reset(ResetCode.INTERNAL, message))
        broke = next((t.result() for t in (up, down) if t in done and t.result()), None)
        if broke is not None:  # which end broke is not known: tell both, one may hear
            await _say(self._agent, Reset(ResetCode.INTERNAL, f"member link lost: {broke}"))
            await _say(
                self._member,
                Reset(ResetCode.INTERNAL, f"agent {self._agent_name!r} lost: {broke}"),
            )
        # The session is over, and the agent's own call ends with it.
        self._stream.lost("forwarded session ended")


async def _pump(source: Wire, sink: Wire) -> str | None:
    """Carry messages until `source` ends (None) or either wire breaks (what broke)."""
    try:
        while (message := await source.read()) is not None:
            await sink.write(message)
    except Exception as exc:  # grpc raises several types when a call dies
        return _describe(exc)
    return None


async def _say(wire: Wire, frame: Reset) -> None:
    with contextlib.suppress(Exception):  # the end told may be gone too
        await wire.write(encode_session_bytes(frame))


def add_member_link(server: aio.Server, service: ForwardService) -> None:
    """The MemberLink service on the agent-facing gRPC server; bytes in and out, as the
    tunnel's session streams (shared.tunnel.rpc.add_tunnel_service)."""

    async def forward(request_iterator: Any, context: Any) -> None:
        await service.forward(context)

    handlers = {"Forward": grpc.stream_stream_rpc_method_handler(forward)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
