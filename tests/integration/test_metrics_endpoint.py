"""The worker's Prometheus endpoint counts what went through it."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from topics.events import EventType, UserEvent


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def test_metrics_count_events_recommendations_and_dead_letters(
    worker: WorkerProcess, services: Services
) -> None:
    topic, recs_topic, dead_topic = worker.topics
    events = [UserEvent(f"m-{i}", EventType.VIEW, "mu", "ms", 1_464_000_000_000 + i,
                        item_id="81766") for i in range(5)]  # fmt: skip
    messages = [(b"mu", e.to_bytes()) for e in events] + [(b"bad", b"{not json")]
    await produce(services.bootstrap, topic, messages)
    await collect(services.bootstrap, recs_topic, dead_topic, expect=6, timeout_s=90)
    m = scrape(worker.metrics_port)
    assert m["streamrec_events_in_total{event_type=view}"] == 5
    assert m["streamrec_recommendations_out_total{kind=recommend}"] == 5
    assert m["streamrec_dead_letters_total{reason=malformed_json}"] == 1
    assert m["streamrec_batch_size_count{}"] >= 1
    for stage in ("validate", "state", "retrieval", "scoring", "rank", "publish"):
        assert m[f"streamrec_stage_latency_ms_count{{stage={stage}}}"] >= 1, stage
    assert m["streamrec_trigger_to_publish_ms_count{}"] == 5
    assert any(k.startswith("streamrec_model_info{") and v == 1 for k, v in m.items())
