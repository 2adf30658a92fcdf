"""Server-to-client messages (sans-I/O): frozen dataclasses, ``encode()`` and ``decode_backend``.

Rules:
1. Every message is a frozen dataclass with ``encode() -> bytes``; ``decode_backend`` dispatches
   on the type byte (and, for b"R", on the authentication code) through tables and is the
   exact inverse. Module-level functions (``error_response``, ``ready_for_query``, ...) encode
   what a gateway synthesizes towards its clients.
2. Decoders check structure, not meaning (see ``shared.pgwire.frontend``): a body that cannot
   be read is a ``RemoteProtocolError``; an unusual but well-formed one decodes. Unknown
   authentication codes (GSS, SSPI, ...) decode to ``AuthenticationOther`` so the caller can
   refuse them by name.
3. Encoders are strict: ``LocalProtocolError`` for anything the protocol cannot carry.
4. DataRow is the hot path of result sets: its decoder is a flat loop without a cursor object.
5. Error and notice field codes are single bytes, kept as one-character strings in wire order.
   A field code given twice keeps its last value (servers do not send duplicates).
6. BackendKeyData carries a cancel secret of 4 bytes (protocol 3.0) up to 256 bytes (protocol
   3.2, PostgreSQL 18); which length a session may use is the caller's to check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from shared.pgwire._wire import (
    INT32,
    MAX_SECRET,
    MIN_SECRET,
    UINT16,
    BodyReader,
    check_secret,
    cstr,
    pack_count,
    pack_int16,
    pack_int32,
    pack_uint32,
    pack_values,
)
from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.framing import Message, encode_message
from shared.pgwire.frontend import CopyData, CopyDone

TransactionStatus: TypeAlias = Literal["I", "T", "E"]  # idle, in a transaction, failed one
_STATUSES: dict[int, TransactionStatus] = {ord("I"): "I", ord("T"): "T", ord("E"): "E"}
ErrorSeverity: TypeAlias = Literal["ERROR", "FATAL"]
NoticeSeverity: TypeAlias = Literal["WARNING", "NOTICE", "DEBUG", "INFO", "LOG"]

# Authentication request codes (the Int32 after b"R").
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


# ---- authentication --------------------------------------------------------------------


def _auth(code: int, data: bytes = b"") -> bytes:
    return encode_message(b"R", INT32.pack(code) + data)


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    TYPE: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(AUTH_OK)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    TYPE: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(AUTH_CLEARTEXT)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    TYPE: ClassVar[bytes] = b"R"
    salt: bytes  # 4 bytes

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise LocalProtocolError(
                f"AuthenticationMD5Password: salt is {len(self.salt)} bytes, expected 4"
            )
        return _auth(AUTH_MD5, self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    TYPE: ClassVar[bytes] = b"R"
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        what = "AuthenticationSASL"
        parts = []
        for mechanism in self.mechanisms:
            if not mechanism:
                raise LocalProtocolError(f"{what}: empty mechanism name")
            parts.append(cstr(mechanism, what, "mechanism"))
        parts.append(b"\0")
        return _auth(AUTH_SASL, b"".join(parts))


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    """SASL data from the server: SCRAM's server-first message."""

    TYPE: ClassVar[bytes] = b"R"
    data: bytes

    def encode(self) -> bytes:
        return _auth(AUTH_SASL_CONTINUE, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    """The server's last SASL data: SCRAM's server-final message (its signature)."""

    TYPE: ClassVar[bytes] = b"R"
    data: bytes

    def encode(self) -> bytes:
        return _auth(AUTH_SASL_FINAL, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationOther:
    """An authentication request we do not speak (Kerberos, GSS, SSPI, ...), kept raw."""

    TYPE: ClassVar[bytes] = b"R"
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        if self.code in _AUTH_DECODERS:
            raise LocalProtocolError(
                f"AuthenticationOther: code {self.code} has its own message class"
            )
        return encode_message(
            b"R", pack_int32(self.code, "AuthenticationOther", "code") + self.data
        )


# ---- session parameters and keys --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    TYPE: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode(self) -> bytes:
        what = "ParameterStatus"
        return encode_message(b"S", cstr(self.name, what, "name") + cstr(self.value, what, "value"))


@dataclass(frozen=True, slots=True, repr=False)
class BackendKeyData:
    """What a CancelRequest must quote; the secret is kept out of the repr."""

    TYPE: ClassVar[bytes] = b"K"
    pid: int
    secret: bytes

    def __repr__(self) -> str:
        return f"BackendKeyData(pid={self.pid}, secret=<{len(self.secret)} bytes redacted>)"

    def encode(self) -> bytes:
        what = "BackendKeyData"
        check_secret(self.secret, what)
        return encode_message(b"K", pack_int32(self.pid, what, "pid") + self.secret)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    TYPE: ClassVar[bytes] = b"Z"
    status: TransactionStatus

    def encode(self) -> bytes:
        if self.status not in ("I", "T", "E"):
            raise LocalProtocolError(f"ReadyForQuery: status {self.status!r} is not I, T or E")
        return encode_message(b"Z", self.status.encode())


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """The server speaks protocol 3.``minor`` at most and ignored the ``_pq_`` options named."""

    TYPE: ClassVar[bytes] = b"v"
    minor: int
    unrecognized: tuple[str, ...] = ()

    def encode(self) -> bytes:
        what = "NegotiateProtocolVersion"
        parts = [
            pack_int32(self.minor, what, "minor version"),
            pack_int32(len(self.unrecognized), what, "number of options"),
        ]
        parts += (cstr(option, what, "option") for option in self.unrecognized)
        return encode_message(b"v", b"".join(parts))


# ---- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a RowDescription; the defaults describe a computed text column."""

    name: str
    table_oid: int = 0
    column: int = 0  # attribute number in table_oid, 0 if not a table column
    type_oid: int = 25  # text
    type_size: int = -1  # negative: variable width
    type_mod: int = -1
    format: int = 0  # 0 text, 1 binary

    def _encode(self) -> bytes:
        what = "RowDescription"
        return b"".join(
            (
                cstr(self.name, what, "field name"),
                pack_uint32(self.table_oid, what, "table oid"),
                pack_int16(self.column, what, "column number"),
                pack_uint32(self.type_oid, what, "type oid"),
                pack_int16(self.type_size, what, "type size"),
                pack_int32(self.type_mod, what, "type modifier"),
                pack_int16(self.format, what, "format"),
            )
        )


@dataclass(frozen=True, slots=True)
class RowDescription:
    TYPE: ClassVar[bytes] = b"T"
    fields: tuple[Field, ...]

    def encode(self) -> bytes:
        count = pack_count(len(self.fields), "RowDescription", "fields")
        return encode_message(b"T", count + b"".join(f._encode() for f in self.fields))


@dataclass(frozen=True, slots=True)
class DataRow:
    """One row; None is SQL NULL. Values are raw, in the format RowDescription announced."""

    TYPE: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        return encode_message(b"D", pack_values(self.values, "DataRow"))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    TYPE: ClassVar[bytes] = b"C"
    tag: str  # "SELECT 3", "INSERT 0 1", "CREATE TABLE", ...

    @property
    def rows(self) -> int | None:
        return rows_from_tag(self.tag)

    def encode(self) -> bytes:
        return encode_message(b"C", cstr(self.tag, "CommandComplete", "tag"))


_ROW_COUNT_COMMANDS = frozenset({"SELECT", "UPDATE", "DELETE", "COPY", "FETCH", "MOVE", "MERGE"})


def rows_from_tag(tag: str) -> int | None:
    """The row count a command tag reports, or None for a tag that carries none."""
    parts = tag.split(" ")
    if parts[0] == "INSERT" and len(parts) == 3:  # INSERT oid rows
        count = parts[2]
    elif parts[0] in _ROW_COUNT_COMMANDS and len(parts) == 2:
        count = parts[1]
    else:
        return None
    # isascii: str.isdigit also accepts digits int() would refuse, such as "²".
    return int(count) if count.isascii() and count.isdigit() else None


class _Fields:
    """Accessors shared by ErrorResponse and NoticeResponse."""

    __slots__ = ()
    fields: dict[str, str]

    @property
    def severity(self) -> str | None:
        """The non-localized severity (field V, since 9.6), else the localized one (S)."""
        return self.fields.get("V") or self.fields.get("S")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")


def _encode_fields(type_: bytes, fields: dict[str, str], what: str) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or not 0 < ord(code) < 256:
            raise LocalProtocolError(f"{what}: field code {code!r} is not one non-NUL byte")
        parts.append(code.encode("latin-1"))
        parts.append(cstr(value, what, f"field {code!r}"))
    parts.append(b"\0")
    return encode_message(type_, b"".join(parts))


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    TYPE: ClassVar[bytes] = b"E"
    fields: dict[str, str]

    def encode(self) -> bytes:
        return _encode_fields(b"E", self.fields, "ErrorResponse")


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    TYPE: ClassVar[bytes] = b"N"
    fields: dict[str, str]

    def encode(self) -> bytes:
        return _encode_fields(b"N", self.fields, "NoticeResponse")


def _bare(type_: bytes) -> bytes:
    return type_ + b"\0\0\0\4"


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    TYPE: ClassVar[bytes] = b"I"

    def encode(self) -> bytes:
        return _bare(b"I")


@dataclass(frozen=True, slots=True)
class ParseComplete:
    TYPE: ClassVar[bytes] = b"1"

    def encode(self) -> bytes:
        return _bare(b"1")


@dataclass(frozen=True, slots=True)
class BindComplete:
    TYPE: ClassVar[bytes] = b"2"

    def encode(self) -> bytes:
        return _bare(b"2")


@dataclass(frozen=True, slots=True)
class CloseComplete:
    TYPE: ClassVar[bytes] = b"3"

    def encode(self) -> bytes:
        return _bare(b"3")


@dataclass(frozen=True, slots=True)
class NoData:
    TYPE: ClassVar[bytes] = b"n"

    def encode(self) -> bytes:
        return _bare(b"n")


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    TYPE: ClassVar[bytes] = b"s"

    def encode(self) -> bytes:
        return _bare(b"s")


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        what = "ParameterDescription"
        parts = [pack_count(len(self.type_oids), what, "parameters")]
        parts += (pack_uint32(oid, what, "type oid") for oid in self.type_oids)
        return encode_message(b"t", b"".join(parts))


def _encode_copy_response(type_: bytes, fmt: int, column_formats: tuple[int, ...]) -> bytes:
    what = "Copy response"
    if fmt not in (0, 1):
        raise LocalProtocolError(f"{what}: format {fmt} is neither 0 (text) nor 1 (binary)")
    parts = [bytes((fmt,)), pack_count(len(column_formats), what, "columns")]
    parts += (pack_int16(f, what, "column format") for f in column_formats)
    return encode_message(type_, b"".join(parts))


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    TYPE: ClassVar[bytes] = b"G"
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        return _encode_copy_response(b"G", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    TYPE: ClassVar[bytes] = b"H"
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        return _encode_copy_response(b"H", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    TYPE: ClassVar[bytes] = b"W"
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        return _encode_copy_response(b"W", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    TYPE: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str

    def encode(self) -> bytes:
        what = "NotificationResponse"
        body = (
            pack_int32(self.pid, what, "pid")
            + cstr(self.channel, what, "channel")
            + cstr(self.payload, what, "payload")
        )
        return encode_message(b"A", body)


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    """The result of a FunctionCall; None is SQL NULL."""

    TYPE: ClassVar[bytes] = b"V"
    value: bytes | None

    def encode(self) -> bytes:
        if self.value is None:
            return encode_message(b"V", b"\xff\xff\xff\xff")
        size = pack_int32(len(self.value), "FunctionCallResponse", "value length")
        return encode_message(b"V", size + self.value)


BackendMessage: TypeAlias = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | AuthenticationOther
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | NegotiateProtocolVersion
    | RowDescription
    | DataRow
    | CommandComplete
    | ErrorResponse
    | NoticeResponse
    | EmptyQueryResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NotificationResponse
    | FunctionCallResponse
)


# ---- encoders for what a gateway synthesizes --------------------------------------------

_SQLSTATE_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _report_fields(
    sqlstate: str, message: str, severity: str, detail: str | None, hint: str | None, what: str
) -> dict[str, str]:
    if len(sqlstate) != 5 or not set(sqlstate) <= _SQLSTATE_CHARS:
        raise LocalProtocolError(f"{what}: SQLSTATE {sqlstate!r} is not 5 of [0-9A-Z]")
    # S is the localized severity, V the fixed one clients match on; we do not localize.
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return fields


def _not_a_str(names: Iterable[str], what: str, field: str) -> None:
    # A str is an Iterable[str] too: "SCRAM-SHA-256" would become 13 one-letter names.
    if isinstance(names, str):
        raise LocalProtocolError(f"{what}: {field} must be a collection of names, not a str")


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: ErrorSeverity = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ErrorResponse; FATAL (the default) tells the client the connection is ending."""
    if severity not in ("ERROR", "FATAL"):
        raise LocalProtocolError(f"ErrorResponse: severity {severity!r} is not ERROR or FATAL")
    fields = _report_fields(sqlstate, message, severity, detail, hint, "ErrorResponse")
    return ErrorResponse(fields).encode()


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: NoticeSeverity = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    if severity not in ("WARNING", "NOTICE", "DEBUG", "INFO", "LOG"):
        raise LocalProtocolError(f"NoticeResponse: severity {severity!r} is not a notice level")
    fields = _report_fields(sqlstate, message, severity, detail, hint, "NoticeResponse")
    return NoticeResponse(fields).encode()


def authentication_ok() -> bytes:
    return AuthenticationOk().encode()


def authentication_cleartext_password() -> bytes:
    return AuthenticationCleartextPassword().encode()


def authentication_md5(salt: bytes) -> bytes:
    return AuthenticationMD5Password(salt).encode()


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    _not_a_str(mechanisms, "AuthenticationSASL", "mechanisms")
    return AuthenticationSASL(tuple(mechanisms)).encode()


def authentication_sasl_continue(data: bytes) -> bytes:
    return AuthenticationSASLContinue(data).encode()


def authentication_sasl_final(data: bytes) -> bytes:
    return AuthenticationSASLFinal(data).encode()


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return BackendKeyData(pid, secret).encode()


def parameter_status(name: str, value: str) -> bytes:
    return ParameterStatus(name, value).encode()


def ready_for_query(status: TransactionStatus) -> bytes:
    return ReadyForQuery(status).encode()


def negotiate_protocol_version(minor: int, unrecognized: Iterable[str] = ()) -> bytes:
    _not_a_str(unrecognized, "NegotiateProtocolVersion", "unrecognized")
    return NegotiateProtocolVersion(minor, tuple(unrecognized)).encode()


def row_description(fields: Iterable[Field]) -> bytes:
    return RowDescription(tuple(fields)).encode()


def data_row(values: Iterable[bytes | None]) -> bytes:
    return DataRow(tuple(values)).encode()


def command_complete(tag: str) -> bytes:
    return CommandComplete(tag).encode()


def empty_query_response() -> bytes:
    return EmptyQueryResponse().encode()


# ---- decoders ----------------------------------------------------------------------------


def _auth_ok(r: BodyReader) -> AuthenticationOk:
    return _AUTH_OK


def _auth_cleartext(r: BodyReader) -> AuthenticationCleartextPassword:
    return _AUTH_CLEARTEXT


def _auth_md5(r: BodyReader) -> AuthenticationMD5Password:
    return AuthenticationMD5Password(r.take(4, "salt"))


def _auth_sasl(r: BodyReader) -> AuthenticationSASL:
    mechanisms = []
    while mechanism := r.cstring("mechanism"):
        mechanisms.append(mechanism)
    return AuthenticationSASL(tuple(mechanisms))


def _auth_sasl_continue(r: BodyReader) -> AuthenticationSASLContinue:
    return AuthenticationSASLContinue(r.rest())


def _auth_sasl_final(r: BodyReader) -> AuthenticationSASLFinal:
    return AuthenticationSASLFinal(r.rest())


_AUTH_OK, _AUTH_CLEARTEXT = AuthenticationOk(), AuthenticationCleartextPassword()
_AUTH_DECODERS: dict[int, Callable[[BodyReader], BackendMessage]] = {
    AUTH_OK: _auth_ok,
    AUTH_CLEARTEXT: _auth_cleartext,
    AUTH_MD5: _auth_md5,
    AUTH_SASL: _auth_sasl,
    AUTH_SASL_CONTINUE: _auth_sasl_continue,
    AUTH_SASL_FINAL: _auth_sasl_final,
}


def _authentication(r: BodyReader) -> BackendMessage:
    code = r.int32("authentication code")
    decoder = _AUTH_DECODERS.get(code)
    if decoder is None:
        return AuthenticationOther(code, r.rest())
    return decoder(r)


def _parameter_status(r: BodyReader) -> ParameterStatus:
    return ParameterStatus(r.cstring("name"), r.cstring("value"))


def _backend_key_data(r: BodyReader) -> BackendKeyData:
    if not MIN_SECRET + 4 <= r.remaining <= MAX_SECRET + 4:
        raise r.fail(
            "body", f"{r.remaining} bytes, expected a pid and a {MIN_SECRET}-{MAX_SECRET} byte key"
        )
    return BackendKeyData(r.int32("pid"), r.rest())


def _ready_for_query(r: BodyReader) -> ReadyForQuery:
    code = r.byte("status")
    status = _STATUSES.get(code)
    if status is None:
        raise r.fail("status", f"byte 0x{code:02x} is not I, T or E")
    return ReadyForQuery(status)


def _negotiate_protocol_version(r: BodyReader) -> NegotiateProtocolVersion:
    minor = r.int32("minor version")
    count = r.int32("number of options")
    if count < 0:
        raise r.fail("number of options", f"negative ({count})")
    # Each option takes at least its NUL: a count beyond the body is malformed, and checking it
    # first keeps a hostile count from spinning the loop.
    if count > r.remaining:
        raise r.fail("number of options", f"{count} options in {r.remaining} bytes")
    return NegotiateProtocolVersion(minor, tuple(r.cstring("option") for _ in range(count)))


def _row_description(r: BodyReader) -> RowDescription:
    count = r.uint16("number of fields")
    fields = tuple(
        Field(
            r.cstring("field name"),
            r.uint32("table oid"),
            r.int16("column number"),
            r.uint32("type oid"),
            r.int16("type size"),
            r.int32("type modifier"),
            r.int16("format"),
        )
        for _ in range(count)
    )
    return RowDescription(fields)


_I32 = INT32.unpack_from
_U16 = UINT16.unpack_from


def _data_row(body: bytes) -> DataRow:
    # The hot path: no cursor object, one bounds check per value.
    n = len(body)
    if n < 2:
        raise RemoteProtocolError(f"DataRow: body of {n} bytes has no column count")
    count: int = _U16(body, 0)[0]
    pos = 2
    values: list[bytes | None] = []
    append = values.append
    for index in range(count):
        if pos + 4 > n:
            raise RemoteProtocolError(f"DataRow: column {index}: length runs past the body")
        size: int = _I32(body, pos)[0]
        pos += 4
        if size == -1:
            append(None)
        elif 0 <= size <= n - pos:
            append(body[pos : pos + size])
            pos += size
        else:
            raise RemoteProtocolError(
                f"DataRow: column {index}: length {size} does not fit the {n - pos} bytes left"
            )
    if pos != n:
        raise RemoteProtocolError(f"DataRow: {n - pos} unexpected trailing bytes")
    return DataRow(tuple(values))


def _command_complete(r: BodyReader) -> CommandComplete:
    return CommandComplete(r.cstring("tag"))


def _read_fields(r: BodyReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while code := r.byte("field code"):
        key = chr(code)  # one byte, one character: latin-1, lossless
        fields[key] = r.cstring(f"field {key!r}")
    return fields


def _error_response(r: BodyReader) -> ErrorResponse:
    return ErrorResponse(_read_fields(r))


def _notice_response(r: BodyReader) -> NoticeResponse:
    return NoticeResponse(_read_fields(r))


def _parameter_description(r: BodyReader) -> ParameterDescription:
    count = r.uint16("number of parameters")
    return ParameterDescription(tuple(r.uint32("type oid") for _ in range(count)))


def _copy_response(
    cls: type[CopyInResponse | CopyOutResponse | CopyBothResponse],
) -> Callable[[BodyReader], BackendMessage]:
    def decode(r: BodyReader) -> BackendMessage:
        fmt = r.byte("format")
        count = r.uint16("number of columns")
        return cls(fmt, tuple(r.int16("column format") for _ in range(count)))

    return decode


def _copy_data(r: BodyReader) -> CopyData:
    return CopyData(r.rest())


def _notification_response(r: BodyReader) -> NotificationResponse:
    return NotificationResponse(r.int32("pid"), r.cstring("channel"), r.cstring("payload"))


def _function_call_response(r: BodyReader) -> FunctionCallResponse:
    size = r.int32("value length")
    if size == -1:
        return FunctionCallResponse(None)
    return FunctionCallResponse(r.take(size, "value"))


def _bare_decoder(message: BackendMessage) -> Callable[[BodyReader], BackendMessage]:
    def decode(r: BodyReader) -> BackendMessage:
        return message

    return decode


_DECODERS: dict[bytes, tuple[str, Callable[[BodyReader], BackendMessage]]] = {
    b"R": ("Authentication", _authentication),
    b"S": ("ParameterStatus", _parameter_status),
    b"K": ("BackendKeyData", _backend_key_data),
    b"Z": ("ReadyForQuery", _ready_for_query),
    b"v": ("NegotiateProtocolVersion", _negotiate_protocol_version),
    b"T": ("RowDescription", _row_description),
    b"C": ("CommandComplete", _command_complete),
    b"E": ("ErrorResponse", _error_response),
    b"N": ("NoticeResponse", _notice_response),
    b"I": ("EmptyQueryResponse", _bare_decoder(EmptyQueryResponse())),
    b"1": ("ParseComplete", _bare_decoder(ParseComplete())),
    b"2": ("BindComplete", _bare_decoder(BindComplete())),
    b"3": ("CloseComplete", _bare_decoder(CloseComplete())),
    b"n": ("NoData", _bare_decoder(NoData())),
    b"s": ("PortalSuspended", _bare_decoder(PortalSuspended())),
    b"t": ("ParameterDescription", _parameter_description),
    b"G": ("CopyInResponse", _copy_response(CopyInResponse)),
    b"H": ("CopyOutResponse", _copy_response(CopyOutResponse)),
    b"W": ("CopyBothResponse", _copy_response(CopyBothResponse)),
    b"d": ("CopyData", _copy_data),
    b"c": ("CopyDone", _bare_decoder(CopyDone())),
    b"A": ("NotificationResponse", _notification_response),
    b"V": ("FunctionCallResponse", _function_call_response),
}


def decode_backend(msg: Message) -> BackendMessage:
    """Decode a message a server sent; an unknown type byte is the server's error."""
    if msg.type == b"D":
        return _data_row(msg.body)
    entry = _DECODERS.get(msg.type)
    if entry is None:
        raise RemoteProtocolError(f"unknown backend message type {msg.type!r}")
    what, decoder = entry
    reader = BodyReader(msg.body, what)
    message = decoder(reader)
    reader.end()
    return message
