"""Reconnect delays: capped exponential backoff with full jitter (sans-I/O).

Full jitter (AWS architecture blog, "Exponential Backoff and Jitter") spreads a fleet of
agents that lost the gateway at the same instant, so a restarted gateway is not hit by all
of them in the same millisecond. Eight lines do not justify a dependency.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 0.2
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
