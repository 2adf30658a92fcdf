"""Proof that a call on the member link comes from a member of this fleet (sans-I/O).

Members share `secret_key` (a PostgreSQL store refuses to start without it), and nothing
else an outsider could hold: agents have their own keys, users their tokens. The link key is
derived from it for this one purpose (HKDF, `SecretBox.derive`), so it is never the key that
seals secrets. A call carries the caller's member id, the time, and
HMAC-SHA256(link key, caller, callee, session id, time): bound to the member called and to
one session, fresh within MAX_SKEW, and accepted once (`ReplayGuard`), so a proof read off
one member cannot open anything on another, nor the same session twice.

An agent's credentials never pass here, and a member proof is never an agent's: the agent
service and the member link read different metadata keys, each only its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

METADATA_MEMBER = "x-wardgate-member"
METADATA_TIME = "x-wardgate-member-time"
METADATA_PROOF = "x-wardgate-member-proof"

PURPOSE = "wardgate member link v1"
MAX_SKEW = 60.0  # seconds a proof stays good either side of the callee's clock
MAX_REMEMBERED = 100_000  # proofs kept against replay: far more forwarded opens than 2 minutes see


class LinkRefused(Exception):
    """The call does not prove it comes from a member of this fleet."""


def _mac(key: bytes, caller: str, callee: str, session_id: str, at: int) -> str:
    message = "\n".join((caller, callee, session_id, str(at))).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class LinkKey:
    key: bytes

    def metadata(
        self, caller: str, callee: str, session_id: str, now: float | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The metadata of a Forward call from member `caller` to member `callee`."""
        at = int(time.time() if now is None else now)
        proof = _mac(self.key, caller, callee, session_id, at)
        return ((METADATA_MEMBER, caller), (METADATA_TIME, str(at)), (METADATA_PROOF, proof))

    def verify(
        self, metadata: dict[str, str], callee: str, session_id: str, now: float | None = None
    ) -> str:
        """The calling member's id; raises LinkRefused, saying why in a few words."""
        caller = metadata.get(METADATA_MEMBER, "")
        proof = metadata.get(METADATA_PROOF, "")
        if not caller or not proof:
            raise LinkRefused("no member proof")
        try:
            at = int(metadata.get(METADATA_TIME, ""))
        except ValueError:
            raise LinkRefused("malformed member proof") from None
        expected = _mac(self.key, caller, callee, session_id, at)
        if not hmac.compare_digest(expected.encode(), proof.encode()):
            raise LinkRefused("member proof does not match (another fleet's secret_key?)")
        clock = time.time() if now is None else now
        if abs(clock - at) > MAX_SKEW:
            raise LinkRefused(f"member proof is {abs(clock - at):.0f}s off this member's clock")
        return caller


class ReplayGuard:
    """Proofs seen within the skew window: each opens one session, once. One member's memory
    is enough for the fleet: a proof names the member it was made for, which alone takes it."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def first_use(self, proof: str, now: float | None = None) -> bool:
        """False for a proof seen before, and (fail closed) when the window holds `limit`."""
        clock = time.time() if now is None else now
        while self._seen:  # forget what fell out of the window, oldest first
            oldest, seen_at = next(iter(self._seen.items()))
            if clock - seen_at <= 2 * MAX_SKEW:
                break
            del self._seen[oldest]
        if proof in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen[proof] = clock
        return True
