"""Round trips of every frame through protobuf, and garbage decoding (fuzzed)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from shared.masking.spec import MaskRule, MaskSpec, Strategy
from shared.pb import tunnel_pb2 as pb
from shared.tunnel.codec import (
    FrameError,
    decode_agent_control,
    decode_forward_open,
    decode_gateway_control,
    decode_session,
    decode_session_bytes,
    encode_agent_control,
    encode_data_bytes,
    encode_forward_open,
    encode_gateway_control,
    encode_session,
    encode_session_bytes,
)
from shared.tunnel.frames import (
    Close,
    Data,
    ForwardOpen,
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
    SessionHello,
    Signal,
    SignalKind,
    Target,
    Welcome,
    WindowUpdate,
)

text = st.text(max_size=40)
codes = st.sampled_from(list(ResetCode))
u64 = st.integers(min_value=0, max_value=2**64 - 1)

session_frames = st.one_of(
    st.builds(SessionHello, text),
    st.builds(OpenResult, st.booleans(), codes, text),
    st.builds(Data, st.binary(max_size=2048)),
    st.builds(
        Data,
        st.binary(max_size=2048),
        st.lists(st.tuples(text, text, u64), min_size=1, max_size=4).map(tuple),
    ),
    st.just(Close()),
    st.builds(Reset, codes, text),
    st.builds(Signal, st.sampled_from(list(SignalKind))),
    st.builds(Signal, st.sampled_from(list(SignalKind)), u64),
    st.builds(WindowUpdate, st.integers(0, 2**32 - 1)),
    st.builds(MaskReport, st.lists(st.tuples(text, text, u64), max_size=4).map(tuple)),
)
mask_specs = st.builds(
    MaskSpec,
    st.lists(
        st.builds(
            MaskRule,
            text,
            st.sampled_from(list(Strategy)),
            st.lists(text, max_size=3).map(tuple),
            st.lists(text, max_size=3).map(tuple),
            st.lists(text, max_size=2).map(tuple),
        ),
        max_size=3,
    ).map(tuple),
    st.binary(max_size=32),
)
targets = st.builds(
    Target,
    text,
    text,
    text,
    st.integers(min_value=0, max_value=65535),
    st.dictionaries(text, text, max_size=3),
    st.dictionaries(text, st.one_of(text, st.binary(max_size=32)), max_size=3),
    mask_specs,
)


@given(session_frames)
def test_session_frames_round_trip(frame: object) -> None:
    wire = encode_session(frame).SerializeToString()  # type: ignore[arg-type]
    assert decode_session(pb.SessionFrame.FromString(wire)) == frame


@given(session_frames)
def test_session_bytes_are_what_protobuf_writes_and_reads(frame: object) -> None:
    # The hand-written Data path and protobuf agree both ways, so either end may use either.
    wire = encode_session_bytes(frame)  # type: ignore[arg-type]
    assert wire == encode_session(frame).SerializeToString()  # type: ignore[arg-type]
    assert decode_session_bytes(wire) == frame
    assert decode_session(pb.SessionFrame.FromString(wire)) == frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 128, 16383, 16384, 2**17, 256 * 1024])
def test_data_bytes_at_varint_boundaries(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = encode_data_bytes(payload)
    assert wire == pb.SessionFrame(data=pb.Data(payload=payload)).SerializeToString()
    assert encode_data_bytes(memoryview(payload)) == wire
    assert decode_session_bytes(wire) == Data(payload)


def test_data_frame_in_another_shape_still_decodes_like_protobuf() -> None:
    # Valid protobuf a hand-written Data reader could get wrong: a repeated field (the last
    # one wins), a non-minimal length varint, an unknown field inside Data.
    two = encode_data_bytes(b"first") + encode_data_bytes(b"second")
    padded = b"\x1a\x85\x00\x0a\x03abc"
    extra = b"\x1a\x07\x0a\x03abc\x10\x01"
    for raw in (two, padded, extra):
        assert decode_session_bytes(raw) == decode_session(pb.SessionFrame.FromString(raw))


@given(st.binary(max_size=512))
def test_garbage_session_bytes_decode_or_raise_frame_error(raw: bytes) -> None:
    with contextlib.suppress(FrameError):
        frame = decode_session_bytes(raw)
        assert frame == decode_session(pb.SessionFrame.FromString(raw))


@given(
    st.one_of(
        st.builds(
            Hello,
            text,
            text,
            st.integers(0, 2**32 - 1),
            st.lists(text, max_size=3).map(tuple),
            text,
        ),
        st.builds(Ping, u64),
        st.builds(Pong, u64),
    )
)
def test_agent_control_round_trips(frame: object) -> None:
    wire = encode_agent_control(frame).SerializeToString()  # type: ignore[arg-type]
    assert decode_agent_control(pb.AgentControl.FromString(wire)) == frame


@given(
    st.one_of(
        st.builds(Welcome, text, text, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.builds(
            Welcome,
            text,
            text,
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.lists(text, max_size=3).map(tuple),
            text,
        ),
        st.builds(Members, st.lists(text, max_size=3).map(tuple)),
        st.builds(OpenSession, text, targets),
        st.builds(OpenSession, text, targets, st.integers(0, 2**32 - 1), st.booleans()),
        st.builds(
            OpenSession, text, targets, st.integers(0, 2**32 - 1), st.booleans(), st.booleans()
        ),
        st.builds(Ping, u64),
        st.builds(Pong, u64),
        st.builds(Goodbye, codes, text),
    )
)
def test_gateway_control_round_trips(frame: object) -> None:
    wire = encode_gateway_control(frame).SerializeToString()  # type: ignore[arg-type]
    decoded = decode_gateway_control(pb.GatewayControl.FromString(wire))
    if isinstance(frame, OpenSession):
        assert isinstance(decoded, OpenSession)
        assert decoded.session_id == frame.session_id
        negotiated = (decoded.window, decoded.signal_acks, decoded.data_reports)
        assert negotiated == (frame.window, frame.signal_acks, frame.data_reports)
        assert dict(decoded.target.secrets) == dict(frame.target.secrets)
        assert dict(decoded.target.options) == dict(frame.target.options)
        # An empty spec travels as "unset": the agent's fast path.
        assert decoded.target.masking.rules == frame.target.masking.rules
        if frame.target.masking.rules:
            assert decoded.target.masking == frame.target.masking
    else:
        assert decoded == frame


@given(text, text, targets, st.booleans())
def test_forward_open_round_trips(
    session_id: str, pool: str, target: Target, reports: bool
) -> None:
    decoded = decode_forward_open(
        encode_forward_open(ForwardOpen(session_id, pool, target, reports))
    )
    assert (decoded.session_id, decoded.pool, decoded.data_reports) == (session_id, pool, reports)
    assert dict(decoded.target.secrets) == dict(target.secrets)


def test_a_data_frame_with_a_report_leaves_the_payload_fast_path() -> None:
    # An older gateway parses it as Data and skips the unknown report field: hence the
    # agent reports in Data only when OpenSession.data_reports says the gateway reads it.
    frame = Data(b"row", (("t.card", "column", 2),))
    wire = encode_session_bytes(frame)
    assert wire != encode_data_bytes(b"row")
    assert decode_session_bytes(wire) == frame
    assert pb.SessionFrame.FromString(wire).data.payload == b"row"


def test_unknown_reset_code_from_a_newer_peer_decodes_as_unspecified() -> None:
    message = pb.SessionFrame(reset=pb.Reset(code=999, message="new"))  # type: ignore[arg-type]
    assert decode_session(message) == Reset(ResetCode.UNSPECIFIED, "new")


def test_empty_frame_is_an_error() -> None:
    with pytest.raises(FrameError):
        decode_session(pb.SessionFrame())
    with pytest.raises(FrameError):
        decode_gateway_control(pb.GatewayControl())
    with pytest.raises(FrameError):
        decode_agent_control(pb.AgentControl())


def test_target_repr_never_shows_secret_values() -> None:
    t = Target("db", "postgres", "h", 5432, {}, {"password": b"hunter2", "token": "env:TOK"})
    assert "hunter2" not in repr(t) and "env:TOK" not in repr(t)
    spec = MaskSpec((MaskRule("r", Strategy.TOKEN, ("email",)),), b"token-key-bytes")
    assert "token-key-bytes" not in repr(spec)


def test_masking_rule_with_an_unknown_strategy_is_a_frame_error() -> None:
    target = pb.Target(connection="db", type="postgres")
    target.masking.rules.add(name="r", strategy=cast("pb.MaskStrategy.ValueType", 99))
    with pytest.raises(FrameError):
        decode_gateway_control(
            pb.GatewayControl(open_session=pb.OpenSession(session_id="s", target=target))
        )


DECODERS: list[tuple[Any, Callable[[Any], object]]] = [
    (pb.SessionFrame, decode_session),
    (pb.AgentControl, decode_agent_control),
    (pb.GatewayControl, decode_gateway_control),
]


@given(st.binary(max_size=512))
def test_garbage_bytes_either_fail_to_parse_or_decode_or_raise_frame_error(raw: bytes) -> None:
    for message_type, decode in DECODERS:
        try:
            message = message_type.FromString(raw)
        except DecodeError:
            continue
        with contextlib.suppress(FrameError):
            decode(message)
