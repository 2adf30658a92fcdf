"""The state of one tunnelled session, as seen from one end (sans-I/O).

Rules this machine keeps:
1. On a session stream the agent speaks first: SessionHello (consumed by the gateway's
   router before this machine exists), then exactly one OpenResult. The gateway sends
   nothing until it has received OpenResult(ok=True).
2. Data flows in a direction until that direction's sender sends Close (a half-close,
   like TCP FIN); the other direction goes on.
3. The session is finished when both directions are closed, or at once when either end
   sends Reset. Nothing is sent or accepted after that.
4. A Data payload larger than MAX_PAYLOAD, a second OpenResult, Data after Close, or a
   frame that makes no sense in the current state is the PEER's protocol error: the machine
   answers with a Reset(PROTOCOL_ERROR) to send and finishes.
5. Trying to send what the rules forbid is OUR bug: LocalProtocolError, nothing is sent.
6. Signal (e.g. cancel) goes gateway -> agent only, while open, in either half-closed state.
7. MaskReport goes agent -> gateway only, in the agent's data direction (open, before its
   Close), so counts arrive in order with the data they describe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.tunnel.frames import (
    MAX_PAYLOAD,
    Close,
    Data,
    MaskReport,
    OpenResult,
    Reset,
    ResetCode,
    SessionFrame,
    SessionHello,
    Signal,
    SignalKind,
)


class Role(enum.Enum):
    GATEWAY = "gateway"
    AGENT = "agent"


class Phase(enum.Enum):
    OPENING = "opening"  # waiting for (gateway) or about to send (agent) the OpenResult
    OPEN = "open"
    FINISHED = "finished"


class LocalProtocolError(Exception):
    """We tried to send something the rules forbid: a bug on this side."""


# ---- events, named as facts ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    pass


@dataclass(frozen=True, slots=True)
class OpenFailed:
    code: ResetCode
    message: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class RemoteClosed:
    pass


@dataclass(frozen=True, slots=True)
class SignalReceived:
    kind: SignalKind


@dataclass(frozen=True, slots=True)
class MaskReported:
    counts: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class SessionReset:
    """The session ended abnormally; `by_peer` is False when we detected the fault."""

    code: ResetCode
    message: str
    by_peer: bool = True


Event = (
    Opened | OpenFailed | DataReceived | RemoteClosed | SignalReceived | MaskReported | SessionReset
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `receive` learned: events for the application, a frame to send back, or both."""

    events: tuple[Event, ...] = ()
    reply: Reset | None = None


class SessionState:
    def __init__(self, role: Role) -> None:
        self.role = role
        self.phase = Phase.OPENING
        self.local_closed = False
        self.remote_closed = False
        self.reset_code: ResetCode | None = None

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    @property
    def can_send_data(self) -> bool:
        return self.phase is Phase.OPEN and not self.local_closed

    def _finish_if_done(self) -> None:
        if self.local_closed and self.remote_closed:
            self.phase = Phase.FINISHED

    def violation(self, message: str) -> Outcome:
        self.phase = Phase.FINISHED
        self.reset_code = ResetCode.PROTOCOL_ERROR
        return Outcome(
            events=(SessionReset(ResetCode.PROTOCOL_ERROR, message, by_peer=False),),
            reply=Reset(ResetCode.PROTOCOL_ERROR, message),
        )

    # ---- incoming ------------------------------------------------------------------

    def receive(self, frame: SessionFrame) -> Outcome:
        if (
            type(frame) is Data
            and self.phase is Phase.OPEN
            and not self.remote_closed
            and len(frame.payload) <= MAX_PAYLOAD
        ):
            return Outcome((DataReceived(frame.payload),))  # nearly every frame: checked first
        if self.phase is Phase.FINISHED:
            return Outcome()  # frames racing a reset are dropped, not errors
        if isinstance(frame, Reset):
            self.phase = Phase.FINISHED
            self.reset_code = frame.code
            return Outcome(events=(SessionReset(frame.code, frame.message),))
        if isinstance(frame, SessionHello):
            return self.violation("SessionHello after the session was routed")
        if isinstance(frame, OpenResult):
            if self.role is not Role.GATEWAY or self.phase is not Phase.OPENING:
                return self.violation("unexpected OpenResult")
            if frame.ok:
                self.phase = Phase.OPEN
                return Outcome(events=(Opened(),))
            self.phase = Phase.FINISHED
            self.reset_code = frame.code
            return Outcome(events=(OpenFailed(frame.code, frame.message),))
        if self.phase is Phase.OPENING:
            if self.role is Role.GATEWAY:
                return self.violation(f"{type(frame).__name__} before OpenResult")
            # The gateway only sends after it has seen OpenResult(ok), which the agent sent
            # after moving to OPEN; anything earlier is out of order.
            return self.violation(f"{type(frame).__name__} before the session was open")
        if isinstance(frame, Signal):
            if self.role is not Role.AGENT:
                return self.violation("Signal sent to the gateway")
            return Outcome(events=(SignalReceived(frame.kind),))
        if self.remote_closed:
            return self.violation(f"{type(frame).__name__} after Close")
        if isinstance(frame, Data):
            if len(frame.payload) > MAX_PAYLOAD:
                return self.violation(
                    f"Data frame of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}"
                )
            return Outcome(events=(DataReceived(frame.payload),))
        if isinstance(frame, MaskReport):
            if self.role is not Role.GATEWAY:
                return self.violation("MaskReport sent to the agent")
            return Outcome(events=(MaskReported(frame.counts),))
        if isinstance(frame, Close):
            self.remote_closed = True
            self._finish_if_done()
            return Outcome(events=(RemoteClosed(),))
        return self.violation(f"unknown frame {frame!r}")  # pragma: no cover - exhaustive

    # ---- outgoing ------------------------------------------------------------------

    def send_open_result(self, result: OpenResult) -> OpenResult:
        if self.role is not Role.AGENT or self.phase is not Phase.OPENING:
            raise LocalProtocolError("only the agent sends OpenResult, once")
        if result.ok:
            self.phase = Phase.OPEN
        else:
            self.phase = Phase.FINISHED
            self.reset_code = result.code
        return result

    def send_data(self, payload: bytes) -> Data:
        if not self.can_send_data:
            raise LocalProtocolError(f"cannot send data in phase {self.phase.value}")
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError("payload larger than MAX_PAYLOAD; split it")
        return Data(payload)

    def send_mask_report(self, counts: tuple[tuple[str, str, int], ...]) -> MaskReport:
        if self.role is not Role.AGENT or not self.can_send_data:
            raise LocalProtocolError("only the agent reports masking, while its data flows")
        return MaskReport(counts)

    def send_signal(self, kind: SignalKind) -> Signal:
        if self.role is not Role.GATEWAY or self.phase is not Phase.OPEN:
            raise LocalProtocolError("only the gateway signals, on an open session")
        return Signal(kind)

    def send_close(self) -> Close | None:
        """Half-close our direction; None when there is nothing to close any more."""
        if self.phase is not Phase.OPEN or self.local_closed:
            return None
        self.local_closed = True
        self._finish_if_done()
        return Close()

    def send_reset(self, code: ResetCode, message: str) -> Reset | None:
        if self.phase is Phase.FINISHED:
            return None
        self.phase = Phase.FINISHED
        self.reset_code = code
        return Reset(code, message)
