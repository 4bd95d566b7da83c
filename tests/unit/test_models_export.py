"""Ranker semantics, ONNX export parity (torch vs ONNX Runtime) and train_bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bundle import Bundle, ModelError  # noqa: E402
from models.export import check_parity, export_onnx, train_bundle  # noqa: E402
from models.ranker import SessionRanker  # noqa: E402
from models.retrieval import Retriever  # noqa: E402
from models.scoring import Scorer, pack_recent  # noqa: E402
from models.training import TrainConfig  # noqa: E402

N, D, R = 40, 8, 5


@pytest.fixture(scope="module")
def model() -> SessionRanker:
    torch.manual_seed(0)
    ranker = SessionRanker(N, dim=D, max_recent=R).eval()
    with torch.no_grad():
        ranker.item_bias.weight[1:].normal_()
        ranker.repeat.normal_()
    return ranker


def test_catalogue_logits_match_forward_and_mask_padding(model: SessionRanker) -> None:
    recent = torch.from_numpy(pack_recent([[3, 3, 7], [], [1, 2, 3, 4, 5]], R))
    user_vec = torch.randn(3, D)
    all_items = torch.arange(N + 1).expand(3, N + 1)
    with torch.no_grad():
        full = model.catalogue_logits(recent, user_vec)
        direct = model(recent, user_vec, all_items)
    assert full.shape == (3, N + 1)
    torch.testing.assert_close(full[:, 1:], direct[:, 1:], rtol=1e-5, atol=1e-5)
    assert (full[:, 0] < -1e8).all()


def test_repeat_term_boosts_items_in_recent_but_not_padding(model: SessionRanker) -> None:
    recent = torch.tensor([[0, 0, 0, 0, 7]])
    user_vec = torch.zeros(1, D)
    cands = torch.tensor([[7, 0]])
    with torch.no_grad():
        plain = model(recent, user_vec, cands)
        model.repeat[-1] += 10.0
        boosted = model(recent, user_vec, cands)
        model.repeat[-1] -= 10.0
    assert boosted[0, 0] - plain[0, 0] == pytest.approx(10.0, abs=1e-4)
    assert boosted[0, 1] == pytest.approx(plain[0, 1].item(), abs=1e-5)


def test_user_vec_scale_does_not_matter_and_zero_is_allowed(model: SessionRanker) -> None:
    recent = torch.tensor([[0, 0, 1, 2, 3]])
    cands = torch.tensor([[4, 5, 6]])
    vec = torch.randn(1, D)
    with torch.no_grad():
        torch.testing.assert_close(model(recent, vec, cands), model(recent, 50 * vec, cands))
        assert torch.isfinite(model(recent, torch.zeros(1, D), cands)).all()


def test_onnx_parity_and_dynamic_batch_and_candidates(model: SessionRanker, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "m.onnx", max_recent=R, dim=D)
    assert check_parity(model, path, seed=3) < 1e-4
    scorer = Scorer(path, device="cpu")
    rng = np.random.default_rng(1)
    for batch, width in [(1, 1), (64, 100), (7, 3)]:
        recent = rng.integers(0, N + 1, (batch, R))
        vec = rng.normal(size=(batch, D)).astype(np.float32)
        cands = rng.integers(0, N + 1, (batch, width))
        with torch.no_grad():
            expected = model(
                torch.from_numpy(recent), torch.from_numpy(vec), torch.from_numpy(cands)
            )
        got = scorer.score(recent, vec, cands)
        assert got.shape == (batch, width)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_export_refuses_mismatched_shapes(model: SessionRanker, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="asked for"):
        export_onnx(model, tmp_path / "m.onnx", max_recent=R + 1, dim=D)


def test_train_bundle_writes_a_loadable_consistent_bundle(tmp_path: Path) -> None:
    sessions = [[1, 2, 3, 4], [2, 3, 4, 5], [5, 1, 2]]
    popularity = np.array([0, 2, 3, 2, 2, 2], np.float32)
    cfg = TrainConfig(dim=D, max_recent=R, epochs=2, seed=5)
    path = train_bundle(
        ["a", "b", "c", "d", "e"],
        sessions,
        popularity,
        tmp_path,
        cfg=cfg,
        version="t1",
        metadata={"training_data": "toy"},
        metrics={"hr@20": 0.5},
    )
    bundle = Bundle.load(path)
    meta = bundle.metadata
    assert meta["training_data"] == "toy" and meta["metrics"] == {"hr@20": 0.5}
    assert meta["train_config"]["seed"] == 5 and meta["n_train_sessions"] == 3
    assert meta["n_train_pairs"] == 8 and meta["onnx_parity_max_abs_diff"] < 1e-4
    assert "trained_at" in meta and meta["half_life_ms"] == cfg.half_life_ms
    assert bundle.embeddings.shape == (6, D) and not bundle.embeddings[0].any()
    _, items = Retriever.load(bundle.index_path).search(bundle.embeddings[3:4], k=1)
    assert items.tolist() == [[3]]
    scorer = Scorer(bundle.onnx_path, device="cpu")
    assert (scorer.max_recent, scorer.dim) == (R, D)
