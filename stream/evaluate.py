"""Offline evaluation: one protocol for every method, the served ranking through the serving
code itself.

Protocol (docs/evaluation.md): sessions are split by the time of their first event into
train | validation (the last ``valid_days`` before test, for choices) | test (the last
``test_days``). Every test event whose next event in the session is an item event is one
example: the session so far is the prefix, that next item the target. Targets the training
period never saw are dropped (no method can know them), and so are re-views of an item already
in the prefix: the worker never recommends an item seen in the session, so every method gets
the same exclusion and those targets would be misses for all. Lists are ranked over the whole
training catalogue.

"streamrec" is the worker's ranking: the test events are replayed in event-time order through
``stream.pipeline.recommend_batch`` in micro-batches, with user state in an in-process store
that applies the same update rule as the Redis script, after the state was warmed with the
training events of the same users.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np

from features.keys import item_hashes_u64
from features.memory_covisit import InMemoryCovisitStore
from features.memory_store import InMemoryStateStore
from features.user_state import decode_state
from models.blend_search import CapturedSignals, capture
from models.evaluation import coverage, hit_rate_at_k, mrr_at_k, ndcg_at_k, popularity_bias
from models.serving import ServingModel
from models.topk import top_k_excluding
from stream.pipeline import Trigger, online_batch, recommend_batch, score_batch, state_updates
from topics.events import UserEvent
from topics.recommendations import Recommendation

T = TypeVar("T")
# How far back the online co-visitation store is warmed, in its half-lives.
ONLINE_WARM_HALF_LIVES = 10
LENGTH_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 10**9))


@dataclass(frozen=True, slots=True)
class EvalConfig:
    test_days: float = 14.0
    valid_days: float = 7.0
    # Validation widened back to this many events when valid_days hold fewer (see
    # topics.datasets.split_train_valid_test).
    min_valid_events: int = 2000
    ks: tuple[int, ...] = (5, 10, 20)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 256
    epochs: int | None = None
    # Existing bundles (paths) to evaluate side by side with the freshly trained ones.
    bundles: tuple[str, ...] = ()


@dataclass(slots=True)
class TestPairs:
    """Prefix -> next-item examples, index-aligned: ``trigger_ids[i]`` is the event whose
    recommendation is scored against ``targets[i]``; ``prefixes[i]`` are the session's items
    up to and including that event (time order)."""

    trigger_ids: list[str] = field(default_factory=list)
    prefixes: list[list[str]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    dropped_unseen: int = 0
    dropped_repeat: int = 0

    def __len__(self) -> int:
        return len(self.targets)


def build_test_pairs(test: Sequence[UserEvent], known_items: set[str]) -> TestPairs:
    """Expand time-ordered test events into prefix -> next-item examples (see module doc)."""
    sessions: dict[str, list[UserEvent]] = {}
    for e in test:
        sessions.setdefault(e.session_id, []).append(e)
    pairs = TestPairs()
    for events in sessions.values():
        prefix: list[str] = []
        for cur, nxt in pairwise(events):
            if cur.item_id is not None:
                prefix.append(cur.item_id)
            target = nxt.item_id
            if target is None:
                continue
            if target in prefix:
                pairs.dropped_repeat += 1
            elif target not in known_items:
                pairs.dropped_unseen += 1
            else:
                pairs.trigger_ids.append(cur.event_id)
                pairs.prefixes.append(list(prefix))
                pairs.targets.append(target)
    return pairs


def score_lists(
    lists: Sequence[Sequence[str]],
    pairs: TestPairs,
    catalogue: Sequence[str],
    popularity: np.ndarray,
    ks: Sequence[int],
) -> dict[str, float]:
    """Every metric of one method's lists (aligned with ``pairs``) over ``catalogue``
    (training items, index i+1; ``popularity`` is ``float[N + 1]`` by that index)."""
    code = {item: i + 1 for i, item in enumerate(catalogue)}
    ranked = [[code.get(i, -1) for i in row] for row in lists]
    truth = [code[t] for t in pairs.targets]
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate_at_k(ranked, truth, k)
        out[f"MRR@{k}"] = mrr_at_k(ranked, truth, k)
        out[f"NDCG@{k}"] = ndcg_at_k(ranked, truth, k)
    k = max(ks)
    out[f"coverage@{k}"] = coverage(ranked, len(catalogue), k)
    out[f"popularity_bias@{k}"] = popularity_bias(ranked, popularity, k)
    for lo, hi in LENGTH_BUCKETS:
        rows = [i for i, p in enumerate(pairs.prefixes) if lo <= len(p) <= hi]
        if rows:
            label = f"{lo}" if lo == hi else (f"{lo}+" if hi > 1000 else f"{lo}-{hi}")
            out[f"HR@{k}|len={label}"] = hit_rate_at_k(
                [ranked[i] for i in rows], [truth[i] for i in rows], k
            )
    return out


def _chunks(items: Sequence[UserEvent], size: int) -> list[Sequence[UserEvent]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _replay(
    model: ServingModel,
    warm: Sequence[UserEvent],
    test: Sequence[UserEvent],
    step: Callable[[list[Trigger], InMemoryStateStore, InMemoryCovisitStore], Awaitable[None]],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Warm an in-process state store with ``warm`` (training events of the test users) and an
    online co-visitation store with ``warm``'s recent past, then hand ``test`` to ``step`` in
    event-time micro-batches, as the worker would see them."""
    store = InMemoryStateStore(
        namespace="eval",
        half_life_ms=model.half_life_ms,
        max_recent=model.max_recent,
        space_id=model.space_id,
    )
    online = InMemoryCovisitStore()
    users = {e.user_id for e in test}
    for chunk in _chunks([e for e in warm if e.user_id in users], batch_size):
        updates, _ = state_updates(list(chunk), model)
        await store.apply_batch(updates)
    if test:
        await warm_online(online, warm, model, before_ms=min(e.timestamp_ms for e in test))
    for chunk in _chunks(test, batch_size):
        await step([Trigger(e, float(e.timestamp_ms)) for e in chunk], store, online)
        if progress is not None:
            progress(len(chunk))


async def warm_online(
    online: InMemoryCovisitStore,
    events: Sequence[UserEvent],
    model: ServingModel,
    *,
    before_ms: int,
    batch_size: int = 1024,
) -> None:
    """Teach ``online`` the events of the ONLINE_WARM_HALF_LIVES half-lives before
    ``before_ms`` (older ones would weigh < 0.1%), as a worker running through that period
    would have learnt them. Sessions are followed with a scratch state store."""
    since = before_ms - ONLINE_WARM_HALF_LIVES * online.config.half_life_ms
    recent = [e for e in events if since <= e.timestamp_ms < before_ms]
    scratch = InMemoryStateStore(
        namespace="warm",
        half_life_ms=model.half_life_ms,
        max_recent=model.max_recent,
        space_id=model.space_id,
    )
    for chunk in _chunks(recent, batch_size):
        updates, _ = state_updates(list(chunk), model)
        states = [decode_state(b) for b in await scratch.apply_batch(updates)]
        await online.update_and_read(online_batch(list(chunk), states, model, read=False))


async def served_recommendations(
    model: ServingModel,
    warm: Sequence[UserEvent],
    test: Sequence[UserEvent],
    *,
    k: int,
    n_candidates: int = 100,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Recommendation]:
    """The worker's Recommendation for every event of ``test`` (by event id): warm state with
    ``warm`` (training events of the test users), then replay ``test`` through
    ``recommend_batch`` in micro-batches."""
    out: dict[str, Recommendation] = {}

    async def step(
        triggers: list[Trigger], store: InMemoryStateStore, online: InMemoryCovisitStore
    ) -> None:
        result = await recommend_batch(
            triggers, store, model, k=k, n_candidates=n_candidates, online=online
        )
        for rec in result.recommendations:
            out[rec.event_id] = rec

    await _replay(model, warm, test, step, batch_size=batch_size, progress=progress)
    return out


async def served_lists(
    model: ServingModel,
    warm: Sequence[UserEvent],
    test: Sequence[UserEvent],
    pairs: TestPairs,
    *,
    k: int,
    n_candidates: int = 100,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """The worker's lists for ``pairs`` (``served_recommendations``, aligned with pairs)."""
    recs = await served_recommendations(
        model, warm, test, k=k, n_candidates=n_candidates, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    return [recs[t].items if t in recs else [] for t in pairs.trigger_ids]


async def served_signals(
    model: ServingModel,
    warm: Sequence[UserEvent],
    test: Sequence[UserEvent],
    pairs: TestPairs,
    *,
    k: int,
    n_candidates: int = 100,
    batch_size: int = 256,
) -> CapturedSignals:
    """Replay like ``served_lists`` but keep, for every example, its candidates and every
    signal (``every_signal``), so that blends can be compared without replaying again."""
    target_of = dict(zip(pairs.trigger_ids, pairs.targets, strict=True))
    rows: list[tuple[np.ndarray, set[int], int, dict[str, np.ndarray | None]]] = []

    async def step(
        triggers: list[Trigger], store: InMemoryStateStore, online: InMemoryCovisitStore
    ) -> None:
        scored = await score_batch(
            triggers,
            store,
            model,
            k=k,
            n_candidates=n_candidates,
            online=online,
            every_signal=True,
        )
        keep = [i for i, t in enumerate(triggers) if t.event.event_id in target_of]
        if not keep:
            return
        targets = model.indices_of(
            item_hashes_u64([target_of[triggers[i].event.event_id] for i in keep])
        )
        sig = scored.signals
        for j, i in enumerate(keep):
            raw = {n: (v[i] if v is not None else None) for n, v in
                   (("neural", sig.neural), ("covisit", sig.covisit),
                    ("sequential", sig.sequential), ("knn", sig.knn),
                    ("online", sig.online))}  # fmt: skip
            rows.append((scored.candidates[i], scored.arrays.seen[i], int(targets[j]), raw))

    await _replay(model, warm, test, step, batch_size=batch_size)
    if not rows:
        return capture(np.zeros((0, 0), np.int64), [], np.zeros(0, np.int64), {})
    names = [n for n, v in rows[0][3].items() if v is not None]
    return capture(
        np.stack([r[0] for r in rows]),
        [r[1] for r in rows],
        np.array([r[2] for r in rows], dtype=np.int64),
        {n: np.stack([r[3][n] for r in rows]) for n in names},  # type: ignore[misc]
    )


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` from synchronous code, also when the caller runs inside an event loop
    (a benchmark or an async test calling ``streamrec train``'s tuning): then it runs on a
    thread of its own, since a running loop cannot be re-entered."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def served_lists_sync(*args: object, **kwargs: object) -> list[list[str]]:
    """``served_lists`` from synchronous code (see ``run_sync``)."""
    return run_sync(served_lists(*args, **kwargs))  # type: ignore[arg-type]


def neural_lists(model: ServingModel, pairs: TestPairs, *, k: int) -> list[list[str]]:
    """The ranker alone over the whole catalogue (a GRU4Rec-style baseline): no retrieval
    stage, no stored state; ``user_vec`` is the sum of the prefix's embeddings, as in
    training. Rows per ONNX call are bounded so that candidates x dims stays ~64 MB."""
    n = len(model.item_ids)
    r = model.max_recent
    rows_per_call = max(1, 500_000 // max(n, 1))
    catalogue = np.arange(1, n + 1, dtype=np.int64)
    out: list[list[str]] = []
    for lo in range(0, len(pairs), rows_per_call):
        prefixes = pairs.prefixes[lo : lo + rows_per_call]
        b = len(prefixes)
        recent = np.zeros((b, r), dtype=np.int64)
        user_vec = np.zeros((b, model.dim), dtype=np.float32)
        seen: list[set[int]] = []
        for i, prefix in enumerate(prefixes):
            idx = model.indices_of(item_hashes_u64(prefix))
            known = idx[idx > 0]
            tail = known[-r:]
            if tail.size:
                recent[i, r - tail.size :] = tail
            user_vec[i] = model.embeddings[known].sum(axis=0) if known.size else 0.0
            seen.append({int(x) for x in known})
        cands = np.broadcast_to(catalogue, (b, n))
        scores = model.scorer.score(recent, user_vec, np.ascontiguousarray(cands))
        items, _ = top_k_excluding(scores, cands, seen, k)
        out.extend([[model.item_ids[i - 1] for i in row] for row in items])
    return out
