"""The serving agents: micro-batches from ``user-events`` -> pipeline -> ``recommendations``
(``BatchHandler``), and from ``item-catalogue`` -> embedded titles in Redis and in the item
text index (``CatalogueHandler``).

Bad input becomes a dead letter with its reason and the agent goes on. A batch that fails
because Redis is unreachable is retried with capped backoff and is not acknowledged until it
succeeds, so nothing is lost and Kafka holds the backlog (bounded memory). A batch that fails
for any other reason is split into single records, and a record that still fails is
dead-lettered with reason ``processing_error`` instead of crashing the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from faust.types import EventT

from features.item_text_store import ItemTextStore, StoredItem
from features.online_covisit import CovisitStore
from features.pseudonym import Pseudonymiser
from features.result_cache import ResultCache
from features.store import StateStoreError, UserStateStore
from features.traffic import TrafficMonitor
from models.ab import ABSplit, HitTracker, ImpressionTracker
from models.serving import ServingModel
from models.text_index import ItemTextIndex
from stream.anomaly import Fallback, check_event, merge_in_order
from stream.guard import RollbackGuard
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, TextSearch, Trigger, recommend_batch
from topics.catalogue import CatalogueItem, CatalogueLimits, parse_catalogue_item
from topics.dead_letter import DeadLetter
from topics.events import EventType, InvalidEvent, Limits, Reason, UserEvent, parse_event
from topics.recommendations import Recommendation, encode_recommendations

if TYPE_CHECKING:
    from models.text_encoder import TextEncoder

log = logging.getLogger("streamrec.worker")

# (topic, key, value) -> awaitable that resolves once the broker has the record
Publish = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[object]]]

MAX_BACKOFF_S = 5.0
# Titles per encoder call when (re-)embedding stored items at start-up.
LOAD_CHUNK = 256


@dataclass(slots=True)
class RawMessage:
    """The parts of a consumed Kafka record the handler needs (faust-independent)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: float
    key: bytes | None
    value: bytes | None

    @classmethod
    def from_event(cls, event: EventT) -> RawMessage:
        m = event.message
        return cls(m.topic, m.partition, m.offset, m.timestamp * 1000, m.key, m.value)


class BatchHandler:
    """Handles one consumed micro-batch end to end; owns no Kafka client (see ``publish``)."""

    def __init__(
        self,
        *,
        store: UserStateStore,
        model: ServingModel,
        metrics: WorkerMetrics,
        publish: Publish,
        recommendations_topic: str,
        dead_letter_topic: str,
        limits: Limits,
        k: int,
        n_candidates: int,
        online: CovisitStore | None = None,
        search: TextSearch | None = None,
        follow_model_half_life: bool = False,
        result_cache: ResultCache | None = None,
    ) -> None:
        self.store = store
        self.online = online
        self.search = search
        # Hot-result cache (stream/result_cache_policy.py); None: every list is computed.
        self.result_cache = result_cache
        # Rebound by a hot swap (stream/model_updates.py); ``handle`` reads it once per batch.
        self.model = model
        self.follow_model_half_life = follow_model_half_life
        self.metrics = metrics
        self.publish = publish
        self.recommendations_topic = recommendations_topic
        self.dead_letter_topic = dead_letter_topic
        self.limits = limits
        self.k = k
        self.n_candidates = n_candidates
        self.tracker = HitTracker(k=k)
        self.impressions = ImpressionTracker()
        # A/B (STREAMREC_AB_ARMS): the split and each arm's pinned model; None = one model.
        self.ab: tuple[ABSplit, dict[str, ServingModel]] | None = None
        # Guarded updates (stream/guard.py): set by the app with the callback that rolls back.
        self.guard: RollbackGuard | None = None
        self.on_rollback: Callable[[str, str, float, float], None] | None = None
        self.batches = 0  # micro-batches handled: the batch id of the per-batch debug log
        # STREAMREC_PSEUDONYMISE_KEY (features/pseudonym.py): user ids are replaced right after
        # validation, so state, trackers, arms and outputs only ever see the pseudonym.
        self.pseudonymise: Pseudonymiser | None = None
        # Traffic anomalies (features/traffic.py, set by the app; None = off): flagged
        # triggers get ``fallback``'s non-personalised list and skip the state update.
        self.traffic: TrafficMonitor | None = None
        self.fallback = Fallback(k, n_candidates)

    async def handle(self, batch: Sequence[RawMessage]) -> None:
        # One model for the whole batch: a hot swap rebinds ``self.model`` while this batch
        # awaits Redis or Kafka, and must take effect at the next batch, not halfway through
        # (candidates of one version scored or ranked by another).
        model = self.model
        m = self.metrics
        m.batch_size.observe(len(batch))
        t0 = time.perf_counter()
        triggers: list[Trigger] = []
        sources: list[RawMessage] = []
        pending: list[Awaitable[object]] = []
        parsed: list[UserEvent] = []
        flagged: list[Trigger] = []
        flags: list[bool] = []  # per trigger, in batch order: flagged as anomalous traffic?
        now_ms = time.time() * 1000
        for msg in batch:
            try:
                event = parse_event(msg.value, self.limits, now_ms)
            except InvalidEvent as exc:
                pending.append(await self._dead_letter(msg, exc.reason, exc.detail))
                continue
            if self.pseudonymise is not None:
                event.user_id = self.pseudonymise(event.user_id)
            m.events_in.labels(event.event_type.value).inc()
            if event.event_type is EventType.IMPRESSION:
                parsed.append(event)
                continue  # feedback: counted for CTR, answered by no recommendation
            trigger = Trigger(event, msg.timestamp_ms)
            flags.append(self._anomalous(event))
            if flags[-1]:
                flagged.append(trigger)
                continue
            parsed.append(event)
            triggers.append(trigger)
            sources.append(msg)
        m.stage_ms.labels("validate").observe((time.perf_counter() - t0) * 1000)
        self.batches += 1
        result: BatchResult | None = None

        if triggers:
            if self.ab is None:
                self._follow(model)
                result = await self._recommend(triggers, sources, model)
            else:
                result = await self._recommend_arms(triggers, sources)
        if triggers or flagged:
            t1 = time.perf_counter()
            recs = result.recommendations if result is not None else []
            if flagged:  # never through the pipeline: no Redis write, not judged by HR@K
                answers = self.fallback.answer(flagged, model, time.time() * 1000)
                ids = [t.event.event_id for t in triggers]
                recs = merge_in_order(flags, ids, recs, answers)
            payloads = encode_recommendations(recs)
            for rec, value in zip(recs, payloads, strict=True):
                pending.append(
                    await self.publish(self.recommendations_topic, rec.user_id.encode(), value)
                )
            sent_ms = time.time() * 1000
            for t in (*triggers, *flagged):
                m.trigger_to_publish_ms.observe(max(0.0, sent_ms - t.sent_ms))
            for rec in recs:
                m.recommendations_out.labels(rec.kind).inc()
            if result is not None:
                self._track(triggers, result.recommendations)
            m.stage_ms.labels("publish").observe((time.perf_counter() - t1) * 1000)
        if len(parsed) > len(triggers) or self.impressions.pending:
            self._track_impressions(parsed, model)
        if self.traffic is not None:
            for kind, n in self.traffic.flagged().items():
                m.anomalous_keys.labels(kind).set(n)
        # At-least-once: the batch is acknowledged (offsets committed) only after every
        # output record of it is on the broker.
        if pending:
            await asyncio.gather(*pending)
        if log.isEnabledFor(logging.DEBUG):
            self._log_batch(len(batch), len(triggers), result, model, t0)

    def _anomalous(self, event: UserEvent) -> bool:
        """Count the trigger in the traffic monitor; True when a key of it is over its bound
        (each such kind counted in ``streamrec_anomalous_events_total``)."""
        if self.traffic is None:
            return False
        over = check_event(self.traffic, event)
        for kind in over:
            self.metrics.anomalous_events.labels(kind).inc()
        return bool(over)

    def _log_batch(
        self,
        size: int,
        triggers: int,
        result: BatchResult | None,
        model: ServingModel,
        t0: float,
    ) -> None:
        """One DEBUG line per micro-batch, its numbers as fields (``STREAMREC_LOG_FORMAT=json``
        makes them queryable): which batch, how big, which version(s), where the time went."""
        total_ms = (time.perf_counter() - t0) * 1000
        stages = {k: round(v, 3) for k, v in (result.stage_ms if result else {}).items()}
        if self.ab is None:
            version = str(model.version)
        else:
            version = ",".join(f"{a}={m.version}" for a, m in self.ab[1].items())
        log.debug(
            "batch %d: %d events, %d triggers, model %s, %.2f ms",
            self.batches, size, triggers, version, total_ms,
            extra={
                "batch_id": self.batches,
                "batch_size": size,
                "triggers": triggers,
                "model_version": version,
                "total_ms": round(total_ms, 3),
                "stage_ms": stages,
            },
        )  # fmt: skip

    async def _recommend_arms(
        self, triggers: list[Trigger], sources: list[RawMessage]
    ) -> BatchResult:
        """A/B: the batch's users split by arm (a stable hash, models/ab.py), one
        ``recommend_batch`` per arm with that arm's model, records in the batch's order and
        marked with their arm."""
        assert self.ab is not None
        split, models = self.ab
        arms = split.assign([t.event.user_id for t in triggers])
        by_event: dict[str, Recommendation] = {}
        out = BatchResult([])
        for arm in split.arms:
            rows = [i for i, a in enumerate(arms) if a.name == arm.name]
            if not rows:
                continue
            model = models[arm.name]
            self._follow(model)
            part = await self._recommend([triggers[i] for i in rows],
                                         [sources[i] for i in rows], model)  # fmt: skip
            for rec in part.recommendations:
                rec.arm = arm.name
                by_event[rec.event_id] = rec
            out.unknown_items += part.unknown_items
        out.recommendations = [by_event[t.event.event_id] for t in triggers
                               if t.event.event_id in by_event]  # fmt: skip
        return out

    def _track(self, triggers: list[Trigger], recs: list[Recommendation]) -> None:
        """Live HR@K and MRR@K per model version and arm: each trigger's item judges the
        user's previous list (in stream order), then its own list becomes the pending one."""
        by_event = {r.event_id: r for r in recs}
        for t in triggers:
            e = t.event
            rec = by_event.get(e.event_id)
            if rec is None:
                continue
            seen = [(e.user_id, e.item_id)] if e.item_id is not None else []
            for j in self.tracker.judge(seen):
                version, arm = j.arm.split("\t", 1)
                self.metrics.online_judged.labels(version, arm).inc()
                # rr also on a miss (+0): its series exists as soon as judged's does, so the
                # MRR ratio reads 0 rather than no data.
                self.metrics.online_rr.labels(version, arm).inc(j.rr)
                if j.hit:
                    self.metrics.online_hits.labels(version, arm).inc()
                if self.guard is not None:
                    self.guard.record(version, j.hit)
            self.tracker.recommended(e.user_id, f"{rec.model_version}\t{rec.arm or ''}", rec.items)
        if self.guard is not None and self.on_rollback is not None:
            verdict = self.guard.check()
            if verdict is not None:
                self.on_rollback(*verdict)

    def _track_impressions(self, events: list[UserEvent], model: ServingModel) -> None:
        """CTR where impressions exist, in stream order: an impression is labelled with the
        version and arm serving its user now; an item event may click the user's pending
        impression."""
        for e in events:
            if e.event_type is EventType.IMPRESSION:
                label = self._serving_label(e.user_id, model)
                self.impressions.impressed(e.user_id, label, e.shown_items or [])
                self.metrics.online_impressions.labels(*label).inc()
            elif e.item_id is not None:
                clicked = self.impressions.interacted(e.user_id, e.item_id)
                if clicked is not None:
                    self.metrics.online_clicks.labels(*clicked).inc()

    def _serving_label(self, user_id: str, model: ServingModel) -> tuple[str, str]:
        if self.ab is None:
            return str(model.version), ""
        split, models = self.ab
        arm = split.assign([user_id])[0].name
        return str(models[arm].version), arm

    def _follow(self, model: ServingModel) -> None:
        """Write user vectors in the embedding space of ``model`` (and with its half-life,
        unless a setting overrides it): after a swap to another space, a user's old vector
        is ignored by ``build_arrays`` and replaced at their next item event."""
        store = self.store
        if store is None or model is None:  # handler tests without Redis or a model
            return
        store.space_id = model.space_id
        if self.follow_model_half_life:
            store.half_life_ms = model.half_life_ms

    async def _recommend(
        self, triggers: list[Trigger], sources: list[RawMessage], model: ServingModel
    ) -> BatchResult:
        attempt = 0
        while True:
            try:
                result = await recommend_batch(
                    triggers,
                    self.store,
                    model,
                    k=self.k,
                    n_candidates=self.n_candidates,
                    online=self.online,
                    search=self.search,
                    cache=self.result_cache,
                )
                break
            except StateStoreError as exc:
                attempt += 1
                self.metrics.batch_errors.labels("state").inc()
                delay = min(MAX_BACKOFF_S, 0.05 * 2**attempt)
                log.warning("redis unavailable (%s); retrying batch in %.2fs", exc, delay)
                await asyncio.sleep(delay)
            except Exception:
                self.metrics.batch_errors.labels("pipeline").inc()
                log.exception("batch of %d failed; retrying event by event", len(triggers))
                return await self._one_by_one(triggers, sources, model)
        for stage, ms in result.stage_ms.items():
            self.metrics.stage_ms.labels(stage).observe(ms)
        for outcome, n in result.cache_lookups.items():
            self.metrics.result_cache_lookups.labels(outcome).inc(n)
        if result.unknown_items:
            self.metrics.unknown_items.inc(result.unknown_items)
        if result.replayed:
            self.metrics.replayed_events.inc(result.replayed)
        return result

    async def _one_by_one(
        self, triggers: list[Trigger], sources: list[RawMessage], model: ServingModel
    ) -> BatchResult:
        out = BatchResult([])
        for t, msg in zip(triggers, sources, strict=True):
            try:
                r = await recommend_batch(
                    [t],
                    self.store,
                    model,
                    k=self.k,
                    n_candidates=self.n_candidates,
                    online=self.online,
                    search=self.search,
                    cache=self.result_cache,
                )
            except StateStoreError:
                raise
            except Exception as exc:
                await (await self._dead_letter(msg, Reason.PROCESSING_ERROR, repr(exc)[:500]))
                continue
            if r.replayed:  # also events the failed batch attempt had already applied
                self.metrics.replayed_events.inc(r.replayed)
            out.recommendations.extend(r.recommendations)
        return out

    async def _dead_letter(self, msg: RawMessage, reason: Reason, detail: str) -> Awaitable[object]:
        if self.pseudonymise is not None:  # no raw user id in the dead-letter topic either
            raw, key = self.pseudonymise.redact_dead_letter(msg.value or b"", msg.key)
            msg = replace(msg, value=raw, key=key)
        return await dead_letter(
            self.publish, self.metrics, self.dead_letter_topic, msg, reason, detail
        )


async def dead_letter(
    publish: Publish,
    metrics: WorkerMetrics,
    topic: str,
    msg: RawMessage,
    reason: Reason,
    detail: str,
) -> Awaitable[object]:
    """Publish ``msg`` to the dead-letter ``topic`` with its reason; returns the delivery."""
    metrics.dead_letters.labels(reason.value).inc()
    letter = DeadLetter(
        reason=reason.value,
        detail=detail,
        source_topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        raw=msg.value or b"",
        key=msg.key,
        failed_at_ms=int(time.time() * 1000),
    )
    return await publish(topic, msg.key, letter.to_bytes())


class CatalogueHandler:
    """Catalogue items in: validated, titles embedded, stored in Redis, added to the index.

    Per batch: one encoder call for every valid title (in a thread, so that the event loop
    keeps serving recommendations meanwhile; ONNX Runtime releases the GIL), one pipelined
    Redis write, one index upsert. A record of an item repeated within the batch counts once
    (the last wins). An item is searchable as soon as its batch is handled. Without an encoder
    (``STREAMREC_TEXT_ENCODER=none``) titles are stored unembedded and ``index`` is None: a
    later worker with an encoder embeds them when it loads (``load``).

    The consumer group hands the topic's partition to one worker; every worker also follows
    the store's change log (``sync``) to index what another worker consumed.
    """

    def __init__(
        self,
        *,
        store: ItemTextStore,
        index: ItemTextIndex | None,
        encoder: TextEncoder | None,
        metrics: WorkerMetrics,
        publish: Publish,
        dead_letter_topic: str,
        limits: CatalogueLimits,
    ) -> None:
        if index is not None and (encoder is None or encoder.dim != index.dim):
            raise ValueError("the text index needs the encoder of its space")
        self.store = store
        self.index = index
        self.encoder = encoder
        self.metrics = metrics
        self.publish = publish
        self.dead_letter_topic = dead_letter_topic
        self.limits = limits
        self.cursor = "0-0"
        self._own: set[str] = set()  # log positions of this worker's own writes

    async def handle(self, batch: Sequence[RawMessage]) -> None:
        m = self.metrics
        pending: list[Awaitable[object]] = []
        latest: dict[str, tuple[CatalogueItem, RawMessage]] = {}
        for msg in batch:
            try:
                item = parse_catalogue_item(msg.value, self.limits)
            except InvalidEvent as exc:
                pending.append(await self._dead_letter(msg, exc.reason, exc.detail))
                continue
            m.events_in.labels("catalogue_item").inc()
            latest.pop(item.item_id, None)  # re-insert: dict order = order of last records
            latest[item.item_id] = (item, msg)
        if latest:
            items = [item for item, _ in latest.values()]
            try:
                await self._process(items)
            except Exception:
                m.batch_errors.labels("catalogue").inc()
                log.exception("catalogue batch of %d failed; retrying item by item", len(items))
                for item, msg in latest.values():
                    try:
                        await self._process([item])
                    except Exception as exc:
                        detail = repr(exc)[:500]
                        await (await self._dead_letter(msg, Reason.PROCESSING_ERROR, detail))
        if pending:
            await asyncio.gather(*pending)

    async def _process(self, items: list[CatalogueItem]) -> None:
        """Embed, store (retried while Redis is unreachable), then index ``items``."""
        t0 = time.perf_counter()
        vectors = await self._embed([i.title for i in items])
        t1 = time.perf_counter()
        name = self.encoder.name if self.encoder is not None and vectors is not None else ""
        stored = [
            StoredItem(
                item_id=i.item_id,
                title=i.title,
                timestamp_ms=i.timestamp_ms,
                encoder=name,
                vector=vectors[row] if vectors is not None else None,
                category=i.category,
                price=i.price,
            )
            for row, i in enumerate(items)
        ]
        attempt = 0
        while True:
            try:
                position = await self.store.put_batch(stored)
                break
            except StateStoreError as exc:
                attempt += 1
                self.metrics.batch_errors.labels("catalogue_state").inc()
                delay = min(MAX_BACKOFF_S, 0.05 * 2**attempt)
                log.warning("redis unavailable (%s); retrying catalogue in %.2fs", exc, delay)
                await asyncio.sleep(delay)
        self._own.add(position)
        if self.index is not None and vectors is not None:
            self.index.upsert([i.item_id for i in items], vectors)
        self.metrics.stage_ms.labels("catalogue_embed").observe((t1 - t0) * 1000)
        self.metrics.stage_ms.labels("catalogue_store").observe((time.perf_counter() - t1) * 1000)

    async def _embed(self, titles: list[str]) -> np.ndarray | None:
        """``float32[N, dim]`` from one encoder call in a worker thread; None without one."""
        if self.encoder is None or not titles:
            return None
        vectors = await asyncio.to_thread(self.encoder.encode, titles)
        return np.asarray(vectors, dtype=np.float32)

    async def load(self) -> int:
        """Index every stored item (one SCAN pass); titles stored without a vector of this
        encoder are embedded now, in chunks, and written back, so that this happens once.
        Returns how many items were indexed."""
        items, self.cursor = await self.store.load_all()
        return await self._index(items, write_back=True)

    async def sync(self) -> int:
        """Index the items other workers stored since the last ``load`` / ``sync``."""
        items, positions, self.cursor = await self.store.changes_since(self.cursor)
        if not positions or set(positions) <= self._own:
            self._own.difference_update(positions)
            return 0
        self._own.difference_update(positions)
        return await self._index(items, write_back=False)

    async def _index(self, items: list[StoredItem], *, write_back: bool) -> int:
        if self.index is None or self.encoder is None or not items:
            return 0
        name, dim = self.encoder.name, self.index.dim
        current = [
            i.encoder == name and i.vector is not None and i.vector.size == dim for i in items
        ]
        ready = [i for i, ok in zip(items, current, strict=True) if ok]
        stale = [i for i, ok in zip(items, current, strict=True) if not ok]
        for start in range(0, len(stale), LOAD_CHUNK):
            chunk = stale[start : start + LOAD_CHUNK]
            vectors = await self._embed([i.title for i in chunk])
            assert vectors is not None
            for row, item in enumerate(chunk):
                item.encoder, item.vector = name, vectors[row]
            if write_back:
                self._own.add(await self.store.put_batch(chunk))
            ready.extend(chunk)
        for start in range(0, len(ready), 4096):
            chunk = ready[start : start + 4096]
            vectors = np.stack([np.asarray(i.vector, dtype=np.float32) for i in chunk])
            self.index.upsert([i.item_id for i in chunk], vectors)
        return len(ready)

    async def _dead_letter(self, msg: RawMessage, reason: Reason, detail: str) -> Awaitable[object]:
        return await dead_letter(
            self.publish, self.metrics, self.dead_letter_topic, msg, reason, detail
        )
