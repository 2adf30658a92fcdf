"""Client-to-server messages: exact wire bytes, round trips, strict encoders, redaction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.framing import Message, MessageReader
from shared.pgwire.frontend import (
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FrontendMessage,
    FunctionCall,
    Parse,
    PasswordMessage,
    Query,
    SASLInitialResponse,
    SASLResponse,
    Sync,
    Terminate,
    decode_frontend,
    decode_sasl_initial_response,
    decode_sasl_response,
    password_message,
)
from tests.shared.pgwire import strategies as pst


def frame(data: bytes) -> Message:
    """The single message ``data`` holds, through the real framer."""
    reader = MessageReader()
    reader.feed(data)
    msg = reader.next_message()
    assert msg is not None
    assert reader.buffered == 0
    return msg


def decode(data: bytes) -> FrontendMessage:
    return decode_frontend(frame(data))


# (message, exact wire bytes) - written out by hand from the protocol documentation.
WIRE_CASES: list[tuple[FrontendMessage, bytes]] = [
    (Query("select 1"), b"Q\0\0\0\x0dselect 1\0"),
    (Parse("s1", "select $1", (23,)), b"P\0\0\0\x17s1\0select $1\0\0\x01\0\0\0\x17"),
    (
        Bind("", "s1", (1,), (b"\0\0\0\x2a", None), (0, 1)),
        b"B\0\0\0\x20\0s1\0\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x2a\xff\xff\xff\xff\0\x02\0\0\0\x01",
    ),
    (Describe("S", "s1"), b"D\0\0\0\x08Ss1\0"),
    (Describe("P"), b"D\0\0\0\x06P\0"),
    (Execute("", 0), b"E\0\0\0\x09\0\0\0\0\0"),
    (Execute("p", 100), b"E\0\0\0\x0ap\0\0\0\0\x64"),
    (Close("P", "p"), b"C\0\0\0\x07Pp\0"),
    (Sync(), b"S\0\0\0\x04"),
    (Flush(), b"H\0\0\0\x04"),
    (Terminate(), b"X\0\0\0\x04"),
    (CopyData(b"1\t2\n"), b"d\0\0\0\x081\t2\n"),
    (CopyDone(), b"c\0\0\0\x04"),
    (CopyFail("no"), b"f\0\0\0\x07no\0"),
    (PasswordMessage(b"secret\0"), b"p\0\0\0\x0bsecret\0"),
    (FunctionCall(1598, b"\0\0"), b"F\0\0\0\x0a\0\0\x06\x3e\0\0"),
]


@pytest.mark.parametrize(("message", "wire"), WIRE_CASES, ids=lambda v: type(v).__name__)
def test_wire_bytes_and_round_trip(message: FrontendMessage, wire: bytes) -> None:
    assert message.encode() == wire
    assert decode(wire) == message
    assert frame(wire).raw == wire


@settings(max_examples=300)
@given(pst.frontend_messages)
def test_every_message_round_trips(message: FrontendMessage) -> None:
    wire = message.encode()
    assert decode(wire) == message
    assert decode(wire).encode() == wire


@given(pst.ctext)
def test_query_round_trip(text: str) -> None:
    assert decode(Query(text).encode()) == Query(text)


@given(pst.ctext, pst.ctext, st.lists(pst.uint32, max_size=70).map(tuple))
def test_parse_round_trip(name: str, query: str, types: tuple[int, ...]) -> None:
    assert decode(Parse(name, query, types).encode()) == Parse(name, query, types)


@given(pst.binds())
def test_bind_with_nulls_round_trip(bind: Bind) -> None:
    assert decode(bind.encode()) == bind


def test_bind_distinguishes_null_from_empty() -> None:
    bind = Bind("", "", (), (None, b"", None), ())
    assert decode(bind.encode()) == bind


def test_bind_allows_65535_parameters() -> None:
    # PostgreSQL reads the count unsigned; libpq sends up to 65535 parameters.
    bind = Bind("", "", (), (None,) * 65535, ())
    decoded = decode(bind.encode())
    assert isinstance(decoded, Bind)
    assert len(decoded.params) == 65535


def test_sasl_messages_round_trip_through_password_message() -> None:
    initial = SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    decoded = decode(initial.encode())
    assert isinstance(decoded, PasswordMessage)
    assert decode_sasl_initial_response(decoded) == initial
    empty = SASLInitialResponse("X", None)
    decoded = decode(empty.encode())
    assert isinstance(decoded, PasswordMessage)
    assert decode_sasl_initial_response(decoded) == empty

    response = SASLResponse(b"c=biws,r=abcdef,p=xyz")
    decoded = decode(response.encode())
    assert isinstance(decoded, PasswordMessage)
    assert decode_sasl_response(decoded) == response


def test_sasl_initial_response_rejects_bad_length() -> None:
    with pytest.raises(RemoteProtocolError, match="data length"):
        decode_sasl_initial_response(PasswordMessage(b"M\0\xff\xff\xff\xfe"))
    with pytest.raises(RemoteProtocolError, match="SASLInitialResponse: data"):
        decode_sasl_initial_response(PasswordMessage(b"M\0\0\0\0\x09abc"))


def test_password_message_helpers() -> None:
    assert password_message(b"hunter2") == b"p\0\0\0\x0chunter2\0"
    decoded = decode(password_message(b"hunter2"))
    assert isinstance(decoded, PasswordMessage)
    assert decoded.password == b"hunter2"
    with pytest.raises(LocalProtocolError, match="NUL"):
        password_message(b"a\0b")


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    secret = b"hunter2-very-secret"
    for message in (
        PasswordMessage(secret + b"\0"),
        SASLInitialResponse("SCRAM-SHA-256", secret),
        SASLResponse(secret),
    ):
        assert "hunter2" not in repr(message)
        assert "hunter2" not in str(message)
    with pytest.raises(RemoteProtocolError) as excinfo:
        _ = PasswordMessage(secret).password  # no terminator
    assert "hunter2" not in str(excinfo.value)
    with pytest.raises(RemoteProtocolError) as excinfo:
        _ = PasswordMessage(b"hunter2\0x\0").password  # embedded NUL
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"Q\0\0\0\x08abcd", "Query: text: string is not NUL-terminated"),
        (b"Q\0\0\0\x08ab\0c", "Query: 1 unexpected trailing bytes"),
        (b"Q\0\0\0\x07\xff\xfe\0", "Query: text: not valid UTF-8"),
        (b"D\0\0\0\x06X\0", "Describe: kind: byte 0x58 is neither 'S' nor 'P'"),
        (b"S\0\0\0\x05x", "Sync: 1 unexpected bytes"),
        (b"B\0\0\0\x08\0\0\0\0", "Bind: number of parameters: needs 2 bytes"),
        (b"B\0\0\0\x0e\0\0\0\0\0\x01\xff\xff\xff\xfe", "value length"),
        (b"E\0\0\0\x06\0\0", "Execute: max_rows: needs 4 bytes"),
        (b"?\0\0\0\x04", "unknown frontend message type b'\\?'"),
    ],
)
def test_malformed_bodies_name_message_and_field(wire: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(wire)


def test_decoding_is_structural_not_semantic() -> None:
    # The server answers these with an ERROR of its own; the codec lets them through.
    odd = Bind("", "", (7, 7, 7), (b"1",), (9,))
    wire = b"B\0\0\0\x19\0\0\0\x03\0\x07\0\x07\0\x07\0\x01\0\0\0\x011\0\x01\0\x09"
    assert decode(wire) == odd


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Query("a\0b"), "Query: text: contains a NUL byte"),
        (Query("\udc80"), "Query: text: not encodable as UTF-8"),
        (Parse("", "", (-1,)), "Parse: parameter type: -1 is outside"),
        (Parse("", "", (0,) * 65536), "Parse: number of parameter types: 65536"),
        (Bind("", "", (0, 0), (b"",), ()), "Bind: 2 parameter formats for 1 parameters"),
        (Bind("", "", (2,), (b"",), ()), "Bind: parameter format 2 is neither"),
        (Bind("", "", (), (), (3,)), "Bind: result format 3"),
        (Describe("X", ""), "Describe: kind 'X'"),  # type: ignore[arg-type]
        (Close("", ""), "Close: kind ''"),  # type: ignore[arg-type]
        (Execute("", 2**31), "Execute: max_rows"),
        (FunctionCall(-1, b""), "FunctionCall: oid"),
    ],
)
def test_encoders_refuse_what_the_protocol_cannot_carry(
    message: FrontendMessage, match: str
) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        message.encode()
