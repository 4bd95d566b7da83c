"""VSKNN on hand-made sessions whose rankings are worked out in the comments, plus a check
against a plain loop written after session-rec's VMContextKNN."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable

import pytest

from models.baselines import (
    AssociationRules,
    Pop,
    SequentialRules,
    SessionBaseline,
    SessionPop,
)
from models.knn import VSKNN

# T1..T4 start at times 1..4. Counts a 2, b 3, c 2, d 1, e 1 -> POP b, a, c, d, e.
TRAIN = [["a", "b", "c"], ["a", "b", "d"], ["b", "c"], ["e"]]
TIMES = [1, 2, 3, 4]


def knn(times: list[int] | None = TIMES, **params: float | str) -> VSKNN:
    model = VSKNN(**params)  # type: ignore[arg-type]
    model.fit(TRAIN, times)
    return model


def test_every_baseline_implements_the_protocol() -> None:
    for model in (Pop(), SessionPop(), AssociationRules(), SequentialRules(), VSKNN()):
        assert isinstance(model, SessionBaseline)


def test_position_weighted_dot_product() -> None:
    # Prefix [a, b]: weights a 1/2, b 2/2. Neighbours sharing an item: T1 a+b = 1.5,
    # T2 a+b = 1.5, T3 b = 1; newest shared item is b (1 step back) for all: decay 1.
    # Scores: a 1.5+1.5 = 3, b 1.5+1.5+1 = 4, c 1.5+1 = 2.5, d 1.5; e unscored (POP fill).
    assert knn().recommend(["a", "b"], 5) == ["b", "a", "c", "d", "e"]
    assert knn().recommend(["a", "b"], 5, exclude={"a", "b"}) == ["c", "d", "e"]
    assert knn(sample_size=0).recommend(["a", "b"], 5) == ["b", "a", "c", "d", "e"]


def test_score_decays_with_the_step_of_the_matched_item() -> None:
    # Prefix [c, d]: weights c 1/2, d 1; T1 sim .5 (c, 2 steps back: decay 1/2), T2 sim 1
    # (d: 1), T3 sim .5 (c: 1/2). Contributions T1 .25, T2 1, T3 .25.
    # a .25+1 = 1.25, b .25+1+.25 = 1.5, c .25+.25 = .5, d 1 -> d before c.
    assert knn().recommend(["c", "d"], 5) == ["b", "a", "d", "c", "e"]
    # Without decay: a .5+1 = 1.5, b 2, c 1, d 1 -> c/d tied: c more popular.
    assert knn(weighting_score="same").recommend(["c", "d"], 5) == ["b", "a", "c", "d", "e"]


def test_recent_sampling_and_neighbour_ties_follow_timestamps() -> None:
    # sample_size=2 keeps the two newest of T1-T3: T3 (1) and T2 (1.5).
    # a 1.5, b 2.5, d 1.5, c 1 -> a/d tied: a more popular.
    assert knn(sample_size=2).recommend(["a", "b"], 5) == ["b", "a", "d", "c", "e"]
    assert knn(None, sample_size=2).recommend(["a", "b"], 5) == ["b", "a", "d", "c", "e"]
    # Reversed times: T1 and T2 are the newest: a 3, b 3, c 1.5, d 1.5.
    reverse = knn([4, 3, 2, 1], sample_size=2)
    assert reverse.recommend(["a", "b"], 5) == ["b", "a", "c", "d", "e"]
    # k_neighbours=1: T1 and T2 tie at 1.5; the newer one wins (T2 -> d; reversed: T1 -> c).
    assert knn(k_neighbours=1).recommend(["a", "b"], 4) == ["b", "a", "d", "c"]
    assert knn([4, 3, 2, 1], k_neighbours=1).recommend(["a", "b"], 4) == ["b", "a", "c", "d"]


def test_idf_weighting() -> None:
    # idf = ln(4 sessions / count): a ln 2, b ln 4/3, c ln 2, d ln 4. Weight 2 multiplies the
    # default scores by 1 + 2 idf: a 3 * 2.386 = 7.16, b 4 * 1.575 = 6.30,
    # c 2.5 * 2.386 = 5.97, d 1.5 * 3.773 = 5.66 -> a overtakes b.
    assert knn(idf_weighting=2.0).recommend(["a", "b"], 5) == ["a", "b", "c", "d", "e"]


def test_empty_unknown_and_repeated_prefix_items() -> None:
    model = knn()
    assert model.recommend([], 3) == ["b", "a", "c"]
    assert model.recommend(["zz"], 3) == ["b", "a", "c"]
    assert model.recommend(["a", "zz", "b"], 5) == model.recommend(["a", "b"], 5)
    # [d, a, d]: d weighs 3/3 (its last position), a 2/3. T1 2/3 (a, 2 steps: decay 1/2),
    # T2 5/3 (d: 1). a 1/3 + 5/3 = 2, b 2, d 5/3, c 1/3 -> a/b tied: b more popular.
    assert model.recommend(["d", "a", "d"], 4) == ["b", "a", "d", "c"]


def test_errors() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        VSKNN().recommend(["a"], 3)
    with pytest.raises(ValueError, match="timestamps"):
        VSKNN().fit(TRAIN, [1, 2])
    with pytest.raises(ValueError):
        VSKNN(weighting="cubic")
    with pytest.raises(ValueError):
        VSKNN(k_neighbours=0)


# Independent spellings of the weightings the loop check uses (p: position, n: length, d: steps).
_POSITION: dict[str, Callable[[int, int], float]] = {
    "div": lambda p, n: p / n,
    "log": lambda p, n: 1 / math.log10(n - p + 1.7),
}
_DECAY: dict[str, Callable[[int], float]] = {"div": lambda d: 1 / d, "quadratic": lambda d: d**-2}


def _reference(
    sessions: list[list[str]], times: list[int], prefix: list[str], model: VSKNN
) -> dict[str, float]:
    """session-rec's find_neighbors + score_items as plain loops."""
    recency = {s: r for r, s in enumerate(sorted(range(len(sessions)), key=lambda s: times[s]))}
    sets = [set(s) for s in sessions]
    known = [i for i in prefix if any(i in s for s in sets)]
    related = sorted((s for s in recency if sets[s] & set(known)), key=lambda s: -recency[s])
    related = related[: model.sample_size or None]
    weight = {item: _POSITION[model.weighting](p, len(known)) for p, item in enumerate(known, 1)}
    sims = [(sum(weight[i] for i in sets[s] & set(known)), s) for s in related]
    sims.sort(key=lambda x: (-round(x[0], 9), -recency[x[1]]))
    scores: dict[str, float] = defaultdict(float)
    for sim, s in [x for x in sims if x[0] > 0][: model.k_neighbours]:
        step = next(d for d, item in enumerate(reversed(known), 1) if item in sets[s])
        for item in sets[s]:
            idf = math.log(len(sessions) / sum(x.count(item) for x in sessions))
            scores[item] += (
                sim * (1 + model.idf_weighting * idf) * _DECAY[model.weighting_score](step)
            )
    return scores


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_plain_loop_on_random_sessions(seed: int) -> None:
    rng = random.Random(seed)
    items = [f"i{j:02d}" for j in range(30)]
    popular = [1 / (j + 1) for j in range(30)]
    sessions = [rng.choices(items, popular, k=rng.randint(1, 10)) for _ in range(80)]
    times = [rng.randint(0, 20) for _ in sessions]
    for model in [
        VSKNN(),
        VSKNN(k_neighbours=3, sample_size=5),
        VSKNN(weighting="log", weighting_score="quadratic", idf_weighting=1.0),
    ]:
        model.fit(sessions, times)
        order = {item: r for r, item in enumerate(model.item_ids)}
        for _ in range(25):
            prefix = rng.choices([*items, "unknown"], k=rng.randint(1, 6))
            scores = {i: round(v, 9) for i, v in _reference(sessions, times, prefix, model).items()}
            want = sorted(
                (i for i in scores if scores[i] > 0), key=lambda i: (-scores[i], order[i])
            )
            assert model.recommend(prefix, 40)[: len(want)] == want
