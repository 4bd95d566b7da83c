"""A/B split (stable, near its weights) and the online HR@K tracker."""

from __future__ import annotations

import pytest

from models.ab import ABSplit, HitTracker, wilson


def test_the_split_is_stable_and_near_its_weights() -> None:
    split = ABSplit.parse("A=v1:0.9, B=v2:0.1")
    users = [f"user-{i}" for i in range(20_000)]
    arms = [a.name for a in split.assign(users)]
    assert arms == [a.name for a in split.assign(users)]  # same answer every time
    assert arms[:50] == [a.name for a in ABSplit.parse("A=v1:9,B=v2:1").assign(users[:50])]
    share_b = arms.count("B") / len(arms)
    assert 0.09 < share_b < 0.11
    reshuffled = [a.name for a in ABSplit.parse("A=v1:0.9,B=v2:0.1", salt="x").assign(users)]
    assert reshuffled != arms
    assert split.assign(["u"])[0].version in {"v1", "v2"}


def test_bad_specs_are_refused() -> None:
    for spec in ("A=v1", "A=v1:0", "A=v1:1,A=v2:1", ""):
        with pytest.raises(ValueError):
            ABSplit.parse(spec)


def test_wilson_interval() -> None:
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_the_next_item_judges_the_previous_list_per_arm() -> None:
    t = HitTracker(k=2)
    t.observe("u", "x", "A", ["a", "b", "c"])  # no pending list yet: nothing judged
    t.observe("u", "b", "A", ["d"])  # b in top-2 of the first list: hit
    t.observe("u", "c", "A", ["e"])  # c not in ["d"]: miss
    t.observe("v", "q", "B", ["z"])
    t.observe("v", None, "B", ["y"])  # a search: nothing to judge, replaces the pending list
    t.observe("v", "y", "B", [])  # hit on the search's list
    assert (t.stats["A"].shown, t.stats["A"].judged, t.stats["A"].hits) == (3, 2, 1)
    assert (t.stats["B"].judged, t.stats["B"].hits, t.stats["B"].hit_rate) == (1, 1, 1.0)


def test_the_tracker_is_bounded() -> None:
    t = HitTracker(capacity=2)
    for u in "abc":
        t.recommended(u, "A", ["i"])
    assert t.interacted([("a", "i")]) == []  # evicted: the oldest user
    assert t.interacted([("c", "i")]) == [("A", True)]
