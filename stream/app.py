"""Builds the faust App of the serving worker from Settings. Wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.types import EventT

from features.item_text_store import RedisItemTextStore
from features.online_covisit import RedisCovisitStore
from features.result_cache import RedisResultCache
from features.store import StateStoreError, UserStateStore
from features.traffic import TrafficMonitor
from models.ab import ABSplit
from models.bundle import ModelError, latest_bundle
from models.registry import arm_version
from models.scoring import Device
from models.serving import ServingModel
from models.text_index import ItemTextIndex
from stream.agents import BatchHandler, CatalogueHandler, RawMessage
from stream.anomaly import input_limits, rate_bounds
from stream.batcher import IDLE, SIZE, BatchPolicy, CostModel, budget_batches, wall_ms
from stream.follow import follow_topic
from stream.forget import ForgetRequest, follow_forget_requests, forget_in_worker, pseudonymiser_of
from stream.guard import RollbackGuard
from stream.health import CHECK_INTERVAL_S, Health, bundle_age_s, kafka_reachable, partition_lags
from stream.metrics import WorkerMetrics
from stream.model_updates import ModelSwapper
from stream.pipeline import QueryCache, TextSearch
from stream.settings import Settings
from stream.transactions import (
    EXACTLY_ONCE,
    BatchTransactions,
    current_transactional_id,
    faust_commit_settings,
    make_idempotent,
)
from stream.transport import KafkaSecurity, redis_client
from topics import names
from topics.catalogue import CatalogueLimits
from topics.model_updates import ModelUpdate

if TYPE_CHECKING:
    from models.text_encoder import TextEncoder

log = logging.getLogger("streamrec.worker")

MODEL_FOLLOW_RETRY_S = 5.0


def load_text_encoder(settings: Settings) -> TextEncoder | None:
    """The encoder of search queries and catalogue titles (``STREAMREC_TEXT_ENCODER``):
    MiniLM on ONNX Runtime, or None. A configured encoder that cannot load stops start-up
    (the error names the package to install) rather than serving search silently without
    text."""
    if settings.text_encoder == "none":
        return None
    from models.text_encoder import MiniLMEncoder

    encoder = MiniLMEncoder(device=settings.device)  # type: ignore[arg-type]
    encoder.warmup()
    return encoder


@dataclass(slots=True)
class Handlers:
    events: BatchHandler
    catalogue: CatalogueHandler


def create_app(
    settings: Settings,
    model: ServingModel,
    metrics: WorkerMetrics,
    encoder: TextEncoder | None = None,
    health: Health | None = None,
) -> faust.App:
    """A faust App with two agents: user-events in micro-batches -> recommendations, and
    item-catalogue in micro-batches -> the item text index (and Redis); plus a timer that
    indexes catalogue items other workers consumed; plus the hot swap of the served model
    (``follow_model_updates`` on ``model-updates``, and a check of ``CURRENT`` every
    ``STREAMREC_MODEL_POLL_S``); plus the health timer (``/live``, ``/ready``, consumer lag,
    model age: stream/health.py). ``encoder`` None loads the configured one
    (``load_text_encoder``); ``health`` None: the app keeps its own (the worker passes the one
    its HTTP server reads)."""
    pseudonymise = pseudonymiser_of(settings)  # a bad key file stops start-up here
    if encoder is None:
        encoder = load_text_encoder(settings)
    index = ItemTextIndex(encoder.dim, encoder.name) if encoder is not None else None
    prefix = settings.topic_prefix
    datadir = settings.model_dir.parent / "faust-data" / settings.group_id
    datadir.mkdir(parents=True, exist_ok=True)  # faust itself creates only the last level
    kafka_security = KafkaSecurity.of(settings)  # password read once, from env or file
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=kafka_security.faust_credentials(),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=names.USER_EVENTS.partitions,
        topic_disable_leader=True,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        producer_acks=-1,
        stream_buffer_maxsize=max(4 * settings.batch_max, 256),
        datadir=str(datadir),
        **faust_commit_settings(settings.processing_guarantee),
    )
    make_idempotent(app.producer)
    # exactly_once: each batch's outputs and offsets in one transaction (stream/transactions.py)
    tx = BatchTransactions(app, enabled=settings.processing_guarantee == EXACTLY_ONCE)
    events = app.topic(
        prefix + names.USER_EVENTS.name,
        partitions=names.USER_EVENTS.partitions,
        value_type=bytes,
        key_type=bytes,
    )
    catalogue = app.topic(
        names.catalogue_topic(prefix),
        partitions=names.ITEM_CATALOGUE.partitions,
        value_type=bytes,
        key_type=bytes,
    )
    recs_topic = prefix + names.RECOMMENDATIONS.name
    dead_topic = prefix + names.DEAD_LETTERS.name
    updates_topic = names.model_updates_topic(prefix)
    handler_box: dict[str, Handlers] = {}
    creating = asyncio.Lock()

    guard = (
        RollbackGuard(settings.guard_window, settings.guard_min_judged, settings.guard_margin)
        if settings.guard_margin >= 0
        else None
    )

    if health is None:
        health = Health(metrics.ready)

    def swapped(old: ServingModel, new: ServingModel, ms: float) -> None:
        """The new model serves from the next micro-batch on (see ``BatchHandler.handle``)."""
        metrics.model_info.labels(old.version, old.scorer.provider).set(0)
        metrics.model_info.labels(new.version, new.scorer.provider).set(1)
        metrics.model_last_swap_ms.set(ms)
        if guard is not None:
            guard.swapped(old.version, new.version)
        if "h" in handler_box:
            handler_box["h"].events.model = new

    def roll_back(bad: str, good: str, rate: float, base: float) -> None:
        """The guard's verdict: serve ``good`` again and keep CURRENT polling off ``bad``."""
        log.warning(
            "rolling back %s -> %s: live HR@K %.4f < %.4f - %.3f", bad, good, rate, base,
            settings.guard_margin,
            extra={"from_version": bad, "to_version": good, "hit_rate": rate,
                   "baseline_hit_rate": base, "margin": settings.guard_margin},
        )  # fmt: skip
        metrics.model_rollbacks.labels(bad, good).inc()
        swapper.refused.add(bad)
        task = asyncio.ensure_future(swapper.load(settings.model_dir / good))
        rollbacks.add(task)
        task.add_done_callback(rollbacks.discard)

    rollbacks: set[asyncio.Future[bool]] = set()  # keeps the load tasks referenced

    swapper = ModelSwapper(
        model,
        registry=metrics.registry,
        device=cast(Device, settings.device),
        on_swap=swapped,
    )
    app.swapper = swapper  # type: ignore[attr-defined]  # for tests and operators

    async def publish(topic: str, key: bytes | None, value: bytes) -> Any:
        return await app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=None,
            transactional_id=current_transactional_id(),
        )  # fmt: skip

    async def handler() -> Handlers:
        async with creating:  # both agents and the timer ask; build once
            if "h" not in handler_box:
                handler_box["h"] = await build()
        return handler_box["h"]

    async def build() -> Handlers:
        model = swapper.current  # the version served when the first agent starts
        client = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        store = UserStateStore(
            client,
            namespace=settings.namespace,
            ttl_ms=settings.state_ttl_s * 1000,
            half_life_ms=(
                settings.half_life_s * 1000
                if settings.half_life_s is not None
                else model.half_life_ms
            ),
            max_recent=settings.max_recent,
            space_id=model.space_id,
        )
        await store.load_script()
        online = None
        if settings.online_covisit:
            online = RedisCovisitStore(client, namespace=settings.namespace)
            await online.load_script()
        cat = CatalogueHandler(
            store=RedisItemTextStore(client, namespace=settings.namespace),
            index=index,
            encoder=encoder,
            metrics=metrics,
            publish=publish,
            dead_letter_topic=dead_topic,
            limits=CatalogueLimits(max_bytes=settings.max_event_bytes),
        )
        loaded = await cat.load()
        log.info("item text index: %d catalogue items loaded from redis", loaded)
        search = None
        if index is not None:
            search = TextSearch(
                index,
                encoder,
                personal_weight=settings.search_personal_weight,
                hits=settings.search_candidates,
                cache=QueryCache(settings.search_query_cache),
            )
        result_cache = None
        if settings.result_cache_ttl_ms > 0:
            ttl_ms = settings.result_cache_ttl_ms
            result_cache = RedisResultCache(client, namespace=settings.namespace, ttl_ms=ttl_ms)
        events_handler = BatchHandler(
            store=store,
            online=online,
            search=search,
            # Not ``model``: a swap may have completed during the awaits above, before this
            # handler was reachable by ``swapped``.
            model=swapper.current,
            metrics=metrics,
            publish=publish,
            recommendations_topic=recs_topic,
            dead_letter_topic=dead_topic,
            limits=input_limits(settings),
            k=settings.top_k,
            n_candidates=settings.candidates,
            follow_model_half_life=settings.half_life_s is None,
            result_cache=result_cache,
        )
        events_handler.guard = guard
        events_handler.on_rollback = roll_back
        bounds = rate_bounds(settings)
        if bounds.enabled:
            events_handler.traffic = TrafficMonitor(bounds)
            for kind in events_handler.traffic.counters:  # series at 0 from the start
                metrics.anomalous_events.labels(kind)
                metrics.anomalous_keys.labels(kind).set(0)
        events_handler.pseudonymise = pseudonymise
        if settings.ab_arms:
            split = ABSplit.parse(settings.ab_arms, settings.ab_salt)
            # An arm whose training agent promoted a version (ARM.<name>) serves that one.
            arm_models = {
                arm.name: await asyncio.to_thread(
                    ServingModel.load,
                    settings.model_dir / (arm_version(settings.model_dir, arm.name) or arm.version),
                    device=cast(Device, settings.device),
                )
                for arm in split.arms
            }  # fmt: skip
            events_handler.ab = (split, arm_models)
            served = [f"{a.name}={arm_models[a.name].version}:{a.weight:g}" for a in split.arms]
            log.info("A/B: %s", ", ".join(served))
        return Handlers(events_handler, cat)

    # Events (not values) keep each message's topic/partition/offset for dead letters.
    @app.agent(events, name="recommend")
    async def recommend(stream: faust.StreamT) -> None:
        h = (await handler()).events
        if settings.latency_budget_ms > 0:
            await recommend_within_budget(stream, h, settings, metrics, tx)
            return
        # No budget: faust's take_events (not on the StreamT protocol), size or wait only.
        take = stream.take_events  # type: ignore[attr-defined]
        async for batch in take(settings.batch_max, settings.batch_wait_ms / 1000):
            full = len(batch) >= settings.batch_max
            metrics.batches_closed.labels(SIZE if full else IDLE).inc()
            metrics.batch_wait_ms.observe(max(0.0, wall_ms() - min(map(_event_ms, batch))))
            await tx.run([RawMessage.from_event(e) for e in batch], h.handle)

    @app.agent(catalogue, name="catalogue")
    async def catalogue_items(stream: faust.StreamT) -> None:
        h = (await handler()).catalogue
        take = stream.take_events  # type: ignore[attr-defined]
        async for batch in take(settings.batch_max, settings.batch_wait_ms / 1000):
            await tx.run([RawMessage.from_event(e) for e in batch], h.handle)

    @app.timer(interval=settings.catalogue_sync_s)
    async def follow_catalogue() -> None:
        try:
            added = await (await handler()).catalogue.sync()
        except StateStoreError as exc:
            log.warning("catalogue sync failed (%s); retrying at the next tick", exc)
            return
        if added:
            log.info("item text index: %d items from other workers", added)

    async def apply_update(update: ModelUpdate) -> None:
        """Swap to the announced version if it is of this worker's model directory."""
        if update.model_dir is not None and not _same_dir(update.model_dir, settings.model_dir):
            log.info(
                "model update %s is for %s, not %s; ignored",
                update.version,
                update.model_dir,
                settings.model_dir,
            )
            return
        age_ms = time.time() * 1000 - update.at_ms
        log.info(
            "model update: %s %s%s (announced %.0f ms ago)", update.action, update.version,
            f" for arm {update.arm}" if update.arm else "", age_ms,
        )  # fmt: skip
        if update.arm is not None:
            await swap_arm(update.arm, settings.model_dir / update.version)
            return
        await swapper.load(settings.model_dir / update.version)

    async def swap_arm(arm: str, path: Path) -> None:
        """Serve ``path`` to A/B arm ``arm`` from the next batch on (loaded in a thread; a
        bundle that fails to load is refused and the arm keeps its model)."""
        ab = (await handler()).events.ab
        if ab is None or arm not in ab[1]:
            log.info("model update for arm %s, which this worker does not serve; ignored", arm)
            return
        t0 = time.perf_counter()
        try:
            model = await asyncio.to_thread(
                ServingModel.load, path, device=cast(Device, settings.device)
            )
        except Exception as exc:  # a bad bundle must not stop the worker
            swapper.failures.labels("arm_load_error").inc()
            log.error("arm %s: bundle %s refused (%s)", arm, path, exc,
                      extra={"arm": arm, "model_version": path.name})  # fmt: skip
            return
        old = ab[1][arm].version
        ab[1][arm] = model
        ms = (time.perf_counter() - t0) * 1000
        metrics.model_last_swap_ms.set(ms)
        log.info("arm %s serves %s (was %s) after %.0f ms", arm, model.version, old, ms,
                 extra={"arm": arm, "model_version": model.version, "previous_version": old,
                        "swap_ms": round(ms, 1)})  # fmt: skip

    @app.task
    async def follow_model_updates() -> None:
        """Every announcement reaches every worker: each process reads ``model-updates`` in a
        consumer group of its own, from the end (older versions are on disk, and the check
        of ``CURRENT`` covers what was announced before this worker started)."""
        group = f"{settings.group_id}-models-{socket.gethostname()}-{os.getpid()}"

        async def on_value(value: bytes | None) -> None:
            update = ModelUpdate.parse(value)
            if update is not None:
                await apply_update(update)

        await follow_topic(
            updates_topic,
            bootstrap=settings.kafka_bootstrap_servers,
            group=group,
            client_kwargs=kafka_security.client_kwargs(),
            on_value=on_value,
            what="model updates",
            retry_s=MODEL_FOLLOW_RETRY_S,
        )

    async def apply_forget(request: ForgetRequest) -> None:
        forgotten = await forget_in_worker((await handler()).events, request.user_id)
        log.info("forget request %s applied: %s", request.request_id, forgotten)

    @app.task
    async def follow_forget() -> None:
        """``streamrec forget-user`` reaches every worker (stream/forget.py)."""
        group = f"{settings.group_id}-forget-{socket.gethostname()}-{os.getpid()}"
        await follow_forget_requests(
            settings.kafka_bootstrap_servers, prefix, group, apply_forget,
            kafka=kafka_security.client_kwargs(),
        )  # fmt: skip

    if settings.model_poll_s > 0:

        @app.timer(interval=settings.model_poll_s)
        async def check_current_model() -> None:
            """The fallback for a missed announcement: serve what ``CURRENT`` names. A version
            that was refused is tried again only when announced, not at every tick."""
            try:
                path = await asyncio.to_thread(latest_bundle, settings.model_dir)
            except (ModelError, OSError) as exc:
                log.warning("cannot read the current model (%s); keeping %s", exc, swapper.version)
                return
            if path is None or path.name == swapper.version or path.name in swapper.refused:
                return
            log.info("CURRENT names %s (serving %s)", path.name, swapper.version)
            await swapper.load(path)

    redis_probe = redis_client(
        settings, socket_timeout=CHECK_INTERVAL_S, socket_connect_timeout=CHECK_INTERVAL_S
    )
    events_topic = events.get_topic_name()
    lagging: set[int] = set()  # partitions with a lag series, removed when revoked

    @app.timer(interval=CHECK_INTERVAL_S)
    async def check_health() -> None:
        """Feeds ``/live`` and ``/ready`` (stream/health.py) and refreshes the gauges read
        from state the worker holds anyway: consumer lag (known highwater - committed offset,
        no request to Kafka) and the served bundle's age."""
        health.beat()
        try:
            await asyncio.wait_for(redis_probe.ping(), CHECK_INTERVAL_S)
            health.redis_answered()
        except Exception as exc:  # unreachable, timeout, auth: readiness says so
            log.debug("redis PING failed: %r", exc)
        health.kafka = kafka_reachable(app)
        h = handler_box.get("h")
        health.model = h is not None and h.events.model is not None
        lags = dict(partition_lags(app, events_topic))
        for partition in lagging - set(lags):
            with contextlib.suppress(KeyError):
                metrics.consumer_lag.remove(events_topic, str(partition))
        for partition, lag in lags.items():
            metrics.consumer_lag.labels(events_topic, str(partition)).set(lag)
        lagging.clear()
        lagging.update(lags)
        served = list(h.events.ab[1].values()) if h is not None and h.events.ab else []
        ages = [bundle_age_s(m.bundle.metadata) for m in served or [swapper.current]]
        known = [a for a in ages if a is not None]
        if known:
            metrics.model_age_seconds.set(max(known))
        health.evaluate()

    @app.task
    async def announce() -> None:
        log.info(
            "serving model %s (%s) on %s (%s); topics %s -> %s; search: %s",
            swapper.version,
            swapper.current.scorer.provider,
            settings.kafka_bootstrap_servers,
            kafka_security.describe(),
            events.get_topic_name(),
            recs_topic,
            encoder.name if encoder is not None else "off (STREAMREC_TEXT_ENCODER=none)",
        )

    return app


async def recommend_within_budget(
    stream: faust.StreamT,
    h: BatchHandler,
    settings: Settings,
    metrics: WorkerMetrics,
    tx: BatchTransactions | None = None,
) -> None:
    """The recommend agent's loop under ``STREAMREC_LATENCY_BUDGET_MS`` (stream/batcher.py).

    Acknowledgement as with faust's ``take_events``: the stream's own acks are off and each
    event of a batch is acked after ``handle`` returned, i.e. after every output record of
    the batch is on the broker; so offsets are committed only past handled events. One
    difference, on purpose: an event whose batch raised (or was cancelled mid-batch) is not
    acked, where ``take_events`` acks its buffer on the way out; it is read again after a
    restart or rebalance (at-least-once)."""
    policy = BatchPolicy(settings.batch_max, settings.batch_wait_ms, settings.latency_budget_ms)
    cost = CostModel(span=settings.batch_max)
    log.info(
        "micro-batches: at most %d events, %g ms wait, latency budget %g ms",
        settings.batch_max, settings.batch_wait_ms, settings.latency_budget_ms,
    )  # fmt: skip
    acks = stream.enable_acks
    stream.enable_acks = False
    try:  # aclosing: a cancelled agent stops the batcher's pump at once, not at GC
        async with contextlib.aclosing(
            budget_batches(stream.events(), _event_ms, policy, cost)
        ) as batches:
            async for batch in batches:
                metrics.batches_closed.labels(batch.reason).inc()
                metrics.batch_wait_ms.observe(batch.wait_ms)
                msgs = [RawMessage.from_event(e) for e in batch.items]
                await (h.handle(msgs) if tx is None else tx.run(msgs, h.handle))
                for event in batch.items:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks


def _event_ms(event: EventT) -> float:
    """The record's Kafka timestamp (producer CreateTime) in ms; 0 when it has none."""
    return float(event.message.timestamp or 0.0) * 1000


def _same_dir(a: str | Path, b: Path) -> bool:
    """Whether two spellings name one model directory (symlinks and ``~`` resolved)."""
    try:
        return Path(a).expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return False
