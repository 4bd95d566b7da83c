"""Session kNN (VSKNN) as a served candidate source and ranking feature, one batch at a time.

The offline evaluation's strongest simple baseline on short view sessions is VSKNN
(models/knn.py, Ludewig & Jannach 2018). The served ranking carries the same signal: the
bundle ships the training sessions as two CSR arrays (``SessionIndex``) and ``knn_scores``
computes VSKNN's item scores for a whole micro-batch of sessions in a fixed number of numpy
calls, without a Python loop over events. With the defaults it reproduces ``VSKNN`` ("div"
position weights and score decay, no IDF) exactly; a test holds the two together.

Why per (row, item) slices of at most ``sample_size`` sessions suffice: VSKNN keeps the
``sample_size`` most recent sessions sharing *any* prefix item. A session in that set is, for
each prefix item it contains, among that item's ``sample_size`` most recent sessions (every
newer session with the item is in the set too), so its similarity is fully summed from those
slices.

Pure numpy; serving-side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Scores are rounded before ranking so that float summation order cannot split a true tie
# (models/baselines.py uses the same rule).
SCORE_DECIMALS = 9
# Batches whose rows x (N + 1) score matrix has at most this many cells are summed and ranked
# densely (bincount, argpartition); larger catalogues go through sort-based sparse code.
DENSE_CELLS = 8_000_000


STORED = ("session_ptr", "session_items", "item_ptr", "item_sessions")


@dataclass(frozen=True, slots=True)
class SessionIndex:
    """Training sessions in both directions, ids = recency rank (0 = oldest).

    session_ptr:   int64[S + 1]  session s's distinct items are ``session_items[ptr[s]:ptr[s+1]]``
    session_items: int32[P]      item indices (1..N), ascending within a session
    item_ptr:      int64[N + 2]  item i's sessions are ``item_sessions[ptr[i]:ptr[i+1]]``
    item_sessions: int32[P]      session ids, ascending (oldest first) within an item
    """

    session_ptr: np.ndarray
    session_items: np.ndarray
    item_ptr: np.ndarray
    item_sessions: np.ndarray
    # int64[P] item * S + session for every (item, session), ascending: one searchsorted finds
    # "this item's sessions from id s on" for many items at once. Derived, not stored.
    item_keys: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = np.repeat(np.arange(len(self.item_ptr) - 1, dtype=np.int64), np.diff(self.item_ptr))
        keys = owner * max(self.n_sessions, 1) + self.item_sessions.astype(np.int64)
        object.__setattr__(self, "item_keys", keys)

    @property
    def n_sessions(self) -> int:
        return len(self.session_ptr) - 1

    @property
    def n_items(self) -> int:
        """N: item indices run 1..N (0 is padding)."""
        return len(self.item_ptr) - 2

    @classmethod
    def build(cls, sessions: Sequence[Sequence[int]], n_items: int) -> SessionIndex:
        """Index ``sessions`` (item indices 1..N), given oldest first (by first event)."""
        lengths = np.fromiter((len(s) for s in sessions), np.int64, len(sessions))
        flat = np.fromiter((i for s in sessions for i in s), np.int64, int(lengths.sum()))
        owner = np.repeat(np.arange(len(sessions), dtype=np.int64), lengths)
        span = n_items + 1
        pairs = np.unique(owner * span + flat)  # distinct (session, item), by session then item
        session, item = pairs // span, pairs % span
        by_item = np.lexsort((session, item))
        return cls(
            session_ptr=np.searchsorted(session, np.arange(len(sessions) + 1)).astype(np.int64),
            session_items=item.astype(np.int32),
            item_ptr=np.searchsorted(item[by_item], np.arange(span + 1)).astype(np.int64),
            item_sessions=session[by_item].astype(np.int32),
        )

    def save(self, path: Path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in STORED})

    @classmethod
    def load(cls, path: Path, n_items: int) -> SessionIndex:
        with np.load(path, allow_pickle=False) as z:
            index = cls(*(np.asarray(z[k]) for k in STORED))
        if index.n_items != n_items or index.session_ptr[-1] != len(index.session_items):
            raise ValueError(f"{path}: session index for {index.n_items} items, not {n_items}")
        return index

    @classmethod
    def empty(cls, n_items: int) -> SessionIndex:
        return cls.build([], n_items)


@dataclass(frozen=True, slots=True)
class SparseScores:
    """Scores of some (row, item) cells of a ``B x (N + 1)`` matrix: ``keys`` (sorted, int64,
    ``row * span + item``) and their ``values`` (float64)."""

    keys: np.ndarray
    values: np.ndarray
    span: int
    rows: int

    def lookup(self, candidates: np.ndarray) -> np.ndarray:
        """``float32[B, C]``: the score of each ``candidates[b, c]`` (0 where unscored)."""
        return sparse_lookup(self.keys, self.values, self.span, candidates)

    def top(self, n: int) -> np.ndarray:
        """``int64[B, n]``: each row's best ``n`` items (ties: lower index), 0-padded."""
        out = np.zeros((self.rows, n), dtype=np.int64)
        if not self.keys.size or n < 1:
            return out
        if self.rows * self.span <= DENSE_CELLS and n < self.span:
            flat = np.zeros(self.rows * self.span)
            flat[self.keys] = np.round(self.values, SCORE_DECIMALS)
            dense = flat.reshape(self.rows, self.span)
            # Exactly n per row: everything above the n-th best value, then the lowest
            # indices among those equal to it (argpartition alone breaks that tie arbitrarily).
            kth = -np.partition(-dense, n - 1, axis=1)[:, n - 1 : n]
            above = dense > kth
            tied = dense == kth
            room = n - above.sum(axis=1, keepdims=True)
            chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
            part = np.nonzero(chosen)[1].reshape(self.rows, n)
            vals = np.take_along_axis(dense, part, axis=1)
            order = np.lexsort((part, -vals), axis=1)
            part = np.take_along_axis(part, order, axis=1)
            return np.where(np.take_along_axis(vals, order, axis=1) > 0, part, 0)
        row, item = self.keys // self.span, self.keys % self.span
        order = np.lexsort((item, -np.round(self.values, SCORE_DECIMALS), row))
        row, item = row[order], item[order]
        rank = np.arange(row.size) - np.searchsorted(row, row)
        keep = rank < n
        out[row[keep], rank[keep]] = item[keep]
        return out


def sparse_lookup(
    keys: np.ndarray, values: np.ndarray, span: int, candidates: np.ndarray
) -> np.ndarray:
    """``float32[B, C]`` values at ``row * span + candidates[row, c]`` of sorted ``keys``; 0
    where absent and for padding candidates (index <= 0). One binary search per cell."""
    if not keys.size:
        return np.zeros(candidates.shape, dtype=np.float32)
    rows = np.arange(candidates.shape[0], dtype=np.int64)[:, None]
    lookup = (rows * span + np.clip(candidates, 0, span - 1)).ravel()
    pos = np.minimum(np.searchsorted(keys, lookup), keys.size - 1)
    found = (keys[pos] == lookup).reshape(candidates.shape) & (candidates > 0)
    return np.where(found, values[pos].reshape(candidates.shape), 0.0).astype(np.float32)


def _runs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(lo[j], hi[j])``."""
    lengths = hi - lo
    starts = np.zeros(len(lo), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(lo - starts, lengths)


def _group_rank(group: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values in sorted ``group``."""
    return np.arange(group.size) - np.searchsorted(group, group)


def knn_scores(
    index: SessionIndex,
    recent: np.ndarray,
    session_len: np.ndarray,
    *,
    k_neighbours: int = 100,
    sample_size: int = 500,
) -> SparseScores:
    """VSKNN item scores for a batch of sessions.

    ``recent`` is ``int64[B, R]`` (chronological, newest last, 0 = padding or unknown item)
    and ``session_len`` ``int64[B]`` the number of its newest columns that belong to the
    current session. Items of the session itself are scored too (callers exclude them).
    """
    b, r = recent.shape
    span = index.n_items + 1
    n_sessions = index.n_sessions
    empty = SparseScores(np.zeros(0, np.int64), np.zeros(0), span, b)
    if b == 0 or n_sessions == 0:
        return empty
    take = np.minimum(np.asarray(session_len, dtype=np.int64), r)
    in_session = np.arange(r)[None, :] >= (r - take)[:, None]
    rows, cols = np.nonzero(in_session & (recent > 0) & (recent < span))
    if not rows.size:
        return empty
    items = recent[rows, cols]
    n_known = np.bincount(rows, minlength=b)
    pos = _group_rank(rows) + 1  # 1-based position among the row's known items
    # Each distinct (row, item) weighs by the position of its last occurrence.
    key = rows * span + items
    order = np.lexsort((pos, key))
    key, pos = key[order], pos[order]
    last = np.r_[key[1:] != key[:-1], True]
    key, pos = key[last], pos[last].astype(np.float64)
    q_row, q_item = key // span, key % span
    n = n_known[q_row].astype(np.float64)
    weight, steps = pos / n, n + 1.0 - pos

    hi = index.item_ptr[q_item + 1]
    lo = index.item_ptr[q_item]
    if sample_size and (full := hi - lo >= sample_size).any():
        # A row's sample holds only sessions at least as recent as the sample_size-th newest
        # session of any of its items (its "floor"): cut every item's list there.
        floor = np.zeros(b, dtype=np.int64)
        np.maximum.at(floor, q_row[full], index.item_sessions[hi[full] - sample_size])
        lo = np.searchsorted(index.item_keys, q_item * n_sessions + floor[q_row])
    reps = hi - lo
    s_key = np.repeat(q_row, reps) * n_sessions + index.item_sessions[_runs(lo, hi)]
    s_weight, s_steps = np.repeat(weight, reps), np.repeat(steps, reps)
    order = np.argsort(s_key, kind="stable")
    s_key, s_weight, s_steps = s_key[order], s_weight[order], s_steps[order]
    uniq, first = np.unique(s_key, return_index=True)
    if not uniq.size:
        return empty
    sims = np.add.reduceat(s_weight, first)
    nearest = np.minimum.reduceat(s_steps, first)
    n_row, n_ses = uniq // n_sessions, uniq % n_sessions
    if sample_size:  # the sample_size most recent (highest id) neighbours of each row
        from_end = np.searchsorted(n_row, n_row, side="right") - 1 - np.arange(n_row.size)
        keep = from_end < sample_size
        n_row, n_ses, sims, nearest = n_row[keep], n_ses[keep], sims[keep], nearest[keep]
    order = np.lexsort((-n_ses, -np.round(sims, SCORE_DECIMALS), n_row))
    n_row, n_ses, sims, nearest = n_row[order], n_ses[order], sims[order], nearest[order]
    keep = _group_rank(n_row) < k_neighbours
    n_row, n_ses = n_row[keep], n_ses[keep]
    gain = sims[keep] / nearest[keep]  # "div" score decay

    lo, hi = index.session_ptr[n_ses], index.session_ptr[n_ses + 1]
    reps = hi - lo
    i_key = np.repeat(n_row, reps) * span + index.session_items[_runs(lo, hi)]
    if b * span <= DENSE_CELLS:
        dense = np.bincount(i_key, weights=np.repeat(gain, reps), minlength=b * span)
        keys = np.flatnonzero(dense)
        return SparseScores(keys, dense[keys], span, b)
    keys, inverse = np.unique(i_key, return_inverse=True)
    values = np.bincount(inverse, weights=np.repeat(gain, reps))
    return SparseScores(keys, values, span, b)


__all__ = ["SessionIndex", "SparseScores", "knn_scores", "sparse_lookup"]
