"""Framing of tagged PostgreSQL messages (sans-I/O): bytes in, ``Message`` values out.

After the startup packet every message in either direction is Byte1 type, Int32 length
(counting itself and the body, not the type byte), body.

Rules:
1. ``MessageReader.feed`` takes bytes as they arrive, in chunks of any size;
   ``next_message`` returns one complete message or None when more bytes are needed. Split
   points never matter: the same stream in any chunking yields the same messages.
2. A length below 4 or above ``max_message_size`` is the peer's error, raised as soon as the
   5-byte header is in, before the body is buffered, so a hostile length cannot make us hold
   a gigabyte. After an error the stream is out of sync: the reader stays failed and raises
   the same error again.
3. The reader frames, it does not interpret: any type byte is a Message here;
   ``decode_frontend``/``decode_backend`` decide whether it means anything.
4. Untagged packets (the startup packet; the one-byte answer to SSLRequest) are read through
   the same reader, because bytes after them may already be in its buffer.
5. ``Message.raw`` is exactly the bytes the message arrived as, so a proxy can forward
   what it inspected without re-encoding.

Cost: consumed bytes are skipped by an offset and compacted away only once they make up half
of the buffer (and at least ``_COMPACT_AT``), so a long stream of small messages costs O(n).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.pgwire._wire import INT32, INT32_MAX
from shared.pgwire.errors import LocalProtocolError, RemoteProtocolError
from shared.pgwire.startup import startup_packet_length

DEFAULT_MAX_MESSAGE_SIZE = 1 << 30  # PostgreSQL itself refuses messages near 1 GiB
_COMPACT_AT = 64 * 1024
_HEADER = 5
_COPY_VIA_VIEW = 16 * 1024
_TYPE_BYTES = tuple(bytes((i,)) for i in range(256))  # type byte without a slice and a copy


@dataclass(frozen=True, slots=True)
class Message:
    """One tagged message: ``type`` is a single byte such as b"Q"; ``body`` excludes the header."""

    type: bytes
    body: bytes

    @property
    def raw(self) -> bytes:
        """The message as it travels on the wire."""
        return encode_message(self.type, self.body)

    def encode(self) -> bytes:
        return encode_message(self.type, self.body)


def encode_message(type: bytes, body: bytes) -> bytes:
    """Frame ``body`` as a message of ``type``."""
    if len(type) != 1:
        raise LocalProtocolError(f"message type must be 1 byte, got {len(type)}")
    length = len(body) + 4
    if length > INT32_MAX:
        raise LocalProtocolError(
            f"message {type!r}: body of {len(body)} bytes does not fit an Int32 length"
        )
    return type + INT32.pack(length) + body


class MessageReader:
    """Incremental framer for one direction of a connection."""

    __slots__ = ("_buf", "_error", "_pos", "max_message_size")

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if not 4 <= max_message_size <= INT32_MAX:
            raise ValueError(f"max_message_size {max_message_size} is outside [4, 2**31 - 1]")
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            return  # out of sync for good: holding more would only cost memory
        buf = self._buf
        pos = self._pos
        if pos:
            if pos == len(buf):
                buf.clear()
                self._pos = 0
            elif pos >= _COMPACT_AT and 2 * pos >= len(buf):
                del buf[:pos]
                self._pos = 0
        buf += data

    def next_message(self) -> Message | None:
        """The next complete tagged message, or None until more bytes are fed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < _HEADER:
            return None
        length: int = INT32.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > self.max_message_size:
            msg_type = _TYPE_BYTES[buf[pos]]
            self._error = RemoteProtocolError(
                f"message {msg_type!r}: length {length} is outside [4, {self.max_message_size}]"
            )
            raise self._error
        end = pos + 1 + length
        if len(buf) < end:
            return None
        self._pos = end
        if length < _COPY_VIA_VIEW:
            body = bytes(buf[pos + _HEADER : end])
        else:
            # Slicing a bytearray copies twice (bytearray, then bytes); a view copies once,
            # which pays off for large bodies such as COPY chunks. The view is released at
            # once: a live export would make the next feed's resize raise BufferError.
            with memoryview(buf) as view:
                body = view[pos + _HEADER : end].tobytes()
        return Message(_TYPE_BYTES[buf[pos]], body)

    def next_startup_packet(self) -> bytes | None:
        """The next untagged startup packet (length included), for ``parse_startup_packet``."""
        if self._error is not None:
            raise self._error
        pos = self._pos
        try:
            length = startup_packet_length(bytes(self._buf[pos : pos + 4]))
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        if length is None or len(self._buf) - pos < length:
            return None
        self._pos = pos + length
        return bytes(self._buf[pos : pos + length])

    def next_byte(self) -> bytes | None:
        """One raw byte: the server's b"S"/b"N" answer to SSLRequest or GSSENCRequest."""
        if self._error is not None:
            raise self._error
        if self._pos == len(self._buf):
            return None
        self._pos += 1
        return bytes(self._buf[self._pos - 1 : self._pos])

    def take_buffered(self) -> bytes:
        """Hand over the unread bytes (to stop framing and relay the rest verbatim)."""
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return data
