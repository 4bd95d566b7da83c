"""``streamrec demo``: the whole path on real data, on this machine, then a report.

Starts local Kafka and Redis unless existing ones are configured, trains a model on the
earlier part of the DIGINETICA sample when no bundle exists, starts a worker process,
replays the later (held-out) sessions into the events topic at a fixed rate, reads the
recommendations back and reports counts, accuracy and latency. It stops what it started.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from models.evaluation import hit_rate_at_k, mrr_at_k
from stream.evaluate import build_test_pairs
from stream.replay import IsolatedRun, replay_messages
from stream.services import ROOT, LocalServices, resolve_services
from stream.settings import Settings
from topics.datasets import load_diginetica_views, split_train_valid_test
from topics.events import UserEvent

VALID_DAYS = 7.0  # carved from the training period to tune the co-visitation blend
SHARED_SAMPLE = (
    ROOT.parent / "shared" / "datasets" / "diginetica" / "sample_train-item-views.csv.gz"
)
PACKAGED_SAMPLE = Path(__file__).parent / "data" / "diginetica-sample-views.csv.gz"
BAD_EVENTS: list[bytes] = [
    b'{"event_type": "view", "user_id": "u1"',  # truncated JSON
    b'{"schema_version": 1, "event_id": "bad-2", "event_type": "teleport", "user_id": "u1", '
    b'"session_id": "s1", "timestamp_ms": 1}',  # unknown event type
    b'{"schema_version": 1, "event_id": "bad-3", "event_type": "view", "user_id": "u1", '
    b'"session_id": "s1", "timestamp_ms": "yesterday", "item_id": "1"}',  # wrong type
]


def dataset_path() -> Path:
    return SHARED_SAMPLE if SHARED_SAMPLE.exists() else PACKAGED_SAMPLE


@dataclass
class DemoReport:
    events_sent: int
    bad_sent: int
    recommendations: int
    duplicates: int
    dead_letters: dict[str, int]
    hr20: float
    mrr20: float
    pop_hr20: float
    pop_mrr20: float
    targets: int
    repeat_targets: int
    unseen_targets: int
    eligible_hr20: float
    eligible_mrr20: float
    p50_ms: float
    p99_ms: float
    events_per_s: float
    model_version: str
    train_events: int
    test_events: int
    data: Path
    startup_s: dict[str, float]

    def render(self) -> str:
        dl = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items())) or "none"
        lines = [
            "streamrec demo report",
            f"  data                 {self.data.name} (DIGINETICA, CIKM Cup 2016): "
            f"{self.train_events} training events, {self.test_events} replayed (last days)",
            f"  model                {self.model_version}",
            f"  events in            {self.events_sent} valid + {self.bad_sent} injected bad",
            f"  recommendations out  {self.recommendations} (duplicates {self.duplicates})",
            f"  dead letters         {sum(self.dead_letters.values())} ({dl})",
            f"  next-event accuracy  HR@20 {self.hr20:.4f}  MRR@20 {self.mrr20:.4f}  "
            f"over {self.targets} next events",
            f"    of which           {self.repeat_targets} re-views of an item already seen in "
            f"the session (filtered out by design), {self.unseen_targets} items absent from "
            f"training",
            f"  on the other {self.targets - self.repeat_targets - self.unseen_targets:<6d}    "
            f"HR@20 {self.eligible_hr20:.4f}  MRR@20 {self.eligible_mrr20:.4f}",
            f"  popularity baseline  HR@20 {self.pop_hr20:.4f}  MRR@20 {self.pop_mrr20:.4f}",
            f"  trigger->publish     p50 {self.p50_ms:.1f} ms  p99 {self.p99_ms:.1f} ms",
            f"  throughput           {self.events_per_s:.0f} events/s (replay rate-limited)",
        ]
        if self.startup_s:
            started = ", ".join(f"{k} {v:.1f}s" for k, v in self.startup_s.items())
            lines.append(f"  services started     {started}")
        return "\n".join(lines)


def next_event_targets(events: list[UserEvent]) -> dict[str, str]:
    """trigger event_id -> item id of the next item event in the same session."""
    by_session: dict[str, list[UserEvent]] = {}
    for e in events:
        by_session.setdefault(e.session_id, []).append(e)
    out: dict[str, str] = {}
    for evs in by_session.values():
        for cur, nxt in pairwise(evs):
            if nxt.item_id is not None:
                out[cur.event_id] = nxt.item_id
    return out


def recommendable_targets(
    train: list[UserEvent], test: list[UserEvent]
) -> tuple[dict[str, str], int, int]:
    """The next-event targets a recommender can hit under the seen-item filter (trigger
    event_id -> item), and how many are re-views and how many unseen in training: the
    evaluation protocol's own pairs (stream.evaluate.build_test_pairs)."""
    pairs = build_test_pairs(test, {e.item_id for e in train if e.item_id is not None})
    eligible = dict(zip(pairs.trigger_ids, pairs.targets, strict=True))
    return eligible, pairs.dropped_repeat, pairs.dropped_unseen


def popularity_lists(train: list[UserEvent], test: list[UserEvent], k: int) -> dict[str, list[str]]:
    """The POP baseline under the worker's rule: most popular training items minus the items
    already seen in the session."""
    counts: dict[str, int] = {}
    for e in train:
        if e.item_id is not None:
            counts[e.item_id] = counts.get(e.item_id, 0) + 1
    ranked = sorted(counts, key=lambda i: -counts[i])[: k + 200]
    seen: dict[str, set[str]] = {}
    out: dict[str, list[str]] = {}
    for e in test:
        s = seen.setdefault(e.session_id, set())
        if e.item_id is not None:
            s.add(e.item_id)
        out[e.event_id] = [i for i in ranked if i not in s][:k]
    return out


def _score(
    lists: dict[str, list[str]], targets: dict[str, str], k: int
) -> tuple[float, float, int]:
    """HR@k, MRR@k and the number of scored targets (the metrics take integer item ids)."""
    keys = [key for key in targets if key in lists]
    if not keys:
        return 0.0, 0.0, 0
    code: dict[str, int] = {}
    ranked = [[code.setdefault(i, len(code)) for i in lists[key]] for key in keys]
    truth = [code.setdefault(targets[key], len(code)) for key in keys]
    return hit_rate_at_k(ranked, truth, k), mrr_at_k(ranked, truth, k), len(keys)


def ensure_model(
    settings: Settings, train: list[UserEvent], valid: list[UserEvent], data: Path
) -> Path:
    """The current bundle, trained first when there is none or when it predates the blended
    ranking (no ``blend`` in its metadata) or online fine-tuning (no weights file): the demo
    should show what the code serves now."""
    import orjson

    from models.bundle import METADATA_FILE, WEIGHTS_FILE, latest_bundle

    path = latest_bundle(settings.model_dir)
    if path is not None:
        if "blend" not in orjson.loads((path / METADATA_FILE).read_bytes()):
            why = f"bundle {path.name} predates the blended ranking"
        elif not (path / WEIGHTS_FILE).is_file():
            why = f"bundle {path.name} predates online fine-tuning (no {WEIGHTS_FILE})"
        else:
            return path
    else:
        why = f"no model bundle in {settings.model_dir}"
    from stream.train_job import train_and_promote  # torch: training extra only

    print(f"{why}: training one on {data.name} ...", flush=True)
    return train_and_promote(train, settings.model_dir, source=str(data), valid=valid)


def with_bad_events(test: list[UserEvent], bad: list[bytes]) -> list[tuple[bytes | None, bytes]]:
    """The replayed messages: every test event keyed by its user, ``bad`` spread among them."""
    messages: list[tuple[bytes | None, bytes]] = [(e.user_id.encode(), e.to_bytes()) for e in test]
    step = max(1, len(messages) // (len(bad) + 1))
    for j, raw in enumerate(bad):
        messages.insert((j + 1) * step, (b"bad", raw))
    return messages


def run_demo(*, rate: float, test_days: float, settings: Settings) -> int:
    services = LocalServices(
        kafka_port=int(os.environ.get("STREAMREC_KAFKA_PORT", "9092")),
        redis_port=int(os.environ.get("STREAMREC_REDIS_PORT", "6379")),
    )
    bootstrap = ""
    run_id = time.strftime("%Y%m%d%H%M%S")
    try:
        bootstrap, redis_url = resolve_services(services)
        data = dataset_path()
        events, _ = load_diginetica_views(data)
        train, valid, test = split_train_valid_test(events, test_days, VALID_DAYS)
        bundle = ensure_model(settings, train, valid, data)
        run = IsolatedRun(
            bootstrap, redis_url, settings.model_dir, f"demo-{run_id}", settings.model_dir.parent
        )
        with run:
            collected, start = asyncio.run(
                replay_messages(bootstrap, run.topics, with_bad_events(test, BAD_EVENTS), rate=rate)
            )
        recs = collected.recommendations
        lists = {key: r.items for key, r in recs.items()}
        targets = next_event_targets(test)
        hr, mrr, n = _score(lists, targets, 20)
        eligible, repeats, unseen = recommendable_targets(train, test)
        e_hr, e_mrr, _ = _score(lists, eligible, 20)
        pop_hr, pop_mrr, _ = _score(popularity_lists(train, test, 20), targets, 20)
        lat = np.array([r.latency_ms for r in recs.values()]) if recs else np.zeros(1)
        elapsed = max(1e-9, collected.last_received_s - start)
        dead: dict[str, int] = {}
        for d in collected.dead_letters:
            dead[d.reason] = dead.get(d.reason, 0) + 1
        report = DemoReport(
            events_sent=len(test),
            bad_sent=len(BAD_EVENTS),
            recommendations=len(recs),
            duplicates=collected.duplicates,
            dead_letters=dead,
            hr20=hr,
            mrr20=mrr,
            pop_hr20=pop_hr,
            pop_mrr20=pop_mrr,
            targets=n,
            repeat_targets=repeats,
            unseen_targets=unseen,
            eligible_hr20=e_hr,
            eligible_mrr20=e_mrr,
            p50_ms=float(np.percentile(lat, 50)),
            p99_ms=float(np.percentile(lat, 99)),
            events_per_s=(len(test) + len(BAD_EVENTS)) / elapsed,
            model_version=bundle.name,
            train_events=len(train),
            test_events=len(test),
            data=data,
            startup_s=services.startup_s,
        )
        print(report.render(), flush=True)
        lost = len(test) - len(recs)
        if lost:
            print(f"ERROR: {lost} events got no recommendation (worker log: {run.log_path})")
        return 1 if lost or sum(dead.values()) != len(BAD_EVENTS) else 0
    finally:
        services.stop_started()
