"""The catalogue agent's handler (stream/agents.py, CatalogueHandler) without Kafka or Redis:
validation and dead letters, one encoder call per batch, store + index, restart and sync."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

import stream.agents as agents
from features.item_text_store import InMemoryItemTextStore, StoredItem
from features.store import StateStoreError
from models.text_index import ItemTextIndex
from stream.agents import CatalogueHandler, RawMessage
from stream.metrics import WorkerMetrics
from tests.unit.test_batch_handler import Sink
from tests.unit.text_fakes import DIM, FakeEncoder
from topics.catalogue import CatalogueLimits
from topics.dead_letter import DeadLetter


def item(item_id: str, title: str, **kw: object) -> bytes:
    return orjson.dumps({"item_id": item_id, "title": title, "timestamp_ms": 1, **kw})


def msgs(*values: bytes | None) -> list[RawMessage]:
    return [RawMessage("item-catalogue", 0, i, 0.0, b"k", v) for i, v in enumerate(values)]


def make(
    store: InMemoryItemTextStore | None = None, encoder: FakeEncoder | None = None
) -> tuple[CatalogueHandler, Sink]:
    sink = Sink()
    encoder = encoder or FakeEncoder()
    handler = CatalogueHandler(
        store=store or InMemoryItemTextStore(),
        index=ItemTextIndex(DIM, encoder.name),
        encoder=encoder,
        metrics=WorkerMetrics(),
        publish=sink,  # type: ignore[arg-type]
        dead_letter_topic="dead",
        limits=CatalogueLimits(),
    )
    return handler, sink


def top(handler: CatalogueHandler, query: str) -> str:
    assert handler.index is not None
    _, hashes = handler.index.search(FakeEncoder().encode([query]), 1)
    return handler.index.item_id(hashes[0, 0])


async def test_a_batch_is_validated_embedded_once_stored_and_searchable() -> None:
    store = InMemoryItemTextStore()
    enc = FakeEncoder()
    handler, sink = make(store, enc)
    await handler.handle(
        msgs(
            item("m1", "gas lawn mower"),
            b"{oops",
            item("d1", "corded drill"),
            item("x", "   "),
            item("d1", "cordless hammer drill", category="Tools", price=99.0),
        )
    )
    dead = [DeadLetter.from_bytes(v) for v in sink.on("dead")]
    assert [(d.reason, d.offset) for d in dead] == [("malformed_json", 1), ("invalid_value", 3)]
    assert enc.calls == [["gas lawn mower", "cordless hammer drill"]]  # d1 once: the last wins
    assert store.puts == 1 and store.items["d1"].title == "cordless hammer drill"
    assert store.items["d1"].encoder == enc.name and store.items["d1"].category == "Tools"
    assert handler.index is not None and len(handler.index) == 2
    assert top(handler, "hammer drill") == "d1" and top(handler, "mower") == "m1"


async def test_a_restarted_worker_loads_the_index_without_embedding_again() -> None:
    store = InMemoryItemTextStore()
    first, _ = make(store)
    await first.handle(msgs(item("m1", "gas lawn mower"), item("d1", "cordless drill")))
    enc = FakeEncoder()
    restarted, _ = make(store, enc)
    assert await restarted.load() == 2
    assert enc.calls == []
    assert top(restarted, "cordless drill") == "d1"


async def test_titles_stored_without_this_encoders_vector_are_embedded_once_at_load() -> None:
    store = InMemoryItemTextStore()
    vec = np.ones(DIM, np.float32) / np.sqrt(DIM)
    await store.put_batch(
        [
            StoredItem("plain", "kitchen faucet", 1),  # stored by a worker without an encoder
            StoredItem("other", "lawn mower", 1, encoder="another-model", vector=vec),
        ]
    )
    enc = FakeEncoder()
    handler, _ = make(store, enc)
    assert await handler.load() == 2
    assert enc.calls == [["kitchen faucet", "lawn mower"]]
    assert all(i.encoder == enc.name for i in store.items.values())  # written back
    assert top(handler, "faucet") == "plain"


async def test_other_workers_items_arrive_by_sync_and_own_writes_are_skipped() -> None:
    store = InMemoryItemTextStore()
    a, _ = make(store)
    b, _ = make(store)
    await a.load()
    await b.load()
    await a.handle(msgs(item("m1", "gas lawn mower")))
    assert await a.sync() == 0  # its own batch
    assert b.index is not None and len(b.index) == 0
    assert await b.sync() == 1 and top(b, "mower") == "m1"
    assert await b.sync() == 0


async def test_redis_outage_is_retried_and_nothing_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    class Flaky(InMemoryItemTextStore):
        fails = 2

        async def put_batch(self, items: Sequence[StoredItem]) -> str:
            if self.fails:
                self.fails -= 1
                raise StateStoreError("connection refused")
            return await super().put_batch(items)

    monkeypatch.setattr(agents, "MAX_BACKOFF_S", 0.0)
    store = Flaky()
    handler, sink = make(store)
    await handler.handle(msgs(item("m1", "gas lawn mower")))
    assert store.fails == 0 and set(store.items) == {"m1"} and sink.on("dead") == []
    assert top(handler, "mower") == "m1"


async def test_an_item_the_encoder_fails_on_is_dead_lettered_alone() -> None:
    class Picky(FakeEncoder):
        def encode(self, texts: Sequence[str]) -> np.ndarray:
            if any("poison" in t for t in texts):
                raise RuntimeError("tokenizer exploded")
            return super().encode(texts)

    store = InMemoryItemTextStore()
    handler, sink = make(store, Picky())
    await handler.handle(msgs(item("ok", "lawn mower"), item("bad", "poison title")))
    dead = [DeadLetter.from_bytes(v) for v in sink.on("dead")]
    assert [(d.reason, d.offset) for d in dead] == [("processing_error", 1)]
    assert set(store.items) == {"ok"}


async def test_without_an_encoder_titles_are_stored_unembedded() -> None:
    store = InMemoryItemTextStore()
    handler = CatalogueHandler(
        store=store,
        index=None,
        encoder=None,
        metrics=WorkerMetrics(),
        publish=Sink(),  # type: ignore[arg-type]
        dead_letter_topic="dead",
        limits=CatalogueLimits(),
    )
    await handler.handle(msgs(item("m1", "gas lawn mower")))
    assert store.items["m1"].vector is None and store.items["m1"].encoder == ""
    assert await handler.load() == 0
