"""A/B split between model versions and the online metric that judges it.

**Split.** A user's arm is a pure function of ``(salt, user_id)``: the first 8 bytes of
blake2b, as a fraction of 2^64, fall into the arm whose cumulative weight interval holds it.
Stable across workers, restarts and partitions without shared state; changing ``salt``
reshuffles everyone. ``ABSplit.parse("A=v1:0.9,B=v2:0.1")`` reads the configured form.

**Online HR@K** (``HitTracker``): each user's most recent recommendation list is kept (a
bounded LRU); when the user's next item event arrives, it is a hit if the item is in that
list's top K, and its reciprocal rank (1/rank of the item in the list, 0 when absent) adds to
the arm's MRR@K. Counted per arm, so both arms are judged on the same kind of traffic at the
same time. ``wilson`` gives the 95% confidence interval of a hit rate.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    version: str
    weight: float


@dataclass(frozen=True, slots=True)
class ABSplit:
    """Arms with positive weights (normalised to sum 1) and the hashing salt."""

    arms: tuple[Arm, ...]
    salt: str = "streamrec-ab"

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("an A/B split needs at least one arm")
        if any(a.weight <= 0 or not math.isfinite(a.weight) for a in self.arms):
            raise ValueError("arm weights must be positive")
        if len({a.name for a in self.arms}) != len(self.arms):
            raise ValueError("arm names must be distinct")

    @classmethod
    def parse(cls, spec: str, salt: str = "streamrec-ab") -> ABSplit:
        """``"A=v1:0.9,B=v2:0.1"``: arm name, model version, weight."""
        arms = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            try:
                name, rest = part.split("=", 1)
                version, weight = rest.rsplit(":", 1)
                arms.append(Arm(name.strip(), version.strip(), float(weight)))
            except ValueError as exc:
                raise ValueError(f"bad arm {part!r}: expected NAME=VERSION:WEIGHT") from exc
        return cls(tuple(arms), salt)

    def bucket(self, user_id: str) -> float:
        """The user's point in [0, 1)."""
        digest = hashlib.blake2b(f"{self.salt}\x00{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def assign(self, user_ids: Sequence[str]) -> list[Arm]:
        """Each user's arm (one hash per user; the caller groups a batch by arm)."""
        total = sum(a.weight for a in self.arms)
        bounds = []
        acc = 0.0
        for a in self.arms:
            acc += a.weight / total
            bounds.append(acc)
        out = []
        for u in user_ids:
            x = self.bucket(u)
            out.append(next((a for a, b in zip(self.arms, bounds, strict=True) if x < b),
                            self.arms[-1]))  # fmt: skip
        return out


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n`` ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(slots=True)
class ArmStats:
    shown: int = 0  # recommendation lists published
    judged: int = 0  # lists followed by the user's next item event
    hits: int = 0  # ... whose item was in the list's top K
    rr: float = 0.0  # sum of the reciprocal ranks of those items (MRR@K = rr / judged)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.judged if self.judged else 0.0

    @property
    def mrr(self) -> float:
        return self.rr / self.judged if self.judged else 0.0


@dataclass(frozen=True, slots=True)
class Judgement:
    """One judged list: its arm (label) and the 1-based rank of the user's next item in its
    top K, None when the item was not in it (a miss)."""

    arm: str
    rank: int | None

    @property
    def hit(self) -> bool:
        return self.rank is not None

    @property
    def rr(self) -> float:
        """Reciprocal rank: 1/rank, 0 for a miss."""
        return 1.0 / self.rank if self.rank is not None else 0.0


@dataclass(slots=True)
class HitTracker:
    """Online HR@K per arm from recommendations and the users' next item events."""

    k: int = 20
    capacity: int = 200_000
    stats: dict[str, ArmStats] = field(default_factory=dict)
    # user -> (arm, {item: 1-based rank} of the list's top K): the rank of a hit is one lookup.
    _last: OrderedDict[str, tuple[str, dict[str, int]]] = field(default_factory=OrderedDict)

    def observe(self, user_id: str, item_id: str | None, arm: str, items: Sequence[str]) -> None:
        """One answered event, in stream order: its item (if any) judges the user's pending
        list, then the list just published for it becomes the pending one."""
        if item_id is not None:
            self.interacted([(user_id, item_id)])
        self.recommended(user_id, arm, items)

    def recommended(self, user_id: str, arm: str, items: Sequence[str]) -> None:
        """Remember ``user_id``'s newest list (replacing an unjudged older one)."""
        self.stats.setdefault(arm, ArmStats()).shown += 1
        ranks: dict[str, int] = {}
        for rank, item in enumerate(items[: self.k], 1):
            ranks.setdefault(item, rank)  # a repeated item keeps its best rank
        self._last[user_id] = (arm, ranks)
        self._last.move_to_end(user_id)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)

    def interacted(self, events: Iterable[tuple[str, str]]) -> list[tuple[str, bool]]:
        """Judge each ``(user_id, item_id)`` against the user's pending list; returns the
        ``(arm, hit)`` outcomes (users without a pending list are skipped). ``judge`` also
        gives the rank of each hit."""
        return [(j.arm, j.hit) for j in self.judge(events)]

    def judge(self, events: Iterable[tuple[str, str]]) -> list[Judgement]:
        """Judge each ``(user_id, item_id)`` against the user's pending list, in order; one
        ``Judgement`` (arm, rank of the item or None) per user that had a pending list."""
        out = []
        for user, item in events:
            pending = self._last.pop(user, None)
            if pending is None:
                continue
            arm, ranks = pending
            j = Judgement(arm, ranks.get(item))
            s = self.stats.setdefault(arm, ArmStats())
            s.judged += 1
            s.hits += j.hit
            s.rr += j.rr
            out.append(j)
        return out

    def forget(self, user_id: str) -> bool:
        """Drop ``user_id``'s pending list (``streamrec forget-user``); True if there was one.
        The per-arm counts it already added to stay (they hold no user)."""
        return self._last.pop(user_id, None) is not None


@dataclass(slots=True)
class ImpressionTracker:
    """Online CTR where impressions exist: an impression (items a user was shown) is
    *clicked* when the user's next interaction with one of those items comes before their
    next impression; an impression replaced by a newer one unclicked counts as not clicked.
    Each impression carries the label (version, arm) of what showed it. Bounded: the oldest
    users' pending impressions are dropped beyond ``capacity`` (counted, never clicked)."""

    capacity: int = 200_000
    _pending: OrderedDict[str, tuple[tuple[str, str], frozenset[str]]] = field(
        default_factory=OrderedDict
    )

    def impressed(self, user_id: str, label: tuple[str, str], items: Sequence[str]) -> None:
        self._pending[user_id] = (label, frozenset(items))
        self._pending.move_to_end(user_id)
        while len(self._pending) > self.capacity:
            self._pending.popitem(last=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def interacted(self, user_id: str, item_id: str) -> tuple[str, str] | None:
        """The label of the impression this interaction clicks, or None."""
        pending = self._pending.get(user_id)
        if pending is None or item_id not in pending[1]:
            return None
        del self._pending[user_id]
        return pending[0]

    def forget(self, user_id: str) -> bool:
        """Drop ``user_id``'s pending impression (``streamrec forget-user``); True if there was
        one."""
        return self._pending.pop(user_id, None) is not None


__all__ = ["ABSplit", "Arm", "ArmStats", "HitTracker", "ImpressionTracker", "Judgement", "wilson"]
