"""An in-process co-visitation store with the semantics of ``RedisCovisitStore``.

Offline evaluation replays hundreds of thousands of events; doing that against Redis would
measure Redis, not the recommender. This store applies the same prepared increments
(``online_covisit.prepare``) to the same sorted lists with the same arithmetic as the Lua script
(``logadd2``, the same libm calls) and the same tie rule, so on one machine its weights equal
Redis's bit for bit and its order matches, ties included. TTLs are not modelled: offline, time
is event time and nothing expires.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

from features.online_covisit import (
    RECORD,
    CovisitBatch,
    CovisitConfig,
    CovisitRead,
    PreparedBatch,
    decode_read,
    empty_read,
    logadd2,
    prepare,
)


class RankedList:
    """One list of the Redis layout: members with log2 weights, heaviest first.

    ``neg`` holds the negated log2 weights (ascending, so ``bisect`` applies) and ``members``
    the ``uint64`` members as ints, in the same order; ``index`` maps a member to its entry of
    ``neg``, for lookups.
    """

    __slots__ = ("index", "members", "neg")

    def __init__(self) -> None:
        self.neg: list[float] = []
        self.members: list[int] = []
        self.index: dict[int, float] = {}

    def update(self, members: list[int], log2_incs: list[float], keep: int, trim_at: int) -> None:
        """Add ``2^log2_incs[i]`` to ``members[i]``'s weight (members distinct), as the Lua
        ``update``: the new list is the stable sort, heaviest first, of the untouched entries in
        their order followed by the changed or new ones in the given order; then trimmed.

        Inserting the changed entries one by one behind every entry at least as heavy gives
        that order with a binary search each instead of a sort of the whole list.
        """
        neg, mine, index = self.neg, self.members, self.index
        changed: list[tuple[float, int]] = []
        for m, inc in zip(members, log2_incs, strict=True):
            prev = index.get(m)
            if prev is None:
                n = -inc
            else:
                n = -logadd2(-prev, inc)
                j = bisect_left(neg, prev)
                while mine[j] != m:  # past other members of the same weight
                    j += 1
                del neg[j], mine[j]
            index[m] = n
            changed.append((n, m))
        for n, m in changed:
            i = bisect_right(neg, n)
            neg.insert(i, n)
            mine.insert(i, m)
        if len(mine) > trim_at:
            for m in mine[keep:]:
                del index[m]
            del neg[keep:], mine[keep:]

    def top(self, n: int) -> np.ndarray:
        """``RECORD[min(n, len)]``: the ``n`` heaviest entries."""
        return _to_records(self.neg[:n], self.members[:n])


def _to_records(neg: list[float], members: list[int]) -> np.ndarray:
    """``RECORD[N]`` from negated log2 weights and members."""
    out = np.empty(len(neg), dtype=RECORD)
    out["member"] = np.array(members, dtype=np.uint64)
    out["log2w"] = np.negative(np.array(neg, dtype=np.float64))
    return out


class InMemoryCovisitStore:
    """Neighbour lists keyed by item hash plus one trending list; ``update_and_read`` as in
    Redis. One instance is one namespace."""

    def __init__(self, *, config: CovisitConfig | None = None) -> None:
        self.config = config or CovisitConfig()
        self.lists: dict[int, RankedList] = {}
        self.trending = RankedList()

    async def load_script(self) -> None:
        """Nothing to load; present so callers can treat both stores alike."""

    async def update_and_read(self, batch: CovisitBatch) -> CovisitRead:
        return self.apply(batch)

    def apply(self, batch: CovisitBatch) -> CovisitRead:
        """``update_and_read`` without the event loop, for offline code."""
        c = self.config
        if batch.is_empty:
            return empty_read(0, c.top_m)
        p = prepare(batch, c)
        neg: list[float] = []
        members: list[int] = []
        sizes = np.zeros(p.unique_queries.size, dtype=np.int64)
        for i, q in enumerate(p.unique_queries.tolist()):
            ranked = self.lists.get(q)
            if ranked is not None:
                neg += ranked.neg[: c.top_m]
                members += ranked.members[: c.top_m]
                sizes[i] = min(len(ranked.members), c.top_m)
        read = decode_read(p, _to_records(neg, members), sizes, self.trending.top(c.top_p), c.top_m)
        self._update(p)  # after the reads: answers never depend on the batch's own events
        return read

    def _update(self, p: PreparedBatch) -> None:
        c = self.config
        members, incs = p.members.tolist(), p.log2_incs.tolist()
        start = 0
        for owner, n in zip(p.owners.tolist(), p.counts.tolist(), strict=True):
            ranked = self.lists.setdefault(owner, RankedList())
            ranked.update(members[start : start + n], incs[start : start + n], c.keep, c.trim_at)
            start += n
        if p.popular.size:
            self.trending.update(
                p.popular.tolist(),
                p.popular_log2_incs.tolist(),
                c.keep_trending,
                c.trim_trending_at,
            )
