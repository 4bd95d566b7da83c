"""Readiness and liveness (stream/health.py): the pure decision, its bookkeeping (gauge, one
log line per change), consumer lag and bundle age, and the HTTP endpoints of the metrics port."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from stream.health import (
    Health,
    HealthServer,
    bundle_age_s,
    kafka_reachable,
    lag_of,
    partition_lags,
    readiness,
    serve_http,
)
from stream.metrics import WorkerMetrics


def test_ready_only_when_all_three_checks_pass() -> None:
    assert readiness(kafka=True, redis_age_s=1.0, model=True).ready
    r = readiness(kafka=False, redis_age_s=None, model=False, max_redis_age_s=10)
    assert not r.ready and set(r.failing) == {"kafka", "redis", "model"}
    assert "no PING answered yet" in r.failing["redis"]
    stale = readiness(kafka=True, redis_age_s=10.5, model=True, max_redis_age_s=10)
    assert not stale.ready and set(stale.failing) == {"redis"} and "10.5" in stale.failing["redis"]
    # Exactly at the limit is still fresh.
    assert readiness(kafka=True, redis_age_s=10.0, model=True, max_redis_age_s=10).ready
    assert set(readiness(kafka=True, redis_age_s=0, model=False).failing) == {"model"}
    body = json.loads(readiness(kafka=False, redis_age_s=0, model=True).to_json())
    assert body["ready"] is False and list(body["failing"]) == ["kafka"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_sets_the_gauge_and_logs_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    m = WorkerMetrics()
    clock = Clock()
    h = Health(m.ready, max_redis_age_s=5, clock=clock)
    caplog.set_level(logging.INFO, logger="streamrec.health")
    assert not h.evaluate().ready and m.ready._value.get() == 0
    h.kafka = h.model = True
    h.redis_answered()
    for _ in range(3):
        assert h.evaluate().ready
    assert m.ready._value.get() == 1
    clock.now += 6  # Redis silent for longer than allowed
    r = h.evaluate()
    assert not r.ready and set(r.failing) == {"redis"} and m.ready._value.get() == 0
    h.evaluate()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "streamrec.health"]
    assert len(lines) == 3, lines  # start (not ready), ready, not ready: once each
    assert lines[1] == "worker ready" and lines[2].startswith("worker not ready: redis")
    assert caplog.records[-1].failing == r.failing  # type: ignore[attr-defined]


def test_live_while_the_loop_beats() -> None:
    clock = Clock()
    h = Health(live_stale_s=30, clock=clock)
    assert h.live()[0] is False and "starting" in h.live()[1]
    h.beat()
    clock.now += 29
    assert h.live() == (True, "ok")
    clock.now += 2
    ok, why = h.live()
    assert not ok and "stalled" in why


def test_lag_is_log_end_minus_committed() -> None:
    assert lag_of(120, 100, 110) == 20  # committed wins over what was read ahead
    assert lag_of(120, None, 109) == 10  # before the first commit: after the last record read
    assert lag_of(100, 100, None) == 0
    assert lag_of(0, None, None) == 0  # empty partition
    assert lag_of(50, None, None) is None  # nothing known yet
    assert lag_of(None, 10, 10) is None  # no fetch yet: no highwater
    assert lag_of(90, 100, None) == 0  # a stale highwater never gives a negative lag


class Offsets(dict[tuple[str, int], int]):
    """faust's offset maps, keyed here by (topic, partition) for SimpleNamespace partitions."""

    def get(self, tp: object, default: object = None) -> object:  # type: ignore[override]
        return super().get((tp.topic, tp.partition), default)  # type: ignore[attr-defined]


class FakeConsumer:
    """The parts of faust's consumer that health reads."""

    def __init__(self) -> None:
        tp = SimpleNamespace
        self.tps = [tp(topic="ev", partition=0), tp(topic="ev", partition=1),
                    tp(topic="other", partition=0), tp(topic="ev", partition=2)]  # fmt: skip
        self.hw = {("ev", 0): 10, ("ev", 1): 7, ("other", 0): 99}
        self._committed_offset = Offsets({("ev", 0): 4})
        self._read_offset = Offsets({("ev", 1): 6})

    def assignment(self) -> list[SimpleNamespace]:
        return self.tps

    def highwater(self, tp: SimpleNamespace) -> int:
        key = (tp.topic, tp.partition)
        if key not in self.hw:
            raise AssertionError("Partition is not assigned")  # as aiokafka does
        return self.hw[key]


def test_partition_lags_read_the_consumer_state_of_one_topic() -> None:
    lags = dict(partition_lags(SimpleNamespace(consumer=FakeConsumer()), "ev"))
    assert lags == {0: 6, 1: 0}  # partition 2: highwater unknown, skipped


def test_kafka_reachable_from_assignment_or_producer_connection() -> None:
    conn = SimpleNamespace(connected=lambda: True)
    idle = SimpleNamespace(assignment=lambda: set())
    producer = SimpleNamespace(_producer=SimpleNamespace(client=SimpleNamespace(_conns={1: conn})))
    assert kafka_reachable(SimpleNamespace(consumer=FakeConsumer(), producer=None))
    assert kafka_reachable(SimpleNamespace(consumer=idle, producer=producer))
    none = SimpleNamespace(_producer=None)
    assert not kafka_reachable(SimpleNamespace(consumer=idle, producer=none))

    def not_started() -> set[object]:
        raise RuntimeError("Consumer thread not yet started")

    assert not kafka_reachable(SimpleNamespace(consumer=SimpleNamespace(assignment=not_started)))


def test_bundle_age_from_created_at() -> None:
    now = 1_700_000_000.0
    assert bundle_age_s({"created_at": "2023-11-14T22:13:00+00:00"}, now) == pytest.approx(20)
    assert bundle_age_s({}, now) is None
    assert bundle_age_s({"created_at": "yesterday"}, now) is None
    assert bundle_age_s({"created_at": "2023-11-14T22:13:00"}, now) is None  # no zone


@pytest.fixture()
def server() -> Iterator[tuple[HealthServer, Health, WorkerMetrics]]:
    m = WorkerMetrics()
    h = Health(m.ready)
    srv = serve_http(0, m.registry, h, addr="127.0.0.1")  # an ephemeral port
    yield srv, h, m
    srv.shutdown()
    srv.server_close()


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_endpoints(server: tuple[HealthServer, Health, WorkerMetrics]) -> None:
    srv, h, _ = server
    code, body = get(srv.port, "/ready")
    assert code == 503 and set(json.loads(body)["failing"]) == {"kafka", "redis", "model"}
    assert get(srv.port, "/live")[0] == 503  # the loop has not beaten yet
    h.kafka = h.model = True
    h.redis_answered()
    h.beat()
    assert get(srv.port, "/ready") == (200, b'{"ready": true, "failing": {}}')
    assert get(srv.port, "/live")[0] == 200
    code, body = get(srv.port, "/metrics")
    assert code == 200 and b"streamrec_ready 1.0" in body
    assert b"streamrec_consumer_lag" in body and b"streamrec_online_rr" in body
    assert get(srv.port, "/nope")[0] == 404


def test_metrics_port_0_disables_the_server() -> None:
    assert WorkerMetrics().serve(0) is None
