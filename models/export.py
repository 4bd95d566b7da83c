"""From a trained ranker to a serving bundle: ONNX export, parity check, FAISS index, bundle.

Training-only (imports torch). The exported graph is checked against the torch model on a
seeded random batch before a bundle is written: a bundle whose ONNX graph disagrees with the
model it was trained as would serve silently wrong scores.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.bundle import MODEL_DATA_FILE, WEIGHTS_FILE, Bundle, ModelError, write_bundle
from models.covisit import build_covisitation
from models.ranker import SessionRanker
from models.retrieval import Retriever, l2_normalise
from models.scoring import INPUT_NAMES, OUTPUT_NAME
from models.session_knn import SessionIndex
from models.token_encoder import TokenEncoder
from models.training import TrainConfig, train_ranker

# Weight of log(1 + co-visitation) added to the ranker's logit; tuned on validation data by
# `streamrec train` / `streamrec evaluate` when they have some (stream/train_job.py).
DEFAULT_COVISIT_BLEND = 1.0
# Sequential rules (SR, Kamehkhosh et al. 2017): items up to this many steps after another.
SEQUENTIAL_WINDOW = 10

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(model: SessionRanker, path: Path, *, max_recent: int, dim: int) -> Path:
    """Export ``model`` to ``path`` with inputs ``recent[B, max_recent]`` int64,
    ``user_vec[B, dim]`` float32, ``candidates[B, C]`` int64 and output ``scores[B, C]``;
    B and C are dynamic, R and D fixed (the Scorer reads them from the graph)."""
    if (model.max_recent, model.dim) != (max_recent, dim):
        raise ModelError(
            f"model has R={model.max_recent}, D={model.dim}; asked for R={max_recent}, D={dim}"
        )
    model = model.eval()
    example = (
        torch.zeros(2, max_recent, dtype=torch.int64),
        torch.zeros(2, dim, dtype=torch.float32),
        torch.ones(2, 3, dtype=torch.int64),
    )
    dynamic_axes = {
        "recent": {0: "batch"},
        "user_vec": {0: "batch"},
        "candidates": {0: "batch", 1: "candidates"},
        OUTPUT_NAME: {0: "batch", 1: "candidates"},
    }
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, and it warns that a GRU exported with B != 1
        # may fix the batch size; that applies only to an explicit h0, which this model has not.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
        )
    _weights_outside(Path(path))
    return Path(path)


def _weights_outside(path: Path) -> None:
    """Move the graph's weights into ``model.onnx.data`` beside it (ONNX external data): ONNX
    Runtime then maps that file rather than copying the tensors into each process, so the
    item tables of a large catalogue are shared by the workers of a host (bench/memory.py)."""
    import onnx

    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=MODEL_DATA_FILE, size_threshold=1024)  # fmt: skip
    data = path.parent / MODEL_DATA_FILE
    if data.is_file():  # absent when every tensor is under 1 KiB (tiny test models)
        os.chmod(data, 0o644)


def check_parity(
    model: SessionRanker, onnx_path: Path, seed: int = 0, *, batch: int = 16, n_candidates: int = 50
) -> float:
    """Max absolute difference between torch and ONNX Runtime scores on a seeded random batch
    (recent rows with varying amounts of left padding, random user vectors and candidates)."""
    rng = np.random.default_rng(seed)
    n, r, d = model.n_items, model.max_recent, model.dim
    recent = rng.integers(1, n + 1, size=(batch, r), dtype=np.int64)
    pad = rng.integers(0, r + 1, size=batch)
    recent[np.arange(r)[None, :] < pad[:, None]] = 0
    user_vec = rng.normal(size=(batch, d)).astype(np.float32)
    user_vec[0] = 0.0
    candidates = rng.integers(0, n + 1, size=(batch, n_candidates), dtype=np.int64)
    with torch.no_grad():
        expected = model.eval()(
            torch.from_numpy(recent), torch.from_numpy(user_vec), torch.from_numpy(candidates)
        ).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"recent": recent, "user_vec": user_vec, "candidates": candidates}
    (actual,) = session.run([OUTPUT_NAME], feeds)
    return float(np.max(np.abs(expected - actual)))


def train_bundle(
    item_ids: list[str],
    sessions: Sequence[Sequence[int]],
    popularity: np.ndarray,
    out_root: Path,
    *,
    cfg: TrainConfig,
    version: str | None = None,
    metadata: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    evaluate: Callable[[SessionRanker], dict[str, float]] | None = None,
    token_queries: tuple[Sequence[Sequence[int]], np.ndarray] | None = None,
) -> Path:
    """Train, export, verify parity, index and write a bundle under ``out_root``; return its
    path. ``metadata`` should describe the training data (source, date range); the bundle
    also records the train config, item/session/pair counts, training time, parity and
    ``metrics`` (e.g. offline HR@20 measured by the caller); ``evaluate``, if given, is called
    with the trained model and its result is added to the metrics. ``token_queries``
    (token-id searches and the item index each led to) fit the bundle's token encoder."""
    started = time.perf_counter()
    model = train_ranker(sessions, len(item_ids), cfg)
    train_seconds = time.perf_counter() - started
    metrics = {**(metrics or {}), **(evaluate(model) if evaluate else {})}
    embeddings = model.item_embeddings().numpy().astype(np.float32)
    meta: dict[str, Any] = dict(metadata or {})
    meta.update(
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        train_config=asdict(cfg),
        n_train_items=len(item_ids),
        n_train_sessions=len(sessions),
        n_train_pairs=sum(max(len(s) - 1, 0) for s in sessions),
        train_seconds=round(train_seconds, 2),
        half_life_ms=cfg.half_life_ms,
        blend={"neural": 1.0, "covisit": DEFAULT_COVISIT_BLEND},
        event_weights=dict(cfg.event_weights),
        metrics=dict(metrics or {}),
        torch_version=torch.__version__,
        onnx_opset=OPSET,
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(
            model, Path(tmp) / "model.onnx", max_recent=cfg.max_recent, dim=cfg.dim
        )
        parity = check_parity(model, onnx_path, seed=cfg.seed)
        if parity > PARITY_TOLERANCE:
            raise ModelError(f"ONNX export disagrees with torch: max abs diff {parity:.3g}")
        meta["onnx_parity_max_abs_diff"] = parity
        return write_bundle(
            Path(out_root),
            onnx_path=onnx_path,
            item_ids=list(item_ids),
            embeddings=embeddings,
            popularity=popularity,
            max_recent=cfg.max_recent,
            metadata=meta,
            version=version,
            retriever=Retriever.build(embeddings),
            covisit=build_covisitation(sessions, len(item_ids)),
            sequential=build_covisitation(
                sessions, len(item_ids), window=SEQUENTIAL_WINDOW, back_weight=0.0
            ),
            session_index=SessionIndex.build(sessions, len(item_ids)),
            token_encoder=(
                TokenEncoder.fit(token_queries[0], token_queries[1], l2_normalise(embeddings))
                if token_queries is not None and len(token_queries[1])
                else None
            ),
            weights=weights_of(model),
        )


def weights_of(model: SessionRanker) -> dict[str, np.ndarray]:
    """The model's parameters as plain arrays (what a bundle's weights.npz holds)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def load_ranker(path: Path) -> SessionRanker:
    """The torch ranker a bundle was exported from, rebuilt from its weights.npz (read with
    ``allow_pickle=False``: nothing on this path can run code). Raises ModelError for a
    bundle without weights (written before they were shipped: retrain it)."""
    bundle = Bundle.load(path)
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise ModelError(f"{path}: no {WEIGHTS_FILE}; retrain it (streamrec train) to fine-tune it")
    cfg = bundle.metadata.get("train_config") or {}
    model = SessionRanker(
        bundle.n_items, bundle.dim, bundle.max_recent, float(cfg.get("dropout", 0.5))
    )
    with np.load(file, allow_pickle=False) as data:
        state = {name: torch.from_numpy(data[name].copy()) for name in data.files}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: {WEIGHTS_FILE} does not fit the bundle: {exc}") from exc
    return model.eval()


# Metadata write_bundle sets itself, and what describes one training run only.
_OWN_META = ("format_version", "version", "dim", "max_recent", "n_items", "space", "space_id",
             "created_at", "derived_from", "onnx_parity_max_abs_diff", "metrics")  # fmt: skip


def write_fine_tuned(
    parent: Path, model: SessionRanker, *, metadata: dict[str, Any], version: str | None = None
) -> Path:
    """A new version beside ``parent`` serving ``model``, a fine-tuned copy of the parent's
    ranker: new ONNX graph (parity-checked), item table, FAISS index and weights; the
    parent's catalogue, popularity, co-visitation, session index, token encoder and serving
    parameters (blend, half-life, event weights) carry over. Its embedding space is new:
    user vectors of the parent's space are re-encoded from recent items by serving
    (stream/pipeline.py ``build_arrays``). ``metadata`` is merged over the parent's and
    ``parent`` records where it came from."""
    base = Bundle.load(parent)
    if (model.n_items, model.dim, model.max_recent) != (base.n_items, base.dim, base.max_recent):
        raise ModelError("the fine-tuned model does not have its parent's shape")
    model = model.eval()
    embeddings = model.item_embeddings().numpy().astype(np.float32)
    meta = {k: v for k, v in base.metadata.items() if k not in _OWN_META}
    meta.update(metadata, parent=base.version, torch_version=torch.__version__)
    has_covisit = base.covisit_neighbours.shape[1] > 0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(
            model, Path(tmp) / "model.onnx", max_recent=base.max_recent, dim=base.dim
        )
        parity = check_parity(model, onnx_path, seed=0)
        if parity > PARITY_TOLERANCE:
            raise ModelError(f"ONNX export disagrees with torch: max abs diff {parity:.3g}")
        meta["onnx_parity_max_abs_diff"] = parity
        return write_bundle(
            Path(parent).parent,
            onnx_path=onnx_path,
            item_ids=list(base.item_ids),
            embeddings=embeddings,
            popularity=base.popularity,
            max_recent=base.max_recent,
            metadata=meta,
            version=version,
            retriever=Retriever.build(embeddings),
            covisit=(base.covisit_neighbours, base.covisit_weights) if has_covisit else None,
            sequential=(base.sequential_neighbours, base.sequential_weights),
            session_index=base.session_index,
            token_encoder=base.token_encoder,
            weights=weights_of(model),
        )
