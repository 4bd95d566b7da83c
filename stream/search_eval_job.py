"""``streamrec evaluate-search``: BM25 vs the text encoder vs a hybrid, on Home Depot queries.

Loads the graded (query, product) pairs (``models.search_eval.load_search_csv``), splits
the queries by a seeded hash into validation (20 %) and test, picks the hybrid's fusion
method and alpha on validation by NDCG@10, and reports NDCG@10 and MRR of the best-graded
product on the test queries, ranking among the whole title catalogue and among each
query's graded set. Writes ``report.md`` and ``results.json`` (and ``search-quality.png``
when matplotlib is installed) to the report folder.

Title and query embeddings are cached as ``.npy`` under ``~/.cache/streamrec/search-embeddings``
keyed by (encoder name, sha256 of the texts): the first run embeds ~55k titles (minutes on
a CPU), a rerun loads them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.search_eval import (
    BM25,
    RERANK,
    SETTINGS,
    K,
    PerQuery,
    SearchData,
    TextEncoder,
    cached_encode,
    choose_fusion,
    evaluate_queries,
    fusion_grid,
    informative,
    load_search_csv,
    paired_bootstrap,
    split_queries,
)
from topics.loaders import datasets_root

DATASET = "homedepot-search-relevance"
DEFAULT_CACHE = Path.home() / ".cache" / "streamrec" / "search-embeddings"
RANDOM = "random order"
VALID_FRAC = 0.2
DEPTH = 100  # each method's top-N whose scores set the hybrid's normalisation (catalogue)


def resolve_data(path: str | Path | None) -> Path:
    """The CSV: ``path`` (a file, or a folder holding ``train.csv.gz``), else the dataset."""
    p = Path(path) if path else datasets_root() / DATASET
    return p / "train.csv.gz" if p.is_dir() else p


def _encode_all(
    encoder: TextEncoder,
    texts: list[str],
    cache_dir: Path | None,
    log: Callable[[str], None],
    what: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    emb, seconds, hit = cached_encode(encoder, texts, cache_dir, progress=what)
    info: dict[str, Any] = {"n": len(texts), "seconds": seconds, "cached": hit}
    if hit:
        log(f"{what}: {len(texts)} embeddings loaded from the cache ({cache_dir})")
    else:
        info["per_second"] = len(texts) / max(seconds, 1e-9)
        log(f"{what}: embedded {len(texts)} in {seconds:.1f} s ({info['per_second']:.0f}/s)")
    return emb, info


def _means(res: PerQuery, methods: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for m in methods:
        ndcg, mrr = res.mean(m)
        out[m] = {f"NDCG@{K}": ndcg, "MRR": mrr}
    return out


def run_search_eval(
    data_path: str | Path | None,
    report_dir: str | Path,
    *,
    limit_queries: int | None = None,
    encoder: TextEncoder | None = None,
    cache_dir: Path | None = DEFAULT_CACHE,
    seed: int = 0,
    valid_frac: float = VALID_FRAC,
    bm25_params: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole evaluation; returns the JSON-able results (also written to disk).

    ``encoder``: None builds ``models.text_encoder.MiniLMEncoder`` (CPU threads = cores);
    tests pass a stand-in. ``limit_queries``: evaluate a seeded random sample of that many
    queries (the catalogue stays whole). ``bm25_params``: ``BM25`` keyword arguments.
    """
    t_start = time.perf_counter()
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    timings: dict[str, Any] = {}

    path = resolve_data(data_path)
    t0 = time.perf_counter()
    data = load_search_csv(path)
    timings["load_s"] = time.perf_counter() - t0
    log(f"{path}: {data.report.summary()}")

    n_q = len(data.queries)
    qids = np.arange(n_q, dtype=np.int64)
    if limit_queries is not None and limit_queries < n_q:
        rng = np.random.default_rng(seed)
        qids = np.sort(rng.choice(n_q, size=limit_queries, replace=False))
    is_valid = split_queries(data.queries, valid_frac, seed)

    t0 = time.perf_counter()
    bm25 = BM25(data.titles, **(bm25_params or {}))
    timings["bm25_index_s"] = time.perf_counter() - t0
    log(f"BM25 index: {len(bm25.vocab)} terms x {bm25.n_docs} titles")

    if encoder is None:
        from models.text_encoder import MiniLMEncoder

        encoder = MiniLMEncoder(device="cpu", intra_op_threads=os.cpu_count() or 1)
    title_emb, timings["embed_titles"] = _encode_all(encoder, data.titles, cache_dir, log, "titles")
    query_emb = np.zeros((n_q, encoder.dim), dtype=np.float32)
    query_emb[qids], timings["embed_queries"] = _encode_all(
        encoder, [data.queries[int(q)] for q in qids], cache_dir, log, "queries"
    )

    grid = fusion_grid(depth=DEPTH)
    random_scores = {RANDOM: np.random.default_rng(seed).random(len(data.titles))}
    settings: dict[str, Any] = {}
    for setting in SETTINGS:
        usable = informative(data, setting)[qids]
        valid_ids = qids[usable & is_valid[qids]]
        test_ids = qids[usable & ~is_valid[qids]]
        log(f"{setting}: {len(valid_ids)} validation / {len(test_ids)} test queries")
        if not len(valid_ids) or not len(test_ids):
            raise ValueError(f"{setting}: no validation or test queries; raise --limit-queries")
        t0 = time.perf_counter()
        val = evaluate_queries(
            data,
            valid_ids,
            bm25=bm25,
            query_emb=query_emb,
            title_emb=title_emb,
            fusions=grid,
            setting=setting,
        )
        timings[f"validation_{setting}_s"] = time.perf_counter() - t0
        chosen = choose_fusion(val, grid)
        per_how = {
            how: choose_fusion(val, [f for f in grid if f.how == how])
            for how in dict.fromkeys(f.how for f in grid)
        }
        others = [f for f in per_how.values() if f != chosen]
        t0 = time.perf_counter()
        extra = random_scores if setting == RERANK else None
        test = evaluate_queries(
            data,
            test_ids,
            bm25=bm25,
            query_emb=query_emb,
            title_emb=title_emb,
            fusions=[chosen, *others],
            setting=setting,
            extra=extra,
        )
        timings[f"test_{setting}_s"] = time.perf_counter() - t0
        main = ["bm25", "encoder", chosen.label]
        ci = {
            f"hybrid - {m}": dict(
                zip(
                    ("mean", "lo", "hi"),
                    paired_bootstrap(test.ndcg[chosen.label], test.ndcg[m], seed=seed),
                    strict=True,
                )
            )
            for m in ("bm25", "encoder")
        }
        settings[setting] = {
            "n_valid": len(valid_ids),
            "n_test": len(test_ids),
            "chosen": {"how": chosen.how, "alpha": chosen.alpha, "label": chosen.label},
            "test": _means(test, main),
            "test_context": _means(test, list(extra or {})),
            "test_other_fusions": _means(test, [f.label for f in others]),
            "ndcg_diff_ci95": ci,
            "validation": _means(val, ["bm25", "encoder", *(f.label for f in grid)]),
        }

    timings["total_s"] = time.perf_counter() - t_start
    results: dict[str, Any] = {
        "data": str(path),
        "load": {
            "rows": data.report.rows,
            "parsed": data.report.parsed,
            "bad_rows": data.report.bad_rows,
            "bad_reasons": data.report.bad_reasons,
            "title_conflicts": data.report.title_conflicts,
            "duplicate_pairs": data.report.duplicate_pairs,
        },
        "queries": n_q,
        "queries_evaluated": len(qids),
        "catalogue": len(data.titles),
        "encoder": {"name": encoder.name, "dim": encoder.dim},
        "bm25": {"k1": bm25.k1, "b": bm25.b, "stem": bm25.stem, "terms": len(bm25.vocab)},
        "split": {"valid_frac": valid_frac, "seed": seed, "by": "sha256 of the query text"},
        "fusion_depth": DEPTH,
        "gain": "2 ** (grade - 1) - 1",
        "settings": settings,
        "timings": timings,
    }
    (report / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (report / "report.md").write_text(render_report(results, data))
    try:
        _plot(results, report / "search-quality.png")
    except ImportError:
        log("matplotlib not installed: no plot")
    log(render_table(results))
    return results


def render_table(results: dict[str, Any]) -> str:
    """The test-query table: one row per (setting, method)."""
    lines = [
        f"| setting | method | NDCG@{K} | MRR | test queries |",
        "|---|---|---:|---:|---:|",
    ]
    for setting, block in results["settings"].items():
        rows = {**block["test"], **block["test_context"]}
        for method, m in rows.items():
            name = {"bm25": "BM25"}.get(method, method).replace("hybrid ", "hybrid: ")
            ndcg, mrr = m[f"NDCG@{K}"], m["MRR"]
            lines.append(f"| {setting} | {name} | {ndcg:.4f} | {mrr:.4f} | {block['n_test']} |")
    return "\n".join(lines)


def render_report(results: dict[str, Any], data: SearchData) -> str:
    """report.md: the table, the choices made on validation, timings and caveats."""
    t = results["timings"]
    emb = t["embed_titles"]
    emb_line = (
        f"loaded from the cache ({emb['n']} titles)"
        if emb["cached"]
        else f"{emb['seconds']:.1f} s for {emb['n']} titles ({emb['per_second']:.0f} titles/s)"
    )
    lines = [
        "# Search quality: BM25 vs text encoder vs hybrid (Home Depot)",
        "",
        f"Data: `{results['data']}`: {data.report.summary()}.",
        f"{results['queries']} queries ({results['queries_evaluated']} evaluated), "
        f"{results['catalogue']} titles. Encoder `{results['encoder']['name']}`; BM25 "
        f"k1={results['bm25']['k1']}, b={results['bm25']['b']}, "
        f"plural stemming {'on' if results['bm25']['stem'] else 'off'}.",
        "",
        "Test queries only (the hybrid's fusion method and alpha were chosen on the "
        f"validation queries, a {results['split']['valid_frac']:.0%} split by a seeded hash of "
        f"the query text). NDCG@{K} gain = {results['gain']} on the mean grade; MRR is the "
        "reciprocal rank of the best-graded product.",
        "",
        render_table(results),
        "",
    ]
    for setting, block in results["settings"].items():
        ch = block["chosen"]
        lines.append(
            f"- {setting}: chosen on {block['n_valid']} validation queries: {ch['how']} fusion, "
            f"alpha (encoder weight) {ch['alpha']:g}. Paired bootstrap 95 % interval of the "
            f"NDCG@{K} difference: "
            + "; ".join(
                f"{k} {v['mean']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]"
                for k, v in block["ndcg_diff_ci95"].items()
            )
            + "."
        )
        if block["test_other_fusions"]:
            lines.append(
                "  Other fusion methods at their validation-best alpha, on test: "
                + "; ".join(
                    f"{k.removeprefix('hybrid ')} {v[f'NDCG@{K}']:.4f} / {v['MRR']:.4f}"
                    for k, v in block["test_other_fusions"].items()
                )
                + "."
            )
    lines += [
        "",
        f"Timings: load {t['load_s']:.1f} s; BM25 index {t['bm25_index_s']:.1f} s; "
        f"title embeddings {emb_line}; query embeddings "
        + (
            "cached"
            if t["embed_queries"]["cached"]
            else f"{t['embed_queries']['seconds']:.1f} s ({t['embed_queries']['n']} queries)"
        )
        + "; "
        + "; ".join(
            f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s"
            for k, v in t.items()
            if k.startswith(("validation", "test"))
        )
        + f"; total {t['total_s']:.0f} s.",
        "",
        "Caveats: grades exist only for products that were shown for a query, so in the "
        "catalogue setting an unjudged product counts as not relevant even when it is; "
        "queries whose best grade is 1 are skipped (no gain), and in the graded-set setting "
        "also queries with one product or one grade for all (every order is perfect). The "
        "min-max and z-score hybrids normalise each method's scores with the statistics of "
        f"its top {results['fusion_depth']} (catalogue) or of the graded set (re-ranking), "
        "an affine map, so they score every title and rank the catalogue exactly; RRF "
        f"fuses each method's top {results['fusion_depth']} (titles in neither list tie "
        "last).",
        "",
        "![NDCG@10 and MRR](search-quality.png)",
        "",
    ]
    return "\n".join(lines)


def _plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    settings = list(results["settings"])
    names = ["BM25", "encoder", "hybrid"]
    width = 0.8 / len(names)
    for ax, metric in zip(axes, (f"NDCG@{K}", "MRR"), strict=True):
        for j, name in enumerate(names):
            ys = [list(results["settings"][s]["test"].values())[j][metric] for s in settings]
            xs = [i + j * width for i in range(len(settings))]
            bars = ax.bar(xs, ys, width, label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(settings))], settings)
        ax.set_title(f"{metric} (test queries)")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
