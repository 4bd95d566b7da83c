"""Worker throughput against plain-aiokafka passthrough, and latency under a fixed load.

What is measured, on ONE broker, ONE Redis and ONE machine, in ONE run:

(a) passthrough: N events pre-loaded in a topic; a separate process with one aiokafka consumer
    and one producer reads them (``getmany``) and produces every value to an output topic
    (``send`` for the whole fetched batch, then wait for every ack: at-least-once, acks=all,
    like the worker). Events/s = (N - 1) / (last - first output record timestamp). This is the
    ceiling Kafka + aiokafka + one Python process set on this machine for doing nothing.
(b) worker: the real ``python -m stream.cli worker`` (own topic prefix, consumer group and
    Redis namespace) on the same N pre-loaded events. Events/s from the first to the last
    recommendation (``produced_at_ms``); start-up and group join are outside that window,
    as they are outside (a)'s. Printed: worker/passthrough ratio, and from the worker's own
    Prometheus metrics, where the time of a batch goes (validate, state, retrieval, scoring,
    rank, publish) and what share of the wall time the batch handler accounts for.
(c) latency: the same, still warm worker gets further events of the same synthetic stream,
    replayed at a fixed rate (default 50% of the worker max measured in (b)); p50/p99/p999
    of ``Recommendation.latency_ms`` (the worker's trigger-to-publish: producer send time of
    the trigger record -> recommendation built, just before it is handed to the producer).

Why: the worker's job is Kafka in -> Kafka out plus one Redis round trip, one FAISS search
and one ONNX call per micro-batch; the ratio to a do-nothing passthrough on the same broker
says how much the recommender costs on top of the Kafka plumbing, independent of how fast
this machine is. Events are synthetic, fitted to DIGINETICA (see bench/_common.py).

Usage: python bench/throughput.py [--events 20000] [--load 0.5 or 0.25,0.5,0.75]
       [--latency-seconds 30] [--latency-budget-ms 25]
Starts Kafka (127.0.0.1:29092) and Redis (127.0.0.1:26379) through deploy/local/*.sh unless
they already run there or KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set, and stops what it
started. Never a test: timings on shared CI machines are not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from models.bundle import derive_bundle, promote
from stream.kafka_admin import create_topics, delete_topics
from stream.model_updates import announce
from stream.replay import collect, produce
from stream.services import LocalServices, resolve_services
from stream.settings import load_settings
from tests.integration.harness import Services, WorkerProcess, free_port
from topics.model_updates import ModelUpdate
from topics.names import RECOMMENDATIONS, USER_EVENTS, TopicSpec, all_topics, model_updates_topic

HOUR = 3600 * 1000
STAGES = ("validate", "state", "online", "retrieval", "scoring", "rank", "publish")
STREAMREC_HOME = Path(os.environ.get("STREAMREC_HOME", str(Path.home() / ".cache/streamrec")))


# --------------------------------------------------------------------------- passthrough


async def passthrough(
    bootstrap: str, src: str, dst: str, group: str, expect: int, timeout_s: float
) -> dict[str, float]:
    """Forward ``expect`` records of ``src`` to ``dst``: getmany, send the batch, await its
    acks; commit the consumed offsets (all acked by then) at most once a second, as faust
    commits periodically. At-least-once, like the worker."""
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    forwarded = 0
    first = last = committed = 0.0
    try:
        deadline = time.time() + timeout_s
        while forwarded < expect and time.time() < deadline:
            batches = await consumer.getmany(timeout_ms=100, max_records=1000)
            acks = []
            for records in batches.values():
                for r in records:
                    acks.append(await producer.send(dst, r.value, key=r.key))
            if acks:
                first = first or time.time()
                await asyncio.gather(*acks)
                forwarded += len(acks)
                last = time.time()
                if last - committed > 1.0:
                    await consumer.commit()
                    committed = time.time()
        await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    return {"forwarded": forwarded, "first_s": first, "last_s": last, "cpu_s": time.process_time()}


def run_passthrough_child(
    bootstrap: str, src: str, dst: str, group: str, expect: int, timeout_s: float
) -> dict[str, float]:
    """Run ``passthrough`` in its own process (as the worker runs in its own) and return its
    self-reported numbers."""
    args = json.dumps([bootstrap, src, dst, group, expect, timeout_s])
    out = subprocess.run(
        [sys.executable, __file__, "--passthrough-child", args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"passthrough process failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- kafka helpers


async def end_offset_total(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    ends = await consumer.end_offsets(tps)
    return int(sum(ends.values()))


async def wait_for_records(
    bootstrap: str,
    topic: str,
    partitions: int,
    expect: int,
    *,
    stall_s: float,
    deadline_s: float = 600.0,
    alive: WorkerProcess | None = None,
    on_first: Callable[[], None] | None = None,
) -> int:
    """Poll the end offsets of ``topic`` (cheap: no records are read, so the measurement is
    not disturbed) until they sum to ``expect``, nothing moved for ``stall_s``, ``deadline_s``
    passed or the worker died; ``on_first`` is called once when the first record shows up.
    Returns the last total."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        total, moved = 0, time.time()
        give_up = time.time() + deadline_s
        while time.time() < give_up:
            now_total = await end_offset_total(consumer, tps)
            if now_total != total:
                if total == 0 and on_first is not None:
                    on_first()
                total, moved = now_total, time.time()
            if total >= expect or time.time() - moved > stall_s:
                return total
            if alive is not None and not alive.alive():
                return total
            await asyncio.sleep(0.25)
        return total
    finally:
        await consumer.stop()


async def record_timestamps(
    bootstrap: str, topic: str, partitions: int, timeout_s: float
) -> list[int]:
    """Kafka timestamps (ms) of every record now in ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    out: list[int] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        want = sum(ends.values())
        deadline = time.time() + timeout_s
        while len(out) < want and time.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                out.extend(r.timestamp for r in records)
        return out
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- worker metrics


@dataclass
class WorkerSnapshot:
    """Cumulative worker metrics (Prometheus) and CPU seconds of every process, at one time."""

    at_s: float
    batches: float = 0.0
    events: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    stage_n: dict[str, float] = field(default_factory=dict)
    wait_ms: float = 0.0  # sum of streamrec_batch_wait_ms
    closed: dict[str, float] = field(default_factory=dict)  # batches closed, by reason
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_cpu_s: float = 0.0  # every process of the machine


def snapshot(port: int, pids: dict[str, int | None]) -> WorkerSnapshot:
    snap = WorkerSnapshot(at_s=time.time())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "streamrec_batch_size_count":
                snap.batches = s.value
            elif s.name == "streamrec_batch_size_sum":
                snap.events = s.value
            elif s.name == "streamrec_stage_latency_ms_sum":
                snap.stage_ms[s.labels["stage"]] = s.value
            elif s.name == "streamrec_stage_latency_ms_count":
                snap.stage_n[s.labels["stage"]] = s.value
            elif s.name == "streamrec_batch_wait_ms_sum":
                snap.wait_ms = s.value
            elif s.name == "streamrec_batches_closed_total":
                snap.closed[s.labels["reason"]] = s.value
    snap.cpu_s = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap.cpu_s["bench (this process)"] = time.process_time()
    snap.machine_cpu_s = machine_busy_seconds()
    return snap


def describe_phase(before: WorkerSnapshot, after: WorkerSnapshot, wall_s: float) -> list[str]:
    """Where the worker's time went between two snapshots."""
    batches = max(1.0, after.batches - before.batches)
    events = after.events - before.events
    closed = ", ".join(
        f"{r} {after.closed.get(r, 0.0) - before.closed.get(r, 0.0):.0f}" for r in after.closed
    )
    lines = [
        f"    batches {batches:.0f}, events {events:.0f}, mean batch size {events / batches:.1f}",
        f"    batch closed by: {closed or '-'}; oldest event's age at close "
        f"{(after.wait_ms - before.wait_ms) / batches:.1f} ms (mean)",
    ]
    total = 0.0
    parts = []
    for stage in STAGES:
        ms = after.stage_ms.get(stage, 0.0) - before.stage_ms.get(stage, 0.0)
        total += ms
        parts.append(f"{stage} {ms / batches:.2f}")
    lines.append("    per batch (ms, mean): " + ", ".join(parts) + f"; sum {total / batches:.2f}")
    lines.append(
        f"    batch handler busy {total / 1000:.1f} s of {wall_s:.1f} s wall "
        f"({100 * total / 1000 / max(wall_s, 1e-9):.0f}%); the rest is faust/aiokafka "
        "consumer + producer work and waiting"
    )
    cpu = ", ".join(
        f"{name} {after.cpu_s.get(name, 0.0) - before.cpu_s.get(name, 0.0):.1f}"
        for name in after.cpu_s
    )
    cores = os.cpu_count() or 1
    lines.append(
        f"    CPU seconds in the phase: {cpu} ({cores} cores = {cores * wall_s:.1f} available)"
    )
    ours = sum(after.cpu_s.get(n, 0.0) - before.cpu_s.get(n, 0.0) for n in after.cpu_s)
    other = max(0.0, after.machine_cpu_s - before.machine_cpu_s - ours)
    lines.append("    " + background_note(other, wall_s))
    return lines


# --------------------------------------------------------------------------- the benchmark


class BenchWorker(WorkerProcess):
    """The integration tests' worker process, with benchmark names for topics and state."""

    @property
    def namespace(self) -> str:
        return f"bench-{self.run_id}"


async def _produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    t0 = time.time()
    await produce(bootstrap, topic, messages)
    return time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="N pre-loaded events (a, b)")
    p.add_argument(
        "--load",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.5],
        help="(c) replay rate as a share of (b)'s max; several, comma-separated (0.25,0.5,0.75), "
        "run one after another on the same warm worker",
    )
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        help="worker STREAMREC_LATENCY_BUDGET_MS (0 = fixed size/wait batching); default: the "
        "worker's own default or this environment's",
    )
    p.add_argument("--latency-seconds", type=float, default=30.0, help="(c) replay duration")
    p.add_argument("--kafka-port", type=int, default=29092)
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=240.0, help="per phase, seconds")
    p.add_argument(
        "--log-level",
        default="INFO",
        help="worker STREAMREC_LOG_LEVEL (INFO = the default; WARNING/ERROR make faust set the "
        "root logger to DEBUG for its spinner, so every library debug call builds a record)",
    )
    p.add_argument("--passthrough-runs", type=int, default=5, help="(a) repetitions")
    p.add_argument("--latency-csv", type=Path, help="(c) write send_ms,latency_ms per event")
    p.add_argument(
        "--swap-at",
        type=float,
        help="(c) S seconds into the replay, promote and announce a new version (a copy of the "
        "bundle) and report p99 around the swap vs before it (the worker serves a temporary "
        "copy of --model-dir, which is left untouched)",
    )
    p.add_argument("--passthrough-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.passthrough_child:
        print(json.dumps(asyncio.run(passthrough(*json.loads(args.passthrough_child)))))
        return 0
    if args.swap_at is not None and len(args.load) > 1:
        p.error("--swap-at takes one --load share")
    budget_env = (
        {"STREAMREC_LATENCY_BUDGET_MS": f"{args.latency_budget_ms:g}"}
        if args.latency_budget_ms is not None
        else {}
    )

    services = LocalServices(kafka_port=args.kafka_port, redis_port=args.redis_port)
    run_id = uuid.uuid4().hex[:8]
    worker: BenchWorker | None = None
    bootstrap = ""
    topics: list[str] = []
    try:
        bootstrap, redis_url = resolve_services(services)
        bundle = ensure_bundle(args.model_dir)
        if args.swap_at is not None:  # the swap promotes in a copy, not in the cache
            swap_root = Path(tempfile.mkdtemp(prefix="bench-swap-"))
            shutil.copytree(bundle, swap_root / bundle.name)
            promote(swap_root, bundle.name)
            args.model_dir = swap_root
        pids = {
            "kafka": pid_from_file(STREAMREC_HOME / f"kafka-run-{args.kafka_port}/kafka.pid"),
            "redis": pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid"),
        }
        metrics_port = free_port()
        worker = BenchWorker(
            Services(bootstrap, redis_url),
            args.model_dir,
            STREAMREC_HOME / "bench-logs",
            extra_env={
                "STREAMREC_GROUP_ID": f"bench-{run_id}",
                "STREAMREC_METRICS_PORT": str(metrics_port),
                "STREAMREC_LOG_LEVEL": args.log_level,
                **budget_env,
            },
            run_id=run_id,
        )
        events_topic, recs_topic, dead_topic = worker.topics
        pass_outs = [
            TopicSpec(f"bench-{run_id}.passthrough-{i}", USER_EVENTS.partitions, HOUR, "")
            for i in range(args.passthrough_runs)
        ]
        topics = [events_topic, recs_topic, dead_topic, *(t.name for t in pass_outs)]
        asyncio.run(create_topics(bootstrap, (*all_topics(worker.prefix), *pass_outs)))

        fit = fit_diginetica()
        loaded = synthesise(fit, args.events, seed=args.seed, tag=f"{run_id}a")
        n = len(loaded)
        messages = [(e.user_id.encode(), e.to_bytes()) for e in loaded]
        preload_s = asyncio.run(_produce_all(bootstrap, events_topic, messages))

        # (a) passthrough, in its own process, before the worker starts; repeated (own group
        # and output topic each time) because one pass over N events takes about a second
        busy_a, t_a, cpu_bench_a = machine_busy_seconds(), time.time(), time.process_time()
        kafka_a = cpu_seconds(pids["kafka"])
        pass_rates: list[float] = []
        pass_self: list[float] = []
        pass_cpu: list[float] = []
        for i, out_topic in enumerate(pass_outs):
            pt = run_passthrough_child(
                bootstrap, events_topic, out_topic.name, f"bench-pass-{run_id}-{i}", n, args.timeout
            )
            if pt["forwarded"] < n:
                raise RuntimeError(f"passthrough forwarded {pt['forwarded']} of {n} events")
            stamps = asyncio.run(
                record_timestamps(bootstrap, out_topic.name, out_topic.partitions, 60)
            )
            if len(stamps) < n:
                raise RuntimeError(f"passthrough output holds {len(stamps)} of {n} records")
            pass_rates.append((n - 1) / max(1e-3, (max(stamps) - min(stamps)) / 1000))
            pass_self.append((n - 1) / max(1e-6, pt["last_s"] - pt["first_s"]))
            pass_cpu.append(pt["cpu_s"])
        pass_rate = statistics.median(pass_rates)
        other_a = (
            machine_busy_seconds()
            - busy_a
            - (cpu_seconds(pids["kafka"]) - kafka_a)
            - sum(pass_cpu)
            - (time.process_time() - cpu_bench_a)
        )
        note_a = background_note(max(0.0, other_a), time.time() - t_a)

        # (b) the worker on the same pre-loaded events
        worker.start()
        pids["worker"] = worker.proc.pid if worker.proc is not None else None
        t_start = time.time()
        if not _wait_metrics(metrics_port, worker, 120):
            raise RuntimeError(f"worker metrics never came up\n{worker.log_tail()}")
        first: list[WorkerSnapshot] = []
        got = asyncio.run(
            wait_for_records(
                bootstrap,
                recs_topic,
                RECOMMENDATIONS.partitions,
                n,
                stall_s=60,
                deadline_s=args.timeout,
                alive=worker,
                on_first=lambda: first.append(snapshot(metrics_port, pids)),
            )
        )
        after_b = snapshot(metrics_port, pids)
        if got < n or not first:
            raise RuntimeError(f"worker published {got} of {n}\n{worker.log_tail()}")
        before_b = first[0]
        col = asyncio.run(collect(bootstrap, recs_topic, dead_topic, expect=n, timeout_s=30))
        recs_b = [
            col.recommendations[e.event_id] for e in loaded if e.event_id in col.recommendations
        ]
        if len(recs_b) < n or col.dead_letters:
            raise RuntimeError(
                f"worker: {len(recs_b)} of {n} recommendations, {len(col.dead_letters)} dead"
            )
        produced = [r.produced_at_ms for r in recs_b]
        span_b = (max(produced) - min(produced)) / 1000
        worker_rate = (n - 1) / max(1e-3, span_b)
        startup_s = min(produced) / 1000 - t_start
        events_b = max(1.0, after_b.events - before_b.events)  # handled between the snapshots

        # (c) a fixed-rate replay into the warm worker: a second synthetic stream (new users)
        async def replay_c(
            msgs: list[tuple[bytes, bytes]], rate: float, swap_ms: list[float]
        ) -> float:
            sending = asyncio.ensure_future(produce(bootstrap, events_topic, msgs, rate=rate))
            if args.swap_at is not None:
                await asyncio.sleep(args.swap_at)
                v2 = derive_bundle(args.model_dir / bundle.name, {"note": "bench swap"})
                promote(args.model_dir, v2.name)
                swap_ms.append(time.time() * 1000)
                await announce(bootstrap, model_updates_topic(worker.prefix),
                               ModelUpdate(v2.name, str(args.model_dir), "promote",
                                           int(swap_ms[0])))  # fmt: skip
            return await sending

        phase_lines: list[str] = []
        m_total = 0
        for i, share in enumerate(args.load):
            rate = share * worker_rate
            m = max(1, int(rate * args.latency_seconds))
            replay = synthesise(fit, m, seed=args.seed + 1 + i, tag=f"{run_id}c{i or ''}")
            msgs = [(e.user_id.encode(), e.to_bytes()) for e in replay]
            before_c = snapshot(metrics_port, pids)
            t_c = time.time()
            swap_ms: list[float] = []
            sent_at = asyncio.run(replay_c(msgs, rate, swap_ms))
            sent_s = time.time() - sent_at
            got = asyncio.run(
                wait_for_records(
                    bootstrap,
                    recs_topic,
                    RECOMMENDATIONS.partitions,
                    n + m_total + m,
                    stall_s=60,
                    deadline_s=args.timeout,
                    alive=worker,
                )
            )
            after_c = snapshot(metrics_port, pids)
            wall_c = time.time() - t_c
            col = asyncio.run(
                collect(bootstrap, recs_topic, dead_topic, expect=n + m_total + m, timeout_s=30)
            )
            recs_c = [
                col.recommendations[e.event_id] for e in replay if e.event_id in col.recommendations
            ]
            if len(recs_c) < m:
                raise RuntimeError(f"latency phase: {len(recs_c)} of {m} recommendations")
            lat = [r.latency_ms for r in recs_c]
            m_total += m
            if args.latency_csv:
                rows = sorted((r.produced_at_ms - r.latency_ms, r.latency_ms) for r in recs_c)
                csv = args.latency_csv
                if len(args.load) > 1:  # one file per share: name-50.csv, ...
                    csv = csv.with_name(f"{csv.stem}-{100 * share:.0f}{csv.suffix}")
                csv.write_text(
                    "send_ms,latency_ms\n" + "".join(f"{a:.1f},{b:.3f}\n" for a, b in rows)
                )
            p50, p99, p999 = percentiles(lat, (50, 99, 99.9))
            for q, v in (("p50", p50), ("p99", p99), ("p999", p999)):
                summary("throughput", f"trigger->publish {q} at {100 * share:.0f}% load", v, "ms",
                        "<= 25 ms" if q == "p99" and share == 0.5 else "")  # fmt: skip
            swap_lines: list[str] = []
            if swap_ms:
                sent = [(r.produced_at_ms - r.latency_ms, r) for r in recs_c]
                steady = [r.latency_ms for t, r in sent if t < swap_ms[0]]
                around = [r.latency_ms for t, r in sent if swap_ms[0] <= t < swap_ms[0] + 3000]
                new_v = [t for t, r in sent if r.model_version != bundle.name]
                s50, s99 = percentiles(steady)
                a50, a99 = percentiles(around)
                served = (min(new_v) - swap_ms[0]) if new_v else float("nan")
                swap_lines = [
                    f"    swap at {args.swap_at:g} s: first event answered by the new version was "
                    f"sent {served:.0f} ms after the announcement",
                    f"    trigger->publish before the swap p50 {s50:.1f} p99 {s99:.1f} ms "
                    f"({len(steady)} events); in the 3 s from it p50 {a50:.1f} p99 {a99:.1f} ms "
                    f"({len(around)} events)",
                    f"RATIO p99 around the swap / p99 before it = {a99 / max(s99, 1e-9):.2f}",
                ]

            phase_lines += [
                "",
                f"(c) fixed load {rate:.0f} events/s = {100 * share:.0f}% of (b), {m} events over "
                f"{sent_s:.1f} s (achieved send rate {m / max(sent_s, 1e-9):.0f}/s)",
                f"    trigger->publish latency_ms  p50 {p50:.1f}  p99 {p99:.1f}  p999 {p999:.1f}  "
                f"max {max(lat):.1f}",
                *describe_phase(before_c, after_c, wall_c),
                *swap_lines,
            ]
        p50_b, p99_b = percentiles([r.latency_ms for r in recs_b])
        summary("throughput", "aiokafka passthrough (median)", pass_rate, "events/s")
        summary("throughput", "worker, max rate", worker_rate, "events/s")
        summary("throughput", "worker / passthrough", worker_rate / pass_rate, "", ">= 0.50")

        cfg = load_settings()  # what the worker reads from this environment, besides extra_env
        budget_ms = (
            args.latency_budget_ms if args.latency_budget_ms is not None else cfg.latency_budget_ms
        )
        report = [
            "streamrec throughput benchmark (bench/throughput.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  model        {bundle.name}; worker settings: batch_max {cfg.batch_max}, "
            f"batch_wait_ms {cfg.batch_wait_ms:g}, top_k {cfg.top_k}, candidates "
            f"{cfg.candidates}, latency_budget_ms {budget_ms:g}, log level {args.log_level}; "
            f"{USER_EVENTS.partitions} partitions",
            f"  services     kafka {bootstrap}, redis {redis_url}, all on this machine",
            f"  events       {n} pre-loaded (a, b) + {m_total} replayed (c), view events, "
            f"{DATA_NOTE}",
            f"  pre-load     {n / preload_s:.0f} events/s (stream.replay.produce)",
            "",
            "(a) raw aiokafka passthrough (getmany -> send batch -> await acks; own process)",
            f"    {pass_rate:8.0f} events/s  first->last output record, median of "
            f"{len(pass_rates)} passes ({', '.join(f'{r:.0f}' for r in pass_rates)}); "
            f"self-timed first fetch->last ack {statistics.median(pass_self):.0f}/s; "
            f"CPU {1000 * statistics.median(pass_cpu) / n:.3f} ms/event incl. start-up",
            f"    {note_a} (redis included)",
            "(b) streamrec worker (python -m stream.cli worker) on the same N events",
            f"    {worker_rate:8.0f} events/s  first->last recommendation "
            f"(start-up to first recommendation {startup_s:.1f} s, excluded)",
            f"    worker CPU {1000 * _cpu(before_b, after_b, 'worker') / events_b:.3f} ms/event; "
            f"trigger->publish while draining the backlog p50 {p50_b:.0f} ms, "
            f"p99 {p99_b:.0f} ms (time spent queued in the topic)",
            *describe_phase(before_b, after_b, after_b.at_s - before_b.at_s),
            "",
            f"RATIO worker / passthrough = {worker_rate / pass_rate:.3f}  "
            f"(passthrough {pass_rate / worker_rate:.1f}x the worker's events/s)",
            *phase_lines,
        ]
        print("\n".join(report), flush=True)
        return 0
    finally:
        if worker is not None:
            worker.stop()
        if bootstrap and topics:
            try:
                asyncio.run(delete_topics(bootstrap, topics))
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete benchmark topics: {exc}", file=sys.stderr)
        services.stop_started()


def _cpu(before: WorkerSnapshot, after: WorkerSnapshot, name: str) -> float:
    return after.cpu_s.get(name, 0.0) - before.cpu_s.get(name, 0.0)


def _wait_metrics(port: int, worker: WorkerProcess, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline and worker.alive():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
