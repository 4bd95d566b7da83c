"""Online fine-tuning vs a frozen model, replayed over a dataset in time order.

The first part of the events (by time) trains the ranker as ``streamrec train`` would; the
rest arrives in chunks, as the training agent would consume them. Each chunk is scored by the
frozen model and by the online learner *before* the learner trains on it (prequential), so
both are judged on events neither has seen. Training-only (torch).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from models.online_training import (
    Example,
    ExampleBuilder,
    OnlineConfig,
    OnlineLearner,
    prequential_metrics,
)
from models.serving import DEFAULT_EVENT_WEIGHTS
from models.training import TrainConfig, build_sessions, train_ranker
from topics.events import UserEvent


def stream_examples(
    events: Sequence[UserEvent],
    item_index: dict[str, int],
    *,
    max_recent: int,
    weights: dict[str, float] | None = None,
) -> Iterator[tuple[int, Example | None]]:
    """For each event (time order), its position and the example it makes: the session's
    known items so far -> this item, weighted by event type; None for events that teach
    nothing (no item, an item the model does not know, or the session's first known item)."""
    builder = ExampleBuilder(item_index, max_recent, weights or DEFAULT_EVENT_WEIGHTS,
                             max_sessions=max(len(events), 1))  # fmt: skip
    for pos, e in enumerate(events):
        yield pos, builder.feed(e.session_id, e.item_id, e.event_type)


@dataclass(slots=True)
class OnlineVsFrozen:
    chunks: list[dict[str, float]]
    online: dict[str, float]
    frozen: dict[str, float]
    train_events: int
    stream_events: int


def compare_online_frozen(
    events: list[UserEvent],
    *,
    train_share: float = 0.5,
    chunk_events: int = 500,
    train_cfg: TrainConfig | None = None,
    online_cfg: OnlineConfig | None = None,
) -> OnlineVsFrozen:
    """Train on the first ``train_share`` of ``events`` (time order), then replay the rest in
    chunks of ``chunk_events``: prequential HR/MRR@k per chunk for the frozen model and the
    online learner. Totals are example-weighted means."""
    events = sorted(events, key=lambda e: e.timestamp_ms)
    cut = int(len(events) * train_share)
    head, tail = events[:cut], events[cut:]
    items = [e for e in head if e.item_id is not None]
    data = build_sessions(
        [e.session_id for e in items], [e.item_id for e in items],  # type: ignore[misc]
        [e.timestamp_ms for e in items],
    )  # fmt: skip
    cfg = train_cfg or TrainConfig()
    frozen = train_ranker(data.sessions, len(data.item_ids), cfg)
    learner = OnlineLearner(copy.deepcopy(frozen), online_cfg or OnlineConfig(seed=cfg.seed))
    k = learner.cfg.k
    index = {item: i + 1 for i, item in enumerate(data.item_ids)}
    # Sessions that began in the training part continue in the stream with their history.
    examples = list(stream_examples(events, index, max_recent=cfg.max_recent))[cut:]
    chunks: list[dict[str, float]] = []
    for lo in range(0, len(tail), chunk_events):
        batch = [ex for _, ex in examples[lo : lo + chunk_events] if ex is not None]
        if not batch:
            continue
        f_hr, f_mrr = prequential_metrics(frozen, batch, k)
        step = learner.step(batch)
        chunks.append({
            "events_seen": float(lo + min(chunk_events, len(tail) - lo)),
            "examples": float(len(batch)),
            f"frozen_hr@{k}": f_hr, f"frozen_mrr@{k}": f_mrr,
            f"online_hr@{k}": step.hr, f"online_mrr@{k}": step.mrr,
        })  # fmt: skip

    def total(name: str) -> dict[str, float]:
        n = sum(c["examples"] for c in chunks) or 1.0
        return {
            f"hr@{k}": sum(c[f"{name}_hr@{k}"] * c["examples"] for c in chunks) / n,
            f"mrr@{k}": sum(c[f"{name}_mrr@{k}"] * c["examples"] for c in chunks) / n,
            "examples": float(sum(c["examples"] for c in chunks)),
        }

    return OnlineVsFrozen(chunks, total("online"), total("frozen"), len(head), len(tail))


def plot(result: OnlineVsFrozen, path: Any, title: str) -> None:
    """Prequential HR@20 per chunk, online vs frozen (matplotlib, training extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c["events_seen"] for c in result.chunks]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in ("frozen", "online"):
        ax.plot(xs, [c[f"{name}_hr@20"] for c in result.chunks], marker="o", label=name)
    ax.set_xlabel("stream events replayed after the training part")
    ax.set_ylabel("prequential HR@20 of the chunk")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["OnlineVsFrozen", "compare_online_frozen", "plot", "stream_examples"]
