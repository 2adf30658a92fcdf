"""The untagged first packet of a PostgreSQL connection (sans-I/O).

A client opens with one packet that has no type byte: Int32 length (counting itself), Int32
code, then a body. The code is either a protocol version (major << 16 | minor) for a
StartupMessage, or one of the special request codes below.

Rules:
1. Only protocol 3.x starts a session. 2.0 and anything else is refused by name
   ("unsupported protocol 2.0"); minor versions above 0 decode, and the caller answers them
   with NegotiateProtocolVersion.
2. A packet is 8 to 10000 bytes (PostgreSQL's MAX_STARTUP_PACKET_LENGTH): a caller can check
   the length prefix with ``startup_packet_length`` before buffering the rest.
3. StartupMessage parameters are NUL-terminated UTF-8 key/value pairs ending with an empty key,
   which must be the last byte. ``user`` is required and non-empty. A repeated key is refused:
   a gateway that checks the first ``user`` while the server honours the last would be
   bypassed.
4. SSLRequest and GSSENCRequest are exactly 8 bytes; a CancelRequest is 12 bytes and a secret
   of 4 (protocol 3.0) to 256 bytes (protocol 3.2): its length is the key's.
5. After an SSLRequest or GSSENCRequest the client must wait for the one-byte answer: bytes
   buffered behind the request were sent in cleartext and must not be read as if they came
   through TLS (CVE-2021-23214). The driver checks ``MessageReader.buffered`` for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.pgwire._wire import (
    INT32,
    MAX_SECRET,
    MIN_SECRET,
    UINT32,
    check_range,
    check_secret,
    cstr,
    decode_text,
    pack_int32,
)
from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError

SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
_SPECIAL_MAJOR = 1234

MIN_STARTUP_PACKET = 8
MAX_STARTUP_PACKET = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
_CANCEL_HEADER = 12  # length, code, pid: the secret follows


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks to switch to TLS; it waits for one byte, b"S" or b"N"."""

    def encode(self) -> bytes:
        return INT32.pack(8) + INT32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; it waits for one byte, b"G" or b"N"."""

    def encode(self) -> bytes:
        return INT32.pack(8) + INT32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True, repr=False)
class CancelRequest:
    """Cancel the query running in backend ``pid``; ``secret`` comes from BackendKeyData."""

    pid: int
    secret: bytes

    def __repr__(self) -> str:
        return f"CancelRequest(pid={self.pid}, secret=<{len(self.secret)} bytes redacted>)"

    def encode(self) -> bytes:
        what = "CancelRequest"
        check_secret(self.secret, what)
        return (
            INT32.pack(_CANCEL_HEADER + len(self.secret))
            + INT32.pack(CANCEL_REQUEST_CODE)
            + pack_int32(self.pid, what, "pid")
            + self.secret
        )


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """Start a session: ``params`` holds user, database, application_name, options, ..."""

    params: dict[str, str]
    version: tuple[int, int] = (3, 0)

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        """The database asked for; PostgreSQL defaults it to the user name."""
        return self.params.get("database") or self.params["user"]

    def encode(self) -> bytes:
        return encode_startup(self.params, self.version)


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def startup_packet_length(prefix: bytes) -> int | None:
    """The total length of the packet ``prefix`` starts, or None before 4 bytes have arrived."""
    if len(prefix) < 4:
        return None
    length: int = INT32.unpack_from(prefix, 0)[0]
    if not MIN_STARTUP_PACKET <= length <= MAX_STARTUP_PACKET:
        raise RemoteProtocolError(
            f"startup packet: length {length} is outside "
            f"[{MIN_STARTUP_PACKET}, {MAX_STARTUP_PACKET}]"
        )
    return length


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one complete startup packet, its 4-byte length included."""
    length = startup_packet_length(packet)
    if length is None or length != len(packet):
        raise RemoteProtocolError(
            f"startup packet: length field says {length}, the packet has {len(packet)} bytes"
        )
    code: int = UINT32.unpack_from(packet, 4)[0]
    major, minor = code >> 16, code & 0xFFFF
    if major == _SPECIAL_MAJOR:
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            name = "SSLRequest" if code == SSL_REQUEST_CODE else "GSSENCRequest"
            if length != MIN_STARTUP_PACKET:
                raise RemoteProtocolError(f"{name}: length {length}, expected 8")
            return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            if not _CANCEL_HEADER + MIN_SECRET <= length <= _CANCEL_HEADER + MAX_SECRET:
                raise RemoteProtocolError(
                    f"CancelRequest: length {length}, expected {_CANCEL_HEADER + MIN_SECRET} "
                    f"to {_CANCEL_HEADER + MAX_SECRET} (a pid and a 4-256 byte key)"
                )
            pid: int = INT32.unpack_from(packet, 8)[0]
            return CancelRequest(pid=pid, secret=packet[_CANCEL_HEADER:])
        raise RemoteProtocolError(f"startup packet: unknown request code {major}.{minor}")
    if major != 3:
        raise RemoteProtocolError(f"startup packet: unsupported protocol {major}.{minor}")
    return StartupMessage(params=_parse_params(packet), version=(major, minor))


def _parse_params(packet: bytes) -> dict[str, str]:
    what = "StartupMessage"
    if len(packet) == 8 or packet[-1] != 0:
        raise RemoteProtocolError(f"{what}: the last byte is not the NUL terminator")
    params: dict[str, str] = {}
    pos = 8
    end = len(packet) - 1  # the terminator: an empty key
    while pos < end:
        key_end = packet.find(b"\0", pos)  # found: the packet ends with NUL
        if key_end == end:
            raise RemoteProtocolError(f"{what}: parameter {len(params) + 1} has no value")
        key = decode_text(packet[pos:key_end], what, f"name of parameter {len(params) + 1}")
        if not key:
            raise RemoteProtocolError(f"{what}: empty parameter name before the end of the packet")
        value_end = packet.find(b"\0", key_end + 1)
        # Names come from the client and may be long: quote a bounded prefix in errors.
        if key in params:
            raise RemoteProtocolError(f"{what}: parameter {key[:64]!r} given twice")
        params[key] = decode_text(packet[key_end + 1 : value_end], what, f"value of {key[:64]!r}")
        pos = value_end + 1
    if pos != end:
        # The last value's NUL was the packet's final byte: the empty-key terminator is missing.
        raise RemoteProtocolError(f"{what}: no empty name terminates the parameter list")
    if not params.get("user"):
        raise RemoteProtocolError(f"{what}: no user name given")
    return params


# ---- encoders (the client side: the agent, tests, fuzzers) -------------------------------


def encode_startup(params: Mapping[str, str], version: tuple[int, int] = (3, 0)) -> bytes:
    """A StartupMessage; ``params`` must name a ``user``."""
    what = "StartupMessage"
    major, minor = version
    if major != 3:
        raise LocalProtocolError(f"{what}: protocol {major}.{minor} is not 3.x")
    check_range(minor, 0, 0xFFFF, what, "minor version")
    if not params.get("user"):
        raise LocalProtocolError(f"{what}: no user name given")
    parts = []
    for key, value in params.items():
        if not key:
            raise LocalProtocolError(f"{what}: empty parameter name")
        parts.append(cstr(key, what, "parameter name"))
        parts.append(cstr(value, what, f"value of {key!r}"))
    parts.append(b"\0")
    body = b"".join(parts)
    length = 8 + len(body)
    if length > MAX_STARTUP_PACKET:
        raise LocalProtocolError(f"{what}: {length} bytes, more than {MAX_STARTUP_PACKET}")
    return INT32.pack(length) + INT32.pack(major << 16 | minor) + body


def encode_ssl_request() -> bytes:
    return SSLRequest().encode()


def encode_gssenc_request() -> bytes:
    return GSSENCRequest().encode()


def encode_cancel_request(pid: int, secret: bytes) -> bytes:
    return CancelRequest(pid=pid, secret=secret).encode()
