"""What micro-batching buys: ``recommend_batch`` on batches of 64 vs the same events one by one.

In process, no Kafka, real Redis (the pipeline's Redis round trip is part of what batching
amortises, so a fake store would flatter it). Same model (one ONNX intra-op thread and one
FAISS thread, as the worker loads it), same store settings as the worker, same events: a
synthetic stream fitted to DIGINETICA (bench/_common.py). The two modes are interleaved chunk
by chunk (64 events batched into namespace A, then the same 64 one at a time into namespace
B), so drift of the machine hits both alike and both see the same user-state history.

Printed: per-event cost batched vs unbatched and its RATIO; the per-event cost of every stage
of ``BatchResult.stage_ms`` (state = Redis EVALSHA pipeline + decode, retrieval = arrays +
FAISS, scoring = ONNX, rank = top-K + building the records) in both modes; p50/p99 latency of
a 64-event batch and of a single-event call; a batch-size sweep; and whether both modes
produced the same recommendation lists. ``--profile`` adds a cProfile of the batched calls.

Usage: python bench/batching.py [--batches 150] [--profile]
Starts Redis on 127.0.0.1:26379 through deploy/local/redis.sh unless it already runs there or
REDIS_URL is set, and stops what it started. Never a test: timings are not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import redis.asyncio as aioredis
from _common import (
    DATA_NOTE,
    DEFAULT_MODEL_DIR,
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

from features.keys import user_key
from features.online_covisit import RedisCovisitStore
from features.store import UserStateStore
from models.serving import ServingModel
from stream.pipeline import BatchResult, Trigger, recommend_batch
from stream.services import LocalServices
from stream.settings import load_settings
from topics.events import UserEvent

STAGES = ("state", "online", "retrieval", "scoring", "rank")
STREAMREC_HOME = Path(os.environ.get("STREAMREC_HOME", str(Path.home() / ".cache/streamrec")))
BATCH = 64


class Mode:
    """One store (own Redis namespace) and the timings gathered for it."""

    def __init__(self, client: aioredis.Redis, model: ServingModel, namespace: str) -> None:
        cfg = load_settings()
        self.namespace = namespace
        self.store = UserStateStore(
            client,
            namespace=namespace,
            ttl_ms=600_000,
            half_life_ms=model.half_life_ms,
            max_recent=cfg.max_recent,
            space_id=model.space_id,
        )
        # As the worker: online co-visitation learnt in Redis, one more EVALSHA per call.
        self.online = RedisCovisitStore(client, namespace=namespace) if cfg.online_covisit else None
        self.model = model
        self.k = cfg.top_k
        self.n_candidates = cfg.candidates
        self.call_ms: list[float] = []
        self.stage_ms: dict[str, float] = defaultdict(float)
        self.events = 0
        self.items: dict[str, list[str]] = {}

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
        )
        self.call_ms.append((time.perf_counter() - t0) * 1000)
        for stage, ms in result.stage_ms.items():
            self.stage_ms[stage] += ms
        self.events += len(events)
        for r in result.recommendations:
            self.items[r.event_id] = r.items
        return result

    @property
    def per_event_ms(self) -> float:
        return sum(self.call_ms) / max(1, self.events)

    def stage_per_event(self, stage: str) -> float:
        return self.stage_ms.get(stage, 0.0) / max(1, self.events)

    async def delete_state(self, events: list[UserEvent]) -> None:
        users = sorted({e.user_id for e in events})
        for i in range(0, len(users), 1000):
            await self.store.client.delete(
                *(user_key(self.namespace, u) for u in users[i : i + 1000])
            )
        online = [k async for k in self.store.client.scan_iter(f"sr:{self.namespace}:cv:*")]
        for i in range(0, len(online), 1000):
            await self.store.client.delete(*online[i : i + 1000])


def chunks(events: list[UserEvent], size: int) -> list[list[UserEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


async def bench(args: argparse.Namespace, redis_url: str) -> list[str]:
    bundle = ensure_bundle(args.model_dir)
    model = ServingModel.load(bundle)  # as the worker: 1 ONNX thread, 1 FAISS thread
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    run_id = uuid.uuid4().hex[:8]
    fit = fit_diginetica()
    events = synthesise(fit, args.batches * BATCH, seed=args.seed, tag=f"{run_id}m")
    sweep_events = synthesise(fit, args.sweep_events, seed=args.seed + 1, tag=f"{run_id}s")
    warm_events = synthesise(fit, 4 * BATCH, seed=args.seed + 2, tag=f"{run_id}w")
    modes: list[Mode] = []
    try:
        await client.ping()
        warm = Mode(client, model, f"bench-{run_id}-warm")
        modes.append(warm)
        await warm.store.load_script()
        if warm.online is not None:
            await warm.online.load_script()
        for chunk in chunks(warm_events, BATCH):  # first calls: allocations, script cache
            await warm.run(chunk)
            for e in chunk:
                await warm.run([e])

        batched = Mode(client, model, f"bench-{run_id}-b64")
        single = Mode(client, model, f"bench-{run_id}-b1")
        modes += [batched, single]
        profiler = cProfile.Profile() if args.profile else None
        redis_pid = pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid")
        ours0 = time.process_time() + cpu_seconds(redis_pid)
        busy0 = machine_busy_seconds()
        t_start = time.perf_counter()
        for chunk in chunks(events, BATCH):
            if profiler is not None:
                profiler.enable()
            await batched.run(chunk)
            if profiler is not None:
                profiler.disable()
            for e in chunk:
                await single.run([e])
        wall_s = time.perf_counter() - t_start
        ours = time.process_time() + cpu_seconds(redis_pid) - ours0
        other = max(0.0, machine_busy_seconds() - busy0 - ours)

        sweep: list[tuple[int, float, float, float]] = []
        for size in args.sweep:
            mode = Mode(client, model, f"bench-{run_id}-s{size}")
            modes.append(mode)
            for chunk in chunks(sweep_events, size):
                await mode.run(chunk)
            p50, p99 = percentiles(mode.call_ms)
            sweep.append((size, mode.per_event_ms, p50, p99))

        same = sum(batched.items[e.event_id] == single.items[e.event_id] for e in events)
        ratio = single.per_event_ms / batched.per_event_ms
        b50, b99 = percentiles(batched.call_ms)
        s50, s99 = percentiles(single.call_ms)
        summary("batching", "recommend_batch per event, batch of 64", batched.per_event_ms, "ms")
        summary("batching", "batched / one at a time, per event", 1 / ratio, "", "<= 0.10")
        summary("batching", "batch of 64, p50 per call", b50, "ms")
        summary("batching", "batch of 64, p99 per call", b99, "ms")
        lines = [
            "streamrec batching benchmark (bench/batching.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  model        {bundle.name} ({model.scorer.provider}, 1 thread), "
            f"{model.retriever.n_items} items, k {batched.k}, {batched.n_candidates} candidates",
            f"  redis        {redis_url} (real, local; one pipelined EVALSHA per call for state"
            + (", one EVALSHA for online co-visitation)" if batched.online is not None else ")"),
            f"  events       {len(events)} view events, {DATA_NOTE}",
            f"  wall         {wall_s:.1f} s for both modes, interleaved per 64-event chunk; "
            f"this process + redis used {ours:.1f} CPU s",
            f"  background   {background_note(other, wall_s)}",
            "",
            "per-event cost, recommend_batch (ms/event)      batch of 64   one at a time   ratio",
            f"  total (wall time of the calls)              {batched.per_event_ms:10.4f}"
            f"   {single.per_event_ms:12.4f}   {ratio:6.1f}x",
        ]
        for stage in STAGES:
            b, s = batched.stage_per_event(stage), single.stage_per_event(stage)
            lines.append(f"  {stage:<44}{b:10.4f}   {s:12.4f}   {s / max(b, 1e-12):6.1f}x")
        other_b = batched.per_event_ms - sum(batched.stage_per_event(x) for x in STAGES)
        other_s = single.per_event_ms - sum(single.stage_per_event(x) for x in STAGES)
        lines += [
            f"  {'(outside the stages)':<44}{other_b:10.4f}   {other_s:12.4f}",
            "",
            f"RATIO per-event cost one-at-a-time / batch-of-64 = {ratio:.1f}x",
            "",
            f"latency of one call   batch of 64: p50 {b50:.2f} ms  p99 {b99:.2f} ms"
            f"   |   batch of 1: p50 {s50:.3f} ms  p99 {s99:.3f} ms",
            f"same top-{batched.k} list in both modes: {same} of {len(events)} events"
            + (
                " (online co-visitation differs by design: a batch reads before it learns)"
                if batched.online is not None
                else ""
            ),
            "",
            f"batch-size sweep ({len(sweep_events)} further events per size, own namespace):",
            "  size   ms/event   call p50 ms   call p99 ms   events/s (this stage only)",
        ]
        for size, per_event, p50, p99 in sweep:
            lines.append(
                f"  {size:>4}   {per_event:8.4f}   {p50:11.2f}   {p99:11.2f}   "
                f"{1000 / per_event:10.0f}"
            )
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            lines += ["", "cProfile of the batched calls (by own time):", out.getvalue()]
        return lines
    finally:
        for mode in modes:
            try:
                await mode.delete_state(warm_events + events + sweep_events)
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete state of {mode.namespace}: {exc}", file=sys.stderr)
        await client.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, default=150, help="64-event chunks to measure")
    p.add_argument(
        "--sweep",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 8, 16, 32, 64, 128, 256],
        help="batch sizes of the sweep (comma-separated; empty: none)",
    )
    p.add_argument("--sweep-events", type=int, default=2048)
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="cProfile the batched calls")
    p.add_argument("--timeout", type=float, default=600.0, help="whole run, seconds")
    args = p.parse_args()

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
