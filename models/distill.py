"""A smaller re-ranker distilled from a bundle's ranker: the ``student`` variant of
``models/compress.py``. Training-only (imports torch, ``train`` extra).

The student is a ``SessionRanker`` whose GRU is narrower (``hidden`` < D) and reads only the
``window`` newest recent items, the cost of a scoring call being mostly that GRU's sequential
steps. Everything that ties the model to serving state is the teacher's and frozen: the item
table (so ``embeddings.npy``, the embedding space and the user vectors in Redis stay valid),
the item biases, and the output side ``dot(query, E[c]) + bias[c]``; only the GRU, the query
layer and the repeat bonus learn. Its graph keeps the teacher's inputs (``recent[B, R]``,
``user_vec[B, D]``, ``candidates[B, C]``), so the Scorer and the pipeline are unchanged.

It learns from the teacher's scores, not from next-item labels: for every prefix of the
training sessions the teacher scores the candidates serving would retrieve for it plus
popularity-sampled items (``models.compress.session_examples``), once, through ONNX Runtime
(the bundle holds no torch model). The loss is the KL divergence between the teacher's and
the student's softmax over those candidates (the ranking) plus ``mse_weight`` times the mean
squared logit difference: the blend weights in the parent's metadata were tuned on the
teacher's logits (``neural * logit + sum weight * log1p(signal)``), so the student must
match their scale too, not only their order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from models.bundle import WEIGHTS_FILE, Bundle, ModelError
from models.compress import Examples, score_all, session_examples
from models.export import PARITY_TOLERANCE, check_parity, export_onnx
from models.ranker import SessionRanker
from models.retrieval import Retriever
from models.scoring import Scorer


@dataclass(frozen=True, slots=True)
class DistillConfig:
    """Student shape and training settings. The defaults (a GRU 16 wide over the 10 newest
    items, against the teacher's 32 over R = 20) were picked on the DIGINETICA sample by
    held-out agreement with the teacher: same top-1 for 93% of prefixes, 91% of the top 10
    shared (8 wide: 90% / 89%; at lr 3e-3 and 10 epochs the student is far from converged:
    60% / 53%). Speed and served HR/MRR: bench/compression.py. Cost: ``epochs`` passes over
    at most ``max_examples`` prefixes, 10-20 s for the sample's 5.8k on one thread, several
    minutes at 200k."""

    hidden: int = 16
    window: int = 10
    epochs: int = 40
    lr: float = 1e-2
    batch_size: int = 256
    temperature: float = 1.0
    mse_weight: float = 0.1
    dropout: float = 0.0
    max_examples: int = 200_000
    n_near: int = 64
    n_random: int = 36
    holdout: float = 0.1
    seed: int = 0


class StudentRanker(SessionRanker):
    """``SessionRanker`` with a ``hidden``-wide GRU over the ``window`` newest recent items.

    ``forward`` and ``catalogue_logits`` are the parent class's: ``recent`` stays ``int64[B, R]``
    (the repeat bonus still sees all R positions), ``user_vec`` ``float32[B, D]``; the query
    layer maps ``[GRU state (hidden), normalised user vector (D)]`` to D.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        hidden: int,
        max_recent: int,
        window: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_items, dim, max_recent, dropout)
        if hidden < 1 or not 1 <= window <= max_recent:
            raise ValueError(f"bad student shape: hidden={hidden} window={window} R={max_recent}")
        self.hidden = hidden
        self.window = window
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.query = nn.Linear(hidden + dim, dim)

    def encode(self, recent: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        """Query vectors ``float32[B, D]``: the GRU reads ``recent[:, -window:]`` only (left
        padding puts the newest items last)."""
        if self.window < self.max_recent:
            recent = recent[:, -self.window :]
        seq = self.dropout(self.item_emb(recent))
        _, hidden = self.gru(seq)
        norm = torch.sqrt((user_vec * user_vec).sum(dim=1, keepdim=True) + 1e-12)
        return self.query(torch.cat([hidden[-1], user_vec / norm], dim=1))


def n_parameters(model: nn.Module, *, exclude_tables: bool = False) -> int:
    """Parameter count; with ``exclude_tables`` the per-item tables (embedding, bias: shared
    with the teacher) are left out, which leaves what the student actually shrinks."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not (exclude_tables and name.startswith(("item_emb.", "item_bias.")))
    )


def teacher_tables(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's item biases ``float32[N + 1]`` and repeat bonus ``float32[R]``: from
    ``weights.npz`` when the bundle ships it, else from the ONNX graph's initializers (the
    exporter names them after the torch parameters)."""
    names = ("item_bias.weight", "repeat")
    found: dict[str, np.ndarray] = {}
    if (bundle.path / WEIGHTS_FILE).is_file():
        with np.load(bundle.path / WEIGHTS_FILE, allow_pickle=False) as weights:
            found = {n: weights[n] for n in names if n in weights.files}
    if len(found) < len(names):
        graph = onnx.load(str(bundle.onnx_path)).graph
        found = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in names}
    if len(found) < len(names):
        raise ModelError(f"{bundle.path}: cannot find the teacher's {names} to freeze")
    bias = np.asarray(found["item_bias.weight"], dtype=np.float32).reshape(-1)
    repeat = np.asarray(found["repeat"], dtype=np.float32).reshape(-1)
    if bias.shape != (bundle.n_items + 1,) or repeat.shape != (bundle.max_recent,):
        raise ModelError(f"{bundle.path}: teacher tables {bias.shape}, {repeat.shape}")
    return bias, repeat


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, mse_weight: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T)) + mse_weight * MSE`` over the
    candidates; both inputs ``float32[B, C]``, the result a scalar (mean over rows)."""
    t = F.log_softmax(teacher / temperature, dim=1)
    s = F.log_softmax(student / temperature, dim=1)
    kl = (t.exp() * (t - s)).sum(dim=1).mean() * temperature**2
    return kl + mse_weight * F.mse_loss(student, teacher)


def agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> dict[str, float]:
    """How closely the student ranks like the teacher on ``float32[P, C]`` scores: share of
    rows with the same top-1, mean top-``k`` overlap, mean |logit difference|."""
    k = min(k, teacher.shape[1])
    top_s = np.argsort(-student, axis=1)[:, :k]
    top_t = np.argsort(-teacher, axis=1)[:, :k]
    overlap = [
        len(set(a) & set(b)) / k for a, b in zip(top_s.tolist(), top_t.tolist(), strict=True)
    ]
    return {
        "top1_agreement": float(np.mean(top_s[:, 0] == top_t[:, 0])),
        f"top{k}_overlap": float(np.mean(overlap)),
        "mean_abs_logit_diff": float(np.mean(np.abs(student - teacher))),
    }


def _rows(ex: Examples, rows: np.ndarray) -> Examples:
    return Examples(ex.recent[rows], ex.user_vec[rows], ex.candidates[rows])


@torch.no_grad()
def _student_scores(model: StudentRanker, ex: Examples, batch: int = 1024) -> np.ndarray:
    model.eval()
    out = [
        model(*(torch.from_numpy(f[n]) for n in ("recent", "user_vec", "candidates"))).numpy()
        for f in ex.batches(batch)
    ]
    return np.concatenate(out, axis=0)


def train_student(
    bundle: Bundle, examples: Examples, teacher: np.ndarray, cfg: DistillConfig
) -> tuple[StudentRanker, dict[str, Any]]:
    """Train a student on ``teacher`` scores ``float32[P, C]`` of ``examples``; return it (eval
    mode) and a report (parameter counts, held-out agreement with the teacher, seconds)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_hold = int(len(examples) * cfg.holdout) if len(examples) >= 20 else 0
    perm = rng.permutation(len(examples))
    hold, train = perm[:n_hold], perm[n_hold:]
    model = StudentRanker(
        bundle.n_items, bundle.dim, cfg.hidden, bundle.max_recent, cfg.window, cfg.dropout
    )
    bias, repeat = teacher_tables(bundle)
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.from_numpy(bundle.embeddings))
        model.item_bias.weight.copy_(torch.from_numpy(bias[:, None]))
        model.repeat.copy_(torch.from_numpy(repeat))
    model.item_emb.weight.requires_grad_(False)
    model.item_bias.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    recent = torch.from_numpy(examples.recent)
    user_vec = torch.from_numpy(examples.user_vec)
    cands = torch.from_numpy(examples.candidates)
    target = torch.from_numpy(np.ascontiguousarray(teacher, dtype=np.float32))
    started = time.perf_counter()
    last = float("nan")
    for _ in range(cfg.epochs):
        model.train()
        train = train[rng.permutation(len(train))]
        total, batches = 0.0, 0
        for lo in range(0, len(train), cfg.batch_size):
            rows = torch.from_numpy(train[lo : lo + cfg.batch_size])
            scores = model(recent[rows], user_vec[rows], cands[rows])
            loss = distill_loss(scores, target[rows], temperature=cfg.temperature,
                                mse_weight=cfg.mse_weight)  # fmt: skip
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.item())
            batches += 1
        last = total / max(batches, 1)
    seconds = time.perf_counter() - started
    model.eval()
    teacher_model = SessionRanker(bundle.n_items, bundle.dim, bundle.max_recent)
    report: dict[str, Any] = {
        "train_seconds": round(seconds, 2),
        "train_rows": len(train),
        "final_train_loss": round(last, 6),
        "parameters": n_parameters(model),
        "parent_parameters": n_parameters(teacher_model),
        "parameters_without_item_tables": n_parameters(model, exclude_tables=True),
        "parent_parameters_without_item_tables": n_parameters(teacher_model, exclude_tables=True),
    }
    if n_hold:
        held = _rows(examples, hold)
        report["holdout_rows"] = int(n_hold)
        report["holdout"] = agreement(_student_scores(model, held), teacher[hold])
    return model, report


def distill_student(
    bundle: Bundle, sessions: Sequence[Sequence[int]], out: Path, cfg: DistillConfig
) -> dict[str, Any]:
    """Distil ``bundle``'s ranker on ``sessions`` (item-index training sessions), export the
    student to ``out`` (ONNX, parity-checked against torch) and return the training report."""
    retriever = Retriever.load(bundle.index_path)
    examples = session_examples(
        sessions, bundle.embeddings, retriever, bundle.popularity,
        max_recent=bundle.max_recent, n_near=cfg.n_near, n_random=cfg.n_random,
        max_examples=cfg.max_examples, seed=cfg.seed,
    )  # fmt: skip
    teacher = score_all(Scorer(bundle.onnx_path, device="cpu", intra_op_threads=1), examples)
    model, report = train_student(bundle, examples, teacher, cfg)
    export_onnx(model, out, max_recent=bundle.max_recent, dim=bundle.dim)
    parity = check_parity(model, out, seed=cfg.seed)
    if parity > PARITY_TOLERANCE:
        raise ModelError(f"student ONNX export disagrees with torch: max abs diff {parity:.3g}")
    report["onnx_parity_max_abs_diff"] = parity
    return report
