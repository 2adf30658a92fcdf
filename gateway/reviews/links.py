"""Links to a review's console page, as the webhook sends them to chat.

A link grants nothing: opening it still needs a console sign-in, and the page shows the
review only to those the API shows it to (admins, the requester, its approvers). Its `sig`
(an HMAC of the review id with the webhook's secret) lets the page say the link is one
Wardgate sent, not one crafted to look like it (a phishing link to a lookalike review id).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

SIG_LENGTH = 32  # hex digits: 128 bits


class ReviewLinks:
    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = hmac.new(secret.encode(), b"wardgate review link", hashlib.sha256).digest()

    def sig(self, review_id: str) -> str:
        mac = hmac.new(self._key, review_id.encode(), hashlib.sha256)
        return mac.hexdigest()[:SIG_LENGTH]

    def url(self, review_id: str) -> str:
        path = quote(review_id, safe="")
        return f"{self.base_url}/console/reviews/{path}?sig={self.sig(review_id)}"

    def genuine(self, review_id: str, sig: str) -> bool:
        return len(sig) == SIG_LENGTH and hmac.compare_digest(self.sig(review_id), sig)
