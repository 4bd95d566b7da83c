"""Guarded updates: a worker rolls back a newly served version whose live HR@K falls below the
version it replaced.

Outcomes come from the handler's live HR@K (a list judged by the user's next item event,
models/ab.py ``HitTracker``), kept per version in a sliding window. At a swap, the replaced
version's window is its baseline (when it holds at least ``min_judged`` outcomes). Once the
new version has ``min_judged`` outcomes of its own, a hit rate more than ``margin`` below the
baseline asks for a rollback to the replaced version, once. The worker then serves the old
version again and marks the new one refused, so that polling CURRENT does not reinstate it;
``streamrec models rollback`` does the same for every worker by hand.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class RollbackGuard:
    window: int = 2000
    min_judged: int = 500
    margin: float = 0.02
    outcomes: dict[str, deque[bool]] = field(default_factory=dict)
    baseline: tuple[str, float] | None = None
    watching: str | None = None

    def record(self, version: str, hit: bool) -> None:
        self.outcomes.setdefault(version, deque(maxlen=self.window)).append(hit)

    def hit_rate(self, version: str) -> tuple[float, int]:
        """``(hit rate, outcomes)`` of ``version``'s window."""
        d = self.outcomes.get(version)
        return (sum(d) / len(d), len(d)) if d else (0.0, 0)

    def swapped(self, old: str, new: str) -> None:
        """Watch ``new`` against ``old``'s window (no baseline: nothing to compare with)."""
        rate, n = self.hit_rate(old)
        self.baseline = (old, rate) if n >= self.min_judged else None
        self.watching = new if self.baseline else None

    def check(self) -> tuple[str, str, float, float] | None:
        """``(bad version, version to restore, its hit rate, the baseline's)`` when the watched
        version has fallen below its baseline by more than ``margin``; else None."""
        if self.watching is None or self.baseline is None:
            return None
        rate, n = self.hit_rate(self.watching)
        if n < self.min_judged:
            return None
        old, base = self.baseline
        bad = self.watching
        self.watching = self.baseline = None  # decided either way: stop watching
        return (bad, old, rate, base) if rate < base - self.margin else None


__all__ = ["RollbackGuard"]
