"""Traffic anomalies: users, sessions and items whose event rate no human reaches.

A click flood (a bot, a scraper, a script pushing one item into trending) would otherwise
move user state, online co-visitation and trending, and feed the training agent. Each key
gets a **sliding-window counter** over one minute: the count of the current fixed window plus
the previous window's count weighted by how much of it still overlaps the sliding minute
(the estimate is exact for a steady rate and never off by more than the previous window's
count). A key is *flagged* while that estimate exceeds its bound, so it calms down by itself
once its rate falls back under the bound.

Time is passed in (event time, ``timestamp_ms``), never read: a replay or a catch-up after an
outage delivers hours of events in minutes and must not look like a flood, and tests can
drive the clock. A key's clock never runs backwards (``max`` of what it saw), so stamping
events in the past does not dodge the count; stamping them in the future is bounded by the
input limit on timestamps (topics/events.py ``Limits.max_future_ms``).

Memory is bounded: at most ``max_keys`` keys per kind, the least recently seen forgotten
first (an LRU). A forgotten key restarts at zero, which only matters for a key idle while
``max_keys`` others were seen: not a flood. Per key: the key string and one 4-slot list in
an ``OrderedDict``, about 280 bytes with a 13-character id (``test_memory_per_key`` in
tests/unit/test_traffic.py measures it): 14 MB per kind at the default 50,000 keys.
Pure Python, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

MINUTE_MS = 60_000
KINDS = ("user", "session", "item")


class WindowCounter:
    """Per-key event counts over a sliding window, flagged above ``limit``.

    Each key holds ``[window index, previous count, current count, latest time]``, all
    ints (times in whole ms): counts below 257 are CPython's shared small ints, so a key
    costs its string, one list and one ``OrderedDict`` node.
    """

    def __init__(self, limit: int, window_ms: int = MINUTE_MS, max_keys: int = 50_000) -> None:
        if limit < 1 or window_ms <= 0 or max_keys < 1:
            raise ValueError("limit, window_ms and max_keys must be positive")
        self.limit = limit
        self.window_ms = window_ms
        self.max_keys = max_keys
        self._keys: OrderedDict[str, list[int]] = OrderedDict()
        self._flagged: set[str] = set()
        # The time of the last event counted: ``flagged``'s "now". Not the maximum ever seen:
        # one stray event stamped years ahead would otherwise calm every flagged key at once.
        self.latest_ms = 0

    def __len__(self) -> int:
        return len(self._keys)

    def _estimate(self, slot: list[int], t_ms: int) -> float:
        window, prev, cur = slot[0], slot[1], slot[2]
        index = t_ms // self.window_ms
        if index == window + 1:
            prev, cur = cur, 0
        elif index > window + 1:
            prev, cur = 0, 0
        overlap = 1.0 - (t_ms - index * self.window_ms) / self.window_ms
        return prev * overlap + cur

    def add(self, key: str, t_ms: float) -> bool:
        """Count one event of ``key`` at ``t_ms``; True when the key is now over its limit."""
        t_ms = int(t_ms)
        slot = self._keys.get(key)
        if slot is None:
            slot = [t_ms // self.window_ms, 0, 0, t_ms]
            self._keys[key] = slot
            if len(self._keys) > self.max_keys:
                old, _ = self._keys.popitem(last=False)
                self._flagged.discard(old)
        else:
            self._keys.move_to_end(key)
        t = max(t_ms, slot[3])
        index = t // self.window_ms
        if index == slot[0] + 1:
            slot[1], slot[2] = slot[2], 0
        elif index > slot[0] + 1:
            slot[1], slot[2] = 0, 0
        slot[0], slot[3] = index, t
        slot[2] += 1
        self.latest_ms = t
        over = self._estimate(slot, t) > self.limit
        if over:
            self._flagged.add(key)
        else:
            self._flagged.discard(key)
        return over

    def rate(self, key: str, t_ms: float) -> float:
        """The key's estimated events in the window ending at ``t_ms`` (0 if unknown)."""
        slot = self._keys.get(key)
        return 0.0 if slot is None else self._estimate(slot, max(int(t_ms), slot[3]))

    def forget(self, key: str) -> bool:
        """Drop ``key``'s counts and flag (``streamrec forget-user``); whether it was held."""
        self._flagged.discard(key)
        return self._keys.pop(key, None) is not None

    def flagged(self, now_ms: float | None = None) -> int:
        """How many keys are over the limit at ``now_ms`` (default: the last event's time);
        keys that calmed down are dropped from the flagged set."""
        now = self.latest_ms if now_ms is None else int(now_ms)
        calm = [k for k in self._flagged if self.rate(k, now) <= self.limit]
        self._flagged.difference_update(calm)
        return len(self._flagged)


@dataclass(frozen=True, slots=True)
class RateBounds:
    """Events per sliding minute above which a key is flagged; 0 turns a kind off."""

    user: int = 120
    session: int = 120
    item: int = 3000
    max_keys: int = 50_000

    @property
    def enabled(self) -> bool:
        return bool(self.user or self.session or self.item)


class TrafficMonitor:
    """One ``WindowCounter`` per kind in use (user, session, item)."""

    def __init__(self, bounds: RateBounds) -> None:
        self.bounds = bounds
        self.counters: dict[str, WindowCounter] = {
            kind: WindowCounter(limit, max_keys=bounds.max_keys)
            for kind, limit in (("user", bounds.user), ("session", bounds.session),
                                ("item", bounds.item))
            if limit > 0
        }  # fmt: skip

    def check(self, user_id: str, session_id: str, item_id: str | None, t_ms: float) -> list[str]:
        """Count one event; the kinds (``user``, ``session``, ``item``) over their bound.

        Every key of the event is counted even when another is already over, so each
        counter keeps the key's true rate (a flagged bot stays flagged while it floods)."""
        keys = {"user": user_id, "session": session_id, "item": item_id}
        over: list[str] = []
        for kind, counter in self.counters.items():
            key = keys[kind]
            if key is not None and counter.add(key, t_ms):
                over.append(kind)
        return over

    def forget_user(self, user_id: str) -> bool:
        """Erase ``user_id`` from the user counter (``streamrec forget-user``). Session and
        item counters hold no user id; they age out of the window in a minute."""
        counter = self.counters.get("user")
        return counter is not None and counter.forget(user_id)

    def flagged(self) -> dict[str, int]:
        """Keys flagged now, per kind in use."""
        return {kind: c.flagged() for kind, c in self.counters.items()}


def split_flagged(
    monitor: TrafficMonitor, events: Iterable[tuple[str, str, str | None, float]]
) -> tuple[list[int], dict[str, int]]:
    """Check ``events`` (user, session, item, time) in order: the positions of the
    unflagged ones and the number of flagged events per kind."""
    keep: list[int] = []
    counts: dict[str, int] = {}
    for i, (user, session, item, t_ms) in enumerate(events):
        over = monitor.check(user, session, item, t_ms)
        if not over:
            keep.append(i)
        for kind in over:
            counts[kind] = counts.get(kind, 0) + 1
    return keep, counts
