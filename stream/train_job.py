"""``streamrec train``: events -> sessions -> trained, exported, indexed bundle. Imports torch
(through models.export), so only the ``train`` extra can run it; serving never imports this."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.blend_search import search_blend
from models.bundle import derive_bundle, promote
from models.evaluation import hit_rate_at_k, mrr_at_k
from models.export import train_bundle
from models.ranker import SessionRanker
from models.serving import BlendWeights, ServingModel
from models.training import TrainConfig, build_sessions, predict_top_k
from topics.datasets import split_train_valid_test
from topics.events import UserEvent

EVAL_K = 20
VALID_DAYS = 7.0
EXAMPLE_BUDGET = 600_000
MIN_EPOCHS = 1
# Validation is widened back to at least this many events when VALID_DAYS hold fewer.
MIN_VALID_EVENTS = 2000


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def held_out_pairs(test: list[UserEvent], item_ids: list[str]) -> tuple[list[list[int]], list[int]]:
    """Prefix -> next pairs of the held-out sessions, over items the model knows."""
    data = build_sessions(
        [e.session_id for e in test if e.item_id is not None],
        [e.item_id for e in test if e.item_id is not None],  # type: ignore[misc]
        [e.timestamp_ms for e in test if e.item_id is not None],
        vocabulary=item_ids,
    )
    prefixes, targets = [], []
    for s in data.sessions:
        for t in range(1, len(s)):
            prefixes.append(s[:t])
            targets.append(s[t])
    return prefixes, targets


def token_search_pairs(
    events: list[UserEvent], item_ids: list[str]
) -> tuple[list[list[int]], np.ndarray]:
    """Token-id searches and the item each led to: the next item event of the same session,
    when the catalogue knows it. Fits the bundle's token encoder (models/token_encoder.py)."""
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    sessions: dict[str, list[UserEvent]] = {}
    for e in sorted(events, key=lambda e: e.timestamp_ms):
        sessions.setdefault(e.session_id, []).append(e)
    queries: list[list[int]] = []
    targets: list[int] = []
    for evs in sessions.values():
        pending: list[list[int]] = []
        for e in evs:
            if e.query_tokens:
                pending.append(list(e.query_tokens))
            elif e.item_id is not None and pending:
                if e.item_id in index:
                    queries += pending
                    targets += [index[e.item_id]] * len(pending)
                pending = []
    return queries, np.array(targets, dtype=np.int64)


def default_epochs(pairs: int) -> int:
    """Epochs for ``pairs`` training examples: all of TrainConfig's on small data, fewer on
    large data so that training sees about EXAMPLE_BUDGET examples (minutes, not hours, on 2
    cores: Online Retail has ~500k pairs)."""
    full = TrainConfig().epochs
    return max(MIN_EPOCHS, min(full, EXAMPLE_BUDGET // max(pairs, 1)))


def train_and_promote(
    train: list[UserEvent],
    model_root: Path,
    *,
    source: str,
    valid: list[UserEvent] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    make_current: bool = True,
) -> Path:
    """Train on ``train`` (item events), write a bundle under ``model_root`` and, unless told
    otherwise, make it the current one. With ``valid`` (later events than ``train``), the
    ranker's held-out metrics are recorded and the blend of ranking signals is tuned on it
    through the serving path; the bundle written then carries the tuned weights."""
    item_events = [e for e in train if e.item_id is not None]
    if not item_events:
        raise ValueError("no item events to train on")
    data = build_sessions(
        [e.session_id for e in item_events],
        [e.item_id for e in item_events],  # type: ignore[misc]
        [e.timestamp_ms for e in item_events],
    )
    if epochs is None:
        epochs = default_epochs(sum(max(len(s) - 1, 0) for s in data.sessions))
    cfg = TrainConfig(seed=seed, epochs=epochs)
    metadata: dict[str, Any] = {
        "training_data": {
            "source": source,
            "events": len(item_events),
            "sessions": len(data.sessions),
            "from": _day(min(e.timestamp_ms for e in item_events)),
            "to": _day(max(e.timestamp_ms for e in item_events)),
        },
    }

    def evaluate(model: SessionRanker) -> dict[str, float]:
        if not valid:
            return {}
        prefixes, targets = held_out_pairs(valid, data.item_ids)
        if not targets:
            return {}
        ranked = predict_top_k(model, prefixes, EVAL_K)
        return {
            f"heldout_hr@{EVAL_K}": hit_rate_at_k(ranked, targets, EVAL_K),
            f"heldout_mrr@{EVAL_K}": mrr_at_k(ranked, targets, EVAL_K),
            "heldout_pairs": float(len(targets)),
        }

    path = train_bundle(
        data.item_ids,
        data.sessions,
        data.popularity,
        model_root,
        cfg=cfg,
        metadata=metadata,
        evaluate=evaluate,
        token_queries=token_search_pairs(train, data.item_ids),
    )
    if valid:
        blend, summary = tune_blend(path, train, valid)
        if summary:
            tuned = derive_bundle(path, {"blend": blend.to_dict(), "blend_tuning": summary})
            shutil.rmtree(path)  # never promoted: the tuned copy replaces it
            path = tuned
    if make_current:
        promote(model_root, path.name)
    return path


def tune_blend(
    path: Path, train: list[UserEvent], valid: list[UserEvent]
) -> tuple[BlendWeights, dict[str, float]]:
    """The blend of ranking signals with the best validation HR@20 + MRR@20 of the served
    ranking (models/blend_search.py): the validation period is replayed once through the
    serving code, warmed with ``train``. Returns the bundle's own blend and an empty summary
    when ``valid`` has no examples."""
    from stream.evaluate import build_test_pairs, run_sync, served_signals

    model = ServingModel.load(path)
    known = {e.item_id for e in train if e.item_id is not None}
    pairs = build_test_pairs(valid, known)
    if not len(pairs):
        return model.blend, {}
    data = run_sync(served_signals(model, train, valid, pairs, k=EVAL_K))
    return search_blend(data, EVAL_K)


def train_from_file(
    data: Path | None,
    out: Path,
    *,
    dataset: str | None = None,
    test_days: float,
    epochs: int | None,
    seed: int,
    promote: bool = True,
) -> Path:
    """``streamrec train``: a file (DIGINETICA views or canonical JSONL), a ready-made dataset,
    or by default the DIGINETICA sample. The last ``test_days`` are held out, the
    ``VALID_DAYS`` before them (widened to ``MIN_VALID_EVENTS``) tune the blend of ranking
    signals, the rest trains."""
    from stream.demo import dataset_path
    from stream.import_job import load_events_file
    from topics.loaders import load_dataset

    if dataset:
        source = dataset
        events, report = load_dataset(dataset)
    else:
        path = data or dataset_path()
        source = str(path)
        events, report = load_events_file(path)
    if report.bad_rows:
        print(f"{report.bad_rows} of {report.rows} rows could not be read ({report.first_error})")
    train, valid, _ = split_train_valid_test(
        events, test_days, VALID_DAYS, min_valid_events=MIN_VALID_EVENTS
    )
    return train_and_promote(
        train,
        out,
        source=source,
        valid=valid,
        epochs=epochs,
        seed=seed,
        make_current=promote,
    )
