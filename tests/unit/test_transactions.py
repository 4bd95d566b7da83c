"""stream/transactions.py without a broker: offsets to commit, faust settings per guarantee,
the idempotent plain producer, and a failing batch aborting its transaction."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.errors import ProducerFenced
from aiokafka.structs import TopicPartition
from faust.types import TP

from stream.transactions import (
    NEVER_S,
    BatchTransactions,
    batch_offsets,
    current_transactional_id,
    faust_commit_settings,
    make_idempotent,
)


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int


def test_batch_offsets_are_one_past_each_partitions_last_record() -> None:
    recs = [Rec("ev", 0, 7), Rec("ev", 1, 3), Rec("ev", 0, 9), Rec("ev", 0, 8)]
    offsets = batch_offsets(recs)
    assert offsets == {TopicPartition("ev", 0): 10, TopicPartition("ev", 1): 4}
    assert all(type(tp) is TopicPartition for tp in offsets)  # what aiokafka accepts


def test_faust_settings_per_guarantee() -> None:
    assert faust_commit_settings("at_least_once") == {"processing_guarantee": "at_least_once"}
    eos = faust_commit_settings("exactly_once")
    assert eos["processing_guarantee"] == "exactly_once"
    assert eos["broker_commit_interval"] == NEVER_S  # batches commit, not faust's timer


async def test_plain_producer_is_idempotent() -> None:
    app = faust.App("t-idem", broker="kafka://127.0.0.1:1", producer_acks=-1)
    before = app.producer._new_producer()
    assert before._txn_manager is None  # aiokafka's marker of a non-idempotent producer
    make_idempotent(app.producer)
    after = app.producer._new_producer()
    assert after._txn_manager is not None and after._txn_manager.transactional_id is None


class Stopped:
    def __init__(self, calls: list[tuple[Any, ...]], tid: str) -> None:
        self.calls, self.tid = calls, tid

    async def stop(self) -> None:
        self.calls.append(("stop", self.tid))


class FakeProducer:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._transaction_producers = {"grp-0-1": Stopped(self.calls, "grp-0-1")}

    async def commit_transactions(self, offsets: Any, group_id: str) -> None:
        self.calls.append(("commit", offsets, group_id))

    async def abort_transaction(self, tid: str) -> None:
        self.calls.append(("abort", tid))

    async def maybe_begin_transaction(self, tid: str) -> None:
        self.calls.append(("begin", tid))


class FakeConsumer:
    def __init__(self) -> None:
        self._committed_offset: dict[TP, int] = {}
        self.assigned = {TP("ev", 0), TP("ev", 1), TP("ev", 2)}
        self.transactions = SimpleNamespace(commit=None)

    def assignment(self) -> set[TP]:
        return self.assigned


class FakeApp:
    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.conf = type("Conf", (), {"id": "grp"})()
        self.assignor = type("Assignor", (), {"group_for_topic": lambda self, t: 0})()
        self.consumer = FakeConsumer()


async def test_batch_commits_its_offsets_in_its_transaction_or_aborts() -> None:
    app = FakeApp()
    tx = BatchTransactions(app, enabled=True)
    async with tx.batch([Rec("ev", 2, 5), Rec("ev", 0, 1)]):
        assert current_transactional_id() == "grp-0-2"  # the first record's partition
    assert current_transactional_id() is None
    assert app.producer.calls == [
        ("commit", {"grp-0-2": {TopicPartition("ev", 2): 6, TopicPartition("ev", 0): 2}}, "grp")
    ]
    assert app.consumer._committed_offset == {("ev", 2): 6, ("ev", 0): 2}

    app.producer.calls.clear()
    with pytest.raises(RuntimeError):
        async with tx.batch([Rec("ev", 1, 0)]):
            raise RuntimeError("handler failed")
    assert app.producer.calls == [("abort", "grp-0-1"), ("begin", "grp-0-1")]

    off = BatchTransactions(app, enabled=False)
    async with off.batch([Rec("ev", 1, 0)]):
        assert current_transactional_id() is None


async def test_run_renews_a_fenced_producer_and_skips_partitions_moved_away() -> None:
    app = FakeApp()
    tx = BatchTransactions(app, enabled=True)
    handled: list[list[int]] = []

    async def handle(records: Any) -> None:
        handled.append([r.offset for r in records])
        if len(handled) == 1:  # the producer of partition 1 was fenced by another worker's
            raise ProducerFenced()

    # Partition 3 is no longer assigned: left to its new owner, neither handled nor committed.
    await tx.run([Rec("ev", 1, 4), Rec("ev", 3, 9), Rec("ev", 1, 5)], handle)
    # faust's own commit (at stop: what take_events acknowledged) no longer commits anything.
    assert await app.consumer.transactions.commit({TP("ev", 1): 99}) is False
    assert handled == [[4, 5], [4, 5]]  # handled again after the renewal
    assert app.producer.calls == [
        ("abort", "grp-0-1"), ("begin", "grp-0-1"),  # the failed attempt
        ("stop", "grp-0-1"), ("begin", "grp-0-1"),  # _renew: old producer out, a new one
        ("commit", {"grp-0-1": {TopicPartition("ev", 1): 6}}, "grp"),
    ]  # fmt: skip

    async def broken(records: Any) -> None:
        raise ValueError("not a producer problem")

    with pytest.raises(ValueError):  # other errors are not retried
        await tx.run([Rec("ev", 0, 1)], broken)
