"""The untagged first packet: exact bytes, round trips and every refusal by name."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given

from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.framing import MessageReader
from shared.pgwire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    encode_cancel_request,
    encode_gssenc_request,
    encode_ssl_request,
    encode_startup,
    parse_startup_packet,
    startup_packet_length,
)
from tests.shared.pgwire import strategies as pst


def packet(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!ii", 8 + len(body), code) + body


def test_special_requests_have_their_well_known_bytes() -> None:
    assert encode_ssl_request() == b"\0\0\0\x08\x04\xd2\x16\x2f"  # 80877103
    assert encode_gssenc_request() == b"\0\0\0\x08\x04\xd2\x16\x30"  # 80877104
    assert encode_cancel_request(42, b"\xff" * 4) == (
        b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x2a\xff\xff\xff\xff"  # 80877102
    )
    assert parse_startup_packet(encode_ssl_request()) == SSLRequest()
    assert parse_startup_packet(encode_gssenc_request()) == GSSENCRequest()
    assert parse_startup_packet(encode_cancel_request(42, b"\xff" * 4)) == CancelRequest(
        42, b"\xff" * 4
    )


@pytest.mark.parametrize("size", [4, 32, 256])
def test_cancel_keys_of_protocol_3_2_are_4_to_256_bytes(size: int) -> None:
    secret = bytes(range(256))[:size]
    wire = encode_cancel_request(7, secret)
    assert len(wire) == 12 + size
    request = parse_startup_packet(wire)
    assert request == CancelRequest(7, secret)
    assert secret.hex() not in repr(request) and f"{size} bytes" in repr(request)


def test_startup_message_bytes() -> None:
    wire = encode_startup({"user": "alice", "database": "db"})
    assert wire == packet(196608, b"user\0alice\0database\0db\0\0")
    parsed = parse_startup_packet(wire)
    assert parsed == StartupMessage({"user": "alice", "database": "db"})
    assert isinstance(parsed, StartupMessage)
    assert (parsed.user, parsed.database) == ("alice", "db")
    assert StartupMessage({"user": "bob"}).database == "bob"  # PostgreSQL's default


@given(pst.startup_messages())
def test_startup_message_round_trip(message: StartupMessage) -> None:
    wire = message.encode()
    assert startup_packet_length(wire[:4]) == len(wire)
    assert parse_startup_packet(wire) == message


def test_newer_minor_versions_decode_for_negotiation() -> None:
    parsed = parse_startup_packet(encode_startup({"user": "u", "_pq_.x": "1"}, (3, 2)))
    assert parsed == StartupMessage({"user": "u", "_pq_.x": "1"}, (3, 2))


def test_startup_packet_length() -> None:
    assert startup_packet_length(b"") is None
    assert startup_packet_length(b"\0\0\0") is None
    assert startup_packet_length(b"\0\0\0\x08") == 8
    assert startup_packet_length(struct.pack("!i", 10000)) == 10000
    for bad in (7, 0, -8, 10001, 2**31 - 1):
        with pytest.raises(RemoteProtocolError, match=f"length {bad} is outside"):
            startup_packet_length(struct.pack("!i", bad))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (packet(2 << 16), "unsupported protocol 2.0"),
        (packet(4 << 16 | 1, b"user\0u\0\0"), "unsupported protocol 4.1"),
        (packet(1234 << 16 | 5681), "unknown request code 1234.5681"),
        (packet(80877103, b"x"), "SSLRequest: length 9, expected 8"),
        (packet(80877104, b"x"), "GSSENCRequest: length 9, expected 8"),
        (packet(80877102, b"\0" * 7), "CancelRequest: length 15, expected 16 to 268"),
        (packet(80877102, b"\0" * 261), "CancelRequest: length 269, expected 16 to 268"),
        (packet(196608), "the last byte is not the NUL terminator"),
        (packet(196608, b"user\0u"), "the last byte is not the NUL terminator"),
        (packet(196608, b"user\0u\0"), "no empty name terminates the parameter list"),
        (packet(196608, b"user\0\0"), "no empty name terminates the parameter list"),
        (packet(196608, b"user\0\0\0"), "no user name given"),
        (packet(196608, b"database\0d\0\0"), "no user name given"),
        (packet(196608, b"user\0u\0\0x\0\0"), "empty parameter name before the end"),
        (packet(196608, b"user\0u\0user\0v\0\0"), "parameter 'user' given twice"),
        (packet(196608, b"user\0\xff\0\0"), "value of 'user': not valid UTF-8"),
        (packet(196608, b"\xc3\0u\0\0"), "name of parameter 1: not valid UTF-8"),
        (packet(196608, b"user\0u\0db\0"), "parameter 2 has no value"),
        (packet(196608, b"\0"), "no user name given"),
        (packet(196608, b"\0")[:-1] + b"\0\0", "length field says 9, the packet has 10"),
    ],
)
def test_malformed_startup_packets(wire: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        parse_startup_packet(wire)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: encode_startup({"database": "d"}), "no user name given"),
        (lambda: encode_startup({"user": "u", "": "x"}), "empty parameter name"),
        (lambda: encode_startup({"user": "u\0"}), "value of 'user': contains a NUL byte"),
        (lambda: encode_startup({"user": "u"}, (2, 0)), "protocol 2.0 is not 3.x"),
        (lambda: encode_startup({"user": "u" * 10000}), "more than 10000"),
        (lambda: encode_cancel_request(2**31, b"abcd"), "pid"),
        (lambda: encode_cancel_request(1, b"abc"), "secret: 3 bytes"),
        (lambda: encode_cancel_request(1, b"x" * 257), "secret: 257 bytes"),
    ],
)
def test_encoders_refuse_invalid_packets(call: Callable[[], object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        call()


def test_reader_frames_the_startup_packet_then_tagged_messages() -> None:
    # A client may pipeline its first query behind the startup packet: nothing is lost.
    startup = encode_startup({"user": "u"})
    query = b"Q\0\0\0\x0dselect 1\0"
    reader = MessageReader()
    reader.feed(startup[:3])
    assert reader.next_startup_packet() is None
    reader.feed(startup[3:] + query[:2])
    assert reader.next_startup_packet() == startup
    assert reader.next_message() is None
    reader.feed(query[2:])
    message = reader.next_message()
    assert message is not None
    assert message.raw == query


def test_bytes_behind_an_ssl_request_are_visible_to_the_driver() -> None:
    # CVE-2021-23214: bytes sent in cleartext behind SSLRequest must not be read as if they
    # arrived through TLS; the driver sees them in `buffered` and refuses.
    reader = MessageReader()
    reader.feed(encode_ssl_request() + b"Q\0\0\0\x05\0")
    packet_bytes = reader.next_startup_packet()
    assert packet_bytes is not None
    assert parse_startup_packet(packet_bytes) == SSLRequest()
    assert reader.buffered == 6


def test_reader_reads_the_one_byte_tls_answer() -> None:
    reader = MessageReader()
    assert reader.next_byte() is None
    reader.feed(b"S")
    assert reader.next_byte() == b"S"
    assert reader.buffered == 0


def test_reader_fails_for_good_on_a_bad_startup_length() -> None:
    reader = MessageReader()
    reader.feed(b"\0\0\0\x02")
    with pytest.raises(RemoteProtocolError, match="length 2"):
        reader.next_startup_packet()
    with pytest.raises(RemoteProtocolError, match="length 2"):
        reader.next_message()
