"""The item text index (models/text_index.py) and the stored form of catalogue items
(features/item_text_store.py: the in-memory twin, and the Redis field encoding)."""

from __future__ import annotations

import numpy as np
import pytest

from features.item_text_store import (
    _FIELDS,
    InMemoryItemTextStore,
    StoredItem,
    _decode,
    _encode,
    item_key,
)
from features.keys import id_hash, item_hashes_u64
from models.text_index import ItemTextIndex
from tests.unit.text_fakes import DIM, FakeEncoder


def index_of(titles: dict[str, str]) -> tuple[ItemTextIndex, FakeEncoder]:
    enc = FakeEncoder()
    index = ItemTextIndex(DIM, enc.name)
    index.upsert(list(titles), enc.encode(list(titles.values())))
    return index, enc


TITLES = {
    "drill-1": "cordless drill driver kit",
    "drill-2": "brushless cordless hammer drill",
    "paint-1": "interior wall paint white",
    "mower-1": "self propelled gas lawn mower",
}


def test_search_returns_item_hashes_and_cosines_best_first() -> None:
    index, enc = index_of(TITLES)
    assert len(index) == 4
    scores, hashes = index.search(enc.encode(["cordless drill", "lawn mower"]), 2)
    ids = [[index.item_id(h) for h in row] for row in hashes.tolist()]
    assert {*ids[0]} == {"drill-1", "drill-2"} and ids[1][0] == "mower-1"
    assert scores.dtype == np.float32 and np.all(np.diff(scores, axis=1) <= 0)
    # Scores are cosines of unit vectors: equal to the dot product of the encodings.
    q = enc.encode(["lawn mower"])[0]
    np.testing.assert_allclose(scores[1, 0], q @ enc.encode([TITLES["mower-1"]])[0], rtol=1e-5)
    assert hashes.dtype == np.uint64 and hashes[1, 0] == item_hashes_u64(["mower-1"])[0]


def test_fewer_items_than_asked_pad_with_zero_hash_and_minus_inf() -> None:
    index, enc = index_of({"x": "red shoes"})
    scores, hashes = index.search(enc.encode(["shoes"]), 3)
    assert hashes[0, 1:].tolist() == [0, 0] and np.isneginf(scores[0, 1:]).all()
    assert np.isfinite(scores[0, 0])


def test_upsert_replaces_a_retitled_item_and_the_last_copy_of_a_batch_wins() -> None:
    index, enc = index_of(TITLES)
    new = index.upsert(
        ["paint-1", "new", "new"],
        enc.encode(["cordless drill", "gas lawn mower", "kitchen faucet"]),
    )
    assert new == 1 and len(index) == 5  # paint-1 replaced, "new" added once
    _, hashes = index.search(enc.encode(["kitchen faucet"]), 1)
    assert index.item_id(hashes[0, 0]) == "new"
    _, hashes = index.search(enc.encode(["cordless drill"]), 1)
    assert index.item_id(hashes[0, 0]) == "paint-1"  # its new title matches exactly


def test_contains_and_vectors_of_return_the_stored_unit_vectors() -> None:
    index, enc = index_of(TITLES)
    h = item_hashes_u64(["mower-1", "nope", "drill-1"])
    assert index.contains(h).tolist() == [True, False, True]
    vecs = index.vectors_of(h[[0, 2]])
    np.testing.assert_allclose(vecs, enc.encode([TITLES["mower-1"], TITLES["drill-1"]]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert index.vectors_of(h[:0]).shape == (0, DIM)


def test_inputs_of_the_wrong_shape_are_rejected() -> None:
    index, _ = index_of(TITLES)
    with pytest.raises(ValueError):
        index.upsert(["a"], np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 3), np.float32), 1)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, DIM), np.float32), 0)


def test_redis_fields_round_trip_and_key_layout() -> None:
    vec = FakeEncoder().encode(["cordless drill"])[0]
    item = StoredItem("sku-1", "Cordless drill", 1_700_000_000_000, "fake-bow", vec, "Tools", 9.5)
    fields = _encode(item)
    assert set(fields) == set(_FIELDS)
    back = _decode([fields[f] for f in _FIELDS])
    assert back is not None
    np.testing.assert_array_equal(back.vector, vec)
    assert (back.item_id, back.title, back.encoder, back.category, back.price) == (
        "sku-1", "Cordless drill", "fake-bow", "Tools", 9.5
    )  # fmt: skip
    bare = _decode([_encode(StoredItem("s2", "t", 5))[f] for f in _FIELDS])
    assert bare is not None and bare.vector is None and bare.encoder == "" and bare.price is None
    assert _decode([None] * len(_FIELDS)) is None  # the key vanished between SCAN and HMGET
    assert item_key("prod", "sku-1") == f"sr:prod:item:{id_hash('sku-1').hex()}"


async def test_in_memory_store_logs_batches_for_changes_since() -> None:
    store = InMemoryItemTextStore()
    first = await store.put_batch([StoredItem("a", "A", 1), StoredItem("b", "B", 1)])
    items, cursor = await store.load_all()
    assert {i.item_id for i in items} == {"a", "b"} and cursor == first
    assert await store.changes_since(cursor) == ([], [], cursor)
    second = await store.put_batch([StoredItem("a", "A2", 2)])
    changed, positions, cursor2 = await store.changes_since(cursor)
    assert [(i.item_id, i.title) for i in changed] == [("a", "A2")]
    assert positions == [second] == [cursor2]
