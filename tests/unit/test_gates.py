"""Promotion gates: the pure measures (hand-computed), the verdict, and the replay-based check
of two versions of the fake bundle."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from models.gates import GateConfig, decide, overlap_at_k, score_drift
from stream.gates import check_candidate
from tests.unit.test_recommend_batch import model_and_store
from topics.events import EventType, UserEvent


def test_overlap_and_drift_by_hand() -> None:
    assert overlap_at_k([["a", "b"], ["c", "d"]], [["b", "a"], ["c", "x"]], 2) == 0.75
    assert overlap_at_k([], [], 20) == 1.0
    assert overlap_at_k([["a", "b", "c"]], [["c", "a"]], 20) == pytest.approx(2 / 3)
    # List 1: a 1.0, b 0.0 vs a 0.0, b 1.0 -> |1-0| + |0-1|; list 2 shares nothing.
    drift = score_drift([["a", "b"], ["c"]], [[5.0, 1.0], [2.0]],
                        [["a", "b"], ["d"]], [[0.3, 0.9], [7.0]])  # fmt: skip
    assert drift == pytest.approx(1.0)
    assert score_drift([["a", "b"]], [[2.0, 1.0]], [["a", "b"]], [[20.0, 10.0]]) == 0.0


def test_each_gate_names_its_reason() -> None:
    cur = {"HR@20": 0.30, "MRR@20": 0.10}
    ok = decide(cur, {"HR@20": 0.295, "MRR@20": 0.10}, 0.8, 0.1, GateConfig())
    assert ok.passed and ok.reasons == [] and ok.metrics["overlap@20"] == 0.8
    bad = decide(cur, {"HR@20": 0.20, "MRR@20": 0.05}, 0.1, 0.9, GateConfig())
    assert not bad.passed
    assert [r.split(":")[0] for r in bad.reasons] == ["quality"] * 2 + ["consistency"] * 2


def test_a_version_agrees_with_itself_and_a_scrambled_one_fails() -> None:
    current, _ = model_and_store()
    current.half_life_ms = 1e9
    rng = np.random.default_rng(0)
    items = ["a", "b", "c", "d", "e"]
    events = [
        UserEvent(
            f"{u}-{j}", EventType.VIEW, f"u{u}", f"s{u}", 10 * u + j, item_id=items[(u + j) % 5]
        )
        for u in range(40)
        for j in range(3)
    ]
    same = check_candidate(current, copy.copy(current), [], events)
    assert same.passed and same.metrics["overlap@20"] == 1.0 and same.metrics["score_drift"] == 0
    scrambled = copy.copy(current)
    scrambled.embeddings = current.embeddings[rng.permutation(6)]
    scrambled.normalised_embeddings = current.normalised_embeddings[[0, 4, 3, 2, 1, 5]]
    scrambled.scorer = type(current.scorer)(scrambled.embeddings)
    tight = GateConfig(min_overlap=0.99, max_score_drift=0.0)
    report = check_candidate(current, scrambled, [], events, tight)
    assert not report.passed and any(r.startswith("consistency") for r in report.reasons)
