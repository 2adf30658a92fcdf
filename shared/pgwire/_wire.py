"""Field-level readers and writers shared by the message modules (internal).

Rules:
1. Reading never raises anything but ``RemoteProtocolError``: every length is checked before a
   ``struct`` call or a slice, so a short body can not surface as ``struct.error`` or a
   silently short ``bytes``.
2. Writing never raises anything but ``LocalProtocolError``: ranges are checked here rather
   than left to ``struct.pack``, whose errors name no message and no field.
3. Errors name the message and the field, never the content.
"""

from __future__ import annotations

import struct

from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")

INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
UINT16_MAX = 2**16 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1


class BodyReader:
    """A cursor over one message body; ``what`` names the message in errors."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self.what = what

    def fail(self, field: str, problem: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.what}: {field}: {problem}")

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _need(self, n: int, field: str) -> int:
        pos = self._pos
        if len(self._data) - pos < n:
            raise self.fail(
                field, f"needs {n} bytes at offset {pos}, the body has {len(self._data) - pos} left"
            )
        self._pos = pos + n
        return pos

    def byte(self, field: str) -> int:
        return self._data[self._need(1, field)]

    def int16(self, field: str) -> int:
        value: int = INT16.unpack_from(self._data, self._need(2, field))[0]
        return value

    def uint16(self, field: str) -> int:
        value: int = UINT16.unpack_from(self._data, self._need(2, field))[0]
        return value

    def int32(self, field: str) -> int:
        value: int = INT32.unpack_from(self._data, self._need(4, field))[0]
        return value

    def uint32(self, field: str) -> int:
        value: int = UINT32.unpack_from(self._data, self._need(4, field))[0]
        return value

    def take(self, n: int, field: str) -> bytes:
        if n < 0:
            raise self.fail(field, f"negative length {n}")
        pos = self._need(n, field)
        return self._data[pos : pos + n]

    def rest(self) -> bytes:
        data = self._data[self._pos :]
        self._pos = len(self._data)
        return data

    def cbytes(self, field: str) -> bytes:
        """A NUL-terminated string, as bytes without its terminator."""
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise self.fail(field, "string is not NUL-terminated")
        data = self._data[self._pos : end]
        self._pos = end + 1
        return data

    def cstring(self, field: str) -> str:
        return decode_text(self.cbytes(field), self.what, field)

    def end(self) -> None:
        """The body must be used up: trailing bytes mean we misread its layout."""
        if self._pos != len(self._data):
            raise RemoteProtocolError(
                f"{self.what}: {len(self._data) - self._pos} unexpected trailing bytes"
            )


def decode_text(raw: bytes, what: str, field: str) -> str:
    """Text fields are UTF-8: the gateway pins client_encoding, so anything else is garbage."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # exc.start is a position, not content: safe to report.
        raise RemoteProtocolError(
            f"{what}: {field}: not valid UTF-8 (byte {exc.start} of {len(raw)})"
        ) from None


# ---- writing ---------------------------------------------------------------------------


def cstr(value: str, what: str, field: str) -> bytes:
    """Encode ``value`` as a NUL-terminated UTF-8 string."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            f"{what}: {field}: not encodable as UTF-8 (lone surrogate)"
        ) from None
    return cbytes(raw, what, field)


def cbytes(raw: bytes, what: str, field: str) -> bytes:
    if b"\0" in raw:
        raise LocalProtocolError(f"{what}: {field}: contains a NUL byte, which ends a C string")
    return raw + b"\0"


# A cancel key's secret: 4 bytes in protocol 3.0, up to 256 in 3.2 (PostgreSQL 18's limit).
MIN_SECRET = 4
MAX_SECRET = 256


def check_secret(secret: bytes, what: str) -> bytes:
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise LocalProtocolError(
            f"{what}: secret: {len(secret)} bytes, outside [{MIN_SECRET}, {MAX_SECRET}]"
        )
    return secret


def check_range(value: int, low: int, high: int, what: str, field: str) -> int:
    if not low <= value <= high:
        raise LocalProtocolError(f"{what}: {field}: {value} is outside [{low}, {high}]")
    return value


def pack_int16(value: int, what: str, field: str) -> bytes:
    return INT16.pack(check_range(value, INT16_MIN, INT16_MAX, what, field))


def pack_uint16(value: int, what: str, field: str) -> bytes:
    return UINT16.pack(check_range(value, 0, UINT16_MAX, what, field))


def pack_int32(value: int, what: str, field: str) -> bytes:
    return INT32.pack(check_range(value, INT32_MIN, INT32_MAX, what, field))


def pack_uint32(value: int, what: str, field: str) -> bytes:
    return UINT32.pack(check_range(value, 0, UINT32_MAX, what, field))


def pack_count(count: int, what: str, field: str) -> bytes:
    """A 16-bit item count: PostgreSQL reads these unsigned (up to 65535 parameters)."""
    return pack_uint16(count, what, f"number of {field}")


def pack_values(values: tuple[bytes | None, ...], what: str) -> bytes:
    """Length-prefixed values, -1 for NULL (Bind parameters, DataRow columns)."""
    parts = [pack_count(len(values), what, "values")]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(pack_int32(len(value), what, "value length"))
            parts.append(value)
    return b"".join(parts)


def read_values(reader: BodyReader, count: int) -> tuple[bytes | None, ...]:
    """The reading counterpart of ``pack_values`` (after the count)."""
    values: list[bytes | None] = []
    for _ in range(count):
        size = reader.int32("value length")
        if size == -1:
            values.append(None)
        elif size < 0:
            raise reader.fail("value length", f"{size} (only -1, for NULL, may be negative)")
        else:
            values.append(reader.take(size, "value"))
    return tuple(values)
