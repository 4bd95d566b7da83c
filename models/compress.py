"""Compressed variants of a bundle's scorer: fp16, int8 (dynamic and static) and a distilled
smaller re-ranker, each written as a new bundle version derived from its parent.

Training-side (``streamrec models compress``): needs ``onnx`` and ``onnxruntime.quantization``
(the ``train`` extra), and torch for the student only (``models/distill.py``, imported when a
student is asked for). Serving is unchanged: a variant is an ordinary bundle whose
``model.onnx`` differs, so the worker serves it once it is promoted (``streamrec models
promote V``) or pinned in an A/B arm (``STREAMREC_AB_ARMS``).

What a variant keeps from its parent: item ids, ``embeddings.npy`` (so the embedding
``space`` / ``space_id``, and with them the user vectors in Redis, stay valid), the FAISS
index, popularity, co-visitation, session kNN, token encoder and every serving parameter in
the metadata (blend weights, half-life, event weights). Only ``model.onnx`` is replaced; the
metadata gains ``variant``, ``variant_of`` (the parent's version), ``derived_from`` (so that
``streamrec models list`` shows the parent) and ``compression`` (what was done, the model's
size and its largest score difference from the parent on real or seeded batches); the
parent's measured quality (``metrics``, ``blend_tuning``) moves to
``compression.parent_metrics``, since it was not measured on the variant; the manifest is
recomputed. The student replaces ``weights.npz`` by nothing: those are the
parent's torch weights, which do not describe the student (online fine-tuning of a student
is not supported; fine-tune the parent). Quantised variants keep it: it is the fp32 model
they were quantised from, which is what fine-tuning should start from.

Why each variant, and what to expect on CPU (numbers: bench/compression.py):

- ``fp16``: weights and activations in float16 (onnxruntime.transformers.float16), inputs
  and output kept float32 (``keep_io_types``) so ``models.scoring.Scorer`` feeds it unchanged.
  Halves the file. ONNX Runtime's CPU provider has few fp16 kernels and inserts casts back to
  fp32 around the others, so expect no CPU speed-up; fp16 pays on CUDA.
- ``int8-dynamic``: ``quantize_dynamic``: int8 weights, activations quantised per call
  (MatMulInteger for the query layer; the item tables become int8 + DequantizeLinear). The
  GRU stays fp32 (ONNX Runtime has no dynamic int8 GRU).
- ``int8-static``: ``quantize_static`` (QDQ) with activation ranges calibrated on real
  batches of the training sessions: ``recent`` as serving packs it, ``user_vec`` the sum of the
  prefix's embeddings (as training builds it) and candidates retrieved as serving retrieves
  them (FAISS on ``0.7 * newest item + 0.3 * long-term vector``).
- ``student``: a smaller GRU over a shorter window trained on the parent's scores
  (``models/distill.py``), the parent's item table and biases frozen inside it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import orjson

from models.bundle import (
    _VERSION_RE,
    MANIFEST_FILE,
    METADATA_FILE,
    MODEL_DATA_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    Bundle,
    ModelError,
    new_version,
    sha256_file,
    verify_bundle,
)
from models.retrieval import Retriever, l2_normalise
from models.scoring import Scorer, pack_recent
from topics.events import UserEvent

Variant = Literal["fp16", "int8-dynamic", "int8-static", "student"]
VARIANTS: tuple[Variant, ...] = ("fp16", "int8-dynamic", "int8-static", "student")
QUANTISED = ("fp16", "int8-dynamic", "int8-static")
NEEDS_SESSIONS = ("int8-static", "student")
# Serving's retrieval query (stream/pipeline.py): newest item and long-term vector mixed so.
QUERY_NEWEST_WEIGHT = 0.7
# Metadata that measured the parent's model: kept, but not as the variant's own.
PARENT_MEASURED = ("metrics", "blend_tuning")
_JSON_OPTS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


class CompressionError(ModelError):
    """A variant that cannot be made: unknown kind, missing data, or a parent that is
    already a compressed variant."""


@dataclass(frozen=True, slots=True)
class Examples:
    """Scoring inputs built from real sessions, the rows of one ``Scorer.score`` call each:

    recent:     int64[P, R]   the prefix, chronological, left-padded (``pack_recent``)
    user_vec:   float32[P, D] sum of the prefix's item embeddings (what training feeds)
    candidates: int64[P, C]   retrieved neighbours of the serving query, then
                              popularity-sampled items (never 0, no duplicates needed)
    """

    recent: np.ndarray
    user_vec: np.ndarray
    candidates: np.ndarray

    def __len__(self) -> int:
        return int(self.recent.shape[0])

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds (graph input name -> array) of at most ``size`` rows, in order."""
        for lo in range(0, len(self), size):
            yield {
                "recent": self.recent[lo : lo + size],
                "user_vec": self.user_vec[lo : lo + size],
                "candidates": self.candidates[lo : lo + size],
            }


def sessions_of(events: Sequence[UserEvent], item_ids: Sequence[str]) -> list[list[int]]:
    """Item-index sessions (1..N, time order) of ``events`` over a bundle's catalogue.

    The minimum of ``models.training.build_sessions(vocabulary=...)`` without torch: item
    events grouped by session, sorted by time (stable), items the catalogue does not know
    dropped, sessions with fewer than 2 known items dropped (they hold no prefix -> next pair).
    """
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    grouped: dict[str, list[tuple[int, int, int]]] = {}
    for pos, e in enumerate(events):
        if e.item_id is not None and e.item_id in index:
            grouped.setdefault(e.session_id, []).append((e.timestamp_ms, pos, index[e.item_id]))
    out = [[i for _, _, i in sorted(evs)] for evs in grouped.values()]
    return [s for s in out if len(s) >= 2]


def session_examples(
    sessions: Sequence[Sequence[int]],
    embeddings: np.ndarray,
    retriever: Retriever,
    popularity: np.ndarray,
    *,
    max_recent: int,
    n_near: int = 64,
    n_random: int = 36,
    max_examples: int | None = None,
    seed: int = 0,
) -> Examples:
    """Every prefix of every session (``s[:t]`` for t >= 1; a random ``max_examples`` of them
    when given) as a scoring row with ``n_near + n_random`` candidates.

    ``embeddings`` is the bundle's ``float32[N + 1, D]``, ``popularity`` ``float[N + 1]``.
    Near candidates are what the worker's FAISS stage returns for that row; random ones are
    drawn by popularity, so the rows also hold the easy negatives the other candidate sources
    bring. Deterministic for a given ``seed``.
    """
    prefixes = [list(s[:t]) for s in sessions for t in range(1, len(s))]
    if not prefixes:
        raise CompressionError("no prefix -> next pairs in the sessions (need length >= 2)")
    rng = np.random.default_rng(seed)
    if max_examples is not None and len(prefixes) > max_examples:
        keep = np.sort(rng.choice(len(prefixes), max_examples, replace=False))
        prefixes = [prefixes[i] for i in keep]
    emb = np.asarray(embeddings, dtype=np.float32)
    n_items = emb.shape[0] - 1
    recent = pack_recent([p[::-1] for p in prefixes], max_recent)
    user_vec = np.stack([emb[p].sum(axis=0) for p in prefixes]).astype(np.float32)
    newest = emb[[p[-1] for p in prefixes]]
    query = QUERY_NEWEST_WEIGHT * l2_normalise(newest)
    query += (1.0 - QUERY_NEWEST_WEIGHT) * l2_normalise(user_vec)
    n_near = min(n_near, n_items)
    _, near = retriever.search(query, n_near)
    pop = np.asarray(popularity, dtype=np.float64)[1:].clip(min=0) + 1e-9
    rand = 1 + rng.choice(n_items, size=(len(prefixes), n_random), p=pop / pop.sum())
    candidates = np.concatenate([near, rand], axis=1).astype(np.int64)
    candidates[candidates == 0] = 1  # k > N only: padding is never a real candidate
    return Examples(recent, user_vec, np.ascontiguousarray(candidates))


def random_examples(bundle: Bundle, *, rows: int = 256, n_candidates: int = 100, seed: int = 0
                    ) -> Examples:  # fmt: skip
    """Seeded stand-in for ``session_examples`` when no sessions are given: random recent
    items (varying left padding), ``user_vec`` their embedding sum, random candidates."""
    rng = np.random.default_rng(seed)
    n, r = bundle.n_items, bundle.max_recent
    recent = rng.integers(1, n + 1, size=(rows, r), dtype=np.int64)
    recent[np.arange(r)[None, :] < rng.integers(0, r, size=rows)[:, None]] = 0
    user_vec = bundle.embeddings[recent].sum(axis=1).astype(np.float32)
    candidates = rng.integers(1, n + 1, size=(rows, n_candidates), dtype=np.int64)
    return Examples(recent, user_vec, candidates)


def score_all(scorer: Scorer, examples: Examples, batch: int = 256) -> np.ndarray:
    """``float32[P, C]`` scores of every example row, ``batch`` rows per call."""
    return np.concatenate([scorer.score(**f) for f in examples.batches(batch)], axis=0)


def model_bytes(onnx_path: Path) -> int:
    """Bytes of a graph with its external weights, if it has them."""
    data = Path(onnx_path).parent / MODEL_DATA_FILE
    return Path(onnx_path).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def max_abs_diff(a: Path, b: Path, examples: Examples) -> float:
    """Largest absolute score difference between two scorers on ``examples``."""
    return float(np.max(np.abs(score_all(Scorer(a, device="cpu"), examples)
                               - score_all(Scorer(b, device="cpu"), examples))))  # fmt: skip


# ------------------------------------------------------------------------- the ONNX variants


def convert_fp16(src: Path, dst: Path) -> Path:
    """``src`` with float16 weights and activations, float32 inputs and output."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return Path(dst)


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs a WARNING per call on the root logger ("consider
    pre-processing"; shape inference is what it means, and these graphs have their shapes)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8_dynamic(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation: int8 weights (per tensor), activations quantised at run
    time. ``QUInt8`` weights: on AVX2 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels can
    saturate, and measured on the DIGINETICA ranker s8 weights gave 4x the score error."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
    return Path(dst)


class _CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader``: the examples' feeds in batches."""

    def __init__(self, examples: Examples, batch: int) -> None:
        self._feeds = iter(list(examples.batches(batch)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


# Ops quantize_static may touch. Not the element-wise ones: quantising the user vector's
# squared norm (range 0..max over users) to 8 bits rounds small norms to 0, and the division
# by sqrt(0 + eps) then blows scores up (max |diff| 9.4 on logits of std 5.4, measured on
# the DIGINETICA ranker, against 0.9 with these two ops; per-channel weights: 1.4).
STATIC_OPS = ("Gemm", "Gather")


def quantize_int8_static(src: Path, dst: Path, examples: Examples, *, batch: int = 64) -> Path:
    """Static int8 quantisation (QDQ, per-tensor, min-max ranges) of the ``STATIC_OPS``,
    calibrated on ``examples`` (real batches of the training sessions, ``session_examples``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader = cast(CalibrationDataReader, _CalibrationReader(examples, batch))
    with _quiet():  # the calibrator's augmented model goes to a temporary directory of its own
        quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(STATIC_OPS),
        )
    return Path(dst)


# ------------------------------------------------------------------------ writing a variant


def write_variant(
    parent: Path,
    onnx_path: Path,
    variant: Variant,
    *,
    compression: dict[str, Any] | None = None,
    version: str | None = None,
    drop: Sequence[str] = (),
    updates: dict[str, Any] | None = None,
) -> Path:
    """A new version beside ``parent``: its files with ``model.onnx`` replaced by
    ``onnx_path`` and the files in ``drop`` left out; metadata gains ``variant``,
    ``variant_of``, ``derived_from``, ``compression`` and ``updates``; the manifest is
    recomputed. The parent's measured quality (``PARENT_MEASURED``) moves under
    ``compression.parent_metrics``: it was measured on the parent's graph, and ``models
    list`` must not show it as the variant's.

    Written into a hidden temporary directory and renamed into place (as
    ``models.bundle.derive_bundle`` does), so no reader sees half a variant. The new graph
    must take the parent's inputs with the parent's R and D, or nothing is written.
    """
    parent = Path(parent)
    verify_bundle(parent)
    version = version or new_version()
    if not _VERSION_RE.match(version):
        raise ModelError(f"invalid bundle version name {version!r}")
    final = parent.parent / version
    if final.exists():
        raise ModelError(f"bundle {final} already exists")
    new, old = Scorer(onnx_path, device="cpu"), Scorer(parent / MODEL_FILE, device="cpu")
    if (new.max_recent, new.dim) != (old.max_recent, old.dim):
        raise CompressionError(
            f"variant graph has R={new.max_recent}, D={new.dim}; parent R={old.max_recent}, "
            f"D={old.dim}"
        )
    tmp = parent.parent / f".tmp-{version}-{secrets.token_hex(4)}"
    shutil.copytree(parent, tmp)
    try:
        shutil.copyfile(onnx_path, tmp / MODEL_FILE)
        # The new graph's external weights replace the parent's; a graph saved with its
        # weights inline must not keep the parent's file (nor list it in the manifest).
        data = Path(onnx_path).parent / MODEL_DATA_FILE
        if data.is_file():
            shutil.copyfile(data, tmp / MODEL_DATA_FILE)
        else:
            drop = [*drop, MODEL_DATA_FILE]
        for name in drop:
            (tmp / name).unlink(missing_ok=True)
        meta = orjson.loads((tmp / METADATA_FILE).read_bytes())
        measured = {k: meta.pop(k) for k in PARENT_MEASURED if k in meta}
        compression = {**(compression or {}), **({"parent_metrics": measured} if measured else {})}
        meta.update(updates or {})
        meta.update(
            version=version,
            variant=variant,
            variant_of=parent.name,
            derived_from=parent.name,
            compression=compression,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        (tmp / METADATA_FILE).write_bytes(orjson.dumps(meta, option=_JSON_OPTS))
        manifest = orjson.loads((tmp / MANIFEST_FILE).read_bytes())
        files = {k: v for k, v in manifest["files"].items() if k not in drop}
        for name in (MODEL_FILE, METADATA_FILE, MODEL_DATA_FILE):
            if (tmp / name).is_file():
                files[name] = {"sha256": sha256_file(tmp / name),
                               "bytes": (tmp / name).stat().st_size}  # fmt: skip
        manifest.update(version=version, files=files)
        (tmp / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=_JSON_OPTS))
        verify_bundle(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def compress_bundle(
    parent: Path,
    variant: str,
    *,
    sessions: Sequence[Sequence[int]] | None = None,
    version: str | None = None,
    student: Any = None,
    calibration_examples: int = 2048,
    seed: int = 0,
) -> Path:
    """Make the ``variant`` of the bundle at ``parent`` and write it beside it; return its path.

    ``sessions`` (item-index sessions of the parent's training data, ``sessions_of``) are
    required by ``int8-static`` (calibration) and ``student`` (distillation); fp16 and
    ``int8-dynamic`` are checked on them when given, on seeded random batches otherwise.
    ``student`` is a ``models.distill.DistillConfig`` (defaults when None).
    """
    if variant not in VARIANTS:
        raise CompressionError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    parent = Path(parent)
    bundle = Bundle.load(parent)
    kind = bundle.metadata.get("variant")
    if kind in QUANTISED or (kind is not None and variant == "student"):
        raise CompressionError(
            f"{bundle.version} is already a {kind} variant (of {bundle.metadata.get('variant_of')})"
            "; compress the full-precision model instead"
        )
    if variant in NEEDS_SESSIONS and not sessions:
        raise CompressionError(f"{variant} needs the training sessions (calibration/teacher)")
    if sessions:  # calibration rows, and another draw of rows to check the variant on
        retriever = Retriever.load(bundle.index_path)
        examples, check = (
            session_examples(
                sessions, bundle.embeddings, retriever, bundle.popularity,
                max_recent=bundle.max_recent, max_examples=calibration_examples, seed=s,
            )
            for s in (seed, seed + 1)
        )  # fmt: skip
        checked_on = f"{len(check)} prefixes of the training sessions"
    else:
        examples = check = random_examples(bundle, seed=seed)
        checked_on = f"{len(check)} seeded random rows"
    info: dict[str, Any] = {"method": variant}
    drop: list[str] = []
    updates: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / MODEL_FILE
        if variant == "fp16":
            convert_fp16(bundle.onnx_path, out)
            info["method"] = "onnxruntime.transformers.float16, keep_io_types"
        elif variant == "int8-dynamic":
            quantize_int8_dynamic(bundle.onnx_path, out)
            info["method"] = "onnxruntime.quantization.quantize_dynamic, QUInt8 weights"
        elif variant == "int8-static":
            quantize_int8_static(bundle.onnx_path, out, examples)
            info["method"] = "onnxruntime.quantization.quantize_static, QDQ, MinMax"
            info["calibration_rows"] = len(examples)
        else:
            from models.distill import DistillConfig, distill_student

            cfg = student if student is not None else DistillConfig(seed=seed)
            report = distill_student(bundle, sessions or [], out, cfg)
            info.update(method="distilled student (models/distill.py)", config=asdict(cfg),
                        **report)  # fmt: skip
            drop.append(WEIGHTS_FILE)
            updates["onnx_parity_max_abs_diff"] = report["onnx_parity_max_abs_diff"]
        info["model_bytes"] = model_bytes(out)
        info["parent_model_bytes"] = model_bytes(bundle.onnx_path)
        info["max_abs_diff_vs_parent"] = max_abs_diff(bundle.onnx_path, out, check)
        info["checked_on"] = checked_on
        return write_variant(
            parent, out, cast(Variant, variant), compression=info, version=version, drop=drop,
            updates=updates,
        )  # fmt: skip


__all__ = [
    "VARIANTS",
    "CompressionError",
    "Examples",
    "compress_bundle",
    "convert_fp16",
    "quantize_int8_dynamic",
    "quantize_int8_static",
    "session_examples",
    "sessions_of",
    "write_variant",
]
