"""The limits of each piece of the worker's path, measured in one run on one broker and Redis.

(a) Kafka: plain aiokafka consume -> produce passthrough (bench/throughput.py's, in its own
    process) on N pre-loaded events: events/s, median of ``--passes`` passes. The ceiling
    Kafka + aiokafka + one Python process set on this machine for doing nothing.
(b) Redis: the worker's ``UserStateStore.apply_batch`` (one pipeline of EVALSHA) for 64
    users' state updates vs 64 calls of 1 (own namespaces, same updates).
(c) FAISS: the bundle's ``Retriever.search``, 64 queries in one call vs 64 calls of 1,
    k = the worker's candidates (one FAISS thread, as the worker loads it).
(d) ONNX: the bundle's ``Scorer.score`` on B=64 x C=candidates vs 64 calls of B=1 (one
    intra-op thread, as the worker).
(b)-(d) run round by round, interleaved (one round = one 64-event chunk: batched call then
the 64 single calls, for each piece), on the model inputs the pipeline itself builds from the
Redis states of the chunk (``state_updates``, ``build_arrays``, ``retrieval_queries``), so
drift of the machine hits both modes alike. Events: ``bench/loadgen.py``'s stream (synthetic,
fitted to DIGINETICA: views, purchases, searches).

Printed: one table with, per piece, p50/p99 per call batched and unbatched, the per-event
cost in both modes, the batched/unbatched per-event RATIO, and the events/s each would allow
alone; the issue's goal (scoring batched <= 1/10 of unbatched per event) as met or not.

Usage: python bench/limits.py [--events 20000] [--rounds 200] [--passes 3] [--quick]
Starts Kafka (127.0.0.1:29092) and Redis (127.0.0.1:26379) through deploy/local/*.sh unless
they already run there or KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set, and stops what it
started; deletes its topics and Redis keys. Never a test: timings are not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import redis.asyncio as aioredis
from _common import (
    DEFAULT_MODEL_DIR,
    background_note,
    cpu_seconds,
    ensure_bundle,
    fit_diginetica,
    fit_event_mix,
    git_commit,
    machine,
    machine_busy_seconds,
    percentiles,
    pid_from_file,
    summary,
)
from loadgen import LOADGEN_NOTE, generate, publish
from throughput import STREAMREC_HOME, record_timestamps, run_passthrough_child

from features.store import UserStateStore
from features.user_state import decode_state
from models.serving import ServingModel
from stream.kafka_admin import create_topics, delete_topics
from stream.pipeline import build_arrays, retrieval_queries, state_updates
from stream.services import LocalServices, resolve_services
from stream.settings import load_settings
from topics.events import UserEvent
from topics.names import USER_EVENTS, TopicSpec

BATCH = 64
HOUR = 3600 * 1000
T = TypeVar("T")
GOAL = 0.10  # the issue: batched scoring <= 1/10 of unbatched, per event


@dataclass
class Pair:
    """Call timings (ms) of one piece: one call of ``BATCH`` vs ``BATCH`` calls of 1."""

    name: str
    batched: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)

    @property
    def batched_us(self) -> float:
        return 1000 * sum(self.batched) / max(1, BATCH * len(self.batched))

    @property
    def single_us(self) -> float:
        return 1000 * sum(self.single) / max(1, len(self.single))

    @property
    def ratio(self) -> float:
        """Per-event cost batched / unbatched (< 1: batching helps)."""
        return self.batched_us / max(self.single_us, 1e-12)


def timed(out: list[float], fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    result = fn()
    out.append((time.perf_counter() - t0) * 1000)
    return result


async def micro(
    args: argparse.Namespace, redis_url: str, run_id: str, bundle: Path
) -> tuple[list[Pair], ServingModel, list[str]]:
    """(b), (c), (d), round by round; returns the timings, the model and a background note."""
    # as the worker: 1 ONNX thread, 1 FAISS thread; --device cuda: the gpu extra's provider
    model = ServingModel.load(bundle, device=args.device)
    cfg = load_settings()
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    stores = [
        UserStateStore(
            client,
            namespace=f"bench-{run_id}-limits-{mode}",
            ttl_ms=600_000,
            half_life_ms=model.half_life_ms,
            max_recent=cfg.max_recent,
            space_id=model.space_id,
        )
        for mode in ("b64", "b1")
    ]
    redis_p = Pair("redis state: UserStateStore.apply_batch")
    faiss_p = Pair(f"faiss search: Retriever.search k={cfg.candidates}")
    onnx_p = Pair(f"onnx scoring: Scorer.score C={cfg.candidates}")
    fit, mix = fit_diginetica(), fit_event_mix()
    warm = 3
    events = generate(fit, mix, (args.rounds + warm) * BATCH, seed=args.seed, tag=f"{run_id}m",
                      chunk=BATCH * 16)  # fmt: skip
    chunk: list[UserEvent] = []
    redis_pid = pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid")
    busy0, ours0 = machine_busy_seconds(), time.process_time() + cpu_seconds(redis_pid)
    t_start = time.perf_counter()
    rounds = 0
    try:
        await stores[0].load_script()
        for part in events:
            for e in part:
                chunk.append(e)
                if len(chunk) < BATCH:
                    continue
                keep = rounds >= warm
                await one_round(chunk, stores, model, cfg.candidates, redis_p, faiss_p, onnx_p,
                                keep)  # fmt: skip
                chunk = []
                rounds += 1
        wall = time.perf_counter() - t_start
        ours = time.process_time() + cpu_seconds(redis_pid) - ours0
        note = background_note(max(0.0, machine_busy_seconds() - busy0 - ours), wall)
        return [redis_p, faiss_p, onnx_p], model, [f"{wall:.1f} s wall; {note}"]
    finally:
        for store in stores:
            try:
                keys = [k async for k in client.scan_iter(f"sr:{store.namespace}:*", count=1000)]
                for i in range(0, len(keys), 1000):
                    await client.delete(*keys[i : i + 1000])
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete {store.namespace}: {exc}", file=sys.stderr)
        await client.aclose()


async def one_round(
    chunk: list[UserEvent],
    stores: list[UserStateStore],
    model: ServingModel,
    n_candidates: int,
    redis_p: Pair,
    faiss_p: Pair,
    onnx_p: Pair,
    keep: bool,
) -> None:
    """One 64-event chunk through each piece, batched then one at a time."""
    sink: list[float] = []
    updates, _ = state_updates(chunk, model)
    t0 = time.perf_counter()
    blobs = await stores[0].apply_batch(updates)
    (redis_p.batched if keep else sink).append((time.perf_counter() - t0) * 1000)
    for u in updates:
        t0 = time.perf_counter()
        await stores[1].apply_batch([u])
        (redis_p.single if keep else sink).append((time.perf_counter() - t0) * 1000)

    arrays = build_arrays([decode_state(b) for b in blobs], model)
    q, has = retrieval_queries(arrays, model)
    # Cold users (no query vector) search with a popular item, so every row is a real search.
    cold = np.flatnonzero(~has)
    q[cold] = model.normalised_embeddings[model.popular[cold % len(model.popular)]]
    retriever, scorer = model.retriever, model.scorer
    _, cands = timed(faiss_p.batched if keep else sink, partial(retriever.search, q, n_candidates))
    for i in range(len(chunk)):
        timed(
            faiss_p.single if keep else sink, partial(retriever.search, q[i : i + 1], n_candidates)
        )

    recent, user_vec = arrays.recent, arrays.user_vec
    timed(onnx_p.batched if keep else sink, partial(scorer.score, recent, user_vec, cands))
    for i in range(len(chunk)):
        one = partial(scorer.score, recent[i : i + 1], user_vec[i : i + 1], cands[i : i + 1])
        timed(onnx_p.single if keep else sink, one)


def passthrough_phase(
    args: argparse.Namespace, bootstrap: str, run_id: str, topics: list[str], kafka_pid: int | None
) -> tuple[list[float], int, float, str]:
    """(a): pre-load N events, then ``--passes`` passthrough passes (own group and output
    topic each). Returns events/s per pass, N, the pre-load events/s and a background note."""
    n = args.events
    src = TopicSpec(f"bench-{run_id}.limits-in", USER_EVENTS.partitions, HOUR, "")
    outs = [
        TopicSpec(f"bench-{run_id}.limits-pass-{i}", USER_EVENTS.partitions, HOUR, "")
        for i in range(args.passes)
    ]
    topics += [src.name, *(o.name for o in outs)]
    asyncio.run(create_topics(bootstrap, (src, *outs)))
    fit, mix = fit_diginetica(), fit_event_mix()
    chunks = generate(fit, mix, n, seed=args.seed + 1, tag=f"{run_id}p")
    loaded = asyncio.run(publish(bootstrap, src.name, chunks, deadline_s=args.timeout))
    if loaded.acked < n:
        raise RuntimeError(f"pre-load: {loaded.acked} of {n} events acked")
    busy0, t0, bench0 = machine_busy_seconds(), time.time(), time.process_time()
    kafka0 = cpu_seconds(kafka_pid)
    rates: list[float] = []
    child_cpu = 0.0
    for i, out in enumerate(outs):
        pt = run_passthrough_child(
            bootstrap, src.name, out.name, f"bench-{run_id}-pass-{i}", n, args.timeout
        )
        if pt["forwarded"] < n:
            raise RuntimeError(f"passthrough forwarded {pt['forwarded']} of {n} events")
        child_cpu += pt["cpu_s"]
        stamps = asyncio.run(record_timestamps(bootstrap, out.name, out.partitions, 60))
        if len(stamps) < n:
            raise RuntimeError(f"passthrough output holds {len(stamps)} of {n} records")
        rates.append((n - 1) / max(1e-3, (max(stamps) - min(stamps)) / 1000))
    other = (
        machine_busy_seconds()
        - busy0
        - (cpu_seconds(kafka_pid) - kafka0)
        - child_cpu
        - (time.process_time() - bench0)
    )
    return rates, n, loaded.rate, background_note(max(0.0, other), time.time() - t0)


def table(pairs: list[Pair], pass_rates: list[float]) -> list[str]:
    head = (
        f"{'piece':<44}{'batched: 1 call of 64':>22}{'unbatched: 64 calls of 1':>26}"
        f"{'us/event':>20}{'RATIO':>9}{'events/s alone':>20}"
    )
    sub = (
        f"{'':<44}{'p50 ms':>11}{'p99 ms':>11}{'p50 ms':>13}{'p99 ms':>13}"
        f"{'batched':>10}{'unbatched':>10}{'b/u':>9}{'batched':>10}{'unbatched':>10}"
    )
    lines = [head, sub]
    if pass_rates:
        rate = statistics.median(pass_rates)
        lines.append(
            f"{'kafka: aiokafka passthrough (getmany->send)':<44}{'-':>11}{'-':>11}{'-':>13}"
            f"{'-':>13}{1e6 / rate:10.1f}{'-':>10}{'-':>9}{rate:10.0f}{'-':>10}"
        )
    for p in pairs:
        b50, b99 = percentiles(p.batched)
        s50, s99 = percentiles(p.single)
        lines.append(
            f"{p.name:<44}{b50:11.3f}{b99:11.3f}{s50:13.3f}{s99:13.3f}"
            f"{p.batched_us:10.1f}{p.single_us:10.1f}{p.ratio:9.3f}"
            f"{1e6 / p.batched_us:10.0f}{1e6 / p.single_us:10.0f}"
        )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="(a) pre-loaded events")
    p.add_argument("--passes", type=int, default=3, help="(a) passthrough passes")
    p.add_argument("--rounds", type=int, default=200, help="(b)-(d) 64-event rounds")
    p.add_argument("--kafka-port", type=int, default=29092)
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="scorer provider (auto: CUDA when onnxruntime-gpu sees a GPU)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0, help="per phase, seconds")
    p.add_argument("--quick", action="store_true", help="2,000 events, 1 pass, 20 rounds")
    args = p.parse_args()
    if args.quick:
        args.events, args.passes, args.rounds = 2000, 1, 20

    services = LocalServices(kafka_port=args.kafka_port, redis_port=args.redis_port)
    run_id = uuid.uuid4().hex[:8]
    bootstrap = ""
    topics: list[str] = []
    try:
        t_run = time.time()
        bootstrap, redis_url = resolve_services(services)
        bundle = ensure_bundle(args.model_dir)
        kafka_pid = pid_from_file(STREAMREC_HOME / f"kafka-run-{args.kafka_port}/kafka.pid")
        rates, n, preload_rate, note_a = passthrough_phase(
            args, bootstrap, run_id, topics, kafka_pid
        )
        pairs, model, note_b = asyncio.run(
            asyncio.wait_for(micro(args, redis_url, run_id, bundle), args.timeout)
        )
        cfg = load_settings()
        onnx = pairs[2]
        lines = [
            "streamrec limits, one run (bench/limits.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  model        {bundle.name} ({model.scorer.provider}, 1 thread), "
            f"{model.retriever.n_items} items, dim {model.dim}, candidates {cfg.candidates}",
            f"  services     kafka {bootstrap}, redis {redis_url}, all on this machine",
            f"  events       {LOADGEN_NOTE} (bench/loadgen.py: views, purchases, searches)",
            f"  (a) kafka    {n} events pre-loaded at {preload_rate:.0f}/s; passthrough "
            f"events/s per pass: {', '.join(f'{r:.0f}' for r in rates)}; {note_a}",
            f"  (b)-(d)      {len(onnx.batched)} rounds of 64 events after 3 warm-up rounds, "
            f"interleaved; {note_b[0]}",
            "",
            *table(pairs, rates),
            "",
            "RATIO b/u = per-event cost batched / unbatched (lower is better; 0.10 = batching "
            "makes it 10x cheaper)",
        ]
        for pair in pairs:
            lines.append(
                f"RATIO {pair.name.split(':')[0]:<12} batched/unbatched per event = "
                f"{pair.ratio:.3f} ({1 / max(pair.ratio, 1e-12):.1f}x cheaper batched)"
            )
        summary("limits", "kafka passthrough (median pass)", statistics.median(rates), "events/s")
        for pair in pairs:
            stage = pair.name.split(":")[0]
            summary("limits", f"{stage} batched/unbatched per event", pair.ratio, "",
                    f"<= {GOAL:.2f}" if pair is onnx else "")  # fmt: skip
            summary("limits", f"{stage} batch of 64, p99 per call",
                    percentiles(pair.batched)[1], "ms")  # fmt: skip
        met = "met" if onnx.ratio <= GOAL else "NOT met"
        lines.append(
            f"GOAL scoring batched <= {GOAL:.2f} x unbatched per event: {onnx.ratio:.3f} ({met})"
        )
        lines.append(f"  total wall {time.time() - t_run:.1f} s")
        print("\n".join(lines), flush=True)
        return 0
    finally:
        if bootstrap and topics:
            try:
                asyncio.run(delete_topics(bootstrap, topics))
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete benchmark topics: {exc}", file=sys.stderr)
        services.stop_started()


if __name__ == "__main__":
    sys.exit(main())
