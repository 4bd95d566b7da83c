"""Co-visitation: hand-computed weights, scores and candidates; bundles carry and derive it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.bundle import Bundle, derive_bundle, verify_bundle, write_bundle
from models.covisit import build_covisitation, covisit_candidates, covisit_scores


def test_weights_are_sequential_plus_weaker_backward() -> None:
    nb, wt = build_covisitation([[1, 2, 3]], 3, window=5, back_weight=0.5, top_m=3)
    # 1->2: 1/1; 1->3: 1/2; 2->3: 1/1; backward: 2->1 0.5, 3->2 0.5, 3->1 0.25.
    assert nb[1].tolist() == [2, 3, 0] and wt[1].tolist() == [1.0, 0.5, 0.0]
    assert nb[2].tolist() == [3, 1, 0] and wt[2].tolist() == [1.0, 0.5, 0.0]
    assert nb[3].tolist() == [2, 1, 0] and wt[3].tolist() == [0.5, 0.25, 0.0]
    assert not nb[0].any()


def test_repeats_accumulate_self_pairs_are_ignored_and_top_m_cuts() -> None:
    nb, wt = build_covisitation([[1, 2], [1, 2], [1, 1, 3]], 3, window=1, top_m=1)
    assert nb[1].tolist() == [2] and wt[1].tolist() == [2.0]  # 1->2 twice beats 1->3 once


def test_scores_weight_newest_items_most() -> None:
    nb = np.array([[0, 0], [2, 3], [3, 0], [0, 0]], dtype=np.int64)
    wt = np.array([[0, 0], [4, 1], [2, 0], [0, 0]], dtype=np.float32)
    recent = np.array([[0, 1, 2]], dtype=np.int64)  # newest: 2, then 1
    cands = np.array([[3, 2, 1]], dtype=np.int64)
    scores = covisit_scores(recent, cands, nb, wt, depth=2)
    assert scores.tolist() == [[2.0 + 1.0 / 2, 4.0 / 2, 0.0]]
    assert covisit_candidates(recent, nb, depth=2).tolist() == [[3, 0, 2, 3]]


def test_bundle_round_trip_and_derived_version(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx, never loaded here")
    emb = np.vstack([np.zeros(4), np.eye(4)[:3]]).astype(np.float32)
    covis = build_covisitation([[1, 2, 3]], 3, top_m=2)
    path = write_bundle(
        tmp_path / "b",
        onnx_path=onnx,
        item_ids=["a", "b", "c"],
        embeddings=emb,
        popularity=np.array([0, 1, 1, 1], np.float32),
        max_recent=5,
        metadata={"covisit_blend": 1.0},
        covisit=covis,
    )
    bundle = Bundle.load(path)
    assert bundle.covisit_neighbours.tolist() == covis[0].tolist()
    derived = derive_bundle(path, {"covisit_blend": 2.0})
    again = Bundle.load(derived)
    assert again.metadata["covisit_blend"] == 2.0 and again.metadata["derived_from"] == path.name
    assert again.space_id == bundle.space_id  # same embedding space: user state stays valid
    (derived / "covisit.npz").write_bytes(b"tampered")
    with pytest.raises(Exception, match="sha256"):
        verify_bundle(derived)
