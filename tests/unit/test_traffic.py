"""The traffic-anomaly detector (features/traffic.py): sliding-minute counts per key, flagged
above the bound, calm again below it, bounded memory, and time only as passed in."""

from __future__ import annotations

import tracemalloc

import pytest

from features.traffic import MINUTE_MS, RateBounds, TrafficMonitor, WindowCounter, split_flagged

T0 = 1_700_000_000_000.0


def test_a_steady_human_rate_is_never_flagged() -> None:
    c = WindowCounter(limit=120)
    # one event every 2 s for an hour: 30 a minute
    assert not any(c.add("u", T0 + i * 2000) for i in range(1800))
    assert c.flagged() == 0


def test_a_flood_is_flagged_at_the_bound_and_not_before() -> None:
    c = WindowCounter(limit=120)
    # 10 events a second from a window boundary: the 121st event of the minute is over
    verdicts = [c.add("bot", T0 - T0 % MINUTE_MS + i * 100) for i in range(200)]
    assert verdicts.index(True) == 120 and all(verdicts[120:])
    assert c.flagged() == 1


def test_a_flagged_key_calms_down_when_its_rate_falls() -> None:
    c = WindowCounter(limit=10)
    start = T0 - T0 % MINUTE_MS
    for i in range(50):
        c.add("bot", start + i * 100)
    assert c.rate("bot", start + 5_000) > 10
    # two windows later the old burst no longer overlaps the sliding minute
    assert not c.add("bot", start + 2 * MINUTE_MS + 1)
    assert c.flagged() == 0


def test_the_previous_window_is_weighted_by_its_overlap() -> None:
    c = WindowCounter(limit=1000)
    start = T0 - T0 % MINUTE_MS
    for i in range(60):
        c.add("k", start + i * 1000)  # 60 events in the first window
    # 15 s into the next window: 3/4 of the previous window still overlaps
    assert c.rate("k", start + MINUTE_MS + 15_000) == pytest.approx(45.0)


def test_time_never_runs_backwards_per_key() -> None:
    """Stamping events in the past does not dodge the count."""
    c = WindowCounter(limit=5)
    c.add("bot", T0)
    verdicts = [c.add("bot", T0 - i * MINUTE_MS) for i in range(1, 10)]
    assert any(verdicts)


def test_memory_is_bounded_by_max_keys_least_recent_first() -> None:
    c = WindowCounter(limit=3, max_keys=100)
    for i in range(4):
        c.add("bot", T0 + i)
    assert c.flagged() == 1
    c.add("bot", T0 + 10)  # "bot" is now the most recent key
    for i in range(99):
        c.add(f"u{i}", T0 + 20)
    assert len(c) == 100 and c.rate("bot", T0 + 30) > 3  # kept: seen recently
    c.add("one-more", T0 + 40)
    assert len(c) == 100 and c.rate("bot", T0 + 50) == 0.0  # the least recent went
    assert c.flagged() == 0  # and with it its flag


def test_memory_per_key() -> None:
    """The bound docs/security.md quotes: bytes per tracked key with DIGINETICA-like ids."""
    c = WindowCounter(limit=100, max_keys=20_000)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(20_000):
        c.add(f"user-{i:08d}", T0 + i)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_key = grown / 20_000
    print(f"detector memory: {per_key:.0f} bytes per key")
    assert per_key < 350


def test_monitor_counts_every_kind_and_reports_the_ones_over() -> None:
    m = TrafficMonitor(RateBounds(user=5, session=0, item=8))
    assert set(m.counters) == {"user", "item"}  # 0 = off
    got = [m.check("bot", f"s{i}", "hot", T0 + i) for i in range(10)]
    assert got[4] == [] and got[5] == ["user"] and got[8] == ["user", "item"]
    # other users are unaffected, except through the flooded item
    assert m.check("human", "s", "other", T0 + 20) == []
    assert m.check("human", "s", "hot", T0 + 21) == ["item"]
    assert m.flagged() == {"user": 1, "item": 1}


def test_searches_count_for_user_and_session_only() -> None:
    m = TrafficMonitor(RateBounds(user=100, session=100, item=1))
    assert m.check("u", "s", None, T0) == [] and m.check("u", "s", None, T0 + 1) == []


def test_bounds_of_zero_turn_the_monitor_off() -> None:
    assert not RateBounds(user=0, session=0, item=0).enabled
    assert TrafficMonitor(RateBounds(user=0, session=0, item=0)).counters == {}


def test_split_flagged_keeps_positions_of_calm_events() -> None:
    m = TrafficMonitor(RateBounds(user=2, session=0, item=0))
    events = [("bot", "s", "i", T0 + i) for i in range(4)] + [("human", "s2", "i", T0 + 9)]
    keep, counts = split_flagged(m, events)
    assert keep == [0, 1, 4] and counts == {"user": 2}


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        WindowCounter(limit=0)


def test_one_stray_future_event_does_not_calm_every_flagged_key() -> None:
    """``flagged`` judges at the last event's time, not the newest time ever seen."""
    c = WindowCounter(limit=3)
    for i in range(10):
        c.add("bot", T0 + i)
    c.add("stray", T0 + 365 * 86_400_000)  # a year ahead
    c.add("human", T0 + 20)
    assert c.flagged() == 1
