"""Server-to-client messages: exact wire bytes, round trips, synthesized replies, command tags."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.pgwire import backend as be
from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import CopyData, CopyDone
from tests.shared.pgwire import strategies as pst


def decode(data: bytes) -> be.BackendMessage:
    reader = MessageReader()
    reader.feed(data)
    msg = reader.next_message()
    assert msg is not None
    assert reader.buffered == 0
    return be.decode_backend(msg)


WIRE_CASES: list[tuple[be.BackendMessage, bytes]] = [
    (be.AuthenticationOk(), b"R\0\0\0\x08\0\0\0\0"),
    (be.AuthenticationCleartextPassword(), b"R\0\0\0\x08\0\0\0\x03"),
    (be.AuthenticationMD5Password(b"\1\2\3\4"), b"R\0\0\0\x0c\0\0\0\x05\1\2\3\4"),
    (
        be.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
    ),
    (be.AuthenticationSASLContinue(b"r=x"), b"R\0\0\0\x0b\0\0\0\x0br=x"),
    (be.AuthenticationSASLFinal(b"v=y"), b"R\0\0\0\x0b\0\0\0\x0cv=y"),
    (be.AuthenticationOther(7), b"R\0\0\0\x08\0\0\0\x07"),
    (be.AuthenticationOther(8, b"tok"), b"R\0\0\0\x0b\0\0\0\x08tok"),
    (be.ParameterStatus("a", "b"), b"S\0\0\0\x08a\0b\0"),
    (be.BackendKeyData(1234, b"\xde\xad\xbe\xef"), b"K\0\0\0\x0c\0\0\x04\xd2\xde\xad\xbe\xef"),
    (be.BackendKeyData(1, b"k" * 32), b"K\0\0\0\x28\0\0\0\x01" + b"k" * 32),  # protocol 3.2
    (be.ReadyForQuery("I"), b"Z\0\0\0\x05I"),
    (be.NegotiateProtocolVersion(0, ("_pq_.x",)), b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0"),
    (
        be.RowDescription((be.Field("x", 0, 0, 23, 4, -1, 0),)),
        b"T\0\0\0\x1a\0\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    ),
    (be.DataRow((b"1", None, b"")), b"D\0\0\0\x13\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0"),
    (be.CommandComplete("SELECT 1"), b"C\0\0\0\x0dSELECT 1\0"),
    (
        be.ErrorResponse({"S": "ERROR", "C": "42601", "M": "x"}),
        b"E\0\0\0\x16SERROR\0C42601\0Mx\0\0",
    ),
    (be.NoticeResponse({"M": "hi"}), b"N\0\0\0\x09Mhi\0\0"),
    (be.EmptyQueryResponse(), b"I\0\0\0\x04"),
    (be.ParseComplete(), b"1\0\0\0\x04"),
    (be.BindComplete(), b"2\0\0\0\x04"),
    (be.CloseComplete(), b"3\0\0\0\x04"),
    (be.NoData(), b"n\0\0\0\x04"),
    (be.PortalSuspended(), b"s\0\0\0\x04"),
    (be.ParameterDescription((23, 25)), b"t\0\0\0\x0e\0\x02\0\0\0\x17\0\0\0\x19"),
    (be.CopyInResponse(0, (0, 0)), b"G\0\0\0\x0b\0\0\x02\0\0\0\0"),
    (be.CopyOutResponse(1, (1,)), b"H\0\0\0\x09\x01\0\x01\0\x01"),
    (be.CopyBothResponse(0, ()), b"W\0\0\0\x07\0\0\0"),
    (CopyData(b"abc"), b"d\0\0\0\x07abc"),
    (CopyDone(), b"c\0\0\0\x04"),
    (be.NotificationResponse(7, "ch", "hi"), b"A\0\0\0\x0e\0\0\0\x07ch\0hi\0"),
    (be.FunctionCallResponse(None), b"V\0\0\0\x08\xff\xff\xff\xff"),
    (be.FunctionCallResponse(b"ok"), b"V\0\0\0\x0a\0\0\0\x02ok"),
]


@pytest.mark.parametrize(("message", "wire"), WIRE_CASES, ids=lambda v: type(v).__name__)
def test_wire_bytes_and_round_trip(message: be.BackendMessage, wire: bytes) -> None:
    assert message.encode() == wire
    assert decode(wire) == message


@settings(max_examples=400)
@given(pst.backend_messages)
def test_every_message_round_trips(message: be.BackendMessage) -> None:
    wire = message.encode()
    assert decode(wire) == message
    assert decode(wire).encode() == wire


@given(pst.values)
def test_data_row_with_nulls_round_trips(values: tuple[bytes | None, ...]) -> None:
    assert decode(be.data_row(values)) == be.DataRow(values)


@given(pst.report_fields)
def test_error_fields_round_trip_in_order(fields: dict[str, str]) -> None:
    decoded = decode(be.ErrorResponse(fields).encode())
    assert isinstance(decoded, be.ErrorResponse)
    assert list(decoded.fields.items()) == list(fields.items())


def test_error_response_synthesized_for_a_client() -> None:
    decoded = decode(
        be.error_response("28000", "access denied", detail="policy p1", hint="ask an admin")
    )
    assert isinstance(decoded, be.ErrorResponse)
    assert decoded.severity == "FATAL"
    assert decoded.sqlstate == "28000"
    assert decoded.message == "access denied"
    assert decoded.detail == "policy p1"
    assert decoded.hint == "ask an admin"
    assert decoded.fields["S"] == decoded.fields["V"] == "FATAL"

    notice = decode(be.notice_response("01000", "careful", severity="WARNING"))
    assert isinstance(notice, be.NoticeResponse)
    assert (notice.severity, notice.sqlstate, notice.message) == ("WARNING", "01000", "careful")
    assert notice.detail is None


def test_severity_prefers_the_unlocalized_field() -> None:
    error = be.ErrorResponse({"S": "FEHLER", "V": "ERROR", "C": "42P01", "M": "m"})
    assert error.severity == "ERROR"
    assert be.ErrorResponse({"S": "ERROR"}).severity == "ERROR"
    assert be.ErrorResponse({}).severity is None


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (be.authentication_ok(), be.AuthenticationOk()),
        (be.authentication_cleartext_password(), be.AuthenticationCleartextPassword()),
        (be.authentication_md5(b"salt"), be.AuthenticationMD5Password(b"salt")),
        (be.authentication_sasl(["SCRAM-SHA-256"]), be.AuthenticationSASL(("SCRAM-SHA-256",))),
        (be.authentication_sasl_continue(b"c"), be.AuthenticationSASLContinue(b"c")),
        (be.authentication_sasl_final(b"f"), be.AuthenticationSASLFinal(b"f")),
        (be.backend_key_data(1, b"\0\0\0\x02"), be.BackendKeyData(1, b"\0\0\0\x02")),
        (be.parameter_status("server_version", "17"), be.ParameterStatus("server_version", "17")),
        (be.ready_for_query("T"), be.ReadyForQuery("T")),
        (be.negotiate_protocol_version(0, ["_pq_.a"]), be.NegotiateProtocolVersion(0, ("_pq_.a",))),
        (be.row_description([be.Field("n")]), be.RowDescription((be.Field("n"),))),
        (be.data_row([b"1", None]), be.DataRow((b"1", None))),
        (be.command_complete("INSERT 0 3"), be.CommandComplete("INSERT 0 3")),
        (be.empty_query_response(), be.EmptyQueryResponse()),
    ],
)
def test_encoder_functions(encoded: bytes, expected: be.BackendMessage) -> None:
    assert decode(encoded) == expected


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 5", 5),
        ("INSERT 0 3", 3),
        ("UPDATE 0", 0),
        ("DELETE 12", 12),
        ("COPY 1000000", 1000000),
        ("FETCH 2", 2),
        ("MOVE 4", 4),
        ("MERGE 9", 9),
        ("CREATE TABLE", None),
        ("INSERT 3", None),
        ("SELECT", None),
        ("SELECT x", None),
        ("SELECT ²", None),
        ("BEGIN", None),
        ("", None),
    ],
)
def test_rows_from_tag(tag: str, rows: int | None) -> None:
    assert be.rows_from_tag(tag) == rows
    assert be.CommandComplete(tag).rows == rows


@given(st.text())
def test_rows_from_tag_never_raises(tag: str) -> None:
    be.rows_from_tag(tag)


def test_backend_key_data_keeps_the_secret_out_of_its_repr() -> None:
    shown = repr(be.BackendKeyData(1, b"\xde\xad\xbe\xef"))
    assert "deadbeef" not in shown and "\\xde" not in shown and "4 bytes" in shown


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"R\0\0\0\x09\0\0\0\0x", "Authentication: 1 unexpected trailing bytes"),
        (b"R\0\0\0\x0b\0\0\0\x05abc", "Authentication: salt: needs 4 bytes"),
        (b"R\0\0\0\x0d\0\0\0\x0aab\0\0x", "Authentication: 1 unexpected trailing bytes"),
        (b"R\0\0\0\x0a\0\0\0\x0aab", "Authentication: mechanism: string is not NUL-terminated"),
        (b"Z\0\0\0\x05X", "ReadyForQuery: status: byte 0x58 is not I, T or E"),
        (
            b"K\0\0\0\x0b\0\0\0\x01\0\0\0",
            "BackendKeyData: body: 7 bytes, expected a pid and a 4-256",
        ),
        (b"D\0\0\0\x05\0", "DataRow: body of 1 bytes has no column count"),
        (b"D\0\0\0\x08\0\x01\0\0", "DataRow: column 0: length runs past the body"),
        (b"D\0\0\0\x0a\0\x01\0\0\0\x05", "DataRow: column 0: length 5 does not fit"),
        (b"D\0\0\0\x0a\0\x01\xff\xff\xff\xfe", "DataRow: column 0: length -2"),
        (b"D\0\0\0\x07\0\0\0", "DataRow: 1 unexpected trailing bytes"),
        (b"E\0\0\0\x07Mx\0", "ErrorResponse: field code: needs 1 bytes"),
        (b"v\0\0\0\x0c\0\0\0\0\x7f\xff\xff\xff", "NegotiateProtocolVersion: number of options"),
        (b"v\0\0\0\x0c\0\0\0\0\xff\xff\xff\xff", "number of options: negative"),
        (b"x\0\0\0\x04", "unknown backend message type b'x'"),
    ],
)
def test_malformed_bodies_name_message_and_field(wire: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(wire)


@pytest.mark.parametrize(
    ("encode", "match"),
    [
        (lambda: be.error_response("2800", "m"), "SQLSTATE '2800'"),
        (lambda: be.error_response("28000", "m", severity="PANIC"), "severity 'PANIC'"),  # type: ignore[arg-type]
        (lambda: be.notice_response("01000", "m", severity="FATAL"), "severity 'FATAL'"),  # type: ignore[arg-type]
        (lambda: be.error_response("28000", "a\0b"), "field 'M': contains a NUL byte"),
        (lambda: be.ErrorResponse({"MM": "x"}).encode(), "field code 'MM'"),
        (lambda: be.authentication_md5(b"abc"), "salt is 3 bytes"),
        (lambda: be.authentication_sasl([""]), "empty mechanism name"),
        (lambda: be.AuthenticationOther(0).encode(), "code 0 has its own message class"),
        (lambda: be.ready_for_query("X"), "status 'X'"),  # type: ignore[arg-type]
        (lambda: be.backend_key_data(1, b"abc"), "secret: 3 bytes, outside"),
        (lambda: be.backend_key_data(1, b"x" * 257), "secret: 257 bytes, outside"),
        (lambda: be.row_description([be.Field("x", type_size=40000)]), "type size"),
        (lambda: be.data_row([None] * 65536), "number of values: 65536"),
        (lambda: be.CopyInResponse(2, ()).encode(), "format 2"),
        (lambda: be.authentication_sasl("SCRAM-SHA-256"), "not a str"),
        (lambda: be.negotiate_protocol_version(0, "_pq_.x"), "not a str"),
    ],
)
def test_encoders_refuse_what_the_protocol_cannot_carry(
    encode: Callable[[], object], match: str
) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode()
