"""The SSH relay codec: hypothesis round trips, reassembly across payloads, and hostile input."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.sshwire import frames as f
from shared.sshwire.codec import MAX_FRAME, FrameDecoder, SshWireError, decode_body, encode

u32 = st.integers(min_value=0, max_value=2**32 - 1)
text = st.text(max_size=40)
blob = st.binary(max_size=300)
_STRATEGY = {"int": u32, "str": text, "bytes": blob, "bool": st.booleans()}
frame_types = [
    f.ChannelOpen, f.OpenResult, f.PtyRequest, f.EnvRequest, f.ShellRequest, f.ExecRequest,
    f.SubsystemRequest, f.RequestResult, f.WindowChange, f.SignalRequest, f.ChannelData,
    f.ExtendedData, f.Eof, f.ExitStatus, f.ExitSignal, f.ChannelClose, f.WindowAdjust,
]  # fmt: skip


def _frame_strategy(cls: type) -> st.SearchStrategy[f.Frame]:
    fields = {fl.name: _STRATEGY[str(fl.type)] for fl in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


frames = st.one_of(*(_frame_strategy(cls) for cls in frame_types))


@given(st.lists(frames, max_size=12), st.integers(min_value=1, max_value=64))
def test_round_trip_across_any_split(items: list[f.Frame], step: int) -> None:
    wire = b"".join(encode(x) for x in items)
    decoder = FrameDecoder()
    out: list[f.Frame] = []
    for i in range(0, len(wire), step):
        decoder.receive_data(wire[i : i + step])
        out.extend(decoder.frames())
    assert out == items
    assert decoder.buffered == 0


@given(st.binary(max_size=200))
def test_garbage_is_a_clean_error_or_nothing(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    try:
        decoder.frames()
    except SshWireError:
        with pytest.raises(SshWireError):  # and it stays broken
            decoder.next_frame()


def test_oversized_unknown_truncated_and_trailing_are_refused() -> None:
    decoder = FrameDecoder()
    decoder.receive_data((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(SshWireError, match="exceeds"):
        decoder.next_frame()
    with pytest.raises(SshWireError, match="unknown frame type"):
        decode_body(b"\xff")
    body = encode(f.ExecRequest(1, 2, b"ls"))[4:]
    with pytest.raises(SshWireError, match="truncated"):
        decode_body(body[:-1])
    with pytest.raises(SshWireError, match="trailing"):
        decode_body(body + b"x")
    with pytest.raises(SshWireError, match="UTF-8"):
        decode_body(bytes((10,)) + (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\xff")


def test_values_that_do_not_fit_are_our_error() -> None:
    with pytest.raises(ValueError, match="u32"):
        encode(f.ExitStatus(1, -1))


def test_windows_count_credit_and_acknowledge_in_quarters() -> None:
    from shared.sshwire.window import ReceiveWindow, SendWindow, WindowError

    send = SendWindow(available=100, size=100)
    assert send.can_send(100)
    send.consume(100)
    assert not send.can_send(1)
    send.adjust(40)
    assert send.can_send(40) and not send.can_send(41)
    with pytest.raises(WindowError):
        send.adjust(61)
    receive = ReceiveWindow(size=100)
    assert [receive.delivered(10), receive.delivered(10), receive.delivered(5)] == [0, 0, 25]
