"""The frames of the SSH channel relay: frozen values, one per fact or order.

Channel ids are the gateway's channel numbers on the client's SSH connection; the agent
keeps its own map to the target's channels. Every frame carries its channel id.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per channel and direction: unacknowledged data bytes one side may have sent.
CHANNEL_WINDOW = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChannelOpen:
    """Open a channel at the target: kind "session" or "direct-tcpip" (host, port)."""

    channel: int
    kind: str
    host: str = ""
    port: int = 0
    origin_host: str = ""
    origin_port: int = 0


@dataclass(frozen=True, slots=True)
class OpenResult:
    channel: int
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class PtyRequest:
    channel: int
    request: int
    term: str
    cols: int
    rows: int
    width_px: int = 0
    height_px: int = 0
    modes: bytes = b""


@dataclass(frozen=True, slots=True)
class EnvRequest:
    channel: int
    request: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ShellRequest:
    channel: int
    request: int


@dataclass(frozen=True, slots=True)
class ExecRequest:
    channel: int
    request: int
    command: bytes


@dataclass(frozen=True, slots=True)
class SubsystemRequest:
    channel: int
    request: int
    name: str


@dataclass(frozen=True, slots=True)
class RequestResult:
    """The target's answer to the request with id `request` on `channel`."""

    channel: int
    request: int
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class WindowChange:
    channel: int
    cols: int
    rows: int
    width_px: int = 0
    height_px: int = 0


@dataclass(frozen=True, slots=True)
class SignalRequest:
    channel: int
    name: str


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ExtendedData:
    """stderr (SSH extended data type 1), from the target to the client."""

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Eof:
    channel: int


@dataclass(frozen=True, slots=True)
class ExitStatus:
    channel: int
    status: int


@dataclass(frozen=True, slots=True)
class ExitSignal:
    channel: int
    signal: str
    core_dumped: bool = False
    message: str = ""


@dataclass(frozen=True, slots=True)
class ChannelClose:
    channel: int


@dataclass(frozen=True, slots=True)
class WindowAdjust:
    """The receiver took `increment` more bytes of the channel's data off the relay.

    Each side may have at most CHANNEL_WINDOW bytes of one channel's data (ChannelData and
    ExtendedData payloads) in flight that the other side has not acknowledged this way, so
    neither side ever has to stop reading the tunnel for a slow channel: answers and other
    channels go on while one channel's reader is slow.
    """

    channel: int
    increment: int


Frame = (
    ChannelOpen
    | OpenResult
    | PtyRequest
    | EnvRequest
    | ShellRequest
    | ExecRequest
    | SubsystemRequest
    | RequestResult
    | WindowChange
    | SignalRequest
    | ChannelData
    | ExtendedData
    | Eof
    | ExitStatus
    | ExitSignal
    | ChannelClose
    | WindowAdjust
)
