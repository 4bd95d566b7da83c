"""Operations end to end against a real worker process: the probes on the metrics port, every
metric family the dashboard and the alerts read, and the in-stream HR@20 / MRR@20 equal to the
same judging rule applied offline to the published recommendations."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from tests.unit.test_dashboard import _queries, _rule_exprs, metric_names
from topics.events import UserEvent
from topics.names import USER_EVENTS
from topics.recommendations import Recommendation

K = 20  # STREAMREC_TOP_K default: the K of the worker's HitTracker
N_EVENTS = 400
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count", "_info")


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:  # not listening yet
        return 0, b""


def scrape(port: int) -> tuple[set[str], dict[str, list[tuple[dict[str, str], float]]]]:
    """(family names, sample name -> [(labels, value)])."""
    code, body = get(port, "/metrics")
    assert code == 200
    families: set[str] = set()
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(body.decode()):
        families.add(fam.name)
        for s in fam.samples:
            samples[s.name].append((dict(s.labels), float(s.value)))
    return families, samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def family_of(series: str, families: set[str]) -> bool:
    """Whether the scraped families hold the series ``series`` (x_total is family x...)."""
    if series in families:
        return True
    return any(series.endswith(s) and series[: -len(s)] in families for s in SUFFIXES)


def worker_series() -> set[str]:
    """The streamrec_* series the dashboard and the alerts read, except the training agent's
    (``streamrec_trainer_*``: another process, another port)."""
    used: set[str] = set()
    for _, expr in _queries() + _rule_exprs():
        used |= metric_names(expr)
    return {s for s in used if not s.startswith("streamrec_trainer_")}


def offline_judgement(
    events: list[UserEvent], recs: dict[str, Recommendation], k: int
) -> tuple[int, int, float]:
    """The worker's rule (stream/agents.py ``_track``, models/ab.py ``HitTracker``) applied
    offline: per user, in stream order, each event that got a recommendation first judges the
    user's pending list by its item (hit: in the top k; reciprocal rank 1/rank), then its own
    list becomes the pending one. Returns (judged, hits, sum of reciprocal ranks)."""
    pending: dict[str, list[str]] = {}
    judged = hits = 0
    rr = 0.0
    for e in events:
        rec = recs.get(e.event_id)
        if rec is None:  # the worker skips an event it did not answer
            continue
        last = pending.pop(e.user_id, None) if e.item_id is not None else None
        if last is not None:  # an event without an item judges nothing
            judged += 1
            top = last[:k]
            if e.item_id in top:
                hits += 1
                rr += 1.0 / (top.index(e.item_id) + 1)
        pending[e.user_id] = rec.items
    return judged, hits, rr


async def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.25)
    return bool(predicate())


@pytest.fixture()
def worker(services: Services, model_dir: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    """The worker with JSON logs (STREAMREC_LOG_FORMAT=json), so they are checked too."""
    w = WorkerProcess(services, model_dir, tmp_path, extra_env={"STREAMREC_LOG_FORMAT": "json"})
    w.start()
    yield w
    w.stop()


def json_log(worker: WorkerProcess) -> tuple[list[dict[str, Any]], list[str]]:
    """(the worker's log records, its lines that are not JSON)."""
    records, other = [], []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            other.append(line)
    return records, other


async def test_probes_metrics_and_in_stream_hr_equal_to_offline(
    worker: WorkerProcess,
    services: Services,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    port = worker.metrics_port
    assert await wait_for(lambda: get(port, "/ready")[0] == 200, 180), (
        get(port, "/ready"),
        worker.log_tail(),
    )
    _, body = get(port, "/ready")
    assert json.loads(body) == {"ready": True, "failing": {}}
    assert get(port, "/live")[0] == 200

    _, test = diginetica
    # Users with several events, so that lists get judged; kept in stream order.
    counts: dict[str, int] = defaultdict(int)
    for e in test:
        counts[e.user_id] += 1
    events = [e for e in test if counts[e.user_id] >= 3][:N_EVENTS]
    assert all(e.item_id is not None for e in events)
    topic, recs_topic, dead_topic = worker.topics
    # Keyed by user: one user's events stay in one partition, in order.
    await produce(services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in events])
    got = await collect(services.bootstrap, recs_topic, dead_topic, expect=len(events),
                        timeout_s=120)  # fmt: skip
    assert not got.dead_letters and len(got.recommendations) == len(events), worker.log_tail()

    judged, hits, rr = offline_judgement(events, got.recommendations, K)
    assert judged > 0

    # Lag: every partition of the events topic has its series, and reaches 0 once the
    # consumed offsets are committed (faust commits every ~3 s; the gauge refreshes every 2 s).
    def lag_settled() -> bool:
        _, s = scrape(port)
        lags = {lb["partition"]: v for lb, v in s.get("streamrec_consumer_lag", [])
                if lb["topic"] == topic}  # fmt: skip
        return len(lags) == USER_EVENTS.partitions and sum(lags.values()) == 0

    assert await wait_for(lag_settled, 60), scrape(port)[1].get("streamrec_consumer_lag")

    families, s = scrape(port)
    missing = sorted(x for x in worker_series() if not family_of(x, families))
    assert not missing, f"dashboard/alert series not exposed by the worker: {missing}"
    assert total(s, "streamrec_events_in_total") == len(events)
    assert total(s, "streamrec_recommendations_out_total") == len(events)
    assert s["streamrec_ready"] == [({}, 1.0)]
    ((_, age),) = s["streamrec_model_age_seconds"]
    assert 0 < age < 86_400
    assert total(s, "streamrec_model_last_swap_ms") == 0  # no swap happened
    assert sum(v for _, v in s["streamrec_model_info"]) == 1
    in_judged = total(s, "streamrec_online_judged_total")
    in_hits = total(s, "streamrec_online_hits_total")
    in_rr = total(s, "streamrec_online_rr_total")
    assert in_judged > 0 and 0 <= in_hits <= in_judged
    assert in_hits / K <= in_rr <= in_hits + 1e-9  # each hit adds between 1/K and 1
    # Per user the worker sees events in stream order (one partition, one consumer, batches in
    # offset order) and judges exactly as offline_judgement does, so the counts are equal,
    # not just close.
    hr_stream, hr_offline = in_hits / in_judged, hits / judged
    print(f"\nHR@{K}: in-stream {in_hits:.0f}/{in_judged:.0f} = {hr_stream:.4f}, "
          f"offline {hits}/{judged} = {hr_offline:.4f}; MRR@{K}: in-stream "
          f"{in_rr / in_judged:.4f}, offline {rr / judged:.4f}")  # fmt: skip
    assert (in_judged, in_hits) == (judged, hits)
    assert abs(hr_stream - hr_offline) <= 0.02
    assert abs(in_rr - rr) < 1e-6 * max(1.0, rr)
    assert get(port, "/live")[0] == 200

    records, other = json_log(worker)
    print(f"log: {len(records)} JSON records, {len(other)} other lines: {other[:5]}")
    assert not other, other[:10]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    ready = [r for r in records if r["logger"] == "streamrec.health" and r.get("ready") is True]
    assert len(ready) == 1, ready  # one line per change of readiness
    serving = [r for r in records if r["message"].startswith("serving model ")]
    assert serving, records[-10:]
