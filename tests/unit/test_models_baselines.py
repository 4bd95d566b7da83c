"""POP, S-POP, AR and SR on hand-made sessions whose rankings are worked out in the comments."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import TypeVar

import pytest

from models.baselines import (
    AssociationRules,
    Pop,
    SequentialRules,
    SessionBaseline,
    SessionPop,
)

M = TypeVar("M", bound=SessionBaseline)

# Counts: a 2, b 3, c 2, d 1, e 1  ->  POP order b, a, c, d, e (a/c and d/e tied: by id).
TRAIN = [["a", "b", "c"], ["a", "b", "d"], ["b", "c"], ["e"]]
POP = ["b", "a", "c", "d", "e"]


def fitted(model: M, sessions: list[list[str]] = TRAIN) -> M:
    model.fit(sessions)
    return model


def test_pop_orders_by_count_then_id_and_never_invents_items() -> None:
    pop = fitted(Pop())
    assert pop.recommend([], 5) == POP
    assert pop.recommend(["a", "zz"], 10) == POP  # only 5 items exist; prefix ignored
    assert pop.recommend([], 3, exclude={"b", "zz"}) == ["a", "c", "d"]
    assert pop.recommend([], 0) == []


def test_session_pop_counts_prefix_items_then_recency_then_fills_with_pop() -> None:
    spop = fitted(SessionPop())
    # prefix counts c 2, d 1, a 1 (zz unknown: dropped); d/a tied -> a, seen later, first.
    assert spop.recommend(["c", "d", "c", "zz", "a"], 5) == ["c", "a", "d", "b", "e"]
    assert spop.recommend(["c", "d", "c", "zz", "a"], 5, exclude={"c"}) == ["a", "d", "b", "e"]
    assert spop.recommend([], 2) == ["b", "a"]


def test_association_rules_count_co_occurrence_in_any_order() -> None:
    ar = fitted(AssociationRules())
    # Pairs: S1 a-b a-c b-c, S2 a-b a-d b-d, S3 b-c (each counted both ways):
    # a: b 2, c 1, d 1 | b: a 2, c 2, d 1 | c: a 1, b 2 | d: a 1, b 1 | e: none.
    assert ar.recommend(["a"], 4, exclude={"a"}) == ["b", "c", "d", "e"]  # c/d tie: c more popular
    assert ar.recommend(["b"], 3) == ["a", "c", "d"]  # a/c tie at 2 and in popularity: by id
    # Only the last (known) item counts: c's rules b 2, a 1, then POP fill.
    assert ar.recommend(["d", "c", "zz"], 3) == ["b", "a", "c"]
    assert ar.recommend(["e"], 2) == ["b", "a"]  # no rules: all POP
    assert ar.recommend(["zz"], 2) == ["b", "a"]


def test_association_rules_self_pairs_and_pruning() -> None:
    # Counts p 3, s 3, q 2, r 1 -> POP p, s, q, r. Rules p: q 2, r 1; s: s 6 (the 6 ordered
    # pairs of distinct positions in [s, s, s]).
    sessions = [["p", "q"], ["p", "q"], ["p", "r"], ["s", "s", "s"]]
    assert fitted(AssociationRules(), sessions).recommend(["p"], 2, exclude={"p"}) == ["q", "r"]
    pruned = fitted(AssociationRules(pruning=1), sessions)
    assert pruned.recommend(["p"], 2, exclude={"p"}) == ["q", "s"]  # r pruned: POP fills s
    assert pruned.recommend(["s"], 2) == ["s", "p"]


def test_sequential_rules_are_directed_and_weighted_one_over_distance() -> None:
    sr = fitted(SequentialRules())
    # S1: a->b 1, b->c 1, a->c 1/2 | S2: a->b 1, b->d 1, a->d 1/2 | S3: b->c 1.
    # a: b 2, c .5, d .5 | b: c 2, d 1 | c, d, e: none.
    assert sr.recommend(["a"], 3) == ["b", "c", "d"]
    assert sr.recommend(["a", "b"], 3, exclude={"a", "b"}) == ["c", "d", "e"]
    assert sr.recommend(["c"], 2) == ["b", "a"]  # nothing follows c: POP
    # Counts p 2, r 2, q 1, s 1 -> POP p, r, q, s. p: q 1, r 1/2 + 1, s 1/2.
    sessions = [["p", "q", "r"], ["p", "r", "s"]]
    assert fitted(SequentialRules(), sessions).recommend(["p"], 3) == ["r", "q", "s"]
    # steps=1 keeps p: q 1, r 1 (tie: r more popular); POP fills p.
    assert fitted(SequentialRules(steps=1), sessions).recommend(["p"], 3) == ["r", "q", "p"]


def test_sequential_rules_float_sums_do_not_break_true_ties() -> None:
    # x: f1 3 (distance 1 three times), f2 1/2 + 1/2, a 1, b 1/2 + 1/3 + 1/6 = 1 (in floats
    # 0.9999999999999999), f3 1/3, f4 1/4, f5 1/5. The three rules at 1 are tied and go by
    # popularity: b 3, f2 2, a 1.
    sessions = [
        ["x", "a"],
        ["x", "f1", "b"],
        ["x", "f1", "f2", "b"],
        ["x", "f1", "f2", "f3", "f4", "f5", "b"],
    ]
    sr = fitted(SequentialRules(), sessions)
    assert sr.recommend(["x"], 7) == ["f1", "b", "f2", "a", "f3", "f4", "f5"]


def test_errors() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        Pop().recommend([], 3)
    with pytest.raises(ValueError):
        SequentialRules(weighting="cubic")
    with pytest.raises(ValueError):
        AssociationRules(pruning=-1)


def _reference_rules(
    sessions: list[list[str]], sequential: bool, steps: int
) -> dict[str, dict[str, float]]:
    """Straight loop in the style of session-rec's AR/SR fit (no pruning)."""
    rules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for session in sessions:
        for q, item in enumerate(session):
            for p in range(max(0, q - steps) if sequential else 0, q):
                rules[session[p]][item] += 1 / (q - p) if sequential else 1
                if not sequential:
                    rules[item][session[p]] += 1
    return rules


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rules_match_a_plain_loop_on_random_sessions(seed: int) -> None:
    rng = random.Random(seed)
    items = [f"i{j:02d}" for j in range(25)]
    sessions = [rng.choices(items, k=rng.randint(1, 15)) for _ in range(60)]
    pop = fitted(Pop(), sessions)
    rank = {item: r for r, item in enumerate(pop.recommend([], len(items)))}
    cases: list[tuple[SessionBaseline, bool]] = [
        (AssociationRules(pruning=0), False),
        (SequentialRules(3, "div", 0), True),
    ]
    for model, sequential in cases:
        fitted(model, sessions)
        rules = _reference_rules(sessions, sequential, 3)
        for last in items:
            got = model.recommend([last], 40)
            scores = {i: round(w, 9) for i, w in rules[last].items()}
            want = sorted(scores, key=lambda i: (-scores[i], rank[i]))
            assert got[: len(want)] == want
