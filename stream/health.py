"""Liveness and readiness of a worker, and the HTTP server of ``/metrics``, ``/live``, ``/ready``.

Probes (docker-compose.yml, deploy/k8s/worker.yaml) ask the metrics port:

- ``GET /live``: 200 while the event loop runs (the health timer of stream/app.py beat within
  ``LIVE_STALE_S``); 503 before the loop started and when it is blocked, so that an
  orchestrator restarts a wedged worker.
- ``GET /ready``: 200 only when a model is loaded, Kafka is reachable (the consumer holds
  partitions, or the producer has a live broker connection: a worker of a group larger than
  the partition count is idle but healthy) and Redis answered a PING within
  ``REDIS_MAX_AGE_S``; else 503 with a JSON body naming each failing check. A worker that is
  not ready is taken out of rotation, not restarted.

The checks run on the event loop (``Health`` is fed by the app's timer every
``CHECK_INTERVAL_S``); the HTTP server runs in a daemon thread and only reads that state, so a
probe never waits on Kafka or Redis. ``readiness`` is the pure decision, unit-tested apart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger("streamrec.health")

CHECK_INTERVAL_S = 2.0  # the health timer: PING, Kafka state, lag, model age
REDIS_MAX_AGE_S = 15.0  # ready only if Redis answered a PING this recently
LIVE_STALE_S = 30.0  # live only if the loop's timer beat this recently


@dataclass(frozen=True, slots=True)
class Readiness:
    """The verdict of ``readiness``: ready, or which checks fail and why."""

    ready: bool
    failing: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"ready": self.ready, "failing": self.failing}).encode()


def readiness(
    *,
    kafka: bool,
    redis_age_s: float | None,
    model: bool,
    max_redis_age_s: float = REDIS_MAX_AGE_S,
) -> Readiness:
    """Ready iff Kafka is reachable, Redis answered a PING at most ``max_redis_age_s`` ago
    (``redis_age_s`` None: never) and a model is loaded. Pure, so it is tested alone."""
    failing: dict[str, str] = {}
    if not kafka:
        failing["kafka"] = "no partition assigned and no producer connection to a broker"
    if redis_age_s is None:
        failing["redis"] = "no PING answered yet"
    elif redis_age_s > max_redis_age_s:
        failing["redis"] = f"no PING answered for {redis_age_s:.1f} s (limit {max_redis_age_s:g} s)"
    if not model:
        failing["model"] = "no model loaded (or the serving agents are not started)"
    return Readiness(not failing, failing)


class Health:
    """The worker's last known checks, written on the event loop and read by the HTTP
    thread. ``evaluate`` sets ``streamrec_ready`` and logs each change of readiness once."""

    def __init__(
        self,
        gauge: Gauge | None = None,
        *,
        max_redis_age_s: float = REDIS_MAX_AGE_S,
        live_stale_s: float = LIVE_STALE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gauge = gauge
        self.max_redis_age_s = max_redis_age_s
        self.live_stale_s = live_stale_s
        self.clock = clock
        self.kafka = False
        self.model = False
        self.redis_ok_at: float | None = None
        self.beat_at: float | None = None
        self._lock = threading.Lock()
        self._last: Readiness | None = None

    def beat(self) -> None:
        """The event loop ran the health timer."""
        self.beat_at = self.clock()

    def redis_answered(self) -> None:
        self.redis_ok_at = self.clock()

    def live(self) -> tuple[bool, str]:
        """(live, why): the loop beat within ``live_stale_s``."""
        if self.beat_at is None:
            return False, "starting: the event loop has not run the health timer yet"
        age = self.clock() - self.beat_at
        if age > self.live_stale_s:
            return False, f"event loop stalled: no health tick for {age:.1f} s"
        return True, "ok"

    def evaluate(self) -> Readiness:
        """The readiness now; sets the gauge, and logs when it differs from the last one."""
        now = self.clock()
        age = None if self.redis_ok_at is None else now - self.redis_ok_at
        r = readiness(
            kafka=self.kafka,
            redis_age_s=age,
            model=self.model,
            max_redis_age_s=self.max_redis_age_s,
        )
        with self._lock:
            changed = self._last is None or self._last.ready != r.ready
            self._last = r
            if self.gauge is not None:
                self.gauge.set(1 if r.ready else 0)
        if changed:
            if r.ready:
                log.info("worker ready", extra={"ready": True})
            else:
                reasons = "; ".join(f"{k}: {v}" for k, v in r.failing.items())
                extra = {"ready": False, "failing": r.failing}
                log.warning("worker not ready: %s", reasons, extra=extra)
        return r


def lag_of(highwater: int | None, committed: int | None, read: int | None) -> int | None:
    """Messages of a partition not yet processed: log end - committed offset (Kafka's
    committed offset is the next one to read). Before this group's first commit, the offset
    after the last record read stands in; None when nothing is known (no fetch yet), except
    that an empty partition (log end 0) has lag 0."""
    if highwater is None:
        return None
    done = committed if committed is not None else (read + 1 if read is not None else None)
    if done is None:
        return 0 if highwater == 0 else None
    return max(0, highwater - done)


def bundle_age_s(metadata: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since a bundle's ``created_at`` (ISO 8601 with a zone); None if absent."""
    created = metadata.get("created_at")
    if not isinstance(created, str):
        return None
    try:
        at = datetime.fromisoformat(created)
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return max(0.0, (time.time() if now is None else now) - at.timestamp())


def kafka_reachable(app: Any) -> bool:
    """Whether the faust app's consumer holds partitions or its producer has a connected
    broker. Reads client state only (no request): cheap enough for every tick and safe from
    the loop. faust/aiokafka internals are read defensively; a missing attribute is False."""
    try:
        if app.consumer.assignment():
            return True
    except Exception:  # consumer not started yet (faust ConsumerNotStarted), or stopping
        pass
    try:
        producer = app.producer._producer  # the aiokafka producer of faust's Producer
        conns = producer.client._conns.values() if producer is not None else ()
        return any(c.connected() for c in conns)
    except Exception:
        return False


def partition_lags(app: Any, topic: str) -> Iterator[tuple[int, int]]:
    """``(partition, lag)`` of every partition of ``topic`` assigned to this worker, from the
    consumer's known highwater (returned with each fetch) and faust's committed and read
    offsets: no request to Kafka."""
    consumer = app.consumer
    try:
        assigned: Iterable[Any] = consumer.assignment()
    except Exception:
        return
    for tp in assigned:
        if tp.topic != topic:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # revoked between assignment() and now
            continue
        lag = lag_of(highwater, consumer._committed_offset.get(tp), consumer._read_offset.get(tp))
        if lag is not None:
            yield tp.partition, lag


class _QuietHandler(WSGIRequestHandler):
    """No access log line per probe and scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HealthServer(ThreadingMixIn, WSGIServer):
    """The HTTP server (one thread per request: a slow scrape does not delay a probe)."""

    daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def wsgi_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    """``/metrics`` (also ``/``, as prometheus_client serves), ``/live``, ``/ready``."""
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/", "/metrics"):
            return metrics(environ, start_response)
        if path == "/live":
            ok, why = health.live()
            body = json.dumps({"live": ok, "detail": why}).encode()
        elif path == "/ready":
            r = health.evaluate()
            ok, body = r.ready, r.to_json()
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics, /live, /ready\n"]
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))])  # fmt: skip
        return [body]

    return app


def serve_http(
    port: int, registry: CollectorRegistry, health: Health, addr: str = "0.0.0.0"
) -> HealthServer:
    """Serve ``wsgi_app`` on ``addr:port`` in a daemon thread; returns the server."""
    server = make_server(
        addr, port, wsgi_app(registry, health), server_class=HealthServer,
        handler_class=_QuietHandler,
    )  # fmt: skip
    assert isinstance(server, HealthServer)
    threading.Thread(target=server.serve_forever, name="streamrec-http", daemon=True).start()
    return server


__all__ = [
    "CHECK_INTERVAL_S",
    "Health",
    "HealthServer",
    "Readiness",
    "bundle_age_s",
    "kafka_reachable",
    "lag_of",
    "partition_lags",
    "readiness",
    "serve_http",
]
