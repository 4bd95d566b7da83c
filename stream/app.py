"""Builds the faust App of the serving worker from Settings. Wiring only."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
import redis.asyncio as aioredis

from features.item_text_store import RedisItemTextStore
from features.online_covisit import RedisCovisitStore
from features.store import StateStoreError, UserStateStore
from models.serving import ServingModel
from models.text_index import ItemTextIndex
from stream.agents import BatchHandler, CatalogueHandler, RawMessage
from stream.metrics import WorkerMetrics
from stream.pipeline import QueryCache, TextSearch
from stream.settings import Settings
from topics import names
from topics.catalogue import CatalogueLimits
from topics.events import Limits

if TYPE_CHECKING:
    from models.text_encoder import TextEncoder

log = logging.getLogger("streamrec.worker")


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
) -> faust.App:
    """A faust App with two agents: user-events in micro-batches -> recommendations, and
    item-catalogue in micro-batches -> the item text index (and Redis); plus a timer that
    indexes catalogue items other workers consumed. ``encoder`` None loads the configured
    one (``load_text_encoder``)."""
    if encoder is None:
        encoder = load_text_encoder(settings)
    index = ItemTextIndex(encoder.dim, encoder.name) if encoder is not None else None
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
    catalogue = app.topic(
        names.catalogue_topic(prefix),
        partitions=names.ITEM_CATALOGUE.partitions,
        value_type=bytes,
        key_type=bytes,
    )
    recs_topic = prefix + names.RECOMMENDATIONS.name
    dead_topic = prefix + names.DEAD_LETTERS.name
    handler_box: dict[str, Handlers] = {}
    creating = asyncio.Lock()

    async def publish(topic: str, key: bytes | None, value: bytes) -> Any:
        return await app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=None
        )

    async def handler() -> Handlers:
        async with creating:  # both agents and the timer ask; build once
            if "h" not in handler_box:
                handler_box["h"] = await build()
        return handler_box["h"]

    async def build() -> Handlers:
        client = aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
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
        events_handler = BatchHandler(
            store=store,
            online=online,
            search=search,
            model=model,
            metrics=metrics,
            publish=publish,
            recommendations_topic=recs_topic,
            dead_letter_topic=dead_topic,
            limits=Limits(max_bytes=settings.max_event_bytes),
            k=settings.top_k,
            n_candidates=settings.candidates,
        )
        return Handlers(events_handler, cat)

    # take_events (not take) keeps each message's topic/partition/offset for dead letters;
    # it exists on faust.Stream but not on the StreamT protocol.
    @app.agent(events, name="recommend")
    async def recommend(stream: faust.StreamT) -> None:
        h = (await handler()).events
        take = stream.take_events  # type: ignore[attr-defined]
        async for batch in take(settings.batch_max, settings.batch_wait_ms / 1000):
            await h.handle([RawMessage.from_event(e) for e in batch])

    @app.agent(catalogue, name="catalogue")
    async def catalogue_items(stream: faust.StreamT) -> None:
        h = (await handler()).catalogue
        take = stream.take_events  # type: ignore[attr-defined]
        async for batch in take(settings.batch_max, settings.batch_wait_ms / 1000):
            await h.handle([RawMessage.from_event(e) for e in batch])

    @app.timer(interval=settings.catalogue_sync_s)
    async def follow_catalogue() -> None:
        try:
            added = await (await handler()).catalogue.sync()
        except StateStoreError as exc:
            log.warning("catalogue sync failed (%s); retrying at the next tick", exc)
            return
        if added:
            log.info("item text index: %d items from other workers", added)

    @app.task
    async def announce() -> None:
        log.info(
            "serving model %s (%s) on %s; topics %s -> %s; search: %s",
            model.version,
            model.scorer.provider,
            settings.kafka_bootstrap_servers,
            events.get_topic_name(),
            recs_topic,
            encoder.name if encoder is not None else "off (STREAMREC_TEXT_ENCODER=none)",
        )

    return app
