"""ONNX Runtime scorer: input packing, provider choice, one run per batch, shape checks.

The graph is built by hand with ``onnx.helper`` (scores = candidates as float + sum(user_vec)),
so these tests need neither torch nor a trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.bundle import ModelError
from models.scoring import CPU, CUDA, Scorer, pack_recent, select_providers

R, D = 4, 3


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["candidates"], ["cand_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["user_vec", "axes"], ["u_sum"], keepdims=1),
            helper.make_node("Add", ["cand_f", "u_sum"], ["scores"]),
        ],
        "fake_ranker",
        [
            helper.make_tensor_value_info("recent", TensorProto.INT64, ["batch", R]),
            helper.make_tensor_value_info("user_vec", TensorProto.FLOAT, ["batch", D]),
            helper.make_tensor_value_info("candidates", TensorProto.INT64, ["batch", "c"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "c"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(model, str(path))
    return path


class _CountingSession:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runs = 0

    def run(self, *args: Any) -> Any:
        self.runs += 1
        return self.inner.run(*args)


def test_pack_recent_reverses_newest_first_and_left_pads() -> None:
    out = pack_recent([[9, 8, 7], [], [1, 2, 3, 4, 5, 6]], max_recent=4)
    assert out.dtype == np.int64
    assert out.tolist() == [[0, 7, 8, 9], [0, 0, 0, 0], [4, 3, 2, 1]]


def test_provider_selection() -> None:
    assert select_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("auto", [CPU]) == [CPU]
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ModelError, match="cuda"):
        select_providers("cuda", [CPU])
    with pytest.raises(ModelError, match="unknown scoring device"):
        select_providers("tpu", [CPU])  # type: ignore[arg-type]


def test_scores_a_batch_in_one_run_and_reads_shapes_from_graph(onnx_path: Path) -> None:
    scorer = Scorer(onnx_path, device="cpu")
    assert (scorer.max_recent, scorer.dim, scorer.provider) == (R, D, CPU)
    counting = _CountingSession(scorer.session)
    scorer.session = counting  # type: ignore[assignment]
    user_vec = np.array([[1, 1, 1], [0, 0, 0]], np.float32)
    scores = scorer.score(np.zeros((2, R), np.int32), user_vec, np.array([[1, 2], [3, 4]]))
    assert counting.runs == 1
    assert scores.dtype == np.float32
    assert scores.tolist() == [[4.0, 5.0], [3.0, 4.0]]


def test_warmup_and_shape_errors(onnx_path: Path) -> None:
    scorer = Scorer(onnx_path, device="cpu")
    scorer.warmup(batch=4, n_candidates=7)
    ok_recent, ok_vec = np.zeros((1, R), np.int64), np.zeros((1, D), np.float32)
    with pytest.raises(ModelError, match="recent"):
        scorer.score(np.zeros((1, R + 1), np.int64), ok_vec, np.ones((1, 2), np.int64))
    with pytest.raises(ModelError, match="user_vec"):
        scorer.score(ok_recent, np.zeros((1, D + 1), np.float32), np.ones((1, 2), np.int64))
    with pytest.raises(ModelError, match="candidates"):
        scorer.score(ok_recent, ok_vec, np.ones((2, 2), np.int64))
