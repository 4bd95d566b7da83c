"""Session building, training pairs, determinism and a learnability smoke test."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bundle import ModelError  # noqa: E402
from models.evaluation import hit_rate_at_k  # noqa: E402
from models.training import (  # noqa: E402
    TrainConfig,
    build_sessions,
    make_pairs,
    predict_top_k,
    train_ranker,
)


def test_build_sessions_orders_by_time_and_builds_vocabulary() -> None:
    data = build_sessions(
        ["s2", "s1", "s1", "s2", "s3", "s1"],
        ["x", "b", "a", "y", "lonely", "a"],
        [50, 20, 10, 60, 70, 30],
    )
    assert data.item_ids == ["a", "b", "x", "y"]
    assert data.sessions == [[1, 2, 1], [3, 4]]
    assert data.popularity.tolist() == [0, 2, 1, 1, 1]


def test_build_sessions_with_vocabulary_drops_unknown_items() -> None:
    data = build_sessions(
        ["t", "t", "t", "u", "u"],
        ["b", "new", "a", "new", "a"],
        [1, 2, 3, 4, 5],
        vocabulary=["a", "b"],
    )
    assert data.item_ids == ["a", "b"]
    assert data.sessions == [[2, 1]]
    with pytest.raises(ValueError, match="same length"):
        build_sessions(["t"], [], [1])


def test_make_pairs_uses_left_padded_chronological_recent_and_full_prefix_bags() -> None:
    pairs = make_pairs([[5, 6, 7], [8, 9]], max_recent=2)
    assert pairs.recent.tolist() == [[0, 5], [5, 6], [0, 8]]
    assert pairs.targets.tolist() == [6, 7, 9]
    indices, offsets = pairs.bags(np.array([1, 2]))
    assert indices.tolist() == [5, 6, 8] and offsets.tolist() == [0, 2]


def test_training_is_deterministic_for_a_seed_and_keeps_padding_zero() -> None:
    sessions = [[1, 2, 3], [3, 4, 5, 1], [2, 5]]
    cfg = TrainConfig(dim=8, max_recent=4, epochs=2, batch_size=2, seed=7)
    a, b = train_ranker(sessions, 5, cfg), train_ranker(sessions, 5, cfg)
    c = train_ranker(sessions, 5, TrainConfig(dim=8, max_recent=4, epochs=2, batch_size=2, seed=8))
    assert torch.equal(a.item_embeddings(), b.item_embeddings())
    assert not torch.equal(a.item_embeddings(), c.item_embeddings())
    assert not a.item_embeddings()[0].any() and a.item_bias.weight[0].item() == 0.0
    assert not a.training


def test_bad_sessions_are_refused() -> None:
    with pytest.raises(ModelError, match=r"1\.\.3"):
        train_ranker([[1, 4]], 3, TrainConfig(epochs=1))
    with pytest.raises(ModelError, match="no training pairs"):
        train_ranker([[1], [2]], 3, TrainConfig(epochs=1))


def test_learns_a_deterministic_successor_rule() -> None:
    """Item i is always followed by i + 1: held-out prefixes must be predicted (HR@5 > 0.8)."""
    n = 60
    rng = np.random.default_rng(0)
    starts = rng.integers(1, n - 8, size=400)
    lengths = rng.integers(3, 9, size=400)
    sessions = [list(range(int(s), int(s) + int(m))) for s, m in zip(starts, lengths, strict=True)]
    model = train_ranker(sessions, n, TrainConfig(dim=16, epochs=10, lr=1e-2, batch_size=64))
    held_out = [(list(range(s, s + m)), s + m) for s in range(1, n - 6) for m in (1, 3)]
    ranked = predict_top_k(model, [p for p, _ in held_out], k=5)
    assert hit_rate_at_k(ranked, [t for _, t in held_out], 5) > 0.8
