"""Fuzzing every decoder that reads untrusted bytes: only PgProtocolError may come out.

Three kinds of input: raw random bytes (the framer's view), a valid type byte with a random
body (reaches deep into each decoder), and valid messages with one byte changed or the body cut
short (near misses, where off-by-one bugs live).
"""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.pgwire import backend as be
from shared.pgwire import frontend as fe
from shared.pgwire.auth import ScramSha256Client
from shared.pgwire.errors import PgProtocolError
from shared.pgwire.framing import Message, MessageReader
from shared.pgwire.startup import parse_startup_packet
from tests.shared.pgwire import strategies as pst

FRONTEND_TYPES = b"QPBDECSHXdcfpF"
BACKEND_TYPES = b"RSKZvTDCENI123nstGHWdcAV"
ALL_TYPES = st.sampled_from(sorted(set(FRONTEND_TYPES + BACKEND_TYPES + b"?\0\xff")))


def decode_everything(message: Message) -> None:
    """Run every decoder that could see ``message``; each may only refuse it properly."""
    for decode in (fe.decode_frontend, be.decode_backend):
        try:
            decoded = decode(message)
        except PgProtocolError:
            continue
        if isinstance(decoded, fe.PasswordMessage):
            with contextlib.suppress(PgProtocolError):
                fe.decode_sasl_initial_response(decoded)
            fe.decode_sasl_response(decoded)  # any body is SASL data
            with contextlib.suppress(PgProtocolError):
                _ = decoded.password
        if isinstance(decoded, be.CommandComplete):
            _ = decoded.rows


@settings(max_examples=500)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_random_stream_through_reader_and_decoders(data: bytes, chunk: int) -> None:
    reader = MessageReader(max_message_size=1 << 16)
    try:
        for i in range(0, len(data), chunk):
            reader.feed(data[i : i + chunk])
            while (message := reader.next_message()) is not None:
                decode_everything(message)
    except PgProtocolError:
        pass


@settings(max_examples=500)
@given(ALL_TYPES, st.binary(max_size=120))
def test_random_bodies(type_byte: int, body: bytes) -> None:
    decode_everything(Message(bytes((type_byte,)), body))


@settings(max_examples=500)
@given(
    pst.frontend_messages | pst.backend_messages,
    st.integers(0, 10_000),
    st.integers(0, 255),
    st.booleans(),
)
def test_near_miss_messages(
    message: fe.FrontendMessage | be.BackendMessage, where: int, byte: int, truncate: bool
) -> None:
    wire = message.encode()
    body = wire[5:]
    if body:
        i = where % len(body)
        body = body[:i] if truncate else body[:i] + bytes((byte,)) + body[i + 1 :]
    decode_everything(Message(wire[:1], body))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_startup_packets(data: bytes) -> None:
    with contextlib.suppress(PgProtocolError):
        parse_startup_packet(data)


@settings(max_examples=500)
@given(
    st.sampled_from([196608, 131072, 80877102, 80877103, 80877104, 1234 << 16, 3 << 16 | 7]),
    st.binary(max_size=120),
)
def test_startup_packets_with_plausible_codes(code: int, body: bytes) -> None:
    with contextlib.suppress(PgProtocolError):
        parse_startup_packet(struct.pack("!ii", 8 + len(body), code) + body)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_startup_stream_through_reader(data: bytes) -> None:
    reader = MessageReader()
    reader.feed(data)
    try:
        packet = reader.next_startup_packet()
        if packet is not None:
            parse_startup_packet(packet)
    except PgProtocolError:
        pass


@settings(max_examples=300)
@given(
    st.binary(max_size=120)
    | st.builds(
        lambda r, s, i: f"r=abc{r},s={s},i={i}".encode(),
        pst.utf8_text,
        pst.utf8_text,
        # Iteration counts: small numbers or non-numbers. A valid count near the 10M cap
        # would make each example spend seconds in PBKDF2.
        st.integers(-5, 5000).map(str) | st.text(st.characters(exclude_categories=("Nd", "Cs"))),
    ),
    st.binary(max_size=80),
)
def test_scram_client_parses_hostile_server_messages(server_first: bytes, final: bytes) -> None:
    client = ScramSha256Client(b"pw", ["SCRAM-SHA-256"], nonce="abc")
    client.client_first()
    try:
        client.client_final(server_first)
        client.verify_server_final(final)
    except PgProtocolError:
        pass
