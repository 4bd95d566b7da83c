"""Online co-visitation, in-memory store: weights, decay, trimming, order, trending, and the
batch preparation both stores share (the Redis twin is checked against this one in
tests/integration/test_online_covisit_redis.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from features.keys import id_hash, item_hashes_u64
from features.memory_covisit import InMemoryCovisitStore
from features.online_covisit import (
    DAY_MS,
    EPOCH_MS,
    CovisitBatch,
    CovisitConfig,
    CovisitRead,
    covisit_key,
    logadd2,
    prepare,
)

H = 3_600_000.0  # one hour
T0 = 1_300_000_000_000.0  # 2011-03-13
A, B, C, D, X = (int(v) for v in item_hashes_u64(["a", "b", "c", "d", "x"]))
NONE = np.zeros(0, dtype=np.uint64)


def _batch(
    transitions: Sequence[tuple[int, int]] = (),
    *,
    t: float = T0,
    items: Sequence[int] = (),
    weights: Sequence[float] | None = None,
    queries: Sequence[int] = (),
    now: float | None = None,
) -> CovisitBatch:
    return CovisitBatch(
        src=np.array([s for s, _ in transitions], dtype=np.uint64),
        dst=np.array([d for _, d in transitions], dtype=np.uint64),
        transition_ms=np.full(len(transitions), t),
        items=np.array(items, dtype=np.uint64),
        item_ms=np.full(len(items), t),
        item_weight=np.array([1.0] * len(items) if weights is None else weights, np.float32),
        queries=np.array(queries, dtype=np.uint64),
        now_ms=t if now is None else now,
    )


def _store(**kw: Any) -> InMemoryCovisitStore:
    return InMemoryCovisitStore(config=CovisitConfig(**{"half_life_ms": H, **kw}))


def _row(read_neighbours: np.ndarray, read_weights: np.ndarray) -> dict[int, float]:
    return {int(n): float(w) for n, w in zip(read_neighbours, read_weights, strict=True) if n}


def _apply(store: InMemoryCovisitStore, batch: CovisitBatch) -> CovisitRead:
    """Apply ``batch``, then read its queries: a batch's own reads see the store as it was
    before it (see test_a_batch_reads_the_store_as_it_was_before_its_updates)."""
    store.apply(replace(batch, queries=NONE))
    n = batch.queries.size  # an empty batch reads nothing, not even trending: ask for hash 0
    read = store.apply(_batch(queries=batch.queries.tolist() or [0], t=batch.now_ms))
    return replace(read, neighbours=read.neighbours[:n], weights=read.weights[:n])


def test_a_batch_reads_the_store_as_it_was_before_its_updates() -> None:
    store = _store()
    read = store.apply(_batch([(A, B)], items=[A], queries=[A]))
    assert not read.neighbours.any() and read.trending.size == 0
    read = store.apply(_batch([(A, C)], items=[B], queries=[A]))
    assert _row(read.neighbours[0], read.weights[0]) == {B: 1.0}
    assert read.trending.tolist() == [A]


def test_a_transition_weighs_one_forward_and_back_weight_backward() -> None:
    store = _store()
    read = _apply(store, _batch([(A, B)], queries=[A, B]))
    assert read.neighbours.shape == read.weights.shape == (2, 50)
    assert read.neighbours.dtype == np.uint64 and read.weights.dtype == np.float32
    assert _row(read.neighbours[0], read.weights[0]) == {B: 1.0}
    assert _row(read.neighbours[1], read.weights[1]) == {A: 0.5}
    assert (read.neighbours[:, 1:] == 0).all() and (read.weights[:, 1:] == 0).all()


def test_back_weight_is_configurable_and_zero_disables_it() -> None:
    read = _apply(_store(back_weight=0.25), _batch([(A, B)], queries=[B]))
    assert _row(read.neighbours[0], read.weights[0]) == {A: 0.25}
    read = _apply(_store(back_weight=0.0), _batch([(A, B)], queries=[A, B]))
    assert _row(read.neighbours[0], read.weights[0]) == {B: 1.0}
    assert not read.neighbours[1].any()


def test_repeated_transitions_add_up_within_and_across_batches() -> None:
    store = _store()
    _apply(store, _batch([(A, B), (A, B), (A, C)]))
    read = _apply(store, _batch([(A, B), (C, A)], queries=[A]))
    # A: B 1+1+1, C 1 (A -> C) + 0.5 (C -> A, backward)
    assert read.neighbours[0, :2].tolist() == [B, C]
    np.testing.assert_allclose(read.weights[0, :2], [3.0, 1.5], rtol=1e-6)


def test_a_weight_halves_after_one_half_life() -> None:
    store = _store()
    _apply(store, _batch([(A, B)], t=T0))
    for k, expected in [(1, 0.5), (2, 0.25), (10, 2.0**-10)]:
        read = _apply(store, _batch(queries=[A], now=T0 + k * H))
        assert read.weights[0, 0] == pytest.approx(expected, rel=1e-6)
    # An increment one half-life later counts double the older one at any read time.
    _apply(store, _batch([(A, C)], t=T0 + H))
    read = _apply(store, _batch(queries=[A], now=T0 + 3 * H))
    assert read.neighbours[0, :2].tolist() == [C, B]
    np.testing.assert_allclose(read.weights[0, :2], [0.25, 0.125], rtol=1e-6)


def test_without_decay_weights_are_counts() -> None:
    store = _store(half_life_ms=math.inf)
    _apply(store, _batch([(A, B)], t=T0))
    read = _apply(store, _batch([(A, B)], t=T0 + 365 * DAY_MS, queries=[A], now=T0 + 10**12))
    assert read.weights[0, 0] == pytest.approx(2.0, rel=1e-9)


def test_event_times_decades_apart_neither_overflow_nor_underflow() -> None:
    """A replay of 1996 data and live 2026 traffic in one store, at H = 1 hour (a linear
    forward-decay score would be 2^(30 years / 1 hour) here)."""
    t1996, t2026 = 820_454_400_000.0, 1_767_225_600_000.0
    store = _store()
    read = _apply(store, _batch([(A, B)], t=t1996, items=[A], queries=[A]))
    assert read.weights[0, 0] == pytest.approx(1.0, rel=1e-6)
    assert read.trending_weights.tolist() == pytest.approx([1.0], rel=1e-6)
    read = _apply(store, _batch([(A, C)], t=t2026, items=[A], queries=[A]))
    assert read.neighbours[0, :2].tolist() == [C, B]
    assert read.weights[0, 0] == pytest.approx(1.0, rel=1e-6) and read.weights[0, 1] == 0.0
    assert np.isfinite(read.weights).all() and read.trending_weights[0] == pytest.approx(1.0)


def test_rows_are_heaviest_first_and_ties_keep_the_older_entry_first() -> None:
    store = _store()
    _apply(store, _batch([(A, B)]))
    read = _apply(store, _batch([(A, D), (A, C), (A, C), (A, X), (A, X)], queries=[A]))
    # C and X tie at 2 (the new ones in hash order), B and D tie at 1 (B untouched, so first)
    c_x = sorted([C, X])
    assert read.neighbours[0, :4].tolist() == [*c_x, B, D]
    np.testing.assert_allclose(read.weights[0, :4], [2.0, 2.0, 1.0, 1.0], rtol=1e-6)


def test_trimming_keeps_the_heaviest_and_waits_for_trim_at() -> None:
    store = _store(keep=2, trim_factor=2.0, back_weight=0.0)  # trim_at = 4
    others = [int(v) for v in item_hashes_u64([f"n{i}" for i in range(5)])]
    _apply(store, _batch([(A, others[0])] * 3 + [(A, others[1])] * 2 + [(A, others[2])]))
    _apply(store, _batch([(A, others[3])] * 4))
    assert len(store.lists[A].members) == 4  # not longer than trim_at: untouched
    read = _apply(store, _batch([(A, others[4])], queries=[A]))  # 5 > 4: trimmed to 2
    assert len(store.lists[A].members) == 2
    assert _row(read.neighbours[0], read.weights[0]) == pytest.approx(
        {others[3]: 4.0, others[0]: 3.0}, rel=1e-6
    )


def test_unknown_items_and_hash_zero_read_empty_rows_and_duplicates_repeat() -> None:
    store = _store(top_m=3)
    read = _apply(store, _batch([(A, B)], queries=[X, A, 0, A]))
    assert read.neighbours.shape == (4, 3)
    assert not read.neighbours[[0, 2]].any() and not read.weights[[0, 2]].any()
    assert read.neighbours[1].tolist() == read.neighbours[3].tolist() == [B, 0, 0]


def test_self_transitions_and_hash_zero_are_ignored() -> None:
    store = _store()
    read = _apply(store, _batch([(A, A), (0, A), (A, 0)], items=[0], queries=[A, 0]))
    assert not read.neighbours.any() and read.trending.size == 0 and not store.lists


def test_trending_sums_decayed_weights_heaviest_first() -> None:
    store = _store(top_p=2, keep_trending=2, trim_factor=1.0)
    _apply(store, _batch(items=[A, B, B], weights=[1.0, 1.0, 3.0], t=T0))
    read = _apply(store, _batch(items=[C, C], weights=[1.0, 1.0], t=T0 + H))
    assert read.trending.tolist() == [B, C]  # B 4 -> 2 after an hour; C 2; A 0.5 trimmed
    np.testing.assert_allclose(read.trending_weights, [2.0, 2.0], rtol=1e-6)
    assert read.trending.dtype == np.uint64 and read.trending_weights.dtype == np.float32
    assert store.trending.members == [B, C]


def test_zero_weights_change_nothing_and_negative_ones_are_refused() -> None:
    store = _store()
    read = _apply(store, _batch(items=[A], weights=[0.0]))
    assert read.trending.size == 0
    with pytest.raises(ValueError, match=">= 0"):
        _apply(store, _batch(items=[A], weights=[-1.0]))


def test_invalid_batches_are_refused() -> None:
    store = _store()
    good = _batch([(A, B)], items=[A])
    bad = [
        replace(good, dst=good.dst[:0]),
        replace(good, transition_ms=np.array([np.nan])),
        replace(good, item_ms=np.zeros(2)),
        replace(good, queries=np.zeros((1, 1), np.uint64)),
        replace(good, now_ms=math.inf),
    ]
    for batch in bad:
        with pytest.raises(ValueError):
            _apply(store, batch)


def test_an_empty_batch_reads_nothing_and_stores_nothing() -> None:
    store = _store()
    _apply(store, _batch([(A, B)], items=[A]))
    read = store.apply(_batch())
    assert read.neighbours.shape == (0, 50) and read.trending.size == 0


async def test_update_and_read_is_the_protocol_method() -> None:
    store = _store()
    await store.load_script()
    read = await store.update_and_read(_batch([(A, B)], queries=[A]))
    assert read.neighbours[0, 0] == 0  # the batch's reads come before its updates
    read = await store.update_and_read(_batch(queries=[A]))
    assert read.neighbours[0, 0] == B


def test_prepare_merges_a_batch_per_pair_in_log_space() -> None:
    batch = CovisitBatch(
        src=np.array([A, A, B], np.uint64),
        dst=np.array([B, B, A], np.uint64),
        transition_ms=np.array([T0, T0 + H, T0]),
        items=np.array([C, C], np.uint64),
        item_ms=np.array([T0, T0]),
        item_weight=np.array([1.0, 3.0], np.float32),
        queries=np.array([B, A, B], np.uint64),
        now_ms=T0 + H,
    )
    p = prepare(batch, CovisitConfig(half_life_ms=H))
    assert p.owners.tolist() == sorted([A, B]) and p.counts.tolist() == [1, 1]
    base = (T0 - EPOCH_MS) / H
    by_owner = dict(zip(p.owners.tolist(), p.log2_incs.tolist(), strict=True))
    # in units of 2^base: A's list: B 1 + 2 (A -> B at T0, T0 + H) + 0.5 (B -> A, backward);
    # B's list: A 0.5 + 1 (backward of A -> B) + 1 (B -> A)
    assert by_owner[A] == pytest.approx(base + math.log2(3.5), abs=1e-9)
    assert by_owner[B] == pytest.approx(base + math.log2(2.5), abs=1e-9)
    assert p.popular.tolist() == [C] and p.popular_log2_incs[0] == pytest.approx(base + 2.0)
    assert p.unique_queries[p.query_index].tolist() == [B, A, B]
    assert p.read_offset == pytest.approx(base + 1.0)


def test_logadd2_is_log2_of_a_sum() -> None:
    for a, b in [(0.0, 0.0), (3.0, -2.5), (-1e4, 1e4 - 3), (120.0, 119.0)]:
        assert logadd2(a, b) == pytest.approx(np.logaddexp2(a, b), rel=1e-14, abs=1e-12)
        assert logadd2(a, b) == logadd2(b, a)


def test_config_is_validated() -> None:
    invalid: list[dict[str, Any]] = [
        {"half_life_ms": 0.0},
        {"back_weight": -1.0},
        {"keep": 0},
        {"top_m": -1},
        {"trim_factor": 0.5},
        {"ttl_ms": 0},
    ]
    for bad in invalid:
        with pytest.raises(ValueError):
            CovisitConfig(**bad)
    assert CovisitConfig(keep=10, trim_factor=1.5).trim_at == 15


def test_keys_name_the_namespace_and_the_hash_hex() -> None:
    assert covisit_key("prod", id_hash("sku-88")) == "sr:prod:cv:n:5a9467b3de91ea74"
