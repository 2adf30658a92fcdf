"""Encode and decode SSH relay frames (sans-I/O).

Rules this codec keeps:
- A frame is `u32 length | u8 type | fields`, `length` counting the type byte and fields.
  Fields follow the dataclass's field order: int as u32, bool as u8, str as u32 length +
  UTF-8, bytes as u32 length + raw bytes.
- The tunnel's Data payloads are a byte stream to this codec: a frame may span payloads,
  and one payload may hold several frames; `FrameDecoder` reassembles.
- A frame longer than MAX_FRAME, an unknown type, a truncated field, trailing bytes in a
  frame, or invalid UTF-8 is the peer's protocol error (`SshWireError`); nothing after it
  is decoded.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from shared.sshwire import frames as f

MAX_FRAME = 1024 * 1024
# Channel data is read in chunks no larger than this, so one frame fits one tunnel Data.
MAX_DATA = 64 * 1024

_TYPES: tuple[type[Any], ...] = (
    f.ChannelOpen,
    f.OpenResult,
    f.PtyRequest,
    f.EnvRequest,
    f.ShellRequest,
    f.ExecRequest,
    f.SubsystemRequest,
    f.RequestResult,
    f.WindowChange,
    f.SignalRequest,
    f.ChannelData,
    f.ExtendedData,
    f.Eof,
    f.ExitStatus,
    f.ExitSignal,
    f.ChannelClose,
    f.WindowAdjust,
)
_CODE = {cls: code for code, cls in enumerate(_TYPES, start=1)}
_FIELDS = {cls: tuple((fl.name, str(fl.type)) for fl in dataclasses.fields(cls)) for cls in _TYPES}
_U32 = struct.Struct("!I")


class SshWireError(Exception):
    """The peer sent bytes that are not a valid frame."""


def encode(frame: f.Frame) -> bytes:
    cls = type(frame)
    parts = [bytes((_CODE[cls],))]
    for name, kind in _FIELDS[cls]:
        value = getattr(frame, name)
        if kind == "int":
            if not 0 <= value < 2**32:
                raise ValueError(f"{cls.__name__}.{name}={value} does not fit in u32")
            parts.append(_U32.pack(value))
        elif kind == "bool":
            parts.append(b"\x01" if value else b"\x00")
        else:
            raw = value.encode() if kind == "str" else bytes(value)
            parts.append(_U32.pack(len(raw)))
            parts.append(raw)
    body = b"".join(parts)
    if len(body) > MAX_FRAME:
        raise ValueError(f"{cls.__name__} frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _U32.pack(len(body)) + body


def decode_body(body: bytes | memoryview) -> f.Frame:
    """One frame from its body (type byte and fields, without the length prefix)."""
    view = memoryview(body)
    if not view:
        raise SshWireError("empty frame")
    code = view[0]
    if not 1 <= code <= len(_TYPES):
        raise SshWireError(f"unknown frame type {code}")
    cls = _TYPES[code - 1]
    pos = 1
    values: dict[str, Any] = {}
    for name, kind in _FIELDS[cls]:
        if kind == "bool":
            if pos + 1 > len(view):
                raise SshWireError(f"{cls.__name__}.{name}: truncated")
            if view[pos] > 1:
                raise SshWireError(f"{cls.__name__}.{name}: not a boolean")
            values[name] = view[pos] == 1
            pos += 1
            continue
        if pos + 4 > len(view):
            raise SshWireError(f"{cls.__name__}.{name}: truncated")
        (number,) = _U32.unpack_from(view, pos)
        pos += 4
        if kind == "int":
            values[name] = number
            continue
        if pos + number > len(view):
            raise SshWireError(f"{cls.__name__}.{name}: truncated")
        raw = bytes(view[pos : pos + number])
        pos += number
        if kind == "str":
            try:
                values[name] = raw.decode()
            except UnicodeDecodeError:
                raise SshWireError(f"{cls.__name__}.{name}: invalid UTF-8") from None
        else:
            values[name] = raw
    if pos != len(view):
        raise SshWireError(f"{cls.__name__}: {len(view) - pos} trailing bytes")
    frame: f.Frame = cls(**values)
    return frame


class FrameDecoder:
    """Bytes in (`receive_data`), frames out (`next_frame`)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: SshWireError | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> f.Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._broken is not None:
            raise self._broken
        if len(self._buf) < 4:
            return None
        (length,) = _U32.unpack_from(self._buf, 0)
        if length > MAX_FRAME:
            self._broken = SshWireError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            raise self._broken
        if len(self._buf) < 4 + length:
            return None
        body = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        try:
            return decode_body(body)
        except SshWireError as exc:
            self._broken = exc
            raise

    def frames(self) -> list[f.Frame]:
        out: list[f.Frame] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out
