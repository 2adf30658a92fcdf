"""grpc.aio bindings of the tunnel: the gateway's service and the agent's client.

The agent is the gRPC client (it dials out). Its identity travels in call metadata on every
call (control and session), so the gateway authenticates each stream on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from shared.pb import tunnel_pb2 as pb
from shared.pb import tunnel_pb2_grpc as pb_grpc
from shared.tunnel.codec import (
    FrameError,
    decode_agent_control,
    decode_gateway_control,
    decode_session_bytes,
    encode_agent_control,
    encode_gateway_control,
    encode_session_bytes,
)
from shared.tunnel.frames import (
    MAX_GRPC_MESSAGE,
    AgentControl,
    GatewayControl,
    Reset,
    ResetCode,
    SessionHello,
)
from shared.tunnel.session import Role
from shared.tunnel.stream import TunnelStream

METADATA_AGENT = "x-wardgate-agent"
METADATA_SECRET = "x-wardgate-agent-secret"  # noqa: S105 - a metadata key, not a secret

# Both ends: bounded messages (an oversized frame fails that one stream), and HTTP/2
# keepalive so a dead peer behind a silent NAT is noticed within ~30 s.
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)


class ProtocolViolation(Exception):
    """The peer sent something that is not a frame of this protocol."""


# ---- gateway side ---------------------------------------------------------------------


class ServerControl:
    """The gateway's view of one agent's control stream."""

    def __init__(self, context: aio.ServicerContext[Any, Any]) -> None:
        self._ctx = context
        self.metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.peer = context.peer()

    async def read(self) -> AgentControl | None:
        message = await self._ctx.read()
        if message is aio.EOF:
            return None
        try:
            return decode_agent_control(message)
        except FrameError as exc:
            raise ProtocolViolation(str(exc)) from exc

    async def write(self, frame: GatewayControl) -> None:
        await self._ctx.write(encode_gateway_control(frame))

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        await self._ctx.abort(code, message)


class ServerWire:
    """A streaming call's server end as a `Wire`."""

    def __init__(self, context: aio.ServicerContext[Any, Any]) -> None:
        self._ctx = context

    async def read(self) -> bytes | None:
        message = await self._ctx.read()
        return None if message is aio.EOF else message

    async def write(self, message: bytes) -> None:
        await self._ctx.write(message)

    async def finish(self) -> None:
        return None  # the handler returning ends the call


ControlHandler = Callable[[ServerControl], Awaitable[None]]
# Receives the routed stream and the metadata; returns when the session is over.
SessionHandler = Callable[[TunnelStream, dict[str, str], str], Awaitable[None]]


class _Servicer(pb_grpc.AgentTunnelServicer):
    # grpc.aio lets a streaming handler read and write through its context and return
    # None; the generated stubs only describe the iterator style, hence the overrides.

    def __init__(self, on_control: ControlHandler, on_session: SessionHandler) -> None:
        self._on_control = on_control
        self._on_session = on_session

    async def Control(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await self._on_control(ServerControl(context))

    async def Session(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        first = await context.read()
        hello = None if first is aio.EOF else _session_hello(first)
        if hello is None:
            await context.write(
                encode_session_bytes(Reset(ResetCode.PROTOCOL_ERROR, "expected SessionHello"))
            )
            return
        stream = TunnelStream(hello.session_id, Role.GATEWAY, ServerWire(context))
        try:
            await self._on_session(stream, metadata, context.peer())
        except asyncio.CancelledError:
            stream.lost("agent connection lost")
            raise


def _session_hello(message: bytes) -> SessionHello | None:
    try:
        frame = decode_session_bytes(message)
    except FrameError:
        return None
    return frame if isinstance(frame, SessionHello) else None


SERVICE = "wardgate.tunnel.v1.AgentTunnel"
SESSION_METHOD = f"/{SERVICE}/Session"


def add_tunnel_service(
    server: aio.Server, on_control: ControlHandler, on_session: SessionHandler
) -> None:
    # As the generated add_AgentTunnelServicer_to_server, except that session streams carry
    # bytes: shared.tunnel.codec (de)serializes them, Data frames without protobuf objects.
    servicer = _Servicer(on_control, on_session)
    handlers = {
        "Control": grpc.stream_stream_rpc_method_handler(
            servicer.Control,
            request_deserializer=pb.AgentControl.FromString,
            response_serializer=pb.GatewayControl.SerializeToString,
        ),
        "Session": grpc.stream_stream_rpc_method_handler(servicer.Session),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def reject_session(stream: TunnelStream, code: ResetCode, message: str) -> None:
    """Refuse a session stream that cannot be routed; the handler then returns."""
    await stream.reset(code, message)


# ---- agent side -----------------------------------------------------------------------


class ClientControl:
    def __init__(self, call: Any) -> None:
        self._call = call
        # grpc allows one write in flight per call (a second fails the whole call with
        # TOO_MANY_OPERATIONS), and the agent's pinger and reader both write.
        self._write_lock = asyncio.Lock()

    async def read(self) -> GatewayControl | None:
        message = await self._call.read()
        if message is aio.EOF:
            return None
        try:
            return decode_gateway_control(message)
        except FrameError as exc:
            raise ProtocolViolation(str(exc)) from exc

    async def write(self, frame: AgentControl) -> None:
        async with self._write_lock:
            await self._call.write(encode_agent_control(frame))

    def cancel(self) -> None:
        self._call.cancel()


class ClientWire:
    """A streaming call's client end as a `Wire`; `finish` half-closes, then waits briefly
    for the status."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._done_writing = False

    async def read(self) -> bytes | None:
        message = await self._call.read()
        return None if message is aio.EOF else message

    async def write(self, message: bytes) -> None:
        await self._call.write(message)

    async def finish(self) -> None:
        if self._call.done():
            return
        if not self._done_writing:
            self._done_writing = True
            try:
                await self._call.done_writing()
            except Exception:  # already failed: nothing left to flush
                self._call.cancel()
                return
        try:
            async with asyncio.timeout(5):
                await self._call.wait_for_connection()
                await self._call.code()  # streaming calls are not awaitable: wait for the status
        except (TimeoutError, grpc.RpcError, asyncio.InvalidStateError):
            self._call.cancel()


class TunnelClient:
    """The agent's side of the service: one channel, one control call, many sessions."""

    def __init__(self, channel: aio.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self._stub = pb_grpc.AgentTunnelStub(channel)
        # Session streams carry bytes both ways (see add_tunnel_service).
        self._session = channel.stream_stream(SESSION_METHOD, _registered_method=True)
        self._metadata = tuple(metadata)

    def open_control(self) -> ClientControl:
        return ClientControl(self._stub.Control(metadata=self._metadata))

    async def open_session(self, session_id: str) -> TunnelStream:
        call = self._session(metadata=self._metadata)
        await call.write(encode_session_bytes(SessionHello(session_id)))
        return TunnelStream(session_id, Role.AGENT, ClientWire(call))


def make_server() -> aio.Server:
    return aio.server(options=list(SERVER_OPTIONS))


def secure_channel(
    target: str, root_pem: bytes | None, *, server_name: str | None = None
) -> aio.Channel:
    """A TLS channel to `target`; `server_name`: verify the certificate for that name instead
    of the dialled host (a fleet member dialled by its own address presents the fleet's
    certificate, issued for the public name the agent key holds)."""
    creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
    options = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return aio.secure_channel(target, creds, options=options)


def insecure_channel(target: str) -> aio.Channel:
    return aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))


__all__ = [
    "CHANNEL_OPTIONS",
    "METADATA_AGENT",
    "METADATA_SECRET",
    "ClientControl",
    "ClientWire",
    "ProtocolViolation",
    "ServerControl",
    "ServerWire",
    "TunnelClient",
    "add_tunnel_service",
    "insecure_channel",
    "make_server",
    "secure_channel",
]
