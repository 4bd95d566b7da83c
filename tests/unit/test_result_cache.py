"""The hot-result cache without services: what is cacheable, that a hit is the list the
pipeline computes for that context, version invalidation, TTL, one batched lookup and one
batched fill per batch, and state updated for every row (the in-memory twin of the Redis
adapter; tests/integration/test_result_cache_redis.py runs the adapter against Redis)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

import stream.agents as agents
from features.keys import id_hash
from features.memory_covisit import InMemoryCovisitStore
from features.memory_store import InMemoryStateStore
from features.result_cache import (
    InMemoryResultCache,
    ResultCacheError,
    decode_result,
    encode_result,
    result_key,
)
from features.user_state import decode_state
from stream.pipeline import BatchResult, OnlineNeighbours, Trigger, recommend_batch
from stream.result_cache_policy import cacheable_rows, context_digests, context_salt
from tests.unit.test_batch_handler import Sink, handler, msg, valid
from tests.unit.test_recommend_batch import model_and_store
from topics.events import EventType, UserEvent


class CountingScorer:
    """Wraps a scorer and records the rows of every call (rows that hit skip scoring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rows: list[int] = []

    def score(self, recent: np.ndarray, user_vec: np.ndarray, cands: np.ndarray) -> np.ndarray:
        self.rows.append(int(recent.shape[0]))
        return np.asarray(self.inner.score(recent, user_vec, cands))


class Clock:
    def __init__(self) -> None:
        self.ms = 0.0

    def __call__(self) -> float:
        return self.ms


def view(eid: str, user: str, item: str, t: int = 1, session: str | None = None) -> UserEvent:
    return UserEvent(eid, EventType.VIEW, user, session or f"s-{user}", t, item_id=item)


def new_store() -> InMemoryStateStore:
    return InMemoryStateStore(namespace="t", half_life_ms=1e9, max_recent=4, space_id=5)


async def run(
    events: Sequence[UserEvent], store: Any, model: Any, cache: Any = None, **kw: Any
) -> BatchResult:
    return await recommend_batch(
        [Trigger(e, 0.0) for e in events], store, model, k=3, n_candidates=5, cache=cache, **kw
    )


def lists(result: BatchResult) -> list[tuple[list[str], list[float]]]:
    return [(r.items, r.scores) for r in result.recommendations]


# --- the policy: pure functions over arrays ----------------------------------------------


def test_cold_and_single_item_rows_are_cacheable_warm_and_text_rows_are_not() -> None:
    recent = np.array([[0, 0, 0], [0, 0, 3], [0, 2, 3], [0, 0, 0], [0, 0, 4]], np.int64)
    user_vec = np.zeros((5, 2), np.float32)
    user_vec[1:3] = 1.0
    user_vec[3] = 0.5  # no known recent item but a vector of this space: not cold
    n_stored = np.array([0, 1, 2, 3, 1], np.int64)
    ok = cacheable_rows(recent, user_vec, n_stored, np.array([4], np.int64))
    assert ok.tolist() == [True, True, False, False, False]  # row 4: ranked by text
    # cold with unknown items only (3 stored, none known, no vector): cacheable
    assert cacheable_rows(recent[:1], user_vec[:1], np.array([3]), None).tolist() == [True]


def test_digest_is_equal_exactly_when_the_inputs_are() -> None:
    recent = np.array([[0, 3], [0, 3], [0, 3], [0, 3], [0, 3]], np.int64)
    user_vec = np.ones((5, 2), np.float32)
    user_vec[2] *= 3  # the same item bought (weight 3) rather than viewed
    session_len = np.array([1, 1, 1, 0, 1], np.int64)  # row 3: the item is of a past session
    queries = np.zeros((5, 3), np.uint64)
    queries[4, 0] = 7  # another online query (e.g. an unknown item's hash)
    salt = context_salt(k=20, n_candidates=100, online=True)
    d = context_digests(np.arange(5), recent, user_vec, session_len, queries, salt)
    assert d[0] == d[1] and len(set(d)) == 4
    other = context_digests(np.arange(1), recent, user_vec, session_len, queries,
                            context_salt(k=10, n_candidates=100, online=True))  # fmt: skip
    assert other[0] != d[0]  # another k never shares an entry
    assert context_digests(np.zeros(0, np.int64), recent, user_vec, session_len, queries,
                           salt) == []  # fmt: skip


def test_values_round_trip_and_malformed_ones_are_misses() -> None:
    blob = encode_result(["a", "b"], [1.5, -0.25])
    assert decode_result(blob) == (["a", "b"], [1.5, -0.25])
    for bad in (b"{", b"[1,2]", b'[["a"],[1,2]]', b"[[1],[1.0]]", b'[["a"],[true]]', b"{}"):
        assert decode_result(bad) is None, bad
    assert result_key("prod", "v7", "ab12") == "sr:prod:rc:v7:ab12"


def test_online_subset_keeps_each_kept_rows_signal() -> None:
    span = 10
    keys = np.array([0 * span + 3, 1 * span + 2, 1 * span + 5, 3 * span + 1], np.int64)
    live = OnlineNeighbours(
        np.array([[3, 0], [2, 5], [0, 0], [1, 0]], np.int64),
        keys,
        np.array([1.0, 2.0, 3.0, 4.0]),
        span,
        np.zeros(0, np.int64),
    )
    rows = np.array([1, 3], np.int64)
    part = live.subset(rows)
    cands = np.array([[2, 5, 1], [1, 2, 0]], np.int64)
    full = live.lookup(np.array([[0, 0, 0], [2, 5, 1], [0, 0, 0], [1, 2, 0]], np.int64))
    np.testing.assert_array_equal(part.lookup(cands), full[rows])
    np.testing.assert_array_equal(part.candidates, live.candidates[rows])


# --- the pipeline with a cache ------------------------------------------------------------


async def test_a_hit_is_the_list_the_pipeline_computes_and_skips_scoring() -> None:
    model, store = model_and_store()
    model.scorer = CountingScorer(model.scorer)
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=Clock())
    first = await run([view("1", "u1", "a")], store, model, cache)
    assert first.cache_lookups == {"hit": 0, "miss": 1, "uncacheable": 0}
    second = await run([view("2", "u2", "a", t=5)], store, model, cache)  # another new user
    assert second.cache_lookups == {"hit": 1, "miss": 0, "uncacheable": 0}
    assert model.scorer.rows == [1]  # the hit scored nothing
    assert "cache" in second.stage_ms and "scoring" not in second.stage_ms
    # What the pipeline computes for u2 without a cache, from a fresh store:
    fresh = await run([view("2", "u2", "a", t=5)], new_store(), model)
    assert lists(second) == lists(fresh)
    rec = second.recommendations[0]
    assert (rec.user_id, rec.event_id, rec.model_version) == ("u2", "2", "test-v1")
    assert rec.trigger_timestamp_ms == 5
    # The state of the row that hit is updated all the same.
    state = decode_state(await store.get("u2"))
    assert state.recent == [id_hash("a")] and state.n_session == 1


async def test_only_repeating_contexts_are_looked_up_and_warm_users_are_computed() -> None:
    model, store = model_and_store()
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=Clock())
    await run([view("1", "u1", "a")], store, model, cache)
    # u1's second item: a warm user, never looked up; a purchase of "a" has another vector.
    result = await run(
        [
            view("2", "u1", "b", t=2),
            UserEvent("3", EventType.PURCHASE, "u3", "s3", 2, item_id="a"),
        ],
        store,
        model,
        cache,
    )
    assert result.cache_lookups == {"hit": 0, "miss": 1, "uncacheable": 1}
    fresh = await run([view("1", "u1", "a"), view("2", "u1", "b", t=2)], new_store(), model)
    assert lists(result)[0] == lists(fresh)[1]


async def test_one_lookup_and_one_fill_per_batch_and_identical_rows_computed_once() -> None:
    model, store = model_and_store()
    model.scorer = CountingScorer(model.scorer)
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=Clock())
    batch = [view("1", "u1", "a"), view("2", "u2", "a"), view("3", "u3", "d"),
             view("4", "cold", "not-in-catalogue"), view("5", "u1", "c", t=2)]  # fmt: skip
    result = await run(batch, store, model, cache)
    assert (cache.get_calls, cache.put_calls) == (1, 1)
    # u2 repeats u1's context within the batch: computed once, copied.
    assert result.cache_lookups == {"hit": 1, "miss": 3, "uncacheable": 1}
    assert model.scorer.rows == [4]
    assert lists(result)[0] == lists(result)[1]
    fresh = await run(batch, new_store(), model)
    assert lists(result) == lists(fresh)
    assert len(cache.entries) == 3
    # A batch with nothing cacheable costs no lookup and no fill.
    await run([view("6", "u1", "e", t=3)], store, model, cache)
    assert (cache.get_calls, cache.put_calls) == (1, 1)


async def test_a_new_model_version_never_reads_the_old_versions_entries() -> None:
    model, store = model_and_store()
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=Clock())
    await run([view("1", "u1", "a")], store, model, cache)
    model.version = "test-v2"
    swapped = await run([view("2", "u2", "a")], store, model, cache)
    assert swapped.cache_lookups["miss"] == 1
    assert swapped.recommendations[0].model_version == "test-v2"
    model.version = "test-v1"  # a rollback finds its own entries (while they live)
    back = await run([view("3", "u3", "a")], store, model, cache)
    assert back.cache_lookups["hit"] == 1


async def test_entries_expire_after_the_ttl() -> None:
    model, store = model_and_store()
    clock = Clock()
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=clock)
    await run([view("1", "u1", "a")], store, model, cache)
    clock.ms = 1999
    assert (await run([view("2", "u2", "a")], store, model, cache)).cache_lookups["hit"] == 1
    clock.ms = 2000
    assert (await run([view("3", "u3", "a")], store, model, cache)).cache_lookups["miss"] == 1


async def test_with_the_online_store_a_hit_is_stale_by_at_most_the_ttl() -> None:
    """Two pipelines fed the same events, one with the cache. A hit equals the list computed
    without the cache while the online store has learnt nothing about the row's context;
    once it has (other users go from "a" to "e"), the cached list is served until the TTL
    ends, and the next list is computed with what the store learnt."""
    model, store = model_and_store()
    model.blend.online = 8.0
    cached_online, plain_online = InMemoryCovisitStore(), InMemoryCovisitStore()
    plain_store = new_store()
    clock = Clock()
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=clock)

    async def both(batch: list[UserEvent]) -> tuple[BatchResult, BatchResult]:
        on = await run(batch, store, model, cache, online=cached_online)
        return on, await run(batch, plain_store, model, online=plain_online)

    for batch in ([view("1", "u1", "a", t=1)], [view("2", "u2", "a", t=2)]):
        on, off = await both(batch)
        assert lists(on) == lists(off)
    assert on.cache_lookups == {"hit": 1, "miss": 0, "uncacheable": 0}
    teach = [view(f"t{i}{j}", f"t{i}", item, t=10 + j) for i in range(3)
             for j, item in enumerate(["a", "e"])]  # fmt: skip
    for event in teach:
        await both([event])
    on, off = await both([view("3", "u3", "a", t=20)])
    assert on.cache_lookups["hit"] == 1 and "e" not in on.recommendations[0].items[:1]
    assert off.recommendations[0].items[0] == "e"  # learnt online: a -> e
    clock.ms = 2000  # the TTL has passed: recomputed, with what the store learnt
    on, off = await both([view("4", "u4", "a", t=21)])
    assert on.cache_lookups["miss"] == 1 and lists(on) == lists(off)


async def test_a_failing_cache_is_served_around() -> None:
    class Broken(InMemoryResultCache):
        async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
            raise ResultCacheError("connection reset")

        async def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
            raise ResultCacheError("connection reset")

    model, store = model_and_store()
    result = await run([view("1", "u1", "a")], store, model, Broken())
    fresh = await run([view("1", "u1", "a")], new_store(), model)
    assert lists(result) == lists(fresh) and result.cache_lookups["miss"] == 1


async def test_handler_passes_its_cache_and_counts_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        seen.update(kw)
        return BatchResult([], cache_lookups={"hit": 2, "miss": 1, "uncacheable": 3})

    monkeypatch.setattr(agents, "recommend_batch", fake)
    h = handler(Sink())
    h.result_cache = InMemoryResultCache()
    await h.handle([msg(0, valid("e1"))])
    assert seen["cache"] is h.result_cache
    counter = h.metrics.result_cache_lookups
    assert [counter.labels(x)._value.get() for x in ("hit", "miss", "uncacheable")] == [2, 1, 3]


async def test_text_rows_are_never_cached_and_their_lists_survive_the_subset() -> None:
    """A batch mixing cache hits with searches and a view of a catalogue-only item: the text
    rows are computed (their rows renumbered in the subset) and equal the lists without a
    cache; the cold searcher is not served the cached cold list."""
    from tests.unit.test_search_batch import search, search_context

    ctx, _, _ = search_context()
    model, store = model_and_store()
    cache = InMemoryResultCache(ttl_ms=2000, clock_ms=Clock())
    await run([view("0", "u0", "a")], store, model, cache, search=ctx)
    batch = [
        view("1", "u1", "a"),  # hit: u0's context
        search("2", "new-searcher", "cordless drill"),  # text row, no state
        view("3", "u3", "a"),  # hit
        view("4", "u4", "new-mower"),  # text row: an item only the catalogue knows
    ]
    result = await run(batch, store, model, cache, search=ctx)
    assert result.cache_lookups == {"hit": 2, "miss": 0, "uncacheable": 2}
    plain_ctx, _, _ = search_context()
    fresh = await run([view("0", "u0", "a"), *batch], new_store(), model, search=plain_ctx)
    assert lists(result) == lists(fresh)[1:]
    assert "new-drill" in result.recommendations[1].items
