"""Session-based baselines for offline evaluation: POP, S-POP, AR and SR (VSKNN: models/knn.py).

Reproducibility studies (Ludewig & Jannach 2018, "Evaluation of session-based recommendation
algorithms"; Ludewig et al. 2019/2021, "Empirical analysis of session-based recommendation
algorithms") found that tuned rule and nearest-neighbour baselines often beat neural session
models, so the production ranker is only credible next to them, under the same protocol. The
algorithms and defaults follow the authors' reference code (session-rec); each deviation is
named where it is made.

Conventions shared by every class, so that differences between methods are the methods':

* The catalogue is the items seen in training; nothing else is ever returned.
* Prefix items missing from the catalogue are dropped before scoring (session-rec drops them
  from the test data instead), so "the last item" means the last known one.
* Ties are broken by training popularity, then item id. Each item's internal index is its rank
  in that order, so "lower index first" is the tie rule everywhere.
* ``exclude`` is applied before the top ``k`` are taken. When a method scores fewer than ``k``
  items the list is filled with the most popular remaining items (POP fill).

Serving-side module: numpy only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Weight of a rule or neighbour d steps back (d = 1, 2, ...): session-rec's decay functions.
# "linear" is clipped at 0 where session-rec lets it turn negative past 10 steps.
DECAYS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "div": lambda d: 1.0 / d,
    "same": lambda d: np.ones_like(d),
    "linear": lambda d: np.maximum(1.0 - 0.1 * d, 0.0),
    "quadratic": lambda d: 1.0 / (d * d),
    "log": lambda d: 1.0 / np.log10(d + 1.7),
}
_MERGE_AT = 8_000_000  # partial pair sums held before merging (bounds fit memory)
# Summed scores are rounded to this many decimals so that float summation order cannot split a
# true tie (1/3 + 1/6 vs 1/2), which must go to the tie rule (popularity, then id). Exact for
# the default weights, whose sums are fractions with small denominators.
SCORE_DECIMALS = 9


@runtime_checkable
class SessionBaseline(Protocol):
    """What the offline evaluation calls; every baseline here implements it."""

    name: str

    def fit(
        self, sessions: Sequence[Sequence[str]], timestamps: Sequence[int] | None = None
    ) -> None: ...

    def recommend(
        self, prefix: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[str]: ...


class CatalogueBaseline:
    """Catalogue in popularity order, prefix encoding, exclusion and POP fill: the parts that
    must behave identically across methods for their comparison to be fair."""

    name = "catalogue"

    def __init__(self) -> None:
        self.item_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.counts: IntArray = np.zeros(0, dtype=np.int64)
        self._fitted = False

    def _fit_catalogue(self, sessions: Sequence[Sequence[str]]) -> tuple[IntArray, IntArray]:
        """Rank items by (-count, id); return all sessions as one flat index array + offsets."""
        ranked = sorted(
            Counter(i for s in sessions for i in s).items(), key=lambda c: (-c[1], c[0])
        )
        self.item_ids = [item for item, _ in ranked]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.counts = np.array([c for _, c in ranked], dtype=np.int64)
        offsets = np.zeros(len(sessions) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in sessions], out=offsets[1:])
        index = self.index
        flat = np.fromiter((index[i] for s in sessions for i in s), np.int64, int(offsets[-1]))
        self._fitted = True
        return flat, offsets

    def _prepare(
        self, prefix: Sequence[str], exclude: Collection[str]
    ) -> tuple[list[int], set[int]]:
        """The prefix's known items (in order) and the excluded catalogue indices."""
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}: call fit() before recommend()")
        index = self.index
        return [index[i] for i in prefix if i in index], {index[i] for i in exclude if i in index}

    def _finish(self, ranked: Iterable[int], k: int, excluded: set[int]) -> list[str]:
        """First ``k`` of ``ranked`` not excluded nor repeated, then POP fill."""
        out: list[int] = []
        taken = set(excluded)
        if k > 0:
            for i in ranked:
                if i not in taken:
                    taken.add(i)
                    out.append(i)
                    if len(out) == k:
                        break
        i, n = 0, len(self.item_ids)
        while len(out) < k and i < n:
            if i not in taken:
                out.append(i)
            i += 1
        return [self.item_ids[i] for i in out]


class Pop(CatalogueBaseline):
    """Global popularity (training interaction counts, repeats included): the floor."""

    name = "pop"

    def fit(
        self, sessions: Sequence[Sequence[str]], timestamps: Sequence[int] | None = None
    ) -> None:
        self._fit_catalogue(sessions)

    def recommend(self, prefix: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[str]:
        _, excluded = self._prepare((), exclude)
        return self._finish((), k, excluded)


class SessionPop(Pop):
    """S-POP: the prefix's items by count in the prefix, then POP fill.

    Equal counts go to the more recently seen item (session-rec breaks them by popularity):
    recency is the stronger signal for what comes back next.
    """

    name = "spop"

    def recommend(self, prefix: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[str]:
        known, excluded = self._prepare(prefix, exclude)
        count: dict[int, int] = {}
        last: dict[int, int] = {}
        for pos, i in enumerate(known):
            count[i] = count.get(i, 0) + 1
            last[i] = pos
        return self._finish(sorted(count, key=lambda i: (-count[i], -last[i])), k, excluded)


class _RuleBaseline(CatalogueBaseline):
    """Rules "last item -> candidates", stored per item as a target list already in rank
    order, so recommend() is a walk over at most ``k + len(exclude)`` entries."""

    def __init__(self, pruning: int) -> None:
        super().__init__()
        if pruning < 0:
            raise ValueError("pruning must be >= 0 (0 keeps every rule)")
        self.pruning = pruning
        self.rules: list[list[int]] = []

    def recommend(self, prefix: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[str]:
        known, excluded = self._prepare(prefix, exclude)
        return self._finish(self.rules[known[-1]] if known else (), k, excluded)

    def _set_rules(self, src: IntArray, dst: IntArray, weight: FloatArray) -> None:
        """Per source: targets by (-weight, popularity rank), the best ``pruning`` kept."""
        n = len(self.item_ids)
        order = np.lexsort((dst, -weight, src))
        src, dst = src[order], dst[order]
        bounds = np.searchsorted(src, np.arange(n + 1))
        if self.pruning:
            keep = np.arange(len(src)) - bounds[src] < self.pruning
            src, dst = src[keep], dst[keep]
            bounds = np.searchsorted(src, np.arange(n + 1))
        targets, b = dst.tolist(), bounds.tolist()
        self.rules = [targets[b[i] : b[i + 1]] for i in range(n)]


class AssociationRules(_RuleBaseline):
    """AR: how often two items share a training session, in either order.

    Every ordered pair of distinct positions (p, q) of a session adds 1 to rule
    ``s[p] -> s[q]``, as session-rec counts it (an item repeated in a session thus gets a rule
    to itself). Candidates are scored by their rule from the last prefix item. ``pruning``
    keeps each item's top N rules (session-rec default 20; 0 keeps all); POP fills the rest.
    """

    name = "ar"

    def __init__(self, pruning: int = 20) -> None:
        super().__init__(pruning)

    def fit(
        self, sessions: Sequence[Sequence[str]], timestamps: Sequence[int] | None = None
    ) -> None:
        flat, offsets = self._fit_catalogue(sessions)
        longest = int(np.diff(offsets).max(initial=0))
        # Each unordered pair once, as (low, high); mirrored afterwards (halves the counting).
        pairs = _pairs(flat, offsets, longest)
        low, high, w = _sum_pairs(
            ((np.minimum(a, b), np.maximum(a, b), 1.0) for _, a, b in pairs), len(self.item_ids)
        )
        two = low != high
        self._set_rules(
            np.concatenate([low, high[two]]),
            np.concatenate([high, low[two]]),
            np.concatenate([np.where(two, w, 2 * w), w[two]]),
        )


class SequentialRules(_RuleBaseline):
    """SR (Kamehkhosh et al. 2017, as in session-rec): item i followed by j within ``steps``
    positions of a session adds ``weighting(d)`` to rule ``i -> j``, d = distance; session-rec's
    defaults: steps 10, weighting "div" (1/d), pruning 20. Scored by the last prefix item; POP
    fills the rest."""

    name = "sr"

    def __init__(self, steps: int = 10, weighting: str = "div", pruning: int = 20) -> None:
        super().__init__(pruning)
        if steps < 1 or weighting not in DECAYS:
            raise ValueError(f"need steps >= 1 and weighting in {sorted(DECAYS)}")
        self.steps = steps
        self.weighting = weighting

    def fit(
        self, sessions: Sequence[Sequence[str]], timestamps: Sequence[int] | None = None
    ) -> None:
        flat, offsets = self._fit_catalogue(sessions)
        decay = DECAYS[self.weighting](np.arange(1.0, self.steps + 1)).tolist()
        src, dst, w = _sum_pairs(
            ((a, b, decay[d - 1]) for d, a, b in _pairs(flat, offsets, self.steps)),
            len(self.item_ids),
        )
        self._set_rules(src, dst, np.round(w, SCORE_DECIMALS))


def _pairs(
    flat: IntArray, offsets: IntArray, max_distance: int
) -> Iterator[tuple[int, IntArray, IntArray]]:
    """``(d, items at p, items at p + d)`` over all positions p whose session reaches p + d,
    for d = 1..max_distance: every within-session position pair once, vectorised per d.

    Positions are sorted once by how far their session extends past them, so those valid for
    distance d are a prefix of that order and the total work is the number of pairs.
    """
    ends = np.repeat(offsets[1:], np.diff(offsets))
    room = ends - 1 - np.arange(len(flat))
    order = np.argsort(-room, kind="stable")
    neg_room = -room[order]
    for d in range(1, max_distance + 1):
        n = int(np.searchsorted(neg_room, -d, side="right"))
        if n == 0:
            return
        at = order[:n]
        yield d, flat[at], flat[at + d]


def _sum_pairs(
    chunks: Iterable[tuple[IntArray, IntArray, float]], n_items: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """Sum the weights of equal (src, dst) pairs: a sparse matrix as (src, dst, weight)."""
    keys: list[IntArray] = []
    weights: list[FloatArray] = []
    held = 0
    for src, dst, w in chunks:
        uniq, count = _group(np.sort(src * n_items + dst))
        keys.append(uniq)
        weights.append(count * w)
        held += len(uniq)
        if held > _MERGE_AT:
            merged, summed = _merge(keys, weights)
            keys, weights, held = [merged], [summed], len(merged)
    merged, summed = _merge(keys, weights)
    return merged // n_items, merged % n_items, summed


def _merge(keys: list[IntArray], weights: list[FloatArray]) -> tuple[IntArray, FloatArray]:
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    every = np.concatenate(keys)
    order = np.argsort(every, kind="stable")
    return _group(every[order], np.concatenate(weights)[order])


def _group(keys: IntArray, weights: FloatArray | None = None) -> tuple[IntArray, FloatArray]:
    """Distinct values of sorted ``keys`` and each one's count (or summed ``weights``).

    Sort-based: numpy 2's hash-based ``np.unique`` is several times slower here.
    """
    if not len(keys):
        return keys, np.zeros(0)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    if weights is None:
        return keys[starts], np.diff(np.append(starts, len(keys))).astype(np.float64)
    return keys[starts], np.add.reduceat(weights, starts)


__all__ = [
    "DECAYS",
    "SCORE_DECIMALS",
    "AssociationRules",
    "CatalogueBaseline",
    "Pop",
    "SequentialRules",
    "SessionBaseline",
    "SessionPop",
]
