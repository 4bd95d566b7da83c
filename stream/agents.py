"""The serving agent: micro-batches from ``user-events`` -> pipeline -> ``recommendations``.

Bad input becomes a dead letter with its reason and the agent goes on. A batch that fails
because Redis is unreachable is retried with capped backoff and is not acknowledged until it
succeeds, so nothing is lost and Kafka holds the backlog (bounded memory). A batch that fails
for any other reason is split into single events, and an event that still fails is
dead-lettered with reason ``processing_error`` instead of crashing the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from faust.types import EventT

from features.online_covisit import CovisitStore
from features.store import StateStoreError, UserStateStore
from models.serving import ServingModel
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Trigger, recommend_batch
from topics.dead_letter import DeadLetter
from topics.events import InvalidEvent, Limits, Reason, parse_event
from topics.recommendations import encode_recommendations

log = logging.getLogger("streamrec.worker")

# (topic, key, value) -> awaitable that resolves once the broker has the record
Publish = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[object]]]

MAX_BACKOFF_S = 5.0


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
    ) -> None:
        self.store = store
        self.online = online
        self.model = model
        self.metrics = metrics
        self.publish = publish
        self.recommendations_topic = recommendations_topic
        self.dead_letter_topic = dead_letter_topic
        self.limits = limits
        self.k = k
        self.n_candidates = n_candidates

    async def handle(self, batch: Sequence[RawMessage]) -> None:
        m = self.metrics
        m.batch_size.observe(len(batch))
        t0 = time.perf_counter()
        triggers: list[Trigger] = []
        sources: list[RawMessage] = []
        pending: list[Awaitable[object]] = []
        for msg in batch:
            try:
                event = parse_event(msg.value, self.limits)
            except InvalidEvent as exc:
                pending.append(await self._dead_letter(msg, exc.reason, exc.detail))
                continue
            m.events_in.labels(event.event_type.value).inc()
            triggers.append(Trigger(event, msg.timestamp_ms))
            sources.append(msg)
        m.stage_ms.labels("validate").observe((time.perf_counter() - t0) * 1000)

        if triggers:
            result = await self._recommend(triggers, sources)
            t1 = time.perf_counter()
            payloads = encode_recommendations(result.recommendations)
            for rec, value in zip(result.recommendations, payloads, strict=True):
                pending.append(
                    await self.publish(self.recommendations_topic, rec.user_id.encode(), value)
                )
            sent_ms = time.time() * 1000
            for t in triggers:
                m.trigger_to_publish_ms.observe(max(0.0, sent_ms - t.sent_ms))
            for rec in result.recommendations:
                m.recommendations_out.labels(rec.kind).inc()
            m.stage_ms.labels("publish").observe((time.perf_counter() - t1) * 1000)
        # At-least-once: the batch is acknowledged (offsets committed) only after every
        # output record of it is on the broker.
        if pending:
            await asyncio.gather(*pending)

    async def _recommend(self, triggers: list[Trigger], sources: list[RawMessage]) -> BatchResult:
        attempt = 0
        while True:
            try:
                result = await recommend_batch(
                    triggers,
                    self.store,
                    self.model,
                    k=self.k,
                    n_candidates=self.n_candidates,
                    online=self.online,
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
                return await self._one_by_one(triggers, sources)
        for stage, ms in result.stage_ms.items():
            self.metrics.stage_ms.labels(stage).observe(ms)
        if result.unknown_items:
            self.metrics.unknown_items.inc(result.unknown_items)
        return result

    async def _one_by_one(self, triggers: list[Trigger], sources: list[RawMessage]) -> BatchResult:
        out = BatchResult([])
        for t, msg in zip(triggers, sources, strict=True):
            try:
                r = await recommend_batch(
                    [t],
                    self.store,
                    self.model,
                    k=self.k,
                    n_candidates=self.n_candidates,
                    online=self.online,
                )
            except StateStoreError:
                raise
            except Exception as exc:
                await (await self._dead_letter(msg, Reason.PROCESSING_ERROR, repr(exc)[:500]))
                continue
            out.recommendations.extend(r.recommendations)
        return out

    async def _dead_letter(self, msg: RawMessage, reason: Reason, detail: str) -> Awaitable[object]:
        self.metrics.dead_letters.labels(reason.value).inc()
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
        return await self.publish(self.dead_letter_topic, msg.key, letter.to_bytes())
