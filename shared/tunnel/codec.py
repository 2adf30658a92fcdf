"""Frames <-> protobuf. The only module outside shared.pb that knows the wire types.

Decoding dispatches on the oneof name through a table; an unset or unknown oneof (a newer
peer, or garbage) raises FrameError, which the caller turns into a protocol-error reset.

Session streams travel as serialized bytes (`encode_session_bytes` / `decode_session_bytes`):
a Data frame, nearly every message, is written and read by hand, byte for byte what protobuf
would produce, because building and serializing the protobuf objects cost more than the rest
of the tunnel's Python per message (and ~300 us per 256 KiB frame: protobuf copies the
payload several times). Every other frame, and any Data frame not in the plain shape, goes
through protobuf, so a peer using the generated stubs interoperates unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from google.protobuf.message import DecodeError

from shared.masking.spec import MaskRule, MaskSpec, Strategy
from shared.pb import tunnel_pb2 as pb
from shared.tunnel.frames import (
    AgentControl,
    Close,
    Data,
    ForwardAnswer,
    ForwardOpen,
    GatewayControl,
    Goodbye,
    Hello,
    MaskReport,
    Members,
    OpenResult,
    OpenSession,
    Ping,
    Pong,
    Reset,
    ResetCode,
    SessionFrame,
    SessionHello,
    Signal,
    SignalKind,
    Target,
    Welcome,
    WindowUpdate,
)


class FrameError(ValueError):
    """The peer sent a message that is not a frame we understand."""


def _wire_code(code: ResetCode) -> pb.ResetCode.ValueType:
    return cast("pb.ResetCode.ValueType", int(code))


def _code(value: int) -> ResetCode:
    try:
        return ResetCode(value)
    except ValueError:
        return ResetCode.UNSPECIFIED


# ---- session frames (the hot path: keep these lean) -----------------------------------

_CLOSE = pb.SessionFrame(close=pb.Close())


def encode_session(frame: SessionFrame) -> pb.SessionFrame:
    if isinstance(frame, Data):
        if frame.report:
            report = pb.MaskReport(counts=_mask_counts(frame.report))
            return pb.SessionFrame(data=pb.Data(payload=frame.payload, report=report))
        return pb.SessionFrame(data=pb.Data(payload=frame.payload))
    if isinstance(frame, Close):
        return _CLOSE
    if isinstance(frame, Reset):
        return pb.SessionFrame(reset=pb.Reset(code=_wire_code(frame.code), message=frame.message))
    if isinstance(frame, OpenResult):
        return pb.SessionFrame(
            open_result=pb.OpenResult(
                ok=frame.ok, code=_wire_code(frame.code), message=frame.message
            )
        )
    if isinstance(frame, WindowUpdate):
        return pb.SessionFrame(window_update=pb.WindowUpdate(increment=frame.increment))
    if isinstance(frame, Signal):
        kind = cast("pb.SignalKind.ValueType", int(frame.kind))
        return pb.SessionFrame(signal=pb.Signal(kind=kind, id=frame.id))
    if isinstance(frame, MaskReport):
        return pb.SessionFrame(mask_report=pb.MaskReport(counts=_mask_counts(frame.counts)))
    return pb.SessionFrame(hello=pb.SessionHello(session_id=frame.session_id))


def _mask_counts(counts: tuple[tuple[str, str, int], ...]) -> list[pb.MaskCount]:
    return [pb.MaskCount(column=c, detector=d, count=n) for c, d, n in counts]


def _counts(report: pb.MaskReport) -> tuple[tuple[str, str, int], ...]:
    return tuple((c.column, c.detector, c.count) for c in report.counts)


_SESSION_DECODERS: dict[str, Callable[[Any], SessionFrame]] = {
    # Only frames with more than a payload get here (`decode_session_bytes`).
    "data": lambda m: Data(m.data.payload, _counts(m.data.report)),
    "close": lambda m: Close(),
    "reset": lambda m: Reset(_code(m.reset.code), m.reset.message),
    "open_result": lambda m: OpenResult(
        m.open_result.ok, _code(m.open_result.code), m.open_result.message
    ),
    "hello": lambda m: SessionHello(m.hello.session_id),
    "signal": lambda m: Signal(_signal_kind(m.signal.kind), m.signal.id),
    "window_update": lambda m: WindowUpdate(m.window_update.increment),
    "mask_report": lambda m: MaskReport(_counts(m.mask_report)),
}


def _signal_kind(value: int) -> SignalKind:
    try:
        return SignalKind(value)
    except ValueError:
        return SignalKind.UNSPECIFIED


def decode_session(message: pb.SessionFrame) -> SessionFrame:
    kind = message.WhichOneof("frame")
    decoder = _SESSION_DECODERS.get(kind or "")
    if decoder is None:
        raise FrameError(f"session frame without a known kind ({kind!r})")
    return decoder(message)


# SessionFrame.data is field 3, Data.payload field 1, both length-delimited (wire type 2).
_DATA_TAG = 0x1A
_PAYLOAD_TAG = 0x0A


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_data_bytes(payload: bytes | bytearray | memoryview) -> bytes:
    """The serialized SessionFrame(data=Data(payload)), without protobuf objects."""
    n = len(payload)
    if n == 0:
        return b"\x1a\x00"  # proto3 leaves an empty bytes field out
    if n < 0x7E:  # both lengths fit one varint byte: the small-message case
        return bytes((_DATA_TAG, n + 2, _PAYLOAD_TAG, n)) + payload
    inner = _varint(n)
    return b"".join(
        (bytes((_DATA_TAG,)), _varint(1 + len(inner) + n), bytes((_PAYLOAD_TAG,)), inner, payload)
    )


def encode_session_bytes(frame: SessionFrame) -> bytes:
    if type(frame) is Data and not frame.report:
        return encode_data_bytes(frame.payload)
    return bytes(encode_session(frame).SerializeToString())


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    """(value, next offset); (-1, at) when not a complete varint of at most 5 bytes."""
    value = shift = 0
    for i in range(at, min(at + 5, len(raw))):
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return -1, at


def _data_payload(raw: bytes) -> bytes | None:
    """The payload when `raw` is exactly one data field holding exactly one payload field
    (what every encoder writes), else None: then protobuf parses it, with all its rules."""
    if len(raw) < 4 or raw[0] != _DATA_TAG:
        return None
    if raw[1] < 0x80:  # a small frame: both lengths are one byte
        if raw[1] == len(raw) - 2 and raw[2] == _PAYLOAD_TAG and raw[3] == len(raw) - 4:
            return raw[4:]
        if raw[3] < 0x80:
            return None  # some other shape: protobuf decides
    outer, at = _read_varint(raw, 1)
    if outer < 2 or outer != len(raw) - at or raw[at] != _PAYLOAD_TAG:
        return None
    inner, start = _read_varint(raw, at + 1)
    if inner != len(raw) - start:
        return None
    return raw[start:]


def decode_session_bytes(raw: bytes) -> SessionFrame:
    payload = _data_payload(raw)
    if payload is not None:
        return Data(payload)
    try:
        message = pb.SessionFrame.FromString(raw)
    except DecodeError as exc:
        raise FrameError(f"session frame does not parse: {exc}") from None
    return decode_session(message)


# ---- control frames -------------------------------------------------------------------


def encode_agent_control(frame: AgentControl) -> pb.AgentControl:
    if isinstance(frame, Hello):
        return pb.AgentControl(
            hello=pb.Hello(
                agent_name=frame.agent_name,
                version=frame.version,
                protocol_version=frame.protocol_version,
                capabilities=list(frame.capabilities),
                instance_id=frame.instance_id,
            )
        )
    if isinstance(frame, Ping):
        return pb.AgentControl(ping=pb.Ping(nonce=frame.nonce))
    return pb.AgentControl(pong=pb.Pong(nonce=frame.nonce))


def decode_agent_control(message: pb.AgentControl) -> AgentControl:
    kind = message.WhichOneof("frame")
    if kind == "hello":
        h = message.hello
        return Hello(
            agent_name=h.agent_name,
            version=h.version,
            protocol_version=h.protocol_version,
            capabilities=tuple(h.capabilities),
            instance_id=h.instance_id,
        )
    if kind == "ping":
        return Ping(message.ping.nonce)
    if kind == "pong":
        return Pong(message.pong.nonce)
    raise FrameError(f"agent control frame without a known kind ({kind!r})")


def _encode_target(t: Target) -> pb.Target:
    secrets = {
        name: pb.Secret(reference=v) if isinstance(v, str) else pb.Secret(value=v)
        for name, v in t.secrets.items()
    }
    target = pb.Target(
        connection=t.connection,
        type=t.type,
        host=t.host,
        port=t.port,
        options=dict(t.options),
        secrets=secrets,
    )
    if not t.masking.empty:
        target.masking.CopyFrom(_encode_masking(t.masking))
    return target


def _encode_masking(spec: MaskSpec) -> pb.Masking:
    return pb.Masking(
        rules=[
            pb.MaskingRule(
                name=r.name,
                strategy=cast("pb.MaskStrategy.ValueType", int(r.strategy)),
                columns=list(r.columns),
                detectors=list(r.detectors),
                patterns=list(r.patterns),
            )
            for r in spec.rules
        ],
        token_key=spec.token_key,
    )


def _decode_masking(m: pb.Masking) -> MaskSpec:
    rules = []
    for r in m.rules:
        try:
            strategy = Strategy(r.strategy)
        except ValueError:
            raise FrameError(f"masking rule {r.name!r} has an unknown strategy") from None
        rules.append(
            MaskRule(r.name, strategy, tuple(r.columns), tuple(r.detectors), tuple(r.patterns))
        )
    return MaskSpec(tuple(rules), m.token_key)


def _decode_target(t: pb.Target) -> Target:
    secrets: dict[str, str | bytes] = {}
    for name, s in t.secrets.items():
        source = s.WhichOneof("source")
        if source == "reference":
            secrets[name] = s.reference
        elif source == "value":
            secrets[name] = s.value
        else:
            raise FrameError(f"secret {name!r} has neither a reference nor a value")
    masking = _decode_masking(t.masking) if t.HasField("masking") else MaskSpec()
    return Target(t.connection, t.type, t.host, t.port, dict(t.options), secrets, masking)


def encode_gateway_control(frame: GatewayControl) -> pb.GatewayControl:
    if isinstance(frame, OpenSession):
        return pb.GatewayControl(
            open_session=pb.OpenSession(
                session_id=frame.session_id,
                target=_encode_target(frame.target),
                window=frame.window,
                signal_acks=frame.signal_acks,
                data_reports=frame.data_reports,
            )
        )
    if isinstance(frame, Ping):
        return pb.GatewayControl(ping=pb.Ping(nonce=frame.nonce))
    if isinstance(frame, Pong):
        return pb.GatewayControl(pong=pb.Pong(nonce=frame.nonce))
    if isinstance(frame, Welcome):
        return pb.GatewayControl(
            welcome=pb.Welcome(
                gateway_version=frame.gateway_version,
                protocol_version=frame.protocol_version,
                pool=frame.pool,
                ping_interval_ms=frame.ping_interval_ms,
                members=list(frame.members),
                member=frame.member,
            )
        )
    if isinstance(frame, Members):
        return pb.GatewayControl(members=pb.Members(addresses=list(frame.addresses)))
    return pb.GatewayControl(goodbye=pb.Goodbye(code=_wire_code(frame.code), message=frame.message))


def decode_gateway_control(message: pb.GatewayControl) -> GatewayControl:
    kind = message.WhichOneof("frame")
    if kind == "open_session":
        o = message.open_session
        return OpenSession(
            o.session_id, _decode_target(o.target), o.window, o.signal_acks, o.data_reports
        )
    if kind == "ping":
        return Ping(message.ping.nonce)
    if kind == "pong":
        return Pong(message.pong.nonce)
    if kind == "welcome":
        w = message.welcome
        return Welcome(
            w.gateway_version,
            w.pool,
            w.ping_interval_ms,
            w.protocol_version,
            tuple(w.members),
            w.member,
        )
    if kind == "members":
        return Members(tuple(message.members.addresses))
    if kind == "goodbye":
        return Goodbye(_code(message.goodbye.code), message.goodbye.message)
    raise FrameError(f"gateway control frame without a known kind ({kind!r})")


# ---- member links ----------------------------------------------------------------------


def encode_forward_open(frame: ForwardOpen) -> bytes:
    message = pb.ForwardOpen(
        session_id=frame.session_id,
        pool=frame.pool,
        target=_encode_target(frame.target),
        data_reports=frame.data_reports,
    )
    return message.SerializeToString()


def decode_forward_open(raw: bytes) -> ForwardOpen:
    try:
        message = pb.ForwardOpen.FromString(raw)
    except DecodeError as exc:
        raise FrameError(f"undecodable ForwardOpen: {exc}") from None
    return ForwardOpen(
        message.session_id, message.pool, _decode_target(message.target), message.data_reports
    )


def encode_forward_answer(frame: ForwardAnswer) -> bytes:
    message = pb.ForwardAnswer(
        ok=frame.ok,
        code=_wire_code(frame.code),
        message=frame.message,
        elsewhere=frame.elsewhere,
        agent=frame.agent,
        window=frame.window,
        signal_acks=frame.signal_acks,
    )
    return message.SerializeToString()


def decode_forward_answer(raw: bytes) -> ForwardAnswer:
    try:
        m = pb.ForwardAnswer.FromString(raw)
    except DecodeError as exc:
        raise FrameError(f"undecodable ForwardAnswer: {exc}") from None
    return ForwardAnswer(
        m.ok, _code(m.code), m.message, m.elsewhere, m.agent, m.window, m.signal_acks
    )
