"""Per-channel credit for the SSH relay: how many data bytes may still be sent (sans-I/O).

`SendWindow` is the sender's count (taken before sending, given back by the peer's
WindowAdjust); `ReceiveWindow` is the receiver's count of bytes delivered but not yet
acknowledged, which says when a WindowAdjust is worth sending (a quarter of the window, so
the sender never runs dry while acknowledgements are few).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.sshwire.frames import CHANNEL_WINDOW


class WindowError(Exception):
    """The peer acknowledged more than it was sent."""


@dataclass
class SendWindow:
    available: int = CHANNEL_WINDOW
    size: int = CHANNEL_WINDOW

    def can_send(self, n: int) -> bool:
        return self.available >= min(n, self.size)

    def consume(self, n: int) -> None:
        self.available -= n

    def adjust(self, increment: int) -> None:
        if increment <= 0 or self.available + increment > self.size:
            raise WindowError(f"window adjust of {increment} beyond what was sent")
        self.available += increment


@dataclass
class ReceiveWindow:
    unacknowledged: int = 0
    size: int = CHANNEL_WINDOW

    def delivered(self, n: int) -> int:
        """Count `n` delivered bytes; the increment to acknowledge now, or 0."""
        self.unacknowledged += n
        if self.unacknowledged >= self.size // 4:
            increment, self.unacknowledged = self.unacknowledged, 0
            return increment
        return 0
