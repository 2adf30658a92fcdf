"""Client-to-server messages (sans-I/O): frozen dataclasses, ``encode()`` and ``decode_frontend``.

Rules:
1. Every message is a frozen dataclass with ``encode() -> bytes`` giving the framed wire
   form; ``decode_frontend(Message)`` dispatches on the type byte through a table and is
   the exact inverse.
2. Decoders check structure, not meaning. A body that cannot be read (short, trailing bytes,
   a string without NUL, a field outside its type such as a Describe kind other than S/P,
   text that is not UTF-8) is a ``RemoteProtocolError``. A well-formed message the server
   will refuse (format code 7, mismatched format count) decodes, so the client gets the
   server's own ERROR and the session survives, as it would without us in between.
3. Encoders are strict: anything the server would refuse is our bug, a
   ``LocalProtocolError``, and nothing is encoded.
4. Type b"p" is context-dependent: it carries a cleartext or MD5 password, a GSS token or
   a SASL message, and only the authentication state knows which. ``decode_frontend``
   returns ``PasswordMessage`` with the raw body; ``decode_sasl_initial_response`` and
   ``decode_sasl_response`` read it further once the caller knows SASL is in progress.
5. Secrets never reach a repr or an error: the b"p" family redacts its data.
6. Counts of parameters and formats are 16-bit unsigned, as PostgreSQL reads them (libpq
   allows 65535 parameters); OIDs are unsigned 32-bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from shared.pgwire._wire import (
    BodyReader,
    cbytes,
    cstr,
    pack_count,
    pack_int16,
    pack_int32,
    pack_uint32,
    pack_values,
    read_values,
)
from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.framing import Message, encode_message

ObjectKind: TypeAlias = Literal["S", "P"]  # prepared Statement or Portal
_KINDS: dict[int, ObjectKind] = {ord("S"): "S", ord("P"): "P"}
_FORMATS = (0, 1)  # text, binary


@dataclass(frozen=True, slots=True)
class Query:
    """Simple query: one or more SQL statements separated by semicolons."""

    TYPE: ClassVar[bytes] = b"Q"
    text: str

    def encode(self) -> bytes:
        return encode_message(b"Q", cstr(self.text, "Query", "text"))


@dataclass(frozen=True, slots=True)
class Parse:
    """Prepare ``query`` as statement ``name`` ("" is the unnamed statement)."""

    TYPE: ClassVar[bytes] = b"P"
    name: str
    query: str
    param_types: tuple[int, ...] = ()  # OIDs; 0 lets the server infer the type

    def encode(self) -> bytes:
        what = "Parse"
        parts = [
            cstr(self.name, what, "statement name"),
            cstr(self.query, what, "query"),
            pack_count(len(self.param_types), what, "parameter types"),
        ]
        parts += (pack_uint32(oid, what, "parameter type") for oid in self.param_types)
        return encode_message(b"P", b"".join(parts))


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind ``params`` (None for NULL) to ``statement``, creating ``portal``."""

    TYPE: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()  # none: all text; one: applies to all; else one each
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        what = "Bind"
        if len(self.param_formats) not in (0, 1, len(self.params)):
            raise LocalProtocolError(
                f"{what}: {len(self.param_formats)} parameter formats for "
                f"{len(self.params)} parameters (need 0, 1 or one each)"
            )
        _check_formats(self.param_formats, what, "parameter format")
        _check_formats(self.result_formats, what, "result format")
        parts = [
            cstr(self.portal, what, "portal name"),
            cstr(self.statement, what, "statement name"),
            pack_count(len(self.param_formats), what, "parameter formats"),
        ]
        parts += (pack_int16(f, what, "parameter format") for f in self.param_formats)
        parts.append(pack_values(self.params, what))
        parts.append(pack_count(len(self.result_formats), what, "result formats"))
        parts += (pack_int16(f, what, "result format") for f in self.result_formats)
        return encode_message(b"B", b"".join(parts))


@dataclass(frozen=True, slots=True)
class Describe:
    TYPE: ClassVar[bytes] = b"D"
    kind: ObjectKind
    name: str = ""

    def encode(self) -> bytes:
        return encode_message(b"D", _kind_and_name(self.kind, self.name, "Describe"))


@dataclass(frozen=True, slots=True)
class Execute:
    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0  # 0: no limit

    def encode(self) -> bytes:
        what = "Execute"
        body = cstr(self.portal, what, "portal name") + pack_int32(self.max_rows, what, "max_rows")
        return encode_message(b"E", body)


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[bytes] = b"C"
    kind: ObjectKind
    name: str = ""

    def encode(self) -> bytes:
        return encode_message(b"C", _kind_and_name(self.kind, self.name, "Close"))


@dataclass(frozen=True, slots=True)
class Sync:
    TYPE: ClassVar[bytes] = b"S"

    def encode(self) -> bytes:
        return b"S\0\0\0\4"


@dataclass(frozen=True, slots=True)
class Flush:
    TYPE: ClassVar[bytes] = b"H"

    def encode(self) -> bytes:
        return b"H\0\0\0\4"


@dataclass(frozen=True, slots=True)
class Terminate:
    TYPE: ClassVar[bytes] = b"X"

    def encode(self) -> bytes:
        return b"X\0\0\0\4"


@dataclass(frozen=True, slots=True)
class CopyData:
    """A chunk of COPY data; the same message in both directions."""

    TYPE: ClassVar[bytes] = b"d"
    data: bytes

    def encode(self) -> bytes:
        return encode_message(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    """End of COPY data; the same message in both directions."""

    TYPE: ClassVar[bytes] = b"c"

    def encode(self) -> bytes:
        return b"c\0\0\0\4"


@dataclass(frozen=True, slots=True)
class CopyFail:
    TYPE: ClassVar[bytes] = b"f"
    message: str

    def encode(self) -> bytes:
        return encode_message(b"f", cstr(self.message, "CopyFail", "message"))


@dataclass(frozen=True, slots=True, repr=False)
class PasswordMessage:
    """A b"p" message, body verbatim: see rule 4. Its repr never shows the data."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def __repr__(self) -> str:
        return f"PasswordMessage(<{len(self.data)} bytes redacted>)"

    @property
    def password(self) -> bytes:
        """The cleartext (or "md5..." hashed) password: the body without its NUL."""
        if not self.data.endswith(b"\0") or b"\0" in self.data[:-1]:
            raise RemoteProtocolError("PasswordMessage: password is not one NUL-terminated string")
        return self.data[:-1]

    def encode(self) -> bytes:
        return encode_message(b"p", self.data)


@dataclass(frozen=True, slots=True, repr=False)
class SASLInitialResponse:
    """The first SASL message: the mechanism chosen and the client-first message."""

    TYPE: ClassVar[bytes] = b"p"
    mechanism: str
    data: bytes | None  # None: the mechanism has no initial response

    def __repr__(self) -> str:
        size = "no data" if self.data is None else f"<{len(self.data)} bytes redacted>"
        return f"SASLInitialResponse({self.mechanism!r}, {size})"

    def encode(self) -> bytes:
        what = "SASLInitialResponse"
        body = cstr(self.mechanism, what, "mechanism")
        if self.data is None:
            body += b"\xff\xff\xff\xff"
        else:
            body += pack_int32(len(self.data), what, "data length") + self.data
        return encode_message(b"p", body)


@dataclass(frozen=True, slots=True, repr=False)
class SASLResponse:
    """A later SASL message (SCRAM's client-final, which carries the proof)."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def __repr__(self) -> str:
        return f"SASLResponse(<{len(self.data)} bytes redacted>)"

    def encode(self) -> bytes:
        return encode_message(b"p", self.data)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The legacy fast-path call: the function's OID, the rest of the body kept raw."""

    TYPE: ClassVar[bytes] = b"F"
    oid: int
    raw: bytes  # argument formats, arguments and result format, undecoded

    def encode(self) -> bytes:
        return encode_message(b"F", pack_uint32(self.oid, "FunctionCall", "oid") + self.raw)


FrontendMessage: TypeAlias = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
    | FunctionCall
)


def password_message(password: bytes) -> bytes:
    """A cleartext or MD5 (``md5_password``) password response, NUL-terminated."""
    return encode_message(b"p", cbytes(password, "PasswordMessage", "password"))


# ---- helpers ---------------------------------------------------------------------------


def _check_formats(formats: tuple[int, ...], what: str, field: str) -> None:
    for code in formats:
        if code not in _FORMATS:
            raise LocalProtocolError(f"{what}: {field} {code} is neither 0 (text) nor 1 (binary)")


def _kind_and_name(kind: str, name: str, what: str) -> bytes:
    if kind not in ("S", "P"):
        raise LocalProtocolError(f"{what}: kind {kind!r} is neither 'S' nor 'P'")
    return kind.encode() + cstr(name, what, "name")


def _read_kind(reader: BodyReader) -> ObjectKind:
    code = reader.byte("kind")
    kind = _KINDS.get(code)
    if kind is None:
        raise reader.fail("kind", f"byte 0x{code:02x} is neither 'S' nor 'P'")
    return kind


def _read_int16s(reader: BodyReader, field: str) -> tuple[int, ...]:
    count = reader.uint16(f"number of {field}s")
    return tuple(reader.int16(field) for _ in range(count))


# ---- decoders, one per type byte ---------------------------------------------------------

_SYNC, _FLUSH, _TERMINATE, _COPY_DONE = Sync(), Flush(), Terminate(), CopyDone()


def _query(body: bytes) -> Query:
    r = BodyReader(body, "Query")
    text = r.cstring("text")
    r.end()
    return Query(text)


def _parse(body: bytes) -> Parse:
    r = BodyReader(body, "Parse")
    name = r.cstring("statement name")
    query = r.cstring("query")
    count = r.uint16("number of parameter types")
    types = tuple(r.uint32("parameter type") for _ in range(count))
    r.end()
    return Parse(name, query, types)


def _bind(body: bytes) -> Bind:
    r = BodyReader(body, "Bind")
    portal = r.cstring("portal name")
    statement = r.cstring("statement name")
    param_formats = _read_int16s(r, "parameter format")
    params = read_values(r, r.uint16("number of parameters"))
    result_formats = _read_int16s(r, "result format")
    r.end()
    return Bind(portal, statement, param_formats, params, result_formats)


def _describe(body: bytes) -> Describe:
    r = BodyReader(body, "Describe")
    kind = _read_kind(r)
    name = r.cstring("name")
    r.end()
    return Describe(kind, name)


def _execute(body: bytes) -> Execute:
    r = BodyReader(body, "Execute")
    portal = r.cstring("portal name")
    max_rows = r.int32("max_rows")
    r.end()
    return Execute(portal, max_rows)


def _close(body: bytes) -> Close:
    r = BodyReader(body, "Close")
    kind = _read_kind(r)
    name = r.cstring("name")
    r.end()
    return Close(kind, name)


def _empty(message: FrontendMessage, what: str) -> Callable[[bytes], FrontendMessage]:
    def decode(body: bytes) -> FrontendMessage:
        if body:
            raise RemoteProtocolError(f"{what}: {len(body)} unexpected bytes in an empty message")
        return message

    return decode


def _copy_fail(body: bytes) -> CopyFail:
    r = BodyReader(body, "CopyFail")
    message = r.cstring("message")
    r.end()
    return CopyFail(message)


def _function_call(body: bytes) -> FunctionCall:
    r = BodyReader(body, "FunctionCall")
    oid = r.uint32("oid")
    return FunctionCall(oid, r.rest())


_DECODERS: dict[bytes, Callable[[bytes], FrontendMessage]] = {
    b"Q": _query,
    b"P": _parse,
    b"B": _bind,
    b"D": _describe,
    b"E": _execute,
    b"C": _close,
    b"S": _empty(_SYNC, "Sync"),
    b"H": _empty(_FLUSH, "Flush"),
    b"X": _empty(_TERMINATE, "Terminate"),
    b"d": CopyData,
    b"c": _empty(_COPY_DONE, "CopyDone"),
    b"f": _copy_fail,
    b"p": PasswordMessage,
    b"F": _function_call,
}


def decode_frontend(msg: Message) -> FrontendMessage:
    """Decode a message a client sent; an unknown type byte is the client's error."""
    decoder = _DECODERS.get(msg.type)
    if decoder is None:
        raise RemoteProtocolError(f"unknown frontend message type {msg.type!r}")
    return decoder(msg.body)


def decode_sasl_initial_response(msg: PasswordMessage) -> SASLInitialResponse:
    """Read a b"p" message as SASLInitialResponse (the server asked for SASL)."""
    r = BodyReader(msg.data, "SASLInitialResponse")
    mechanism = r.cstring("mechanism")
    size = r.int32("data length")
    if size == -1:
        data = None
    elif size < 0:
        raise r.fail("data length", f"{size} (only -1, for no data, may be negative)")
    else:
        data = r.take(size, "data")
    r.end()
    return SASLInitialResponse(mechanism, data)


def decode_sasl_response(msg: PasswordMessage) -> SASLResponse:
    """Read a b"p" message as SASLResponse (a SASL exchange is in progress)."""
    return SASLResponse(msg.data)
