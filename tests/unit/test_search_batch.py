"""Search and text cold start in the pipeline (stream/pipeline.py) without services: the fake
bundle of test_recommend_batch (items a..e, a dot-product scorer), a bag-of-words encoder and
a real FAISS text index."""

from __future__ import annotations

from typing import Any

import numpy as np

from features.memory_covisit import InMemoryCovisitStore
from features.memory_store import InMemoryStateStore
from stream.pipeline import (
    QueryCache,
    TextRows,
    TextSearch,
    Trigger,
    recommend_batch,
    search_scores,
)
from tests.unit.test_recommend_batch import model_and_store
from tests.unit.text_fakes import CountingIndex, FakeEncoder
from topics.events import EventType, UserEvent

# Items a..e are in the bundle (a, b near each other; c, e near each other; d alone).
# "new-*" items exist only in the catalogue.
CATALOGUE = {
    "a": "cordless drill driver kit",
    "c": "interior wall paint white",
    "new-drill": "brushless cordless hammer drill",
    "new-mower": "self propelled gas lawn mower",
    "new-mower-2": "cordless electric lawn mower",
    "new-faucet": "kitchen faucet pull down sprayer",
}


def search_context(
    titles: dict[str, str] = CATALOGUE, **kw: Any
) -> tuple[TextSearch, FakeEncoder, CountingIndex]:
    enc = FakeEncoder()
    index = CountingIndex()
    if titles:
        index.upsert(list(titles), FakeEncoder().encode(list(titles.values())))
    return TextSearch(index, enc, **kw), enc, index


def fresh_store() -> InMemoryStateStore:
    return InMemoryStateStore(namespace="t", half_life_ms=1e9, max_recent=4, space_id=5)


def search(eid: str, user: str, query: str | None, ts: int = 10, **kw: Any) -> UserEvent:
    return UserEvent(eid, EventType.SEARCH, user, f"{user}-s", ts, query=query, **kw)


def view(eid: str, user: str, item: str, ts: int = 1) -> UserEvent:
    return UserEvent(eid, EventType.VIEW, user, f"{user}-s", ts, item_id=item)


async def run(events: list[UserEvent], ctx: TextSearch | None, **kw: Any) -> Any:
    model, store = model_and_store()
    return (
        await recommend_batch(
            [Trigger(e, 0.0) for e in events],
            kw.pop("store", store),
            model,  # type: ignore[arg-type]
            k=kw.pop("k", 3),
            n_candidates=5,
            search=ctx,
            **kw,
        ),
        model,
    )


async def test_a_batch_of_searches_is_one_encoder_call_and_one_text_search() -> None:
    ctx, enc, index = search_context()
    events = [
        view("v1", "u1", "b"),
        search("s1", "u1", "cordless drill"),
        search("s2", "u2", "lawn mower"),
        search("s3", "u3", "kitchen faucet"),
        view("v2", "u4", "new-mower"),  # catalogue-only item: seeded by its stored vector
        search("s4", "u5", None, query_tokens=[5, 17]),  # no token encoder: session only
    ]
    result, model = await run(events, ctx)
    recs = {r.event_id: r for r in result.recommendations}
    assert len(enc.calls) == 1 and enc.calls[0] == [
        "cordless drill",
        "lawn mower",
        "kitchen faucet",
    ]
    assert index.searches == 1 and model.scorer.calls == 1
    assert [r.kind for r in result.recommendations] == [
        "recommend", "search", "search", "search", "recommend", "search"
    ]  # fmt: skip
    assert {"encode", "text"} <= set(result.stage_ms)
    # Catalogue-only items come back by id, straight from the text index.
    assert recs["s2"].items[:2] == ["new-mower-2", "new-mower"] or recs["s2"].items[:2] == [
        "new-mower",
        "new-mower-2",
    ]
    assert recs["s3"].items[0] == "new-faucet"
    assert set(recs["s1"].items[:2]) == {"a", "new-drill"}
    # The token-only search is answered as before search existed: bundle items only.
    assert recs["s4"].items and set(recs["s4"].items) <= set("abcde")


async def test_a_brand_new_user_search_gets_the_query_matches_first() -> None:
    ctx, _, _ = search_context()
    result, _ = await run([search("s", "newbie", "gas lawn mower")], ctx, k=4)
    items = result.recommendations[0].items
    assert items[0] == "new-mower" and items[1] == "new-mower-2"
    assert result.recommendations[0].scores[0] > result.recommendations[0].scores[1]


async def test_without_search_context_or_catalogue_the_session_answers_as_before() -> None:
    events = [view("v", "u", "a"), search("s", "u", "cordless drill", ts=2)]
    before, _ = await run(events, None)
    ctx, enc, index = search_context(titles={})
    empty, _ = await run(events, ctx)
    assert enc.calls == [] and index.searches == 0  # nothing to search: no encoder call
    assert [r.items for r in empty.recommendations] == [r.items for r in before.recommendations]
    assert "text" not in empty.stage_ms and empty.recommendations[1].kind == "search"


async def test_view_of_a_catalogue_only_item_recommends_its_text_neighbours_not_itself() -> None:
    ctx, enc, _ = search_context()
    result, _ = await run([view("v", "newbie", "new-mower")], ctx, k=3)
    rec = result.recommendations[0]
    assert rec.items[0] == "new-mower-2" and "new-mower" not in rec.items
    assert enc.calls == []  # the item's stored vector is the query: no encoder call
    assert result.unknown_items == 1


async def test_a_search_never_returns_a_catalogue_only_item_seen_in_the_session() -> None:
    ctx, _, _ = search_context()
    store = fresh_store()
    events = [view("v", "u", "new-mower"), search("s", "u", "lawn mower", ts=2)]
    result, _ = await run(events, ctx, store=store)
    assert "new-mower" not in result.recommendations[1].items
    assert result.recommendations[1].items[0] == "new-mower-2"


async def test_a_brand_new_user_without_signal_still_gets_trending_items() -> None:
    ctx, _, _ = search_context()
    online = InMemoryCovisitStore()
    model, store = model_and_store()
    teach = [view(f"t{i}", f"fan{i}", "d", ts=i) for i in range(5)]
    await recommend_batch([Trigger(e, 0.0) for e in teach], store, model, k=1, n_candidates=5,
                          online=online, search=ctx)  # type: ignore[arg-type]  # fmt: skip
    cold = view("c", "stranger", "not-in-catalogue", ts=9)
    result = await recommend_batch([Trigger(cold, 0.0)], store, model, k=1, n_candidates=5,
                                   online=online, search=ctx)  # type: ignore[arg-type]  # fmt: skip
    assert result.recommendations[0].items == ["d"]


async def test_personalisation_reorders_equal_text_matches_but_not_a_clear_match() -> None:
    titles = {"a": "drill", "d": "drill", "c": "cordless drill"}
    ctx, _, _ = search_context(titles, personal_weight=0.1)
    # u1 viewed b (next to a in the bundle's space), u2 viewed e (closer to d than to a).
    events = [
        view("v1", "u1", "b"),
        view("v2", "u2", "e"),
        search("s1", "u1", "cordless drill", ts=5),
        search("s2", "u2", "cordless drill", ts=5),
    ]
    result, _ = await run(events, ctx)
    s1, s2 = result.recommendations[2], result.recommendations[3]
    assert s1.items[:3] == ["c", "a", "d"]  # c matches the query exactly: first for both
    assert s2.items[:3] == ["c", "d", "a"]


def test_search_scores_blend_cosine_and_row_normalised_personal_score() -> None:
    n_model = 5
    # Row 0 is a text row: usual candidates [2, 3], hits [1, 3, 6 (catalogue-only)].
    candidates = np.array([[2, 3, 1, 3, 6], [1, 2, 0, 0, 0]], np.int64)
    blended = np.array([[4.0, 2.0, 0.0, 2.0, 9.0], [7.0, 8.0, 0.0, 0.0, 0.0]], np.float32)
    text = TextRows(
        rows=np.array([0]),
        hits=np.array([[1, 3, 6], [0, 0, 0]]),
        cos=np.array([[0.9, 0.5, 0.8], [0, 0, 0]], np.float32),
        extra=["new"],
        extra_hashes=np.zeros(1, np.uint64),
        personal_weight=0.5,
    )
    out = search_scores(blended, candidates, text, n_model)
    # personal = (blended - min) / (max - min) over the known candidates (min 0, max 4);
    # the catalogue-only column (index 6) gets none, whatever the bundle scored it.
    expected = [0 + 0.5 * 1.0, 0 + 0.5 * 0.5, 0.9 + 0.0, 0.5 + 0.5 * 0.5, 0.8 + 0.0]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[1], blended[1])  # not a text row: unchanged


async def test_token_only_searches_use_the_token_encoder_hook() -> None:
    ctx, enc, _ = search_context({"new-drill": "5 17 99"})
    tokens = FakeEncoder("fake-tokens")
    ctx.token_encoder = tokens
    result, _ = await run([search("s", "u", None, query_tokens=[5, 17])], ctx, k=1)
    assert tokens.calls == [["5 17"]] and enc.calls == []
    assert result.recommendations[0].items == ["new-drill"]


async def test_repeated_queries_are_encoded_once() -> None:
    ctx, enc, index = search_context()
    first = [search("s1", "u1", "Lawn  Mower"), search("s2", "u2", "lawn mower")]
    result, _ = await run(first, ctx)
    second = [search("s3", "u3", "LAWN mower"), search("s4", "u4", "kitchen faucet")]
    result2, _ = await run(second, ctx)
    # Same text up to case and spaces: one encoder input; later batches encode only news.
    assert enc.calls == [["lawn mower"], ["kitchen faucet"]] and index.searches == 2
    assert result.recommendations[0].items == result2.recommendations[0].items
    assert result2.recommendations[1].items[0] == "new-faucet"


def test_query_cache_keeps_the_most_recently_used() -> None:
    enc = FakeEncoder()
    cache = QueryCache(capacity=2)
    np.testing.assert_array_equal(cache.encode(enc, ["a", "b"]), enc.encode(["a", "b"]))
    cache.encode(enc, ["a"])  # a is now the most recent
    cache.encode(enc, ["c"])  # evicts b
    enc.calls.clear()
    cache.encode(enc, ["a", "b", "c"])
    assert enc.calls == [["b"]] and len(cache) == 2
    off = QueryCache(capacity=0)
    off.encode(enc, ["a"])
    off.encode(enc, ["a"])
    assert enc.calls[-2:] == [["a"], ["a"]] and len(off) == 0


async def test_query_encoding_does_not_block_the_event_loop() -> None:
    import asyncio
    import time

    class SlowEncoder(FakeEncoder):
        def encode(self, texts: Any) -> np.ndarray:
            time.sleep(0.3)  # a CPU-bound ONNX run, which releases the GIL
            return super().encode(texts)

    ctx, _, _ = search_context()
    ctx.encoder = SlowEncoder()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result, _ = await run([search("1", "u", "cordless drill")], ctx)
    finally:
        task.cancel()
    assert result.recommendations[0].kind == "search"
    assert ticks >= 10  # the loop kept running while the query was encoded
