"""Cancel keys the gateway hands to PostgreSQL clients, and the sessions they stand for.

A client gets its server's real backend pid, so that `conn.info.backend_pid` agrees with
`pg_backend_pid()`, `pg_stat_activity.pid`, the pid in every NotificationResponse and
`pg_terminate_backend(pid)`; the secret is the gateway's own (the server's stays with the
agent, which replays a cancel with it). Two servers behind one gateway may hand out the same
pid, so a key is the pair (pid, secret), and a secret is drawn again until the pair is unused.

The secret is as long as the client's protocol allows: 4 bytes in protocol 3.0, 32 bytes (as
PostgreSQL 18 draws them) in 3.2 and later. A CancelRequest is matched in constant time
against every live key with its pid, so the lookup tells an attacker nothing about secrets.

Across a fleet, a CancelRequest that reaches a member which did not issue its key is asked of
every member (`FleetCancel`, over the store's bus: gateway.fleet.bus) with the secret's
SHA-256 in place of the secret; the member holding the key claims it at once
(`CancelAnswer` "claimed") and says "done" once the server has acted, so the client's cancel
connection closes then, wherever it landed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

SessionT = TypeVar("SessionT")

SECRET_3_0 = 4
SECRET_3_2 = 32  # PostgreSQL 18 draws 32-byte keys for protocol 3.2


def secret_length(protocol_minor: int) -> int:
    """The secret length for a client that agreed on protocol 3.``protocol_minor``."""
    return SECRET_3_2 if protocol_minor >= 2 else SECRET_3_0


class CancelKeys(Generic[SessionT]):
    def __init__(self) -> None:
        self._by_pid: dict[int, dict[bytes, SessionT]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_pid.values())

    def issue(self, session: SessionT, pid: int, length: int) -> bytes:
        """A new secret for `session`, whose server backend is `pid`."""
        keys = self._by_pid.setdefault(pid, {})
        while (secret := secrets.token_bytes(length)) in keys:
            pass
        keys[secret] = session
        return secret

    def revoke(self, pid: int, secret: bytes) -> None:
        keys = self._by_pid.get(pid)
        if keys is not None:
            keys.pop(secret, None)
            if not keys:
                del self._by_pid[pid]

    def find(self, pid: int, secret: bytes) -> SessionT | None:
        found: SessionT | None = None
        # Compare with every candidate, not a dict lookup: a hash probe's timing depends on
        # the secret, and the secret is what stops one user cancelling another's queries.
        for candidate, session in self._by_pid.get(pid, {}).items():
            if hmac.compare_digest(candidate, secret):
                found = session
        return found

    def find_digest(self, pid: int, digest: bytes) -> SessionT | None:
        """As `find`, for a key known by `secret_digest(secret)` (a cancel from another member)."""
        found: SessionT | None = None
        for candidate, session in self._by_pid.get(pid, {}).items():
            if hmac.compare_digest(secret_digest(candidate), digest):
                found = session
        return found


def secret_digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class BadMessage(ValueError):
    """A fleet message that is not one of ours (another version's, or garbage)."""


@dataclass(frozen=True, slots=True)
class FleetCancel:
    """A member asks the fleet: whoever holds the key (pid, secret), cancel its statement."""

    request_id: str
    pid: int
    digest: bytes  # secret_digest(secret): the secret itself never leaves the member
    client: str  # the address the CancelRequest came from, for the audit

    def encode(self) -> str:
        return json.dumps(
            {
                "id": self.request_id,
                "pid": self.pid,
                "key": self.digest.hex(),
                "client": self.client,
            }
        )

    @classmethod
    def decode(cls, payload: str) -> FleetCancel:
        try:
            fields = json.loads(payload)
            message = cls(
                str(fields["id"]),
                int(fields["pid"]),
                bytes.fromhex(fields["key"]),
                str(fields["client"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"not a fleet cancel: {exc}") from None
        if len(message.digest) != hashlib.sha256().digest_size:
            raise BadMessage("not a fleet cancel: the key digest is not SHA-256")
        return message


AnswerState = Literal["claimed", "done"]


@dataclass(frozen=True, slots=True)
class CancelAnswer:
    """The member holding the key answers a `FleetCancel`: claimed at once, done once the
    server has acted."""

    request_id: str
    state: AnswerState

    def encode(self) -> str:
        return json.dumps({"id": self.request_id, "state": self.state})

    @classmethod
    def decode(cls, payload: str) -> CancelAnswer:
        try:
            fields = json.loads(payload)
            request_id, state = str(fields["id"]), fields["state"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"not a cancel answer: {exc}") from None
        if state not in ("claimed", "done"):
            raise BadMessage(f"not a cancel answer: state {state!r}")
        return cls(request_id, state)


@dataclass(frozen=True, slots=True)
class SessionKeys(Generic[SessionT]):
    """The keys one session hands out: secrets of `length` bytes, all for `session`."""

    keys: CancelKeys[SessionT]
    session: SessionT
    length: int

    def issue(self, pid: int) -> bytes:
        return self.keys.issue(self.session, pid, self.length)

    def revoke(self, pid: int, secret: bytes) -> None:
        self.keys.revoke(pid, secret)
