"""Exactly-once output (``STREAMREC_PROCESSING_GUARANTEE=exactly_once``): each micro-batch's
output records and its input offsets are committed in one Kafka transaction.

faust's own exactly-once mode (``processing_guarantee="exactly_once"``) keeps one
transactional producer per assigned source partition (transactional id
``{app id}-{topic group}-{partition}``, started and fenced on rebalance by its
``TransactionManager``) but, as of faust-streaming 0.15, does not give this worker
exactly-once by itself:

- ``app.producer.send`` without a ``transactional_id`` (what the worker's ``publish`` did)
  goes to the plain producer, outside every transaction;
- ``TransactionManager.send`` (what ``topic.send`` uses) picks the transaction by the
  *output* record's partition and looks its topic up in the assignor's topic groups, which
  hold source topics only: a KeyError for ``recommendations``;
- its commit runs on a timer (``broker_commit_interval``) independently of the agents, so a
  transaction can commit the outputs of a batch still in flight together with offsets that
  stop before that batch: after a crash the batch is processed again and its outputs are
  committed twice;
- its commit hands faust ``TP`` keys to aiokafka's ``send_offsets_to_transaction``, which
  refuses them (TypeError);
- after a rebalance it may keep using a producer that another worker's has fenced (``run``).

So here: faust creates and fences the per-partition producers, and its own offset commits
are turned off (``faust_commit_settings``); ``BatchTransactions.batch`` routes every record
a batch publishes into the transaction of the batch's first source partition and, when the
batch's handler returned (every output delivered), commits the batch's offsets (all its
partitions) in that same transaction, then lets faust's acks follow. A crash before that
commit aborts the batch's outputs (the restarted worker's producer with the same id fences
the old one and aborts its open transaction) and the batch is read again; a crash after it
finds the offsets committed. Either way a ``read_committed`` consumer sees each output once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from aiokafka.errors import IllegalOperation, ProducerFenced
from aiokafka.structs import TopicPartition
from faust.exceptions import ProducerSendError
from faust.types import TP

log = logging.getLogger("streamrec.worker")

AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"
# Long enough never to fire: with exactly_once the batches commit (stream/transactions.py).
NEVER_S = 365 * 24 * 3600.0
NEVER_N = 2**62

MAX_RENEWALS = 3  # fresh producers tried for one batch before its error propagates

_CURRENT: ContextVar[str | None] = ContextVar("streamrec_transactional_id", default=None)


class SourceRecord(Protocol):
    """What a batch's transaction needs of a consumed record (``stream.agents.RawMessage``)."""

    topic: str
    partition: int
    offset: int


R = TypeVar("R", bound=SourceRecord)


def producer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the transactional producer is unusable:
    fenced by a newer one with its id, or left in a failed transaction state, or missing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProducerFenced | IllegalOperation):
            return True
        if isinstance(seen, ProducerSendError) and "No transaction producer" in str(seen):
            return True
        seen = seen.__cause__
    return False


def faust_commit_settings(guarantee: str) -> dict[str, Any]:
    """Extra ``faust.App`` settings for ``guarantee``: exactly-once turns faust's periodic and
    every-N-messages offset commits off, because they would commit transactions mid-batch
    (see the module docstring)."""
    if guarantee != EXACTLY_ONCE:
        return {"processing_guarantee": AT_LEAST_ONCE}
    return {
        "processing_guarantee": EXACTLY_ONCE,
        "broker_commit_interval": NEVER_S,
        "broker_commit_every": NEVER_N,
    }


def batch_offsets(records: Sequence[SourceRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit after ``records``: per partition, one past its last record
    (Kafka's committed offset is the next one to read). Keys are aiokafka's
    ``TopicPartition``, which ``send_offsets_to_transaction`` insists on (faust's ``TP``, what
    faust's own ``TransactionManager.commit`` passes, is refused with a TypeError)."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


def current_transactional_id() -> str | None:
    """The transactional id the running batch publishes under; None outside ``batch`` or
    with at-least-once (the plain producer)."""
    return _CURRENT.get()


def make_idempotent(producer: Any) -> None:
    """Turn on ``enable.idempotence`` (with ``acks=all``) for faust's plain producer, which
    faust enables only for its transactional ones: a retried send after a lost broker
    acknowledgement is then not written twice. Must run before the producer starts."""
    extra = producer._settings_extra

    def settings_extra() -> dict[str, Any]:
        return {**extra(), "acks": "all", "enable_idempotence": True}

    producer._settings_extra = settings_extra


class BatchTransactions:
    """Per-batch transactions over faust's transactional producers (module docstring);
    with ``enabled`` False every method is a no-op and publishing is unchanged."""

    def __init__(self, app: Any, *, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled
        # faust puts co-partitioned source topics (user-events and item-catalogue when their
        # partition counts match) in one topic group, so both agents can map to the same
        # transactional producer: one batch at a time per producer, or one agent's commit
        # would commit the other's outputs mid-batch.
        self._locks: dict[str, asyncio.Lock] = {}
        self._faust_commits_off = False

    def _turn_faust_commits_off(self) -> None:
        """Make faust's own transactional commit a no-op: it still runs at stop and rebalance
        (``commit_and_end_transactions``), with the offsets faust saw acknowledged. Those
        include the events of a batch cancelled mid-way (SIGTERM during a batch: faust's
        ``take_events`` acknowledges its buffer on the way out), whose outputs were aborted:
        committing their offsets would lose them. Only ``batch`` commits."""
        if self._faust_commits_off:
            return

        async def no_commit(offsets: Any, start_new_transaction: bool = True) -> bool:
            return False

        self.app.consumer.transactions.commit = no_commit
        self._faust_commits_off = True

    def transactional_id(self, record: SourceRecord) -> str:
        """faust's id of the producer of ``record``'s partition (``TransactionManager``)."""
        group = self.app.assignor.group_for_topic(record.topic)
        return f"{self.app.conf.id}-{group}-{record.partition}"

    async def run(
        self, records: Sequence[R], handle: Callable[[Sequence[R]], Awaitable[None]]
    ) -> None:
        """``handle(records)`` in one transaction (``batch``); with exactly-once, only the
        records of partitions this worker is assigned, and again with a fresh producer when
        the one of the batch's partition turns out fenced.

        Why both: faust does not always stop the producer of a partition that moved to
        another worker during a rebalance, so when the partition comes back, the old producer,
        fenced meanwhile by the other worker's, is still used (seen in a join-and-leave run:
        its sends failed with ProducerFenced). A new producer with the same id fences any
        older one and starts clean; the batch is then handled again, which is safe because
        user state skips the events already applied (features/store.py) and the failed
        attempt's outputs were never committed. Records of partitions no longer assigned are
        left to their new owner, which reads them from the committed offset: committing them
        here would race its commits (aiokafka sends no consumer-group generation with the
        offsets, aiokafka issue #844)."""
        if not self.enabled:
            await handle(records)
            return
        self._turn_faust_commits_off()
        assigned = self.app.consumer.assignment()
        owned = [r for r in records if TP(r.topic, r.partition) in assigned]
        if len(owned) < len(records):
            log.info("%d records of partitions no longer assigned left to their new owner",
                     len(records) - len(owned))  # fmt: skip
        if not owned:
            return
        for attempt in range(MAX_RENEWALS + 1):
            try:
                async with self.batch(owned):
                    await handle(owned)
                return
            except Exception as exc:
                if attempt == MAX_RENEWALS or not producer_lost(exc):
                    raise
                tid = self.transactional_id(owned[0])
                log.warning("transactional producer %s unusable (%r); renewing it and handling "
                            "the batch again", tid, exc)  # fmt: skip
                await self._renew(tid)

    async def _renew(self, tid: str) -> None:
        """Replace the producer of ``tid`` by a new one (faust's ``begin_transaction`` starts
        it: init_transactions fences every older producer with the id and aborts their open
        transaction)."""
        producer = self.app.producer
        async with self._locks.setdefault(tid, asyncio.Lock()):  # not under another batch
            old = producer._transaction_producers.pop(tid, None)
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.stop()
            await producer.maybe_begin_transaction(tid)

    @contextlib.asynccontextmanager
    async def batch(self, records: Sequence[SourceRecord]) -> AsyncIterator[None]:
        """Publish inside the block goes into one transaction, committed with the offsets of
        ``records`` when the block returns, aborted when it raises."""
        if not self.enabled or not records:
            yield
            return
        producer = self.app.producer
        tid = self.transactional_id(records[0])
        async with self._locks.setdefault(tid, asyncio.Lock()):
            token = _CURRENT.set(tid)
            try:
                yield
            except BaseException:
                _CURRENT.reset(token)
                await producer.abort_transaction(tid)
                await producer.maybe_begin_transaction(tid)
                raise
            _CURRENT.reset(token)
            offsets = batch_offsets(records)
            await producer.commit_transactions({tid: offsets}, self.app.conf.id)
            # faust's own commit (at stop) must not move these offsets back to what it acked.
            committed = self.app.consumer._committed_offset
            committed.update({TP(*tp): o for tp, o in offsets.items()})
