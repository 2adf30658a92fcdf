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
6. Signal (e.g. cancel) goes gateway -> agent, while open, in either half-closed state. On a
   session with signal acks (`negotiate`), signals carry ids 1, 2, ..., and the agent answers
   each with Signal(DONE, same id) once it has carried it out (for a PostgreSQL cancel: the
   server closed its cancel connection), in either half-closed state. DONE goes agent ->
   gateway only, once per id the gateway sent; anything else is the peer's protocol error.
7. MaskReport goes agent -> gateway only, in the agent's data direction (open, before its
   Close), so counts arrive in order with the data they describe. On a session with data
   reports (`negotiate`) the agent may instead put the counts in the Data frame that carries
   the last bytes they count (Data.report): the gateway sees one DataReceived with its
   `report`.
8. Flow control, on a session with a window W (`negotiate`, before it opens): in each
   direction the sender may have at most W bytes of Data payload the receiver has not given
   back. The receiver gives bytes back with WindowUpdate once its application has consumed
   them (written them on, `consumed`), at least W/2 at a time so that updates stay few. Data
   beyond the window, a WindowUpdate of 0 bytes or beyond MAX_WINDOW, or one on a session
   without a window, is the peer's protocol error. WindowUpdate goes either way while open,
   whatever the half-closes. The sender splits its data to its credit (`send_credit`); a
   session without a window has unlimited credit (gRPC's HTTP/2 windows still apply, but
   they grow to megabytes, far ahead of a slow client).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.tunnel.frames import (
    MAX_PAYLOAD,
    MAX_WINDOW,
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
    WindowUpdate,
)

# The credit of a session without a window: never reached (2**62 bytes), so the hot path
# counts without asking whether the session has a window.
_UNLIMITED = 1 << 62


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
    # Gateway, on a session with data reports: what the agent masked, up to these bytes.
    report: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class RemoteClosed:
    pass


@dataclass(frozen=True, slots=True)
class SignalReceived:
    kind: SignalKind
    id: int = 0  # answer with send_signal_done(id) on a session with signal acks


@dataclass(frozen=True, slots=True)
class SignalDone:
    """The agent carried out the signal `id` (sessions with signal acks)."""

    id: int


@dataclass(frozen=True, slots=True)
class CreditReceived:
    """The peer consumed `increment` bytes: `send_credit` grew by that much."""

    increment: int


@dataclass(frozen=True, slots=True)
class MaskReported:
    counts: tuple[tuple[str, str, int], ...]
    # The counts rode in Data (`DataReceived.report`) and are heard just before its bytes,
    # which they count up to: a PostgreSQL session puts them in the record of the statement
    # those bytes finish. False: a MaskReport of its own, after the bytes.
    with_data: bool = False


@dataclass(frozen=True, slots=True)
class SessionReset:
    """The session ended abnormally; `by_peer` is False when we detected the fault."""

    code: ResetCode
    message: str
    by_peer: bool = True


Event = (
    Opened
    | OpenFailed
    | DataReceived
    | RemoteClosed
    | SignalReceived
    | SignalDone
    | CreditReceived
    | MaskReported
    | SessionReset
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
        self.window = 0
        self.signal_acks = False
        self.data_reports = False
        self.send_credit = _UNLIMITED  # bytes of Data we may still send
        self.recv_credit = _UNLIMITED  # bytes of Data the peer may still send us
        self._consumed = 0  # consumed by our application, not yet given back
        self._next_signal = 1
        self._signals_out: set[int] = set()  # gateway: sent, not yet DONE
        self._signals_in: set[int] = set()  # agent: received, not yet answered

    def negotiate(self, window: int, signal_acks: bool, data_reports: bool = False) -> None:
        """Flow control, signal acks and data reports as the session was ordered
        (OpenSession)."""
        if self.phase is not Phase.OPENING:
            raise LocalProtocolError("a session's window is set before it opens")
        if not 0 <= window <= MAX_WINDOW:
            raise LocalProtocolError(f"window {window} out of range")
        self.window = window
        self.signal_acks = signal_acks
        self.data_reports = data_reports
        self.send_credit = self.recv_credit = window or _UNLIMITED

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
            and len(frame.payload) <= self.recv_credit
        ):
            self.recv_credit -= len(frame.payload)
            if not frame.report:
                return Outcome((DataReceived(frame.payload),))  # nearly every frame: first
            if self.role is not Role.GATEWAY:
                return self.violation("MaskReport sent to the agent")
            return Outcome((DataReceived(frame.payload, frame.report),))
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
        if isinstance(frame, WindowUpdate):
            return self._credit(frame.increment)
        if isinstance(frame, Signal):
            return self._signal(frame)
        if self.remote_closed:
            return self.violation(f"{type(frame).__name__} after Close")
        if isinstance(frame, Data):
            if len(frame.payload) > MAX_PAYLOAD:
                return self.violation(
                    f"Data frame of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}"
                )
            return self.violation(
                f"Data frame of {len(frame.payload)} bytes beyond the window "
                f"({self.recv_credit} bytes left)"
            )
        if isinstance(frame, MaskReport):
            if self.role is not Role.GATEWAY:
                return self.violation("MaskReport sent to the agent")
            return Outcome(events=(MaskReported(frame.counts),))
        if isinstance(frame, Close):
            self.remote_closed = True
            self._finish_if_done()
            return Outcome(events=(RemoteClosed(),))
        return self.violation(f"unknown frame {frame!r}")  # pragma: no cover - exhaustive

    def _credit(self, increment: int) -> Outcome:
        if not self.window:
            return self.violation("WindowUpdate on a session without a window")
        if increment <= 0 or self.send_credit + increment > MAX_WINDOW:
            return self.violation(f"WindowUpdate of {increment} bytes")
        self.send_credit += increment
        return Outcome(events=(CreditReceived(increment),))

    def _signal(self, frame: Signal) -> Outcome:
        if self.role is Role.AGENT:
            if frame.kind is SignalKind.DONE:
                return self.violation("Signal DONE sent to the agent")
            if self.signal_acks:
                if frame.id in self._signals_in or frame.id < 1:
                    return self.violation(f"Signal with id {frame.id} twice or none")
                self._signals_in.add(frame.id)
            return Outcome(events=(SignalReceived(frame.kind, frame.id),))
        if frame.kind is not SignalKind.DONE:
            return self.violation("Signal sent to the gateway")
        if frame.id not in self._signals_out:
            return self.violation(f"Signal DONE for id {frame.id}, which awaits none")
        self._signals_out.discard(frame.id)
        return Outcome(events=(SignalDone(frame.id),))

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

    def send_data(self, payload: bytes, report: tuple[tuple[str, str, int], ...] = ()) -> Data:
        """A Data frame; with `report`, counts that ride in it (a session with data reports)."""
        if not self.can_send_data:
            raise LocalProtocolError(f"cannot send data in phase {self.phase.value}")
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError("payload larger than MAX_PAYLOAD; split it")
        if len(payload) > self.send_credit:
            raise LocalProtocolError("payload beyond the window; wait for credit")
        if report and (self.role is not Role.AGENT or not self.data_reports):
            raise LocalProtocolError("only the agent reports in Data, on a session with reports")
        self.send_credit -= len(payload)
        return Data(payload, report)

    def consumed(self, nbytes: int) -> WindowUpdate | None:
        """Our application has written `nbytes` of received Data on: the WindowUpdate to
        send, once at least half the window is owed; None until then (or without a window)."""
        if not self.window or self.phase is not Phase.OPEN or self.remote_closed:
            return None
        self._consumed += nbytes
        if self._consumed < (self.window + 1) // 2:
            return None
        increment, self._consumed = self._consumed, 0
        self.recv_credit += increment
        return WindowUpdate(increment)

    def send_mask_report(self, counts: tuple[tuple[str, str, int], ...]) -> MaskReport:
        if self.role is not Role.AGENT or not self.can_send_data:
            raise LocalProtocolError("only the agent reports masking, while its data flows")
        return MaskReport(counts)

    def send_signal(self, kind: SignalKind) -> Signal:
        if self.role is not Role.GATEWAY or self.phase is not Phase.OPEN:
            raise LocalProtocolError("only the gateway signals, on an open session")
        if kind is SignalKind.DONE:
            raise LocalProtocolError("DONE answers a signal; the agent sends it")
        if not self.signal_acks:
            return Signal(kind)
        signal_id = self._next_signal
        self._next_signal += 1
        self._signals_out.add(signal_id)
        return Signal(kind, signal_id)

    def send_signal_done(self, signal_id: int) -> Signal | None:
        """The answer to signal `signal_id`; None when the session takes no answers (no
        signal acks) or has finished."""
        if self.role is not Role.AGENT:
            raise LocalProtocolError("only the agent answers signals")
        if not self.signal_acks or self.phase is not Phase.OPEN:
            return None
        if signal_id not in self._signals_in:
            raise LocalProtocolError(f"no signal {signal_id} to answer")
        self._signals_in.discard(signal_id)
        return Signal(SignalKind.DONE, signal_id)

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
