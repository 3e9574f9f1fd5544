"""When to try connecting again: full-jitter exponential backoff, without I/O."""

from __future__ import annotations

import random
from typing import Optional


class Backoff:
    """Full-jitter exponential backoff: ``uniform(0, min(cap, first * 2**attempt))``.

    ``attempt`` counts the failures since the last ``reset``: the first retry waits at
    most ``first`` seconds, and no wait is longer than ``cap``.
    """

    def __init__(self, first: float = 1.0, cap: float = 30.0, rng: Optional[random.Random] = None):
        if first <= 0 or cap <= 0:
            raise ValueError("backoff first and cap must be > 0")
        self.first, self.cap = float(first), float(cap)
        self.rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.first * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
