"""Text encoder throughput: MiniLM (models/text_encoder.py) on real titles and search terms,
batched (64 and 256 texts per ``encode``) vs one text per call.

In process, CPU, one ONNX intra-op thread as the worker loads it (``--threads`` to change).
Texts: distinct product titles and distinct customer search terms of the Home Depot search
relevance data (shared/datasets/homedepot-search-relevance/train.csv.gz, read as latin-1),
a random sample of each. The modes are interleaved chunk by chunk (a chunk of the largest
batch size is encoded batched at every size, then one text at a time), so drift of the
machine hits all modes alike.

Printed per kind of text: texts/s and per-text cost in every mode and the RATIO batched /
one-at-a-time measured in this run; p50/p99 latency of one call; where a call spends its time
(tokenising, ONNX run, pooling) and how much of the padded batch is padding; and the largest
difference between a text's batched and single vector. One more mode takes the largest batch
but runs it as length-sorted runs of the smallest size (what ``encode`` does past
``max_batch``): padding grows with the longest text of a run, so sorting trades calls for it.

Usage: python bench/encoder.py [--texts 2048] [--sizes 64,256] [--threads 1]
Never a test: timings are not assertions.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    ROOT,
    background_note,
    git_commit,
    machine,
    machine_busy_seconds,
    percentiles,
    summary,
)

from models.text_encoder import OUTPUT_NAME, MiniLMEncoder, mean_pool_normalise

DATA = Path(
    os.environ.get(
        "STREAMREC_HOMEDEPOT_CSV",
        str(ROOT.parent / "shared/datasets/homedepot-search-relevance/train.csv.gz"),
    )
)
KINDS = (("titles", "product_title"), ("queries", "search_term"))


def load_texts(path: Path) -> dict[str, list[str]]:
    """Distinct values of each text column, in file order. The file is not valid UTF-8
    (its README): latin-1 decodes every byte, keeping the mojibake as it is."""
    with gzip.open(path, "rb") as fh:
        reader = csv.DictReader(io.TextIOWrapper(fh, encoding="latin-1", newline=""))
        seen: dict[str, dict[str, None]] = {column: {} for _, column in KINDS}
        for row in reader:
            for column, values in seen.items():
                values.setdefault(row[column], None)
    return {kind: list(seen[column]) for kind, column in KINDS}


@dataclass
class Mode:
    """Timings of one way of calling the encoder: ``size`` texts per call (1 = one at a time);
    with ``runs_of``, each call is split into length-sorted ONNX runs of that many texts, as
    ``MiniLMEncoder.encode`` does past ``max_batch``."""

    size: int
    runs_of: int | None = None
    call_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, float] = field(
        default_factory=lambda: {"tokenise": 0.0, "onnx": 0.0, "pool": 0.0}
    )
    texts: int = 0
    tokens: int = 0  # real tokens
    padded: int = 0  # tokens the model ran over, padding included

    @property
    def label(self) -> str:
        if self.runs_of is not None:
            return f"{self.size} as sorted runs of {self.runs_of}"
        return "one at a time" if self.size == 1 else f"batch of {self.size}"

    def run(self, encoder: MiniLMEncoder, texts: list[str]) -> np.ndarray:
        """``float32[len(texts), 384]``: what ``encoder.encode(texts)`` returns, timed."""
        t0 = time.perf_counter()
        if self.runs_of is None:
            out = self._one_run(encoder, texts)
        else:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.empty((len(texts), encoder.dim), dtype=np.float32)
            for start in range(0, len(texts), self.runs_of):
                rows = order[start : start + self.runs_of]
                out[rows] = self._one_run(encoder, [texts[i] for i in rows])
        self.call_ms.append((time.perf_counter() - t0) * 1000)
        self.texts += len(texts)
        return out

    def _one_run(self, encoder: MiniLMEncoder, texts: list[str]) -> np.ndarray:
        """One ONNX run, its three stages (tokenise, run, pool) timed separately."""
        t0 = time.perf_counter()
        feeds = encoder.tokenize(texts)
        t1 = time.perf_counter()
        (hidden,) = encoder.session.run([OUTPUT_NAME], feeds)
        t2 = time.perf_counter()
        out = mean_pool_normalise(np.asarray(hidden), feeds["attention_mask"])
        t3 = time.perf_counter()
        for stage, s in zip(self.stage_ms, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.stage_ms[stage] += s * 1000
        self.tokens += int(feeds["attention_mask"].sum())
        self.padded += int(feeds["attention_mask"].size)
        return out

    @property
    def per_text_ms(self) -> float:
        return sum(self.call_ms) / max(1, self.texts)

    @property
    def per_second(self) -> float:
        return 1000 / max(self.per_text_ms, 1e-12)


def bench_kind(
    encoder: MiniLMEncoder, texts: list[str], sizes: list[int]
) -> tuple[list[Mode], float]:
    """All modes over ``texts``, interleaved per chunk of ``max(sizes)``; returns the modes
    (batched sizes first, one-at-a-time last) and the largest |batched - single| element."""
    chunk = max(sizes)
    batched = [Mode(size) for size in sizes]
    if len(sizes) > 1:
        batched.append(Mode(chunk, runs_of=min(sizes)))
    single = Mode(1)
    max_diff = 0.0
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        vectors = {}
        for mode in batched:
            vectors[mode.label] = np.concatenate(
                [mode.run(encoder, part[i : i + mode.size]) for i in range(0, len(part), mode.size)]
            )
        ones = np.concatenate([single.run(encoder, [text]) for text in part])
        for v in vectors.values():
            max_diff = max(max_diff, float(np.abs(v - ones).max()))
    return [*batched, single], max_diff


def report_kind(kind: str, modes: list[Mode], max_diff: float) -> list[str]:
    single = modes[-1]
    lines = [
        f"{kind}: {single.texts} texts, {single.tokens / single.texts:.1f} tokens/text "
        "with [CLS] and [SEP]",
        "  mode                       texts/s   ms/text   call p50 ms   call p99 ms   padding   "
        "tokenise / onnx / pool (ms/text)",
    ]
    for mode in modes:
        p50, p99 = percentiles(mode.call_ms)
        stages = " / ".join(f"{ms / mode.texts:.3f}" for ms in mode.stage_ms.values())
        lines.append(
            f"  {mode.label:<26}{mode.per_second:9.0f}   {mode.per_text_ms:7.3f}   {p50:11.2f}"
            f"   {p99:11.2f}   {100 * (1 - mode.tokens / mode.padded):6.0f}%   {stages}"
        )
    for mode in modes[:-1]:
        lines.append(
            f"  RATIO {kind}/s {mode.label} / one at a time = "
            f"{mode.per_second / single.per_second:.1f}x"
        )
        summary("encoder", f"{kind} {mode.label} / one at a time, texts/s",
                mode.per_second / single.per_second, "x")  # fmt: skip
    summary("encoder", f"{kind} ms/text, {modes[0].label}", modes[0].per_text_ms, "ms")
    lines.append(f"  largest |batched - single| vector element: {max_diff:.2e}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--texts", type=int, default=2048, help="texts of each kind (sampled)")
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[64, 256],
        help="batch sizes (comma-separated)",
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="execution provider (cuda needs the gpu extra and a GPU)")  # fmt: skip
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if not args.data.exists():
        print(f"no data at {args.data} (set STREAMREC_HOMEDEPOT_CSV)", file=sys.stderr)
        return 2
    corpus = load_texts(args.data)
    rng = np.random.default_rng(args.seed)
    sample = {
        kind: [values[i] for i in rng.permutation(len(values))[: args.texts]]
        for kind, values in corpus.items()
    }
    encoder = MiniLMEncoder(
        device=args.device, intra_op_threads=args.threads, max_batch=max(args.sizes)
    )
    for size in (1, *args.sizes):  # memory planning for each shape class before timing
        for _ in range(3):
            encoder.encode(sample["queries"][:size])
            encoder.encode(sample["titles"][:size])
    # Mode.run re-does encode's steps to time them: check it computes the same vectors.
    probe = sample["titles"][: max(args.sizes)]
    assert np.array_equal(Mode(len(probe)).run(encoder, probe), encoder.encode(probe))

    cpu0, busy0 = time.process_time(), machine_busy_seconds()
    t_start = time.perf_counter()
    results = {kind: bench_kind(encoder, texts, args.sizes) for kind, texts in sample.items()}
    wall_s = time.perf_counter() - t_start
    ours = time.process_time() - cpu0
    other = max(0.0, machine_busy_seconds() - busy0 - ours)

    lines = [
        "streamrec text encoder benchmark (bench/encoder.py)",
        f"  machine      {machine()}",
        f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"  command      {' '.join(sys.argv)}",
        f"  encoder      {encoder.name}, {encoder.dim} dims, {encoder.provider}, "
        f"{args.threads} ONNX intra-op thread(s), longest-in-batch padding, "
        f"truncation at {encoder.max_length} tokens",
        f"  texts        {args.data.name}: {len(corpus['titles'])} distinct product titles, "
        f"{len(corpus['queries'])} distinct search terms; {args.texts} of each sampled "
        f"(seed {args.seed})",
        f"  wall         {wall_s:.1f} s, modes interleaved per {max(args.sizes)}-text chunk; "
        f"this process used {ours:.1f} CPU s",
        f"  background   {background_note(other, wall_s)}",
        "",
    ]
    for kind, (modes, max_diff) in results.items():
        lines += [*report_kind(kind, modes, max_diff), ""]
    print("\n".join(lines).rstrip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
