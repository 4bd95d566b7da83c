"""Search latency within the worker: ``recommend_batch`` on search events vs view events.

What a search costs the worker beyond a view, and what micro-batching and the query cache buy
for it. In process, no Kafka, with the worker's real objects: the model bundle
(``ServingModel``, one ONNX and one FAISS thread), ``UserStateStore`` and
``RedisCovisitStore`` on a real local Redis (own namespaces, deleted at the end), and
``TextSearch`` built as stream/app.py builds it: an ``ItemTextIndex`` of catalogue titles,
the real ``MiniLMEncoder`` (one ONNX thread) and a fresh ``QueryCache`` per mode.

Catalogue: real product titles of the Home Depot search relevance data
(shared/datasets/homedepot-search-relevance/train.csv.gz, latin-1), ``--titles`` distinct
titles, embedded once in batches of ``batch_max`` titles and upserted into the index as the
catalogue agent does (titles/s printed). The bundle does not know these items: they are
catalogue-only items, ranked by text. The catalogue holds the graded products of the 50
search terms with the most graded products, then those of further search terms (shuffled
with ``--seed``) until it is full; the rest of those terms' products are not in it.

Workloads (64-event micro-batches; events fed batched and one at a time, interleaved chunk by
chunk, each mode in its own Redis namespace with its own query cache):
  (a) searches, all queries distinct (cold query cache: one encoder call per batch);
  (b) searches drawn from a pool of 50 queries with probability 1/rank (warm cache: the
      pool is encoded before timing; the file has no query frequencies, so the pool is the
      50 terms with the most graded products);
  (c) views: synthetic, fitted to DIGINETICA (bench/_common.py);
  (d) the views of (c) with 10% of them replaced by searches (distinct queries) of the same
      user and session.
Search users have four searches each, in one session, spread over the stream.

Printed: per workload, ms/event and p50/p99 latency of a call (batch of 64 and one at a time);
the per-event cost of every stage of ``BatchResult.stage_ms`` (encode = query encoder,
text = text-index search and hit lookups, state = Redis state round trip, online = online
co-visitation round trip, retrieval = candidates, scoring = ONNX ranker and signals,
rank = blend + top-K + records); RATIO lines (searches one at a time / batched, search / view
per-event cost); a batch-size sweep; and a sanity line on the search results (share whose
top-1 title shares a word with the query).

Usage: python bench/search.py [--titles 5000] [--batches 30] [--quick]
Starts Redis on 127.0.0.1:26379 through deploy/local/redis.sh unless it already runs there or
REDIS_URL is set, and stops what it started. Never a test: timings are not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import os
import re
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis
from _common import (
    DATA_NOTE,
    DEFAULT_MODEL_DIR,
    ROOT,
    background_note,
    cpu_seconds,
    ensure_bundle,
    fit_diginetica,
    git_commit,
    machine,
    machine_busy_seconds,
    percentiles,
    pid_from_file,
    summary,
    synthesise,
)

from features.online_covisit import RedisCovisitStore
from features.store import UserStateStore
from models.serving import ServingModel
from models.text_encoder import MiniLMEncoder
from models.text_index import ItemTextIndex
from stream.pipeline import BatchResult, QueryCache, TextSearch, Trigger, recommend_batch
from stream.services import LocalServices
from stream.settings import Settings, load_settings
from topics.events import EventType, UserEvent

DATA = Path(
    os.environ.get(
        "STREAMREC_HOMEDEPOT_CSV",
        str(ROOT.parent / "shared/datasets/homedepot-search-relevance/train.csv.gz"),
    )
)
STREAMREC_HOME = Path(os.environ.get("STREAMREC_HOME", str(Path.home() / ".cache/streamrec")))
STAGES = ("encode", "text", "state", "online", "retrieval", "scoring", "rank")
BATCH = 64
SWEEP = (1, 8, 16, 64)
POOL = 50  # popular queries of workload (b)
SEARCHES_PER_USER = 4
MIX_SEARCH_SHARE = 0.10
SEARCH_GAP_MS = 50  # site-wide gap between consecutive searches of the synthetic stream
# Words that say nothing about a match (the sanity line ignores them, and 1-character tokens).
STOPWORDS = frozenset({"and", "for", "in", "of", "on", "or", "the", "to", "with"})


def normalise(query: str) -> str:
    """The query cache's key: lower case, whitespace collapsed (QueryCache.encode)."""
    return " ".join(query.lower().split())


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1} - STOPWORDS


@dataclass(slots=True)
class Corpus:
    """The catalogue and the queries of one run.

    titles:  item id -> title, the catalogue (insertion order = the order it is embedded in)
    cold:    distinct search terms (one spelling per cache key), shuffled; not in ``pool``
    pool:    the popular queries of workload (b)
    graded:  cache key of a query -> ids of the products graded for it that are in the
             catalogue
    covered: cache keys of the queries whose graded products are all in the catalogue
    n_titles_total, n_queries_total: distinct titles / query keys in the file
    """

    titles: dict[str, str]
    cold: list[str]
    pool: list[str]
    graded: dict[str, set[str]]
    covered: set[str]
    n_titles_total: int
    n_queries_total: int


def load_corpus(path: Path, n_titles: int, seed: int) -> Corpus:
    """Read the file (latin-1: it is not valid UTF-8, its README) and pick the catalogue.

    A product is identified by its title (the first product_uid with that title); a query by
    its cache key, spelled as it first appears."""
    uid_of_title: dict[str, str] = {}
    products: dict[str, set[str]] = defaultdict(set)  # query key -> item ids
    spelling: dict[str, str] = {}
    with gzip.open(path, "rb") as fh:
        for row in csv.DictReader(io.TextIOWrapper(fh, encoding="latin-1", newline="")):
            title, query = row["product_title"], row["search_term"]
            item = uid_of_title.setdefault(title, f"hd-{row['product_uid']}")
            key = normalise(query)
            if key:
                spelling.setdefault(key, query)
                products[key].add(item)
    title_of = {item: title for title, item in uid_of_title.items()}
    keys = sorted(products)
    pool = sorted(keys, key=lambda k: (-len(products[k]), k))[:POOL]
    pooled = set(pool)
    rng = np.random.default_rng(seed)
    cold = [keys[i] for i in rng.permutation(len(keys)) if keys[i] not in pooled]
    n_titles = min(n_titles, len(title_of))
    catalogue: dict[str, None] = {}
    covered: set[str] = set()
    for key in [*pool, *cold]:
        new = [i for i in sorted(products[key]) if i not in catalogue]
        if len(catalogue) + len(new) > n_titles:
            break
        catalogue.update(dict.fromkeys(new))
        covered.add(key)
    if len(catalogue) < n_titles:  # more titles than the queries' products: fill at random
        rest = sorted(set(title_of) - set(catalogue))
        pick = rng.permutation(len(rest))[: n_titles - len(catalogue)]
        catalogue.update(dict.fromkeys(rest[i] for i in sorted(pick.tolist())))
    return Corpus(
        titles={item: title_of[item] for item in catalogue},
        cold=[spelling[k] for k in cold],
        pool=[spelling[k] for k in pool],
        graded={k: {i for i in v if i in catalogue} for k, v in products.items()},
        covered=covered,
        n_titles_total=len(title_of),
        n_queries_total=len(keys),
    )


def search_events(queries: list[str], *, tag: str, base_ms: int) -> list[UserEvent]:
    """One search per query, in order; user j % U makes searches j, j + U, ... (four each,
    one session), so a user's searches fall into different batches."""
    n_users = max(1, -(-len(queries) // SEARCHES_PER_USER))
    out: list[UserEvent] = []
    for j, query in enumerate(queries):
        u = j % n_users
        out.append(
            UserEvent(
                event_id=f"{tag}-{j}",
                event_type=EventType.SEARCH,
                user_id=f"{tag}-u{u}",
                session_id=f"{tag}-s{u}",
                timestamp_ms=base_ms + j * SEARCH_GAP_MS,
                query=query,
            )
        )
    return out


def popular_queries(pool: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` draws from ``pool`` with probability proportional to 1 / rank."""
    p = 1.0 / np.arange(1, len(pool) + 1)
    return [pool[i] for i in rng.choice(len(pool), n, p=p / p.sum()).tolist()]


def with_searches(
    views: list[UserEvent], queries: list[str], rng: np.random.Generator, *, tag: str
) -> list[UserEvent]:
    """``views`` with a share MIX_SEARCH_SHARE of them (at random positions) replaced by a
    search of the same user, session and time, one query each from ``queries``."""
    n = round(MIX_SEARCH_SHARE * len(views))
    at = sorted(rng.choice(len(views), n, replace=False).tolist())
    out = list(views)
    for j, (pos, query) in enumerate(zip(at, queries, strict=False)):
        v = views[pos]
        out[pos] = UserEvent(
            event_id=f"{tag}-q{j}",
            event_type=EventType.SEARCH,
            user_id=v.user_id,
            session_id=v.session_id,
            timestamp_ms=v.timestamp_ms,
            query=query,
        )
    return out


class Mode:
    """One way of feeding one workload: own Redis namespace, own query cache, its timings."""

    def __init__(
        self,
        client: aioredis.Redis,
        model: ServingModel,
        cfg: Settings,
        index: ItemTextIndex,
        encoder: MiniLMEncoder,
        namespace: str,
    ) -> None:
        self.namespace = namespace
        self.client = client
        # As stream/app.py builds them (TTL, half-life, max_recent, online store, search).
        self.store = UserStateStore(
            client,
            namespace=namespace,
            ttl_ms=cfg.state_ttl_s * 1000,
            half_life_ms=(
                cfg.half_life_s * 1000 if cfg.half_life_s is not None else model.half_life_ms
            ),
            max_recent=cfg.max_recent,
            space_id=model.space_id,
        )
        self.online = RedisCovisitStore(client, namespace=namespace) if cfg.online_covisit else None
        self.search = TextSearch(
            index,
            encoder,
            personal_weight=cfg.search_personal_weight,
            hits=cfg.search_candidates,
            cache=QueryCache(cfg.search_query_cache),
        )
        self.model = model
        self.k = cfg.top_k
        self.n_candidates = cfg.candidates
        self.call_ms: list[float] = []
        self.stage_ms: dict[str, float] = defaultdict(float)
        self.events = 0
        self.top1: dict[str, str | None] = {}  # search event id -> its first item

    async def start(self) -> None:
        await self.store.load_script()
        if self.online is not None:
            await self.online.load_script()

    async def run(self, events: list[UserEvent]) -> BatchResult:
        now = time.time() * 1000
        triggers = [Trigger(e, now) for e in events]
        t0 = time.perf_counter()
        result = await recommend_batch(
            triggers,
            self.store,
            self.model,
            k=self.k,
            n_candidates=self.n_candidates,
            online=self.online,
            search=self.search,
        )
        self.call_ms.append((time.perf_counter() - t0) * 1000)
        for stage, ms in result.stage_ms.items():
            self.stage_ms[stage] += ms
        self.events += len(events)
        for e, r in zip(events, result.recommendations, strict=True):
            if e.event_type is EventType.SEARCH:
                self.top1[e.event_id] = r.items[0] if r.items else None
        return result

    @property
    def per_event_ms(self) -> float:
        return sum(self.call_ms) / max(1, self.events)

    def stage_per_event(self, stage: str) -> float:
        return self.stage_ms.get(stage, 0.0) / max(1, self.events)

    async def delete_keys(self) -> int:
        keys = [k async for k in self.client.scan_iter(f"sr:{self.namespace}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await self.client.delete(*keys[i : i + 1000])
        return len(keys)


@dataclass(slots=True)
class Workload:
    key: str
    label: str
    events: list[UserEvent]
    batched: Mode
    single: Mode


def chunks(events: list[UserEvent], size: int) -> list[list[UserEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def n_searches(events: list[UserEvent]) -> int:
    return sum(e.event_type is EventType.SEARCH for e in events)


def sanity(corpus: Corpus, queries: dict[str, str], top1: dict[str, str | None]) -> list[str]:
    """Word overlap of each search's top-1 title with its query; and, for the queries whose
    graded products are all in the catalogue, whether the top-1 is one of them."""
    overlap = catalogue_top = graded_hits = graded_n = 0
    for event_id, item in top1.items():
        query = queries[event_id]
        title = corpus.titles.get(item) if item is not None else None
        if title is not None:
            catalogue_top += 1
            overlap += bool(words(query) & words(title))
        key = normalise(query)
        if key in corpus.covered:
            graded_n += 1
            graded_hits += item in corpus.graded.get(key, set())
    n = max(1, len(top1))
    return [
        f"sanity (workload a, batched): top-1 title shares a word with the query in "
        f"{overlap} of {len(top1)} searches ({100 * overlap / n:.1f}%; words of 2+ characters, "
        f"a few stopwords ignored); top-1 is a catalogue item in {catalogue_top} "
        f"({100 * catalogue_top / n:.1f}%)",
        f"  of the {graded_n} searches whose graded products are all in the catalogue, the top-1 "
        f"is one of them in {graded_hits} ({100 * graded_hits / max(1, graded_n):.1f}%; "
        "graded products include ones graded 1 = not relevant)",
    ]


async def bench(args: argparse.Namespace, redis_url: str, notes: list[str]) -> list[str]:
    cfg = load_settings()
    bundle = ensure_bundle(args.model_dir)
    model = ServingModel.load(bundle)  # as the worker: 1 ONNX thread, 1 FAISS thread
    corpus = load_corpus(args.data, args.titles, args.seed)
    encoder = MiniLMEncoder(device=cfg.device)  # type: ignore[arg-type]
    encoder.warmup()  # as load_text_encoder
    index = ItemTextIndex(encoder.dim, encoder.name)

    run_id = uuid.uuid4().hex[:8]
    n_main = args.batches * BATCH
    n_warmup = 4 * BATCH
    if len(corpus.cold) < n_main + n_warmup:
        raise SystemExit(f"only {len(corpus.cold)} distinct queries; lower --batches")
    cold_queries = corpus.cold[:n_main]
    warmup_queries = corpus.cold[-n_warmup:]
    rng = np.random.default_rng(args.seed)
    fit = fit_diginetica()
    base_ms = 1_700_000_000_000

    def workload_events(n: int, tag: str, seed: int) -> dict[str, list[UserEvent]]:
        views = synthesise(fit, n, seed=seed, tag=f"{tag}v")
        return {
            "a": search_events(cold_queries[:n], tag=f"{tag}a", base_ms=base_ms),
            "b": search_events(
                popular_queries(corpus.pool, n, rng), tag=f"{tag}b", base_ms=base_ms
            ),
            "c": views,
            "d": with_searches(views, cold_queries, rng, tag=f"{tag}d"),
        }

    short = {
        "a": "(a) search cold",
        "b": "(b) search warm",
        "c": "(c) view",
        "d": "(d) view+10% search",
    }
    labels = {
        "a": "(a) search, distinct queries (cold cache)",
        "b": f"(b) search, pool of {POOL} queries (warm cache)",
        "c": "(c) view",
        "d": f"(d) view + {100 * MIX_SEARCH_SHARE:.0f}% search (distinct queries)",
    }
    main_events = workload_events(n_main, f"{run_id}m", args.seed)
    sweep_events = workload_events(min(args.sweep_events, n_main), f"{run_id}s", args.seed + 1)
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    modes: list[Mode] = []

    async def new_mode(name: str, warm_pool: bool) -> Mode:
        mode = Mode(client, model, cfg, index, encoder, f"bench-search-{run_id}-{name}")
        modes.append(mode)
        await mode.start()
        if warm_pool:  # workload (b): every pool query cached before timing
            mode.search.cache.encode(encoder, corpus.pool)
        return mode

    redis_pid = pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid")
    try:
        await client.ping()
        ours0 = time.process_time() + cpu_seconds(redis_pid)
        busy0 = machine_busy_seconds()
        t_start = time.perf_counter()

        # The catalogue, as the catalogue agent indexes it: one encoder call per consumed
        # batch of batch_max titles, then one upsert.
        items = list(corpus.titles)
        t_embed = time.perf_counter()
        for i in range(0, len(items), cfg.batch_max):
            batch = items[i : i + cfg.batch_max]
            index.upsert(batch, encoder.encode([corpus.titles[x] for x in batch]))
        embed_s = time.perf_counter() - t_embed

        # Warm-up (own namespace, not reported): first calls, script cache, ONNX shapes.
        warm = await new_mode("warmup", warm_pool=False)
        warm.search.cache = QueryCache(0)  # every call encodes: every query shape is seen
        warm_views = synthesise(fit, n_warmup, seed=args.seed + 2, tag=f"{run_id}w")
        warm_sets = [
            search_events(warmup_queries, tag=f"{run_id}wa", base_ms=base_ms),
            search_events(
                popular_queries(corpus.pool, n_warmup, rng), tag=f"{run_id}wb", base_ms=base_ms
            ),
            warm_views,
            with_searches(warm_views, warmup_queries, rng, tag=f"{run_id}wd"),
        ]
        for events in warm_sets:
            for chunk in chunks(events, BATCH)[:2]:
                await warm.run(chunk)
                for size in (8, 16):
                    for part in chunks(chunk, size):
                        await warm.run(part)
                for e in chunk[:16]:
                    await warm.run([e])

        workloads = [
            Workload(
                key,
                labels[key],
                main_events[key],
                await new_mode(f"{key}64", warm_pool=key == "b"),
                await new_mode(f"{key}1", warm_pool=key == "b"),
            )
            for key in "abcd"
        ]
        t_main = time.perf_counter()
        for i in range(args.batches):  # interleaved: every mode of every workload per chunk
            for w in workloads:
                chunk = w.events[i * BATCH : (i + 1) * BATCH]
                await w.batched.run(chunk)
                for e in chunk:
                    await w.single.run([e])
        main_s = time.perf_counter() - t_main

        sweep: dict[str, dict[int, Mode]] = {}
        for key in "abcd":
            sweep[key] = {s: await new_mode(f"{key}sw{s}", warm_pool=key == "b") for s in SWEEP}
        t_sweep = time.perf_counter()
        n_sweep = len(sweep_events["a"])
        for i in range(0, n_sweep, BATCH):
            for key in "abcd":
                chunk = sweep_events[key][i : i + BATCH]
                for size, mode in sweep[key].items():
                    for part in chunks(chunk, size):
                        await mode.run(part)
        sweep_s = time.perf_counter() - t_sweep

        wall_s = time.perf_counter() - t_start
        ours = time.process_time() + cpu_seconds(redis_pid) - ours0
        other = max(0.0, machine_busy_seconds() - busy0 - ours)

        by_key = {w.key: w for w in workloads}
        a, b, c, d = (by_key[k] for k in "abcd")
        online_note = ", one EVALSHA for online co-visitation" if a.batched.online else ""
        covered_a = sum(normalise(q) in corpus.covered for q in cold_queries)
        lines = [
            "streamrec search benchmark (bench/search.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  model        {bundle.name} ({model.scorer.provider}, 1 thread), "
            f"{model.retriever.n_items} items, k {a.batched.k}, "
            f"{a.batched.n_candidates} candidates",
            f"  encoder      {encoder.name} ({encoder.provider}, 1 ONNX thread); search: "
            f"{cfg.search_candidates} text hits, personal weight {cfg.search_personal_weight}, "
            f"query cache {cfg.search_query_cache} (fresh per mode)",
            f"  catalogue    {len(items)} distinct titles of {args.data.name} "
            f"({corpus.n_titles_total} in the file), catalogue-only items (not in the bundle); "
            f"embedded in batches of {cfg.batch_max} in {embed_s:.1f} s = "
            f"{len(items) / embed_s:.0f} titles/s ({1000 * embed_s / len(items):.1f} ms/title)",
            f"  queries      {corpus.n_queries_total} distinct search terms in the file; "
            f"(a) {len(cold_queries)} distinct, shuffled (seed {args.seed}), {covered_a} of "
            f"them with all graded products in the catalogue; (b) the {POOL} terms with the "
            "most graded products, drawn with p ~ 1/rank",
            f"  redis        {redis_url} (real, local; one pipelined EVALSHA per call for "
            f"state{online_note})",
            f"  events       {n_main} per workload ({args.batches} batches of {BATCH}), fed "
            f"batched and one at a time; searches: {SEARCHES_PER_USER} per synthetic user, one "
            f"session; views: {DATA_NOTE}; (d): {n_searches(d.events)} of its events are "
            "searches",
            f"  wall         {wall_s:.1f} s (catalogue {embed_s:.1f} s, workloads "
            f"{main_s:.1f} s, sweep {sweep_s:.1f} s); this process + redis used {ours:.1f} "
            "CPU s",
            f"  background   {background_note(other, wall_s)}",
            "",
            f"recommend_batch per workload ({args.batches} calls of 64, {n_main} calls of 1)",
            "                                              batch of 64                    "
            "one at a time",
            "  workload                                    ms/event  call p50  call p99   "
            "ms/event  call p50  call p99",
        ]
        for w in workloads:
            b50, b99 = percentiles(w.batched.call_ms)
            s50, s99 = percentiles(w.single.call_ms)
            lines.append(
                f"  {w.label:<44}{w.batched.per_event_ms:8.3f}  {b50:8.2f}  {b99:8.2f}   "
                f"{w.single.per_event_ms:8.3f}  {s50:8.2f}  {s99:8.2f}"
            )
        lines += [
            "",
            "per-event cost of each stage (ms/event; BatchResult.stage_ms)",
            f"  {'workload':<20} {'mode':<11}  "
            + "".join(f"{s:>10}" for s in STAGES)
            + "   outside",
        ]
        for w in workloads:
            for name, mode in (("64", w.batched), ("1", w.single)):
                costs = [mode.stage_per_event(s) for s in STAGES]
                outside = mode.per_event_ms - sum(costs)
                lines.append(
                    f"  {short[w.key]:<20} batch of {name:<2}  "
                    + "".join(f"{x:10.4f}" for x in costs)
                    + f"{outside:10.4f}"
                )
        summary("search", "cold search per event, batch of 64", a.batched.per_event_ms, "ms")
        summary("search", "warm search per event, batch of 64", b.batched.per_event_ms, "ms")
        summary("search", "cold search one at a time / batch of 64",
                a.single.per_event_ms / a.batched.per_event_ms, "x")  # fmt: skip
        summary("search", "view + 10% search / view, batch of 64",
                d.batched.per_event_ms / c.batched.per_event_ms, "x")  # fmt: skip
        lines += [
            "",
            f"RATIO search cold per-event cost one-at-a-time / batch-of-64 = "
            f"{a.single.per_event_ms / a.batched.per_event_ms:.1f}x",
            f"RATIO search warm per-event cost one-at-a-time / batch-of-64 = "
            f"{b.single.per_event_ms / b.batched.per_event_ms:.1f}x",
            f"RATIO per-event cost search cold / view, batch of 64 = "
            f"{a.batched.per_event_ms / c.batched.per_event_ms:.1f}x",
            f"RATIO per-event cost search warm / view, batch of 64 = "
            f"{b.batched.per_event_ms / c.batched.per_event_ms:.1f}x",
            f"RATIO per-event cost search cold / view, one at a time = "
            f"{a.single.per_event_ms / c.single.per_event_ms:.1f}x",
            f"RATIO per-event cost view+10% search / view, batch of 64 = "
            f"{d.batched.per_event_ms / c.batched.per_event_ms:.2f}x",
            "",
            f"batch-size sweep ({n_sweep} further events per workload and size, own "
            "namespace and query cache):",
            "  workload                                    size   ms/event   call p50 ms   "
            "call p99 ms   events/s",
        ]
        for key in "abcd":
            for size, mode in sweep[key].items():
                p50, p99 = percentiles(mode.call_ms)
                lines.append(
                    f"  {labels[key]:<44}{size:>4}   {mode.per_event_ms:8.3f}   {p50:11.2f}   "
                    f"{p99:11.2f}   {1000 / mode.per_event_ms:8.0f}"
                )
        queries = {e.event_id: e.query or "" for e in a.events}
        lines += ["", *sanity(corpus, queries, a.batched.top1)]
        return lines
    finally:
        deleted = 0
        for mode in modes:
            try:
                deleted += await mode.delete_keys()
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete keys of {mode.namespace}: {exc}", file=sys.stderr)
        notes.append(f"cleanup: deleted {deleted} redis keys of {len(modes)} namespaces")
        await client.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--titles", type=int, default=5000, help="catalogue titles to embed (default 5000)"
    )
    p.add_argument(
        "--batches", type=int, default=30, help="64-event chunks per workload (default 30)"
    )
    p.add_argument(
        "--sweep-events",
        type=int,
        default=512,
        help="events per workload and sweep size (default 512)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data", type=Path, default=DATA, help="Home Depot train.csv.gz")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a fast check: 300 titles, 3 batches, 64 sweep events",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="whole run, seconds")
    args = p.parse_args()
    if args.quick:
        args.titles, args.batches, args.sweep_events = 300, 3, 64
    if not args.data.exists():
        print(f"no data at {args.data} (set STREAMREC_HOMEDEPOT_CSV)", file=sys.stderr)
        return 2

    services = LocalServices(redis_port=args.redis_port)
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            services.ensure("redis")
            redis_url = services.redis_url
        notes: list[str] = []
        lines = asyncio.run(asyncio.wait_for(bench(args, redis_url, notes), args.timeout))
        print("\n".join([*lines, *notes]), flush=True)
        return 0
    finally:
        services.stop_started()


if __name__ == "__main__":
    sys.exit(main())
