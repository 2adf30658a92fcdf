"""What a PostgreSQL session (`gateway.protocols.pgsession`) takes in and gives out (sans-I/O).

Verdicts are the judge's answers; actions are orders for the driver (named as orders, done
in the order given); requests are what the session's client side waits for, answered by
the driver through the session's method of the same subject; the seams are the typed
Protocols the session is built on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.policy.approval import ReviewTerms
from gateway.policy.budgets import BudgetMeter, Exceeded
from gateway.policy.readonly import READ_ONLY_SQLSTATE
from shared.pgwire.frontend import FrontendMessage

# ---- verdicts (the judge's answers) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    text: str
    rules: tuple[str, ...] = ()  # the guardrail rules that denied it; () for read-only
    sqlstate: str = READ_ONLY_SQLSTATE  # 42501; 57014 for a held statement the client cancelled
    budget: str | None = None  # the exfiltration budget that is exhausted


@dataclass(frozen=True, slots=True)
class Hold:
    """A statement the guardrails send to review: held until others approve it."""

    reason: str
    text: str
    rules: tuple[str, ...]
    terms: ReviewTerms
    budgets: tuple[str, ...] = ()  # exhausted budgets (on_exceed review) this asks past


Verdict = Refusal | Hold | None


@dataclass(frozen=True, slots=True)
class ReviewDecided:
    """How a review wait ended: `status` approved/denied/expired/...; None when the client
    stopped waiting (its cancel, or it hung up: `client_gone`)."""

    status: str | None
    decision: str = ""
    client_gone: bool = False


# ---- actions (orders for the driver) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes
    from_server: bool = False  # the server's answer: report `client_flushed` once written


@dataclass(frozen=True, slots=True)
class SendToAgent:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseToAgent:
    """The client is done sending (Terminate or end-of-file): half-close towards the server."""


@dataclass(frozen=True, slots=True)
class Record:
    """An audit event, submitted (not awaited)."""

    kind: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CancelServer:
    """Ask the server to cancel what it runs (a result a budget stopped)."""


@dataclass(frozen=True, slots=True)
class WakeBudgetFlusher:
    """A budget was crossed: move the usage to the store now, not at the next interval."""


Cause = Literal[
    "client", "server", "agent", "refused", "audit", "protocol", "connection", "shutdown"
]


@dataclass(frozen=True, slots=True)
class Close:
    """The session is over: the driver's last orders, in this order."""

    cause: Cause
    error: str | None  # recorded with the session; None: a clean end
    reset_agent_first: str | None = None  # reset the agent's stream with this, before all
    to_client: bytes = b""  # the last bytes for the client
    end_output: bool = False  # flush, then end-of-file to the client (its FATAL is read first)
    linger: bool = False  # ... and read what the client still sends, LINGER s at most
    close_agent: bool = False  # both directions closed: end the agent's side cleanly
    wait_client_side: bool = False  # the client side has ended itself: let its sends finish
    drain_after: bool = False  # after the session is recorded, drop what the client sends


Action = (
    SendToClient | SendToAgent | CloseToAgent | Record | CancelServer | WakeBudgetFlusher | Close
)


# ---- requests (the client side waits for the answer) --------------------------------------


@dataclass(frozen=True, slots=True)
class NeedClientData:
    """More client bytes (b"" at its end-of-file); with `until` (the session clock), None
    when that time passes first."""

    until: float | None = None


@dataclass(frozen=True, slots=True)
class Judge:
    """The verdict (`Verdict`) of read-only access, guardrails and budgets on one message."""

    kind: bytes
    decoded: FrontendMessage | None
    batch_start: bool


@dataclass(frozen=True, slots=True)
class RecordDurably:
    """Record these events, then answer their audit seqs, in order."""

    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class NeedServerIdle:
    """Answer (None) once `server_idle` holds: everything sent has been answered."""


@dataclass(frozen=True, slots=True)
class OpenReview:
    """Open a review for this hold; answer its id, or None when it cannot be created."""

    hold: Hold


@dataclass(frozen=True, slots=True)
class AwaitReview:
    """Wait for the review's decision while the client may withdraw; answer `ReviewDecided`."""

    review_id: str


@dataclass(frozen=True, slots=True)
class CancelReview:
    review_id: str
    reason: str


Request = (
    NeedClientData
    | Judge
    | RecordDurably
    | NeedServerIdle
    | OpenReview
    | AwaitReview
    | CancelReview
)


# ---- the seams ------------------------------------------------------------------------------


class Budgets(Protocol):
    """The session's budgets as the relay uses them (`gateway.policystore.SessionPolicy`)."""

    @property
    def version(self) -> int: ...
    @property
    def metered(self) -> bool: ...
    @property
    def waiving(self) -> bool: ...
    @property
    def meter(self) -> BudgetMeter | None: ...
    def count(self, rows: int, nbytes: int) -> Exceeded | None: ...
    def stop_offset(self, data: bytes, partial: tuple[bytes, int]) -> int | None: ...
    def waive(self, budgets: tuple[str, ...]) -> None: ...
    def unwaive(self) -> None: ...


class KeyIssuer(Protocol):
    """The gateway's cancel keys (`gateway.protocols.pgcancel.CancelKeys` for one session)."""

    def issue(self, pid: int) -> bytes: ...
    def revoke(self, pid: int, secret: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    user: str
    groups: tuple[str, ...]
    connection: str
    record_params: bool = False
    reviews: bool = True  # approvals are enabled on this gateway
