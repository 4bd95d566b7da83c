"""Scale-out: 2 worker processes in one consumer group vs 1, and a rebalance under load.

What is measured, on ONE broker, ONE Redis and ONE machine, in ONE run (the real
``python -m stream.cli worker``, started as bench/throughput.py starts it: own topic prefix,
consumer group and Redis namespace per phase; the input topic has 4 partitions):

(1) one worker on N pre-loaded events: events/s from the first to the last recommendation.
(2) two workers (same group) started together on the same N events (same synthetic stream,
    a fresh prefix and namespace): events/s over the whole drain, and over the part after the
    group settled with both members (``Stable``, 2 members, polled with DescribeGroups), which
    excludes the moment the first member to join ran alone. RATIO (2) / (1).
(3) rebalance under load: the warm worker of (1) gets a fixed-rate stream (``--load`` x the
    rate of (1)) for ``--rebalance-seconds``; a second worker joins the group a third of the
    way in and leaves (SIGTERM) at two thirds. Every input event acked by the broker is
    looked for on the output: recommendations + dead letters (lost = acked input ids found in
    neither), duplicates = recommendations of an event_id seen before (``stream.replay.collect``,
    over the whole output topic, so (1)'s events are included). Printed: how long each
    rebalance took (start/SIGTERM -> the group Stable again), the longest gap between
    recommendations, and trigger->publish p50/p99/max per stretch (1 worker, joining,
    2 workers, leaving, 1 worker again).

Events: bench/loadgen.py's stream (synthetic, fitted to DIGINETICA: views, purchases,
searches). Two workers on a 2-core machine share the cores with Kafka, Redis and this
process: (2) measures what a second process buys here, not on a machine with cores to spare.

Usage: python bench/scaleout.py [--events 20000] [--rebalance-seconds 40] [--load 0.5] [--quick]
Starts Kafka (127.0.0.1:29092) and Redis (127.0.0.1:26379) through deploy/local/*.sh unless
they already run there or KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set; stops every worker and
service it started, deletes its topics, Redis keys and faust data directories. Never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
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
from aiokafka.admin import AIOKafkaAdminClient
from loadgen import LOADGEN_NOTE, generate, publish
from throughput import STREAMREC_HOME, BenchWorker, _wait_metrics, wait_for_records

from stream.kafka_admin import create_topics, delete_topics
from stream.replay import Collected, collect
from stream.services import LocalServices, resolve_services
from stream.settings import load_settings
from tests.integration.harness import Services
from topics.names import RECOMMENDATIONS, USER_EVENTS, all_topics


@dataclass
class Member(BenchWorker):
    """A benchmark worker that shares its prefix, group and namespace with other members
    (same ``run_id``) but logs to a file of its own."""

    member: str = "1"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker-{self.run_id}-{self.member}.log"

    @property
    def group(self) -> str:
        return self.extra_env["STREAMREC_GROUP_ID"]


@dataclass
class GroupWatch:
    """(time, state, members) of a consumer group each time either changed."""

    group: str
    changes: list[tuple[float, str, int]] = field(default_factory=list)

    def stable_with(self, members: int, after: float = 0.0) -> float | None:
        """First time from ``after`` on that the group was Stable with ``members`` members."""
        for t, state, n in self.changes:
            if t >= after and state == "Stable" and n == members:
                return t
        return None

    def timeline(self, since: float, limit: int = 10) -> str:
        """'state/members at +s' for each change from ``since`` on (the first ``limit``)."""
        shown = [f"{state}/{n} +{t - since:.1f}s" for t, state, n in self.changes if t >= since]
        more = f" (+{len(shown) - limit} more)" if len(shown) > limit else ""
        return ", ".join(shown[:limit]) + more

    def rebalances_after(self, after: float) -> int:
        return sum(1 for t, s, _ in self.changes if t >= after and s == "PreparingRebalance")


async def watch_group(bootstrap: str, watch: GroupWatch, stop: asyncio.Event) -> None:
    """Poll DescribeGroups every 0.2 s until ``stop`` (bounded by the caller's wait)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        last: tuple[str, int] | None = None
        while not stop.is_set():
            with contextlib.suppress(Exception):  # coordinator not ready yet, etc.
                resp = await admin.describe_consumer_groups([watch.group])
                g = resp[0].groups[0]
                now = (str(g[2]), len(g[5]))
                if now != last:
                    watch.changes.append((time.time(), *now))
                    last = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await admin.close()


def make_members(
    args: argparse.Namespace, services: Services, run_id: str, count: int
) -> list[Member]:
    return [
        Member(
            services,
            args.model_dir,
            STREAMREC_HOME / "bench-logs",
            extra_env={
                "STREAMREC_GROUP_ID": f"bench-{run_id}",
                "STREAMREC_LOG_LEVEL": args.log_level,
            },
            run_id=run_id,
            member=str(i + 1),
        )
        for i in range(count)
    ]


@dataclass
class Drain:
    """One drain of N pre-loaded events by ``workers`` members."""

    workers: int
    n: int
    rate_all: float = 0.0  # first -> last recommendation
    rate_stable: float = float("nan")  # from the group Stable with all members on
    stable_share: float = 0.0  # share of the events answered in that stretch
    startup_s: float = 0.0  # workers started -> first recommendation
    settle_s: float = float("nan")  # workers started -> group Stable with all members
    p50: float = 0.0
    p99: float = 0.0
    cpu: str = ""
    group: str = ""  # the group's states while draining
    duplicates: int = 0  # recommendations of an event_id already answered


async def drain_phase(
    args: argparse.Namespace,
    bootstrap: str,
    members: list[Member],
    n: int,
    seed: int,
    tag: str,
    pids: dict[str, int | None],
) -> Drain:
    """Pre-load N events, start every member at once, wait until N recommendations are out."""
    events_topic, recs_topic, dead_topic = members[0].topics
    loaded = await publish(
        bootstrap,
        events_topic,
        generate(fit_diginetica(), fit_event_mix(), n, seed=seed, tag=tag),
        deadline_s=args.timeout,
    )
    if loaded.acked < n:
        raise RuntimeError(f"pre-load: {loaded.acked} of {n} events acked")
    watch = GroupWatch(members[0].group)
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(watch_group(bootstrap, watch, stop))
    busy0, cpu0 = machine_busy_seconds(), {k: cpu_seconds(v) for k, v in pids.items()}
    bench0 = time.process_time()
    t_start = time.time()
    for m in members:
        m.start()
    procs = {f"worker {m.member}": m.proc.pid if m.proc else None for m in members}
    cpu0.update({k: 0.0 for k in procs})
    try:
        got = await wait_for_records(
            bootstrap,
            recs_topic,
            RECOMMENDATIONS.partitions,
            n,
            stall_s=60,
            deadline_s=args.timeout,
            alive=members[0],
        )
        if got < n:
            raise RuntimeError(f"{len(members)} worker(s): {got} of {n} recommendations\n"
                               f"{members[0].log_tail()}")  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)
    wall = time.time() - t_start
    cpu = {k: cpu_seconds(v) - cpu0.get(k, 0.0) for k, v in {**pids, **procs}.items()}
    cpu["bench"] = time.process_time() - bench0
    other = max(0.0, machine_busy_seconds() - busy0 - sum(cpu.values()))
    col = await collect(bootstrap, recs_topic, dead_topic, expect=n, timeout_s=30)
    produced = sorted(r.produced_at_ms for r in col.recommendations.values())
    d = Drain(len(members), n)
    d.rate_all = (len(produced) - 1) / max(1e-3, (produced[-1] - produced[0]) / 1000)
    d.startup_s = produced[0] / 1000 - t_start
    d.p50, d.p99 = percentiles(r.latency_ms for r in col.recommendations.values())
    d.duplicates = col.duplicates
    d.group = watch.timeline(t_start)
    settled = watch.stable_with(len(members), after=t_start)
    if settled is not None:
        d.settle_s = settled - t_start
        tail = [t for t in produced if t >= settled * 1000]
        d.stable_share = len(tail) / len(produced)
        if len(tail) >= 100:
            d.rate_stable = (len(tail) - 1) / max(1e-3, (tail[-1] - tail[0]) / 1000)
    d.cpu = (
        "CPU s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if k != "bench")
        + f"; {background_note(other, wall)}"
    )
    return d


@dataclass
class Rebalance:
    rate: float
    seconds: float
    sent: int = 0
    acked: int = 0
    answered: int = 0
    dead: int = 0
    lost: int = 0
    duplicates: int = 0
    join_s: float = float("nan")  # second worker started -> Stable with 2 members
    leave_s: float = float("nan")  # SIGTERM -> Stable with 1 member
    stop_s: float = 0.0  # SIGTERM -> process exited
    leave_after_load: bool = False  # the second worker only got up after the load ended
    rebalances: int = 0
    max_gap_s: float = 0.0
    stretches: list[tuple[str, int, float, float, float]] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    group: str = ""  # the group's states from the start of the load
    cpu: str = ""


async def rebalance_phase(
    args: argparse.Namespace,
    bootstrap: str,
    first: Member,
    second: Member,
    rate: float,
    already: int,
    already_duplicates: int,
    seed: int,
    tag: str,
    pids: dict[str, int | None],
) -> Rebalance:
    """Fixed-rate load on ``first``; ``second`` joins at 1/3 and leaves at 2/3 of the run."""
    events_topic, recs_topic, dead_topic = first.topics
    seconds = args.rebalance_seconds
    m = max(1, int(rate * seconds))
    rb = Rebalance(rate, seconds)
    watch = GroupWatch(first.group)
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(watch_group(bootstrap, watch, stop))
    procs = {**pids, "worker 1": first.proc.pid if first.proc else None}
    busy0, bench0 = machine_busy_seconds(), time.process_time()
    cpu0 = {k: cpu_seconds(v) for k, v in procs.items()}
    second_cpu = 0.0
    chunks = generate(fit_diginetica(), fit_event_mix(), m, seed=seed, tag=tag, site_rate=rate)
    sending = asyncio.ensure_future(
        publish(bootstrap, events_topic, chunks, rate=rate, keep_ids=True, deadline_s=seconds + 30)
    )
    try:
        t0 = time.time()
        await asyncio.sleep(seconds / 3)
        t_join = time.time()
        second.start()
        second_pid = second.proc.pid if second.proc else None
        # Leave at 2/3 of the load, but not before the second worker took part in the group
        # (a worker stopped while it joins stays a member, holding its partitions, until the
        # session timeout): wait for Stable with 2 members, bounded.
        give_up = t_join + args.timeout
        while watch.stable_with(2, after=t_join) is None and time.time() < give_up:
            if not second.alive():
                raise RuntimeError(f"the second worker died\n{second.log_tail()}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(2.0, t0 + 2 * seconds / 3 - time.time()))
        t_leave = time.time()
        second_cpu = cpu_seconds(second_pid)
        rb.leave_after_load = t_leave > t0 + seconds
        await asyncio.to_thread(second.stop)  # SIGTERM, waits for the exit (bounded: 30 s)
        rb.stop_s = time.time() - t_leave
        stats = await asyncio.wait_for(sending, seconds + args.timeout)
        # Wait for every answer; a partition of a member that vanished without leaving is
        # served again only after the session timeout (faust's default: 60 s).
        await wait_for_records(
            bootstrap,
            recs_topic,
            RECOMMENDATIONS.partitions,
            already + stats.acked,
            stall_s=args.stall,
            deadline_s=args.timeout,
            alive=first,
        )
        cpu = {k: cpu_seconds(v) - cpu0.get(k, 0.0) for k, v in procs.items()}
        cpu["worker 2"] = second_cpu
        wall = time.time() - t0
        other = machine_busy_seconds() - busy0 - sum(cpu.values())
        other -= time.process_time() - bench0
        rb.cpu = (
            "CPU s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            + f", bench + load generator {time.process_time() - bench0:.1f}; "
            + background_note(max(0.0, other), wall)
        )
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)
        if not sending.done():
            sending.cancel()
    rb.sent, rb.acked = stats.sent, stats.acked
    col: Collected = await collect(
        bootstrap, recs_topic, dead_topic, expect=already + stats.acked, timeout_s=10, linger_s=2
    )
    mine = set(stats.event_ids)
    recs = [r for eid, r in col.recommendations.items() if eid in mine]
    dead_ids = set()
    for d in col.dead_letters:
        with contextlib.suppress(Exception):
            dead_ids.add(str(orjson.loads(d.raw)["event_id"]))
    rb.answered, rb.dead = len(recs), len(dead_ids & mine)
    missing = sorted(mine - set(col.recommendations) - dead_ids)
    rb.lost, rb.lost_examples = len(missing), missing[:5]
    rb.duplicates = col.duplicates - already_duplicates
    joined = watch.stable_with(2, after=t_join)
    left = watch.stable_with(1, after=t_leave)
    rb.join_s = (joined - t_join) if joined else float("nan")
    rb.leave_s = (left - t_leave) if left else float("nan")
    rb.rebalances = watch.rebalances_after(t_join)
    rb.group = watch.timeline(t0)
    produced = sorted(r.produced_at_ms / 1000 for r in recs)
    if len(produced) > 1:
        rb.max_gap_s = max(b - a for a, b in itertools.pairwise(produced))
    # Stretches by the trigger's send time (produced_at - latency).
    edges = [
        ("1 worker", 0.0, t_join),
        ("2nd joining", t_join, joined or t_leave),
        ("2 workers", joined or t_leave, t_leave),
        ("2nd leaving", t_leave, left or t_leave),
        ("1 worker again", left or t_leave, float("inf")),
    ]
    for name, lo, hi in edges:
        lat = [r.latency_ms for r in recs if lo <= (r.produced_at_ms - r.latency_ms) / 1000 < hi]
        if lat:
            p50, p99 = percentiles(lat)
            rb.stretches.append((name, len(lat), p50, p99, max(lat)))
        else:
            rb.stretches.append((name, 0, float("nan"), float("nan"), float("nan")))
    return rb


async def delete_state(redis_url: str, namespaces: list[str]) -> None:
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        for ns in namespaces:
            keys = [k async for k in client.scan_iter(f"sr:{ns}:*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="(1), (2) pre-loaded events")
    p.add_argument("--rebalance-seconds", type=float, default=40.0, help="(3) load duration")
    p.add_argument("--load", type=float, default=0.5, help="(3) rate as a share of (1)'s")
    p.add_argument("--kafka-port", type=int, default=29092)
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-level", default="INFO", help="workers' STREAMREC_LOG_LEVEL")
    p.add_argument("--timeout", type=float, default=120.0, help="per phase, seconds")
    p.add_argument(
        "--stall",
        type=float,
        default=70.0,
        help="(3) give up waiting for answers after S s without a new one (> the 60 s session "
        "timeout, after which a vanished member's partitions are served again)",
    )
    p.add_argument("--quick", action="store_true", help="2,000 events, 20 s of rebalance load")
    args = p.parse_args()
    if args.quick:
        args.events, args.rebalance_seconds = 2000, 20.0

    services = LocalServices(kafka_port=args.kafka_port, redis_port=args.redis_port)
    run_id = uuid.uuid4().hex[:8]
    members: list[Member] = []
    bootstrap = redis_url = ""
    try:
        t_run = time.time()
        bootstrap, redis_url = resolve_services(services)
        bundle = ensure_bundle(args.model_dir)
        svc = Services(bootstrap, redis_url)
        pids = {
            "kafka": pid_from_file(STREAMREC_HOME / f"kafka-run-{args.kafka_port}/kafka.pid"),
            "redis": pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid"),
        }
        one = make_members(args, svc, f"{run_id}a", 1)  # (1), then (3) with a second member
        two = make_members(args, svc, f"{run_id}b", 2)  # (2)
        joiner = make_members(args, svc, f"{run_id}a", 2)[1]
        members = [*one, *two, joiner]
        for prefix in {m.prefix for m in members}:
            asyncio.run(create_topics(bootstrap, all_topics(prefix)))
        n = args.events

        d1 = asyncio.run(drain_phase(args, bootstrap, one, n, args.seed, f"{run_id}n", pids))
        d2 = asyncio.run(drain_phase(args, bootstrap, two, n, args.seed, f"{run_id}n", pids))
        for m in two:
            m.stop()
        rate = args.load * d1.rate_all
        if not _wait_metrics(one[0].metrics_port, one[0], 10):
            raise RuntimeError(f"worker 1 is not up\n{one[0].log_tail()}")
        rb = asyncio.run(
            rebalance_phase(
                args,
                bootstrap,
                one[0],
                joiner,
                rate,
                n,
                d1.duplicates,
                args.seed + 1,
                f"{run_id}r",
                pids,
            )
        )

        cfg = load_settings()
        ratio_all = d2.rate_all / d1.rate_all
        ratio_stable = d2.rate_stable / d1.rate_all
        lines = [
            "streamrec scale-out benchmark (bench/scaleout.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  model        {bundle.name}; worker settings: batch_max {cfg.batch_max}, "
            f"batch_wait_ms {cfg.batch_wait_ms:g}, top_k {cfg.top_k}, candidates "
            f"{cfg.candidates}, log level {args.log_level}; input topic "
            f"{USER_EVENTS.partitions} partitions",
            f"  services     kafka {bootstrap}, redis {redis_url}, all on this machine",
            f"  events       {n} pre-loaded per drain + {rb.sent} at a fixed rate; {LOADGEN_NOTE} "
            "(bench/loadgen.py: views, purchases, searches)",
            "",
        ]
        for label, d in (("(1) 1 worker ", d1), ("(2) 2 workers", d2)):
            lines += [
                f"{label}  {d.rate_all:8.0f} events/s first->last recommendation; "
                f"start-up to first recommendation {d.startup_s:.1f} s; group Stable with "
                f"{d.workers} member(s) {d.settle_s:.1f} s after start",
                f"               {d.rate_stable:8.0f} events/s after the group settled "
                f"({100 * d.stable_share:.0f}% of the events); trigger->publish while "
                f"draining p50 {d.p50:.0f} ms, p99 {d.p99:.0f} ms (time queued in the topic)",
                f"               group (state/members +s from start): {d.group}",
                f"               {d.cpu}",
            ]
        lines += [
            "",
            f"RATIO 2 workers / 1 worker = {ratio_all:.2f} (whole drain), "
            f"{ratio_stable:.2f} (2 workers after the group settled / 1 worker)",
            "",
            f"(3) rebalance under load: {rb.rate:.0f} events/s ({100 * args.load:.0f}% of (1)) "
            f"for {rb.seconds:.0f} s; 2nd worker started at 1/3, SIGTERM at 2/3 (or 2 s "
            "after the group was Stable with it)"
            + (" -- NOTE: after the load had ended" if rb.leave_after_load else ""),
            f"    input {rb.sent} sent, {rb.acked} acked; output {rb.answered} recommendations "
            f"+ {rb.dead} dead letters for them",
            f"    LOST {rb.lost} (acked input events with neither a recommendation nor a dead "
            f"letter){': e.g. ' + ', '.join(rb.lost_examples) if rb.lost else ''}",
            f"    DUPLICATES {rb.duplicates} recommendations of an event_id already answered "
            f"({100 * rb.duplicates / max(1, rb.acked):.1f}% of the input; (1) had "
            f"{d1.duplicates})",
            f"    join: start -> group Stable with 2 members {rb.join_s:.1f} s; leave: SIGTERM -> "
            f"Stable with 1 member {rb.leave_s:.1f} s (process exited after {rb.stop_s:.1f} s); "
            f"{rb.rebalances} rebalance(s); longest gap between recommendations "
            f"{rb.max_gap_s:.2f} s",
            f"    group (state/members +s from the load's start): {rb.group}",
            f"    {rb.cpu}",
            f"    {'trigger->publish by stretch (trigger send time)':<50}"
            "events   p50 ms   p99 ms   max ms",
        ]
        for name, count, p50, p99, top in rb.stretches:
            lines.append(f"      {name:<46}{count:7d}{p50:9.1f}{p99:9.1f}{top:9.1f}")
        base = rb.stretches[0][3]
        worst = max((s[3] for s in rb.stretches[1:4] if s[1]), default=float("nan"))
        summary("scaleout", "2 workers / 1 worker, events/s", ratio_all)
        summary("scaleout", "events lost across join + leave", rb.lost, "", "0")
        summary("scaleout", "duplicates across join + leave", rb.duplicates, "",
                "0 in exactly-once mode (issue 8)")  # fmt: skip
        lines += [
            f"RATIO worst p99 around the rebalances / p99 with 1 worker before = "
            f"{worst / max(base, 1e-9):.2f}",
            f"  total wall {time.time() - t_run:.1f} s",
        ]
        print("\n".join(lines), flush=True)
        return 0 if rb.lost == 0 else 1
    finally:
        for m in members:
            m.stop()
        if bootstrap:
            names = sorted({t.name for m in members for t in all_topics(m.prefix)})
            try:
                asyncio.run(delete_topics(bootstrap, names))
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete benchmark topics: {exc}", file=sys.stderr)
        if redis_url:
            try:
                asyncio.run(delete_state(redis_url, sorted({m.namespace for m in members})))
            except Exception as exc:
                print(f"note: could not delete Redis keys: {exc}", file=sys.stderr)
        for group in {m.group for m in members}:  # the workers' faust data directories
            shutil.rmtree(args.model_dir.parent / "faust-data" / group, ignore_errors=True)
        services.stop_started()


if __name__ == "__main__":
    sys.exit(main())
