"""Tunnel frames as typed values (sans-I/O).

These mirror proto/shared/pb/tunnel.proto one to one; shared.tunnel.codec converts. The
gateway and agent speak these, never protobuf, so the wire format can evolve in one place.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.masking.spec import MaskSpec

PROTOCOL_VERSION = 1
# One Data frame carries at most this much; larger writes are split. gRPC's own message
# limit is set above this (see MAX_GRPC_MESSAGE) so an oversized frame is a clean reset.
MAX_PAYLOAD = 256 * 1024
MAX_GRPC_MESSAGE = MAX_PAYLOAD + 16 * 1024
# A session's flow-control window (OpenSession.window, the gateway's `session_window`): of
# the order of what a TCP socket buffers, so a client that stops reading stops the server
# soon. Four full frames: with one frame per window the sender would wait for each frame
# to be written on before sending the next (measured: a 256 KiB window cost 16-25% of COPY
# throughput, 1 MiB is within the noise of none).
SESSION_WINDOW = 1024 * 1024
# Agent capabilities (Hello.capabilities) for the session features the gateway then orders.
WINDOW_CAPABILITY = "window"  # keeps OpenSession.window
SIGNAL_DONE_CAPABILITY = "signal-done"  # answers signals when OpenSession.signal_acks
# Understands the Members frame: only such agents are sent it (an older agent would read an
# unknown control frame as a protocol error). Welcome.members needs no capability: an
# older agent leaves the unknown field alone.
MEMBERS_CAPABILITY = "members"
# Liveness (both ends of the control stream): each side pings every ping interval (the
# gateway's `ping_interval`, sent in Welcome) and takes a peer silent for SILENT_PINGS
# intervals for dead. With the default interval of 1 s a hung peer is dropped 3 s after it
# was last heard, so within 5 s of hanging (docs/draining.md, "Failure detection").
SILENT_PINGS = 3
# The most credit a session's sender may hold (a WindowUpdate beyond it is a protocol error).
MAX_WINDOW = 2**31 - 1


class ResetCode(enum.IntEnum):
    UNSPECIFIED = 0
    PROTOCOL_ERROR = 1
    UNKNOWN_SESSION = 2
    TARGET_UNREACHABLE = 3
    TARGET_REFUSED = 4
    UNSUPPORTED = 5
    CANCELLED = 6
    AGENT_SHUTDOWN = 7
    GATEWAY_SHUTDOWN = 8
    FRAME_TOO_LARGE = 9
    SUPERSEDED = 10
    INTERNAL = 11
    SECRET_UNAVAILABLE = 12


# ---- control stream ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    agent_name: str
    version: str
    protocol_version: int = PROTOCOL_VERSION
    capabilities: tuple[str, ...] = ()
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    gateway_version: str
    pool: str
    ping_interval_ms: int
    protocol_version: int = PROTOCOL_VERSION
    # The fleet's live members (agent-facing HOST:PORT), this one included; empty: unknown.
    members: tuple[str, ...] = ()
    member: str = ""  # this member's own agent-facing address


@dataclass(frozen=True, slots=True)
class Members:
    """The fleet's live members changed: the whole new list (agent-facing HOST:PORT)."""

    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Goodbye:
    code: ResetCode
    message: str


@dataclass(frozen=True, slots=True)
class Target:
    connection: str
    type: str
    host: str
    port: int
    options: Mapping[str, str] = field(default_factory=dict)
    # str: a reference the agent resolves ("env:NAME", "file:PATH"); bytes: the value itself,
    # decrypted by the gateway for this one session.
    secrets: Mapping[str, str | bytes] = field(default_factory=dict)
    # Result masking for this session (rules resolved by the gateway); empty: none.
    masking: MaskSpec = field(default_factory=MaskSpec)

    def __repr__(self) -> str:  # secrets never reach a log line through repr
        return (
            f"Target(connection={self.connection!r}, type={self.type!r}, "
            f"host={self.host!r}, port={self.port}, secrets={sorted(self.secrets)})"
        )


@dataclass(frozen=True, slots=True)
class OpenSession:
    session_id: str
    target: Target
    # Flow control of this session (shared.tunnel.session, rule 8); 0: none but gRPC's.
    window: int = 0
    # The agent answers each Signal with Signal(DONE, id) once carried out (rule 6).
    signal_acks: bool = False
    # The gateway reads Data.report: the agent may report masking inside its Data (rule 7).
    data_reports: bool = False


# ---- member links (gateway/fleet/forward.py) -------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardOpen:
    """A member asks another to open a session on one of its agents of `pool`."""

    session_id: str
    pool: str
    target: Target
    data_reports: bool = False  # the asking member reads Data.report


@dataclass(frozen=True, slots=True)
class ForwardAnswer:
    ok: bool
    code: ResetCode = ResetCode.UNSPECIFIED
    message: str = ""
    # Not ok because this member has no usable agent of the pool: another may have one.
    elsewhere: bool = False
    # ok: the agent serving the session, and the flow control negotiated with it.
    agent: str = ""
    window: int = 0
    signal_acks: bool = False


AgentControl = Hello | Ping | Pong
GatewayControl = Welcome | OpenSession | Ping | Pong | Goodbye | Members


# ---- session streams -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionHello:
    session_id: str


@dataclass(frozen=True, slots=True)
class OpenResult:
    ok: bool
    code: ResetCode = ResetCode.UNSPECIFIED
    message: str = ""


@dataclass(frozen=True, slots=True)
class Data:
    payload: bytes
    # Agent -> gateway, on a session with data reports: a MaskReport's counts, after payload.
    report: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    code: ResetCode
    message: str = ""


class SignalKind(enum.IntEnum):
    UNSPECIFIED = 0
    CANCEL = 1
    DONE = 2  # agent -> gateway: the signal `id` was carried out


@dataclass(frozen=True, slots=True)
class Signal:
    """An out-of-band order beside the byte stream (gateway to agent), or the agent's
    answer that it was carried out (kind DONE, the same id; sessions with signal acks)."""

    kind: SignalKind
    id: int = 0


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """The receiver consumed `increment` more bytes of Data: the sender may send them."""

    increment: int


@dataclass(frozen=True, slots=True)
class MaskReport:
    """Agent -> gateway: values masked since the last report, (column, detector, count)."""

    counts: tuple[tuple[str, str, int], ...]


SessionFrame = SessionHello | OpenResult | Data | Close | Reset | Signal | MaskReport | WindowUpdate
