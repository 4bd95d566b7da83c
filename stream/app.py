"""Builds the faust App of the serving worker from Settings. Wiring only."""

from __future__ import annotations

import logging
from typing import Any

import faust
import redis.asyncio as aioredis

from features.online_covisit import RedisCovisitStore
from features.store import UserStateStore
from models.serving import ServingModel
from stream.agents import BatchHandler, RawMessage
from stream.metrics import WorkerMetrics
from stream.settings import Settings
from topics import names
from topics.events import Limits

log = logging.getLogger("streamrec.worker")


def create_app(settings: Settings, model: ServingModel, metrics: WorkerMetrics) -> faust.App:
    """A faust App with one agent: user-events in micro-batches -> recommendations."""
    prefix = settings.topic_prefix
    datadir = settings.model_dir.parent / "faust-data" / settings.group_id
    datadir.mkdir(parents=True, exist_ok=True)  # faust itself creates only the last level
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")],
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
    )
    events = app.topic(
        prefix + names.USER_EVENTS.name,
        partitions=names.USER_EVENTS.partitions,
        value_type=bytes,
        key_type=bytes,
    )
    recs_topic = prefix + names.RECOMMENDATIONS.name
    dead_topic = prefix + names.DEAD_LETTERS.name
    handler_box: dict[str, BatchHandler] = {}

    async def publish(topic: str, key: bytes | None, value: bytes) -> Any:
        return await app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=None
        )

    async def handler() -> BatchHandler:
        if "h" not in handler_box:
            client = aioredis.from_url(
                settings.redis_url, socket_timeout=5, socket_connect_timeout=5
            )
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
            handler_box["h"] = BatchHandler(
                store=store,
                online=online,
                model=model,
                metrics=metrics,
                publish=publish,
                recommendations_topic=recs_topic,
                dead_letter_topic=dead_topic,
                limits=Limits(max_bytes=settings.max_event_bytes),
                k=settings.top_k,
                n_candidates=settings.candidates,
            )
        return handler_box["h"]

    @app.agent(events, name="recommend")
    async def recommend(stream: faust.StreamT) -> None:
        h = await handler()
        # take_events (not take) keeps each message's topic/partition/offset for dead letters;
        # it exists on faust.Stream but not on the StreamT protocol.
        take = stream.take_events  # type: ignore[attr-defined]
        async for batch in take(settings.batch_max, settings.batch_wait_ms / 1000):
            await h.handle([RawMessage.from_event(e) for e in batch])

    @app.task
    async def announce() -> None:
        log.info(
            "serving model %s (%s) on %s; topics %s -> %s",
            model.version,
            model.scorer.provider,
            settings.kafka_bootstrap_servers,
            events.get_topic_name(),
            recs_topic,
        )

    return app
