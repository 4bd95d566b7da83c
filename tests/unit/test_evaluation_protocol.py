"""The evaluation protocol: time split without leakage, test pairs, metrics over string ids."""

from __future__ import annotations

import numpy as np

from stream.evaluate import build_test_pairs, score_lists
from topics.datasets import split_by_time, split_train_valid_test
from topics.events import EventType, UserEvent

DAY = 24 * 3600 * 1000


def ev(eid: str, session: str, item: str | None, ts: int) -> UserEvent:
    kind = EventType.VIEW if item is not None else EventType.SEARCH
    return UserEvent(
        eid, kind, f"u-{session}", session, ts, item_id=item, query=None if item else "q"
    )


def test_no_test_event_precedes_a_training_event() -> None:
    events = sorted(
        [
            ev(f"{s}-{i}", s, f"i{i}", start + i * DAY // 2)
            for s, start in (("a", 0), ("b", 5 * DAY), ("c", 8 * DAY), ("d", 9 * DAY))
            for i in range(4)
        ],
        key=lambda e: e.timestamp_ms,
    )
    train, valid, test = split_train_valid_test(events, test_days=2, valid_days=2)
    assert train and valid and test
    assert max(e.timestamp_ms for e in train) < min(e.timestamp_ms for e in valid)
    assert max(e.timestamp_ms for e in valid) < min(e.timestamp_ms for e in test)
    # Sessions never straddle: a session's test events are all in test.
    assert {e.session_id for e in test}.isdisjoint({e.session_id for e in train + valid})
    before, after = split_by_time(events, 2)
    assert max(e.timestamp_ms for e in before) < min(e.timestamp_ms for e in after)


def test_a_sparse_validation_period_is_widened_within_its_share() -> None:
    # One single-event session per day over 100 days; the test is the last 10.
    events = [ev(f"e{d}", f"s{d}", f"i{d % 7}", d * DAY) for d in range(100)]
    train, valid, _ = split_train_valid_test(events, 10, 3)
    assert len(valid) == 4  # days 85-88: the cut is inclusive
    train, valid, _ = split_train_valid_test(events, 10, 3, min_valid_events=20)
    assert len(valid) == 20 and len(train) == 69
    assert max(e.timestamp_ms for e in train) < min(e.timestamp_ms for e in valid)
    # Never more than max_valid_share of the 89 events before test: 0.3 -> 26.
    _, valid, _ = split_train_valid_test(events, 10, 3, min_valid_events=80)
    assert len(valid) == 26


def test_pairs_drop_unseen_targets_and_re_views() -> None:
    test = [
        ev("1", "s", "a", 1),
        ev("2", "s", "b", 2),
        ev("3", "s", "a", 3),
        ev("4", "s", "new", 4),
        ev("5", "s", None, 5),
        ev("6", "s", "c", 6),
    ]
    pairs = build_test_pairs(test, known_items={"a", "b", "c"})
    assert pairs.trigger_ids == ["1", "5"]
    assert pairs.prefixes == [["a"], ["a", "b", "a", "new"]]
    assert pairs.targets == ["b", "c"]
    assert (pairs.dropped_repeat, pairs.dropped_unseen) == (1, 1)


def test_score_lists_over_string_catalogue() -> None:
    test = [ev("1", "s", "a", 1), ev("2", "s", "b", 2), ev("3", "s", "c", 3)]
    pairs = build_test_pairs(test, known_items={"a", "b", "c", "d"})
    lists = [["b", "d"], ["d", "zzz"]]  # hit at rank 1, then a miss
    pop = np.array([0, 4, 2, 1, 1], dtype=float)  # index = position in sorted catalogue + 1
    m = score_lists(lists, pairs, ["a", "b", "c", "d"], pop, ks=(1, 5))
    assert m["HR@1"] == 0.5 and m["MRR@5"] == 0.5
    assert m["NDCG@5"] == 0.5
    assert m["coverage@5"] == 0.5  # b and d of four items
    assert m["popularity_bias@5"] == (2 + 1 + 1) / 3 / 4
    assert m["HR@5|len=1"] == 1.0 and m["HR@5|len=2"] == 0.0
