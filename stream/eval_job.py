"""``streamrec evaluate``: every method, every dataset, several seeds, one report.

Trains the ranker per seed on the training period (torch: the ``train`` extra), then scores
the served ranking (``stream.evaluate.served_lists``), the ranker alone over the catalogue,
and the session baselines on the same test pairs. Baselines are deterministic, so their
spread over seeds is zero and they run once.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.baselines import AssociationRules, Pop, SequentialRules, SessionPop
from models.knn import VSKNN
from models.rtrec_peer import RtrecPeer
from models.serving import ServingModel
from stream.evaluate import (
    EvalConfig,
    TestPairs,
    build_test_pairs,
    neural_lists,
    score_lists,
    served_lists_sync,
)
from stream.train_job import train_and_promote
from topics.datasets import split_train_valid_test
from topics.events import UserEvent

SERVED = "streamrec"
NEURAL = "GRU ranker (full catalogue)"


def _sessions(events: Sequence[UserEvent]) -> tuple[list[list[str]], list[int]]:
    by: dict[str, list[UserEvent]] = {}
    for e in events:
        if e.item_id is not None:
            by.setdefault(e.session_id, []).append(e)
    sessions = [[e.item_id for e in evs if e.item_id is not None] for evs in by.values()]
    return sessions, [evs[0].timestamp_ms for evs in by.values()]


def baselines() -> list[Any]:
    return [Pop(), SessionPop(), AssociationRules(), SequentialRules(), VSKNN(), RtrecPeer()]


def _summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = runs[0].keys()
    return {
        "mean": {k: float(np.mean([r[k] for r in runs if k in r])) for k in keys},
        "std": {k: float(np.std([r[k] for r in runs if k in r])) for k in keys},
    }


def evaluate_dataset(
    name: str, events: list[UserEvent], cfg: EvalConfig, bar: tqdm | None = None
) -> dict[str, Any]:
    """All methods on one dataset; returns the JSON-able result block of the report."""
    train, valid, test = split_train_valid_test(
        events, cfg.test_days, cfg.valid_days, min_valid_events=cfg.min_valid_events
    )
    # Every method is fitted on `train`; `valid` serves the choices (the served ranking's
    # blend weights) and, being older than test, the warm-up of user state.
    fit = train
    known = {e.item_id for e in fit if e.item_id is not None}
    pairs = build_test_pairs(test, known)
    if not len(pairs):
        raise ValueError(f"{name}: no test pairs; try a larger --test-days")
    catalogue = sorted(known)
    counts: dict[str, int] = {}
    for e in fit:
        if e.item_id is not None:
            counts[e.item_id] = counts.get(e.item_id, 0) + 1
    popularity = np.array([0.0] + [counts[i] for i in catalogue], dtype=np.float64)
    k = max(cfg.ks)
    methods: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    blends: list[dict[str, float]] = []

    sessions, starts = _sessions(fit)
    for baseline in baselines():
        t0 = time.perf_counter()
        baseline.fit(sessions, starts)
        lists = [baseline.recommend(p, k, exclude=set(p)) for p in pairs.prefixes]
        methods[baseline.name] = [score_lists(lists, pairs, catalogue, popularity, cfg.ks)]
        seconds[baseline.name] = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)

    for bundle in cfg.bundles:
        t0 = time.perf_counter()
        model = ServingModel.load(Path(bundle))
        label = f"{SERVED}@{model.version}"
        lists = served_lists_sync(model, train + valid, test, pairs, k=k, batch_size=cfg.batch_size)
        methods[label] = [score_lists(lists, pairs, catalogue, popularity, cfg.ks)]
        seconds[label] = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)

    for seed in cfg.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = train_and_promote(
                fit,
                Path(tmp),
                source=name,
                valid=valid,
                epochs=cfg.epochs,
                seed=seed,
                make_current=False,
            )
            model = ServingModel.load(path)
            blends.append(model.blend.to_dict())
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lists = served_lists_sync(
                model, train + valid, test, pairs, k=k, batch_size=cfg.batch_size
            )
            methods.setdefault(SERVED, []).append(
                score_lists(lists, pairs, catalogue, popularity, cfg.ks)
            )
            seconds[SERVED] = seconds.get(SERVED, 0.0) + time.perf_counter() - t0 + train_s
            t0 = time.perf_counter()
            lists = neural_lists(model, pairs, k=k)
            methods.setdefault(NEURAL, []).append(
                score_lists(lists, pairs, catalogue, popularity, cfg.ks)
            )
            seconds[NEURAL] = seconds.get(NEURAL, 0.0) + time.perf_counter() - t0 + train_s
        if bar is not None:
            bar.update(1)

    return {
        "dataset": name,
        "events": {"train": len(train), "valid": len(valid), "test": len(test)},
        "test_pairs": len(pairs),
        "dropped_unseen_targets": pairs.dropped_unseen,
        "dropped_repeat_targets": pairs.dropped_repeat,
        "catalogue": len(catalogue),
        "methods": {m: {"runs": runs, **_summarise(runs)} for m, runs in methods.items()},
        "seconds": seconds,
        "blend_per_seed": blends,
    }


def run_evaluation(
    datasets: dict[str, list[UserEvent]], cfg: EvalConfig, report_dir: Path
) -> dict[str, Any]:
    """Evaluate every dataset and write ``report_dir/{report.md, results.json, *.png}``."""
    from stream.eval_report import write_report

    steps = len(datasets) * (len(baselines()) + len(cfg.bundles) + len(cfg.seeds))
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tqdm(total=steps, desc="evaluate", unit="step") as bar:
        for name, events in datasets.items():
            bar.set_postfix_str(name)
            results.append(evaluate_dataset(name, events, cfg, bar))
    summary = {
        "config": asdict(cfg),
        "datasets": results,
        "seconds": time.perf_counter() - started,
    }
    write_report(summary, report_dir)
    return summary


__all__ = ["EvalConfig", "TestPairs", "evaluate_dataset", "run_evaluation"]
