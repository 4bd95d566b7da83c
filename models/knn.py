"""VSKNN, vector-multiplication session kNN (Ludewig & Jannach 2018), for offline evaluation.

The strongest simple baseline in the reproducibility studies (see models/baselines.py, whose
conventions it shares: catalogue, tie rule, unknown prefix items dropped, exclude, POP fill).
Follows session-rec's ``VMContextKNN``:

1. The current session is a vector over its distinct items; an item's weight comes from the
   position p (1-based, repeats counted) of its last occurrence in an n-item prefix:
   ``weighting`` "div" = p / n, a linear decay, the newest item weighing 1.
2. Candidate neighbours: training sessions sharing an item with the prefix, of which the
   ``sample_size`` most recent are kept ("recent" sampling).
3. Similarity = dot product of the weighted prefix vector with the neighbour's binary item
   vector. session-rec divides it by the prefix's distinct-item count, a per-query constant
   dropped here (rankings are unchanged). Ties prefer the more recent session.
4. The ``k_neighbours`` most similar each add ``similarity * weighting_score(d)`` to each of
   their items, d = steps back (1 = newest) to the newest prefix item they contain; with
   ``idf_weighting`` w > 0 that is multiplied by ``1 + w * log(#sessions / count(item))``.

Prefix items are scored too (session-rec's ``remind=True``); callers drop them via
``exclude``. Session timestamps order recency; without them, fit order does (later = newer).

Speed: sessions are renumbered oldest-first, so a session id *is* its recency rank, and both
directions (session -> items, item -> sessions) are CSR arrays; a query is a handful of
vectorised numpy calls over at most ``sample_size`` sessions, without Python loops.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from models.baselines import DECAYS, SCORE_DECIMALS, CatalogueBaseline, FloatArray, IntArray

# Weight of the item at 1-based position p of an n-item prefix (session-rec's "weighting").
# "linear" is clipped at 0 instead of session-rec's cut-off at position 10.
POSITION_WEIGHTS: dict[str, Callable[[FloatArray, int], FloatArray]] = {
    "div": lambda p, n: p / n,
    "same": lambda p, n: np.ones_like(p),
    "linear": lambda p, n: np.maximum(1.0 - 0.1 * (n - p), 0.0),
    "quadratic": lambda p, n: (p / n) ** 2,
    "log": lambda p, n: 1.0 / np.log10(n - p + 1.7),
}


class VSKNN(CatalogueBaseline):
    """Vector-multiplication session kNN. Defaults: k = 100 neighbours from the 500 most
    recent sessions sharing an item (session-rec's class default sample is 1000), "div"
    weighting and score decay, no IDF. Items scoring <= 0 (only possible with a negative
    IDF) count as unscored."""

    name = "vsknn"

    def __init__(
        self,
        k_neighbours: int = 100,
        sample_size: int = 500,
        weighting: str = "div",
        weighting_score: str = "div",
        idf_weighting: float = 0.0,
    ) -> None:
        super().__init__()
        if k_neighbours < 1 or sample_size < 0:
            raise ValueError("need k_neighbours >= 1 and sample_size >= 0 (0 = no sampling)")
        if weighting not in POSITION_WEIGHTS or weighting_score not in DECAYS:
            raise ValueError(f"weighting in {sorted(POSITION_WEIGHTS)}, score in {sorted(DECAYS)}")
        self.k_neighbours = k_neighbours
        self.sample_size = sample_size
        self.weighting = weighting
        self.weighting_score = weighting_score
        self.idf_weighting = idf_weighting
        self._session_ptr: IntArray = np.zeros(1, dtype=np.int64)
        self._session_items: IntArray = np.zeros(0, dtype=np.int64)
        self._item_ptr: IntArray = np.zeros(1, dtype=np.int64)
        self._item_keys: IntArray = np.zeros(0, dtype=np.int64)
        self._idf: FloatArray = np.zeros(0)

    def fit(
        self, sessions: Sequence[Sequence[str]], timestamps: Sequence[int] | None = None
    ) -> None:
        if timestamps is not None and len(timestamps) != len(sessions):
            raise ValueError(f"{len(timestamps)} timestamps for {len(sessions)} sessions")
        flat, offsets = self._fit_catalogue(sessions)
        n_sessions, n_items = len(sessions), len(self.item_ids)
        start = np.arange(n_sessions) if timestamps is None else np.asarray(timestamps, np.int64)
        recency = np.empty(n_sessions, dtype=np.int64)
        recency[np.argsort(start, kind="stable")] = np.arange(n_sessions)
        owner = np.repeat(recency, np.diff(offsets))
        # Distinct (session, item) pairs, sorted by session then item: the session -> items CSR.
        pairs = np.unique(owner * max(n_items, 1) + flat)
        session, item = pairs // max(n_items, 1), pairs % max(n_items, 1)
        self._session_items = item
        self._session_ptr = np.searchsorted(session, np.arange(n_sessions + 1))
        # item -> sessions, ascending within each item, keyed item * n_sessions + session so
        # that one searchsorted finds "this item's sessions from id s on" for many items at once.
        by_item = np.lexsort((session, item))
        self._item_keys = item[by_item] * n_sessions + session[by_item]
        self._item_ptr = np.searchsorted(item[by_item], np.arange(n_items + 1))
        self._idf = np.log(max(n_sessions, 1) / np.maximum(self.counts, 1))

    def recommend(self, prefix: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[str]:
        known, excluded = self._prepare(prefix, exclude)
        ranked = self._ranked(known, k + len(excluded)) if known and k > 0 else []
        return self._finish(ranked, k, excluded)

    def _ranked(self, known: list[int], needed: int) -> list[int]:
        """The best ``needed`` items with a positive score, best first (ties: lower index)."""
        n, n_items = len(known), len(self.item_ids)
        last = {item: pos for pos, item in enumerate(known, 1)}
        query = np.fromiter(last, np.int64, len(last))
        pos = np.fromiter(last.values(), np.float64, len(last))
        # Dense per-item lookups: cheaper than matching thousands of neighbour items by search.
        weight, steps = np.zeros(n_items), np.full(n_items, n + 1.0)
        weight[query] = POSITION_WEIGHTS[self.weighting](pos, n)
        steps[query] = n + 1 - pos

        sessions = self._candidates(query)
        items, starts, _ = self._items_of(sessions)
        sims = np.add.reduceat(weight[items], starts)
        nearest = np.minimum.reduceat(steps[items], starts)
        keep = np.flatnonzero(sims > 0)
        rounded = np.round(sims[keep], SCORE_DECIMALS)  # for ties only: scores use exact sims
        top = keep[np.lexsort((-sessions[keep], -rounded))][: self.k_neighbours]

        gain = sims[top] * DECAYS[self.weighting_score](nearest[top])
        items, _, lengths = self._items_of(sessions[top])
        contrib = np.repeat(gain, lengths)
        if self.idf_weighting:
            contrib *= 1.0 + self.idf_weighting * self._idf[items]
        scores = np.bincount(items, contrib, n_items)
        scored = np.flatnonzero(scores > 0)
        value = np.round(scores[scored], SCORE_DECIMALS)
        if len(scored) > needed:
            best = value >= np.partition(value, len(value) - needed)[len(value) - needed]
            scored, value = scored[best], value[best]
        ranked: list[int] = scored[np.lexsort((scored, -value))][:needed].tolist()
        return ranked

    def _candidates(self, query: IntArray) -> IntArray:
        """Ids of the ``sample_size`` most recent sessions containing a query item.

        Any item with at least ``sample_size`` sessions proves the answer holds only sessions
        at least as recent as its ``sample_size``-th newest (``floor``), so each list is cut
        there before the union: the work stays near ``len(query) * sample_size`` even for
        popular items. The union is a bitmap over session ids (sorting is slower).
        """
        lo, hi = self._item_ptr[query], self._item_ptr[query + 1]
        m, n_sessions, floor = self.sample_size, len(self._session_ptr) - 1, 0
        if m and (full := hi - lo >= m).any():
            floor = int((self._item_keys[hi[full] - m] - query[full] * n_sessions).max())
            lo = np.searchsorted(self._item_keys, query * n_sessions + floor)
        idx, _ = _runs(lo, hi)
        found = np.zeros(n_sessions - floor, dtype=bool)
        found[self._item_keys[idx] - np.repeat(query * n_sessions + floor, hi - lo)] = True
        recent = np.flatnonzero(found) + floor
        return recent[-m:] if m else recent

    def _items_of(self, sessions: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        """The sessions' distinct items concatenated, each session's start in that, its size."""
        lo, hi = self._session_ptr[sessions], self._session_ptr[sessions + 1]
        idx, starts = _runs(lo, hi)
        return self._session_items[idx], starts, hi - lo


def _runs(lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Concatenated ``arange(lo[j], hi[j])`` and where each run starts in the result."""
    lengths = hi - lo
    starts = np.zeros(len(lo), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.arange(int(lengths.sum())) + np.repeat(lo - starts, lengths), starts


__all__ = ["POSITION_WEIGHTS", "VSKNN"]
