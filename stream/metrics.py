"""All Prometheus objects of the worker, created in one place.

Latency buckets are in milliseconds: the budget of this pipeline is tens of milliseconds, so
seconds-based default buckets would put every observation in the first two buckets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from stream.health import Health, HealthServer

MS_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 35, 50, 75, 100, 150, 250, 500, 1000,
              2500, 5000)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    """The worker's metric families; one instance per process (or per test registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "streamrec_events_in", "Events consumed, by event type", ["event_type"], registry=r
        )
        self.recommendations_out = Counter(
            "streamrec_recommendations_out", "Recommendations published", ["kind"], registry=r
        )
        self.dead_letters = Counter(
            "streamrec_dead_letters", "Events dead-lettered, by reason", ["reason"], registry=r
        )
        self.unknown_items = Counter(
            "streamrec_unknown_items", "Item events whose item the model does not know", registry=r
        )
        # Idempotent state (features/store.py): redelivered events, answered but not re-applied.
        self.replayed_events = Counter(
            "streamrec_replayed_events",
            "Events already applied to their user's state (redeliveries after a crash, rebalance "
            "or retry): answered again, state and online co-visitation left unchanged",
            registry=r,
        )
        self.batch_size = Histogram(
            "streamrec_batch_size", "Events per micro-batch", buckets=BATCH_BUCKETS, registry=r
        )
        # The micro-batcher (stream/batcher.py): how old a batch's oldest event is when the
        # batch closes, and what closed it (size, budget, idle).
        self.batch_wait_ms = Histogram(
            "streamrec_batch_wait_ms",
            "Age of a micro-batch's oldest event (from its Kafka timestamp) when the batch "
            "closes, ms",
            buckets=MS_BUCKETS,
            registry=r,
        )
        self.batches_closed = Counter(
            "streamrec_batches_closed",
            "Micro-batches of user events closed, by reason (size, budget, idle)",
            ["reason"],
            registry=r,
        )
        self.stage_ms = Histogram(
            "streamrec_stage_latency_ms",
            "Per-stage latency of a micro-batch in ms (validate, state, online, encode, text, "
            "retrieval, scoring, rank, publish; catalogue batches: catalogue_embed, "
            "catalogue_store)",
            ["stage"],
            buckets=MS_BUCKETS,
            registry=r,
        )
        self.trigger_to_publish_ms = Histogram(
            "streamrec_trigger_to_publish_ms",
            "From the trigger event's Kafka timestamp to its recommendation being sent, ms",
            buckets=MS_BUCKETS,
            registry=r,
        )
        # Online HR@K (models/ab.py HitTracker): a list is judged by the user's next item
        # event; HR@K of a version = rate(hits) / rate(judged) over a window.
        self.online_judged = Counter(
            "streamrec_online_judged",
            "Recommendation lists followed by the user's next item event, by model version "
            "and A/B arm",
            ["version", "arm"],
            registry=r,
        )
        self.online_hits = Counter(
            "streamrec_online_hits",
            "Judged lists whose top K held that next item, by model version and A/B arm",
            ["version", "arm"],
            registry=r,
        )
        # MRR@K of a version = rate(rr) / rate(judged): a miss adds 0, a hit at rank r 1/r.
        self.online_rr = Counter(
            "streamrec_online_rr",
            "Sum of the reciprocal ranks of the next item in judged lists (0 for a miss), by "
            "model version and A/B arm",
            ["version", "arm"],
            registry=r,
        )
        # Online CTR where impressions exist (models/ab.py ImpressionTracker): an impression
        # is clicked when the user next interacts with one of its items before their next
        # impression. CTR of a version/arm = rate(clicks) / rate(impressions).
        self.online_impressions = Counter(
            "streamrec_online_impressions",
            "Impression events (items shown to a user), by the model version and A/B arm "
            "serving that user",
            ["version", "arm"],
            registry=r,
        )
        self.online_clicks = Counter(
            "streamrec_online_clicks",
            "Impressions followed by an interaction with one of their items",
            ["version", "arm"],
            registry=r,
        )
        self.model_rollbacks = Counter(
            "streamrec_model_rollbacks",
            "Automatic rollbacks: the served version's live HR@K fell below the one it replaced",
            ["from_version", "to_version"],
            registry=r,
        )
        self.batch_errors = Counter(
            "streamrec_batch_errors",
            "Micro-batches that failed and were retried",
            ["stage"],
            registry=r,
        )
        # Hot-result cache (STREAMREC_RESULT_CACHE_TTL_MS): hit rate = hit / (hit + miss);
        # uncacheable rows (warm users, searches) are never looked up.
        self.result_cache_lookups = Counter(
            "streamrec_result_cache_lookups",
            "Triggers by hot-result cache outcome: hit (list reused), miss (computed and "
            "cached), uncacheable",
            ["result"],
            registry=r,
        )
        self.model_info = Gauge(
            "streamrec_model_info",
            "The model version being served (value 1)",
            ["version", "provider"],
            registry=r,
        )
        # Operations (stream/health.py): refreshed by the app's health timer every few
        # seconds from state the worker already holds (no Kafka round trip per event).
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag",
            "Messages behind the log end, per assigned partition of the user-events topic "
            "(log-end offset - committed offset)",
            ["topic", "partition"],
            registry=r,
        )
        self.model_age_seconds = Gauge(
            "streamrec_model_age_seconds",
            "Seconds since the served bundle was created (its metadata created_at; the oldest "
            "of the A/B arms' bundles)",
            registry=r,
        )
        self.model_last_swap_ms = Gauge(
            "streamrec_model_last_swap_ms",
            "Duration of the last hot swap of the served model (load, verify, warm up), ms",
            registry=r,
        )
        self.ready = Gauge(
            "streamrec_ready",
            "1 while the worker is ready (model loaded, Kafka and Redis reachable; GET /ready "
            "answers 200), else 0",
            registry=r,
        )
        # Traffic anomalies (features/traffic.py): an event flagged by several kinds counts
        # once under each.
        self.anomalous_events = Counter(
            "streamrec_anomalous_events",
            "Events of a user, session or item over its events-per-minute bound, answered "
            "non-personalised and kept out of state, by kind",
            ["kind"],
            registry=r,
        )
        self.anomalous_keys = Gauge(
            "streamrec_anomalous_keys",
            "Users, sessions or items flagged now (over their events-per-minute bound), by kind",
            ["kind"],
            registry=r,
        )

    def serve(self, port: int, health: Health | None = None) -> HealthServer | None:
        """Expose ``/metrics`` (and, with ``health``, ``/live`` and ``/ready``) over HTTP on
        ``port`` in a daemon thread (0 disables); returns the server, to stop it in tests."""
        if not port:
            return None
        from stream.health import Health, serve_http

        return serve_http(port, self.registry, health or Health(self.ready))
