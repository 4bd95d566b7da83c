"""What the hot-result cache saves: ``recommend_batch`` with the cache on vs off, same run.

In process, no Kafka, real Redis (the cache's MGET and fill are round trips that a fake
would flatter). Same model (one ONNX and one FAISS thread, as the worker loads it), same
store settings as the worker (online co-visitation on), same events: synthetic, fitted to
DIGINETICA (bench/_common.py), drawn at ``--rate`` views/s of event time and replayed at the
same rate of wall time, because the cache's TTL runs on Redis's clock: how many lists a TTL
can serve again depends on how many events arrive within it. Batches of 64 are paced at
``64 / rate`` s; each goes through mode "on" (its own namespace, the cache with
``--ttl-ms``) and mode "off" (its own namespace, no cache), which one first alternating from
batch to batch, so both see the same state and online co-visitation history and drift of the
machine hits both alike. A run that cannot keep up with the pace prints the rate it achieved.

Printed: hit rate (hits / (hits + misses)) and the share of all events served from the
cache; per-event cost of ``recommend_batch`` on vs off and their RATIO, per stage; p50/p99
of one call on vs off; and how stale the hits are: how many hit lists equal the list mode
"off" computed for the same event (they differ only where online co-visitation or trending
moved within the TTL), with the mean overlap of their top-K.

Usage: python bench/cache.py [--events 20000] [--rate 1000] [--ttl-ms 2000] [--quick]
Starts Redis on 127.0.0.1:26379 through deploy/local/redis.sh unless it already runs there or
REDIS_URL is set, and stops what it started; deletes its keys. Never a test: timings are not
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis
from _common import (
    DATA_NOTE,
    DEFAULT_MODEL_DIR,
    DigineticaFit,
    background_note,
    cpu_seconds,
    ensure_bundle,
    fit_diginetica,
    git_commit,
    machine,
    machine_busy_seconds,
    percentiles,
    pid_from_file,
    session_views,
    summary,
    synthesise,
)

from features.online_covisit import RedisCovisitStore
from features.result_cache import RedisResultCache
from features.store import UserStateStore
from features.user_state import decode_state
from models.serving import ServingModel
from stream.pipeline import (
    BatchResult,
    Trigger,
    online_batch,
    recommend_batch,
    state_updates,
)
from stream.services import LocalServices
from stream.settings import load_settings
from topics.events import EventType, UserEvent

STAGES = ("state", "online", "cache", "retrieval", "scoring", "rank")
STREAMREC_HOME = Path(os.environ.get("STREAMREC_HOME", str(Path.home() / ".cache/streamrec")))
BATCH = 64
SIMULATED_TTLS_MS = (500, 1000, 2000, 5000, 10_000, 30_000, 60_000)


class RecordingCache(RedisResultCache):
    """The Redis cache, recording each lookup: (wall time s, keys asked, how many were there)."""

    def __init__(self, client: aioredis.Redis, *, namespace: str, ttl_ms: int) -> None:
        super().__init__(client, namespace=namespace, ttl_ms=ttl_ms)
        self.lookups: list[tuple[float, list[str], int]] = []

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        at = time.perf_counter()
        values = await super().get_many(keys)
        self.lookups.append((at, list(keys), sum(v is not None for v in values)))
        return values


def simulated_hits(lookups: list[tuple[float, list[str], int]], ttl_ms: float) -> int:
    """Keys that a cache with ``ttl_ms`` would have answered, replaying the recorded lookups:
    the pipeline fills every key it misses, at (about) the time of the lookup."""
    filled: dict[str, float] = {}
    hits = 0
    for at, keys, _ in lookups:
        for key in keys:
            t = filled.get(key)
            if t is not None and (at - t) * 1000 < ttl_ms:
                hits += 1
            else:
                filled[key] = at
    return hits


class Mode:
    """One namespace (state, online store, and the cache when ``ttl_ms``) and its timings."""

    def __init__(
        self, client: aioredis.Redis, model: ServingModel, namespace: str, ttl_ms: int
    ) -> None:
        cfg = load_settings()
        self.client = client
        self.namespace = namespace
        self.store = UserStateStore(
            client,
            namespace=namespace,
            ttl_ms=600_000,
            half_life_ms=model.half_life_ms,
            max_recent=cfg.max_recent,
            space_id=model.space_id,
        )
        self.online = RedisCovisitStore(client, namespace=namespace) if cfg.online_covisit else None
        self.cache = (
            RecordingCache(client, namespace=namespace, ttl_ms=ttl_ms) if ttl_ms > 0 else None
        )
        self.model = model
        self.k = cfg.top_k
        self.n_candidates = cfg.candidates
        self.call_ms: list[float] = []
        self.stage_ms: dict[str, float] = defaultdict(float)
        self.lookups: Counter[str] = Counter()
        self.events = 0
        self.items: dict[str, list[str]] = {}

    async def load_scripts(self) -> None:
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
            cache=self.cache,
        )
        self.call_ms.append((time.perf_counter() - t0) * 1000)
        for stage, ms in result.stage_ms.items():
            self.stage_ms[stage] += ms
        self.lookups.update(result.cache_lookups)
        self.events += len(events)
        for r in result.recommendations:
            self.items[r.event_id] = r.items
        return result

    @property
    def per_event_ms(self) -> float:
        return sum(self.call_ms) / max(1, self.events)

    def stage_per_event(self, stage: str) -> float:
        return self.stage_ms.get(stage, 0.0) / max(1, self.events)

    async def learn(self, events: list[UserEvent]) -> None:
        """Apply ``events`` to state and the online store without serving them (history)."""
        updates, _ = state_updates(events, self.model)
        states = [decode_state(b) for b in await self.store.apply_batch(updates)]
        if self.online is not None:
            await self.online.update_and_read(online_batch(events, states, self.model, read=False))

    async def delete_keys(self) -> None:
        keys = [k async for k in self.client.scan_iter(f"sr:{self.namespace}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await self.client.delete(*keys[i : i + 1000])


def chunks(events: list[UserEvent], size: int) -> list[list[UserEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def stream_with_history(
    fit: DigineticaFit, n: int, *, seed: int, tag: str, rate: float
) -> tuple[list[UserEvent], list[UserEvent]]:
    """``(history, window)``: ``window`` is ``n`` views of a steady-state stream at ``rate``
    views/s, drawn as ``_common.synthesise`` draws them (one user per session), and
    ``history`` the earlier views of the sessions in progress when the window starts.

    DIGINETICA's sessions last minutes (median gap between views ~50 s), so at any rate most
    events of a short window continue a session that began before it: without its history
    each would look like a new user's first event, the very context the cache keys, and the
    hit rate would be inflated. The history gives those users the state they would have.
    """
    rng = np.random.default_rng(seed)
    mean_len = float(fit.session_lengths.mean())
    warmup_ms = fit.p99_session_ms
    span_ms = warmup_ms + 1.5 * n / rate * 1000
    starts = rng.uniform(0.0, span_ms, int(span_ms / 1000 * rate / mean_len) + 1)
    views = session_views(fit, rng, starts)
    order = np.argsort(views.times, kind="stable")
    in_window = order[views.times[order] >= warmup_ms][:n]
    if in_window.size < n:
        raise RuntimeError(f"synthesised only {in_window.size} of {n} events")
    end_ms = views.times[in_window[-1]]
    sessions = np.zeros(len(starts), dtype=bool)
    sessions[views.session_of[in_window]] = True
    before = order[(views.times[order] < warmup_ms) & sessions[views.session_of[order]]]
    base_ms = 1_700_000_000_000 - int(end_ms)

    def event(j: int, i: int) -> UserEvent:
        s = int(views.session_of[i])
        return UserEvent(
            event_id=f"{tag}-{j}",
            event_type=EventType.VIEW,
            user_id=f"{tag}-u{s}",
            session_id=f"{tag}-s{s}",
            timestamp_ms=base_ms + int(views.times[i]),
            item_id=fit.item_ids[int(views.items[i])],
        )

    history = [event(j, i) for j, i in enumerate(before.tolist())]
    window = [event(len(history) + j, i) for j, i in enumerate(in_window.tolist())]
    return history, window


async def bench(args: argparse.Namespace, redis_url: str) -> list[str]:
    bundle = ensure_bundle(args.model_dir)
    model = ServingModel.load(bundle)  # as the worker: 1 ONNX thread, 1 FAISS thread
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    run_id = uuid.uuid4().hex[:8]
    fit = fit_diginetica()
    history, events = stream_with_history(
        fit, args.events, seed=args.seed, tag=f"{run_id}m", rate=args.rate
    )
    warm_events = synthesise(fit, 4 * BATCH, seed=args.seed + 2, tag=f"{run_id}w")
    modes: list[Mode] = []
    try:
        await client.ping()
        warm = Mode(client, model, f"bench-{run_id}-warm", args.ttl_ms)
        modes.append(warm)
        await warm.load_scripts()
        for chunk in chunks(warm_events, BATCH):  # first calls: allocations, script cache
            await warm.run(chunk)

        on = Mode(client, model, f"bench-{run_id}-on", args.ttl_ms)
        off = Mode(client, model, f"bench-{run_id}-off", 0)
        modes += [on, off]
        t_hist = time.perf_counter()
        for chunk in chunks(history, 4096):
            await on.learn(chunk)
            await off.learn(chunk)
        history_s = time.perf_counter() - t_hist
        redis_pid = pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid")
        ours0 = time.process_time() + cpu_seconds(redis_pid)
        busy0 = machine_busy_seconds()
        period_s = BATCH / args.rate
        t_start = time.perf_counter()
        late = 0
        for j, chunk in enumerate(chunks(events, BATCH)):
            wait = t_start + j * period_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -period_s:
                late += 1
            # Alternate which mode goes first: the second sees the batch's items warm in the
            # CPU caches, and the online store's keys freshly touched in Redis.
            for mode in (on, off) if j % 2 == 0 else (off, on):
                await mode.run(chunk)
        wall_s = time.perf_counter() - t_start
        ours = time.process_time() + cpu_seconds(redis_pid) - ours0
        other = max(0.0, machine_busy_seconds() - busy0 - ours)

        hits, misses, uncacheable = (on.lookups[x] for x in ("hit", "miss", "uncacheable"))
        hit_rate = hits / max(1, hits + misses)
        ratio = off.per_event_ms / on.per_event_ms
        on50, on99 = percentiles(on.call_ms)
        off50, off99 = percentiles(off.call_ms)
        same = sum(on.items[e.event_id] == off.items[e.event_id] for e in events)
        overlap = [
            len(set(on.items[e.event_id]) & set(off.items[e.event_id])) / max(1, on.k)
            for e in events
            if on.items[e.event_id] != off.items[e.event_id]
        ]
        lines = [
            "streamrec hot-result cache benchmark (bench/cache.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  model        {bundle.name} ({model.scorer.provider}, 1 thread), "
            f"{model.retriever.n_items} items, k {on.k}, {on.n_candidates} candidates",
            f"  redis        {redis_url} (real, local); cache TTL {args.ttl_ms} ms; online "
            f"co-visitation {'on' if on.online is not None else 'off'}",
            f"  events       {len(events)} view events at {args.rate:g}/s of event time, "
            f"{DATA_NOTE}; before them, both modes learnt the {len(history)} earlier views of "
            f"the sessions in progress (state + online store, not served; {history_s:.1f} s)",
            f"  pace         {len(events) / wall_s:.0f} events/s achieved of {args.rate:g} "
            f"(batches of {BATCH}; {late} batches more than one period late); "
            f"{wall_s:.1f} s wall",
            f"  cpu          this process + redis used {ours:.1f} CPU s",
            f"  background   {background_note(other, wall_s)}",
            "",
            f"lookups: {hits} hit, {misses} miss, {uncacheable} uncacheable "
            f"(warm users: their context does not repeat)",
            f"HIT RATE {100 * hit_rate:.1f}% of cacheable events; "
            f"{100 * hits / max(1, on.events):.1f}% of all events served from the cache",
            "",
            "per-event cost, recommend_batch (ms/event)   cache on   cache off   off/on",
            f"  total (wall time of the calls)          {on.per_event_ms:9.4f}   "
            f"{off.per_event_ms:9.4f}   {ratio:6.2f}x",
        ]
        for stage in STAGES:
            a, b = on.stage_per_event(stage), off.stage_per_event(stage)
            rel = f"{b / a:6.2f}x" if a > 0 and b > 0 else "     -"
            lines.append(f"  {stage:<40}{a:9.4f}   {b:9.4f}   {rel}")
        outside_on = on.per_event_ms - sum(on.stage_per_event(x) for x in STAGES)
        outside_off = off.per_event_ms - sum(off.stage_per_event(x) for x in STAGES)
        lines.append(f"  {'(outside the stages)':<40}{outside_on:9.4f}   {outside_off:9.4f}")
        summary("cache", f"hit rate of cacheable events (TTL {args.ttl_ms} ms)", hit_rate)
        summary("cache", "events served from the cache", hits / max(1, on.events))
        summary("cache", "per-event cost off / on", ratio, "x")
        lines += [
            "",
            f"RATIO per-event cost off / on = {ratio:.2f}x "
            f"(saves {off.per_event_ms - on.per_event_ms:.4f} ms per event, "
            f"{100 * (1 - on.per_event_ms / off.per_event_ms):.1f}%)",
            "",
            f"latency of one call of {BATCH}   cache on: p50 {on50:.2f} ms  p99 {on99:.2f} ms"
            f"   |   cache off: p50 {off50:.2f} ms  p99 {off99:.2f} ms",
            f"same top-{on.k} list in both modes: {same} of {len(events)} events; the other "
            f"{len(overlap)} (of {hits} hits: served while online co-visitation or trending "
            f"moved within the TTL) share {100 * sum(overlap) / max(1, len(overlap)):.0f}% "
            f"of their items on average",
        ]
        assert isinstance(on.cache, RecordingCache)
        redis_hits = sum(n for _, _, n in on.cache.lookups)
        in_batch = hits - redis_hits  # rows that copied an identical earlier row's list
        compute = sum(off.stage_per_event(x) for x in ("retrieval", "scoring", "rank"))
        # What the cache costs per event besides what its hits save: keys, the lookup riding
        # on the online stage, fills, the subset; measured as the part of on - off that the
        # run's hits do not explain.
        overhead = on.per_event_ms - off.per_event_ms + hits / max(1, on.events) * compute
        lines += [
            "",
            f"other TTLs, simulated on this run's lookups ({redis_hits} answered by Redis, "
            f"{in_batch} by an identical row of the same batch; at {len(events) / wall_s:.0f} "
            f"events/s, a TTL of T s spans ~{len(events) / wall_s:.0f}*T events, as T/10 s "
            f"would at 10x the rate). Net saving: a linear estimate, hits x the per-event "
            f"retrieval+scoring+rank cost with the cache off ({compute:.4f} ms) - the cache's "
            f"own cost ({overhead:.4f} ms/event: on - off + what this run's hits saved; at the "
            f"measured TTL the estimate is the measured saving):",
            "  TTL ms    hit rate   served from cache   est. net saving ms/event",
        ]
        # A TTL longer than half the run would be judged on too few refills.
        shown = {t for t in SIMULATED_TTLS_MS if t <= wall_s * 500} | {args.ttl_ms}
        for ttl in sorted(shown):
            sim = in_batch + simulated_hits(on.cache.lookups, ttl)
            mark = "  (measured TTL)" if ttl == args.ttl_ms else ""
            lines.append(
                f"  {ttl:>6}    {100 * sim / max(1, hits + misses):7.1f}%   "
                f"{100 * sim / max(1, on.events):16.1f}%   "
                f"{sim / max(1, on.events) * compute - overhead:+12.4f}{mark}"
            )
        return lines
    finally:
        for mode in modes:
            try:
                await mode.delete_keys()
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete keys of {mode.namespace}: {exc}", file=sys.stderr)
        await client.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="events to measure")
    p.add_argument("--rate", type=float, default=1000.0, help="views/s (event and wall time)")
    p.add_argument(
        "--ttl-ms",
        type=int,
        default=load_settings().result_cache_ttl_ms or 2000,
        help="cache TTL (default: STREAMREC_RESULT_CACHE_TTL_MS, or 2000 when that is 0 = off)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3000 events")
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="whole run, seconds")
    args = p.parse_args()
    if args.quick:
        args.events = min(args.events, 3000)
    if args.ttl_ms < 1:
        p.error("--ttl-ms must be >= 1 (the run compares the cache on with off)")

    services = LocalServices(redis_port=args.redis_port)
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            services.ensure("redis")
            redis_url = services.redis_url
        lines = asyncio.run(asyncio.wait_for(bench(args, redis_url), args.timeout))
        print("\n".join(lines), flush=True)
        return 0
    finally:
        services.stop_started()


if __name__ == "__main__":
    sys.exit(main())
