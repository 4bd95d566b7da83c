"""``streamrec train``: events -> sessions -> trained, exported, indexed bundle. Imports torch
(through models.export), so only the ``train`` extra can run it; serving never imports this."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.bundle import promote
from models.evaluation import hit_rate_at_k, mrr_at_k
from models.export import train_bundle
from models.ranker import SessionRanker
from models.training import TrainConfig, build_sessions, predict_top_k
from topics.datasets import load_diginetica_views, split_by_time
from topics.events import UserEvent

EVAL_K = 20


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


def train_and_promote(
    train: list[UserEvent],
    model_root: Path,
    *,
    source: str,
    test: list[UserEvent] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    make_current: bool = True,
) -> Path:
    """Train on ``train`` (item events), evaluate on ``test`` if given, write a bundle under
    ``model_root`` and, unless told otherwise, make it the current one."""
    item_events = [e for e in train if e.item_id is not None]
    if not item_events:
        raise ValueError("no item events to train on")
    data = build_sessions(
        [e.session_id for e in item_events],
        [e.item_id for e in item_events],  # type: ignore[misc]
        [e.timestamp_ms for e in item_events],
    )
    cfg = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
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
        if not test:
            return {}
        prefixes, targets = held_out_pairs(test, data.item_ids)
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
    )
    if make_current:
        promote(model_root, path.name)
    return path


def train_from_file(
    data: Path | None,
    out: Path,
    *,
    test_days: float,
    epochs: int | None,
    seed: int,
    promote: bool = True,
) -> Path:
    from stream.demo import dataset_path

    source = data or dataset_path()
    events, report = load_diginetica_views(source)
    if report.bad_rows:
        print(f"{report.bad_rows} of {report.rows} rows could not be read ({report.first_error})")
    train, test = split_by_time(events, test_days)
    return train_and_promote(
        train, out, source=str(source), test=test, epochs=epochs, seed=seed, make_current=promote
    )
