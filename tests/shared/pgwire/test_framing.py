"""MessageReader: chunking never matters, hostile lengths fail early, long streams stay linear."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.pgwire.backend import BackendMessage
from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.framing import Message, MessageReader, encode_message
from shared.pgwire.frontend import FrontendMessage
from tests.shared.pgwire import strategies as pst


def drain(reader: MessageReader) -> list[Message]:
    messages = []
    while (message := reader.next_message()) is not None:
        messages.append(message)
    return messages


def read_chunked(stream: bytes, cuts: list[int]) -> list[Message]:
    reader = MessageReader()
    messages: list[Message] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        reader.feed(stream[start:cut])
        messages += drain(reader)
        start = cut
    assert reader.buffered == 0
    return messages


STREAM_MESSAGES = [
    Message(b"Q", b"select 1\0"),
    Message(b"S", b""),
    Message(b"d", bytes(range(256)) * 3),
    Message(b"X", b""),
]
STREAM = b"".join(m.raw for m in STREAM_MESSAGES)


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        assert read_chunked(STREAM, [cut]) == STREAM_MESSAGES


def test_one_byte_at_a_time() -> None:
    assert read_chunked(STREAM, list(range(len(STREAM)))) == STREAM_MESSAGES


@settings(max_examples=300)
@given(
    st.lists(pst.frontend_messages | pst.backend_messages, max_size=12),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_random_chunking_reassembles_exactly(
    messages: list[FrontendMessage | BackendMessage], cuts: list[int]
) -> None:
    wires = [m.encode() for m in messages]
    stream = b"".join(wires)
    framed = read_chunked(stream, [c % (len(stream) + 1) for c in cuts])
    assert [m.raw for m in framed] == wires


def test_message_raw_is_the_original_bytes() -> None:
    wire = b"Q\0\0\0\x0dselect 1\0"
    reader = MessageReader()
    reader.feed(wire)
    message = reader.next_message()
    assert message == Message(b"Q", b"select 1\0")
    assert message.raw == message.encode() == wire


@pytest.mark.parametrize("length", [3, 0, -1, -(2**31)])
def test_lengths_below_four_are_refused(length: int) -> None:
    reader = MessageReader()
    reader.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(RemoteProtocolError, match=f"message b'Q': length {length} is outside"):
        reader.next_message()


def test_oversize_is_refused_before_the_body_arrives() -> None:
    reader = MessageReader(max_message_size=100)
    reader.feed(b"d" + struct.pack("!i", 100) + b"x" * 96)
    assert reader.next_message() == Message(b"d", b"x" * 96)
    reader.feed(b"d" + struct.pack("!i", 101))  # only the header: no need to wait for more
    with pytest.raises(RemoteProtocolError, match=r"length 101 is outside \[4, 100\]"):
        reader.next_message()


def test_default_limit_is_one_gib() -> None:
    reader = MessageReader()
    reader.feed(b"d" + struct.pack("!i", (1 << 30) + 1))
    with pytest.raises(RemoteProtocolError, match="outside"):
        reader.next_message()


def test_a_failed_reader_stays_failed() -> None:
    reader = MessageReader()
    reader.feed(b"Q\0\0\0\0")
    with pytest.raises(RemoteProtocolError):
        reader.next_message()
    reader.feed(b"S\0\0\0\x04")
    with pytest.raises(RemoteProtocolError):
        reader.next_message()
    assert reader.buffered == 5  # the bad header only: nothing more is held once out of sync


def test_bad_limits_and_types_are_local_errors() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        MessageReader(max_message_size=3)
    with pytest.raises(LocalProtocolError, match="1 byte"):
        encode_message(b"QQ", b"")
    with pytest.raises(LocalProtocolError, match="1 byte"):
        encode_message(b"", b"")


def test_buffered_and_take_buffered() -> None:
    reader = MessageReader()
    reader.feed(b"S\0\0\0\x04" + b"Q\0\0")
    assert reader.buffered == 8
    assert reader.next_message() == Message(b"S", b"")
    assert reader.buffered == 3
    assert reader.take_buffered() == b"Q\0\0"
    assert reader.buffered == 0


def test_large_messages_in_small_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: the view-based copy path
    wire = encode_message(b"d", body)
    reader = MessageReader()
    for i in range(0, len(wire), 1000):
        reader.feed(wire[i : i + 1000])
        if i + 1000 < len(wire):
            assert reader.next_message() is None
    assert reader.next_message() == Message(b"d", body)
    reader.feed(b"c\0\0\0\x04")  # the buffer can be resized again after the view
    assert reader.next_message() == Message(b"c", b"")


def test_many_small_messages_stay_linear() -> None:
    # 200k messages fed in 64 KiB chunks: quadratic buffer handling would take minutes.
    one = encode_message(b"D", b"\0\x01\0\0\0\x05hello")
    stream = one * 200_000
    reader = MessageReader()
    count = 0
    for i in range(0, len(stream), 65536):
        reader.feed(stream[i : i + 65536])
        count += len(drain(reader))
        assert reader.buffered < len(one)
    assert count == 200_000
