"""Serving-side scoring: the exported ranker run by ONNX Runtime. Never imports torch.

One ``Scorer.score`` call is one ``InferenceSession.run`` for a whole micro-batch; per-event
calls would cost a Python round trip and a kernel launch each. The worker is a 2-core asyncio
process, so the CPU session defaults to one intra-op thread (and one inter-op thread): the
other core stays free for the event loop, Kafka and Redis I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from models.bundle import ModelError

Device = Literal["auto", "cpu", "cuda"]
INPUT_NAMES = ("recent", "user_vec", "candidates")
OUTPUT_NAME = "scores"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def pack_recent(newest_first: Sequence[Sequence[int]], max_recent: int) -> np.ndarray:
    """``int64[B, max_recent]`` model input from per-user recent item indices.

    User state stores recent items newest first; the ranker wants them chronological and
    LEFT-padded with 0 so the newest item is the last column. Rows longer than ``max_recent``
    keep their ``max_recent`` newest items.
    """
    out = np.zeros((len(newest_first), max_recent), dtype=np.int64)
    for row, items in enumerate(newest_first):
        kept = list(items[:max_recent])
        if kept:
            out[row, max_recent - len(kept) :] = kept[::-1]
    return out


def select_providers(device: Device, available: Sequence[str]) -> list[str]:
    """Execution providers for ``device``: CUDA first when allowed and installed, CPU always as
    the fallback. ``device="cuda"`` without CUDA is a configuration error, not a silent CPU run."""
    if device not in ("auto", "cpu", "cuda"):
        raise ModelError(f"unknown scoring device {device!r} (auto, cpu or cuda)")
    if device == "cuda" and CUDA not in available:
        raise ModelError(f"device='cuda' but onnxruntime offers only {list(available)}")
    if device != "cpu" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


class Scorer:
    """ONNX Runtime session around an exported ``SessionRanker`` (``model.onnx``)."""

    def __init__(
        self, onnx_path: Path | str, *, device: Device = "auto", intra_op_threads: int = 1
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = select_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise ModelError(f"{onnx_path}: inputs {sorted(inputs)}, expected {INPUT_NAMES}")
        self.max_recent = int(inputs["recent"].shape[1])
        self.dim = int(inputs["user_vec"].shape[1])

    @property
    def provider(self) -> str:
        """The execution provider actually running the graph (first of the session's list)."""
        return str(self.session.get_providers()[0])

    def score(self, recent: np.ndarray, user_vec: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``float32[B, C]`` logits for ``recent[B, R]`` int64 (chronological, left-padded, see
        ``pack_recent``), ``user_vec[B, D]`` float32 and ``candidates[B, C]`` int64."""
        recent = np.ascontiguousarray(recent, dtype=np.int64)
        user_vec = np.ascontiguousarray(user_vec, dtype=np.float32)
        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        batch = recent.shape[0]
        if recent.shape != (batch, self.max_recent):
            raise ModelError(f"recent has shape {recent.shape}, expected (B, {self.max_recent})")
        if user_vec.shape != (batch, self.dim):
            raise ModelError(f"user_vec has shape {user_vec.shape}, expected ({batch}, {self.dim})")
        if candidates.ndim != 2 or candidates.shape[0] != batch:
            raise ModelError(f"candidates has shape {candidates.shape}, expected ({batch}, C)")
        feeds = {"recent": recent, "user_vec": user_vec, "candidates": candidates}
        (scores,) = self.session.run([OUTPUT_NAME], feeds)
        return np.asarray(scores, dtype=np.float32)

    def warmup(self, batch: int = 64, n_candidates: int = 100) -> None:
        """Run one dummy batch so the first real micro-batch does not pay for memory planning
        (and, on CUDA, for kernel loading)."""
        self.score(
            np.zeros((batch, self.max_recent), dtype=np.int64),
            np.zeros((batch, self.dim), dtype=np.float32),
            np.ones((batch, n_candidates), dtype=np.int64),
        )
