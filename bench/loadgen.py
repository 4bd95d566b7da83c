"""Load generator: a synthetic user-event stream, fitted to DIGINETICA, published to Kafka.

Events: views with DIGINETICA's item popularity, session lengths, within-session re-view
rate and gaps between views (``bench/_common.py: fit_diginetica``); purchases as often as in
the sample's sessions (train-purchases joined to the views sample: ~2 per 100 views; about
half of them buy an item viewed earlier in the session); searches as a share of all events
(default 10%, an assumption: DIGINETICA's search log is not in shared/datasets) carrying
DIGINETICA-style hashed ``query_tokens`` of real search terms (Home Depot's; their lengths
are the query lengths), plus the text with ``--query-text``. Sessions start as a Poisson
process at ``--site-rate`` events/s of event time (default: the send rate) and interleave as
in real traffic; the stream starts in steady state (sessions already in progress).

Generated lazily, in chunks of event time, so millions of events need bounded memory (what
is held: the current chunk plus the not-yet-due events of sessions in progress). Published
with aiokafka (acks=all, key = user_id) at a fixed ``--rate`` or as fast as possible
(``--max``); prints events/s achieved, achieved/target ratio, p50/p99 send->ack latency and
how late sends were against the schedule.

Usage: python bench/loadgen.py [--events 50000] [--rate R | --max] [--topic T]
                               [--bootstrap HOST:PORT] [--quick]
Without --topic it publishes to a topic of its own (``bench-loadgen-<id>.user-events``, 4
partitions) and deletes it at the end; a --topic is created when missing and always kept.
Without --bootstrap (or KAFKA_BOOTSTRAP_SERVERS) it starts Kafka on 127.0.0.1:29092 through
deploy/local/kafka.sh unless it runs there, and stops what it started.

Importable: ``generate(...)`` yields chunks of ``UserEvent``; ``publish(...)`` sends them;
``Pacer`` is the fixed-rate schedule (bench/limits.py and bench/scaleout.py use them).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from _common import (
    DATA_NOTE,
    DigineticaFit,
    EventMix,
    fit_diginetica,
    fit_event_mix,
    git_commit,
    machine,
    percentiles,
    query_tokens,
    session_views,
)
from aiokafka import AIOKafkaProducer

from stream.kafka_admin import create_topics, delete_topics
from stream.services import LocalServices
from topics.events import EventType, UserEvent
from topics.names import USER_EVENTS, TopicSpec

VIEW, PURCHASE, SEARCH = 0, 1, 2
KINDS = {VIEW: EventType.VIEW, PURCHASE: EventType.PURCHASE, SEARCH: EventType.SEARCH}
RECORD = np.dtype([("t", "f8"), ("s", "i8"), ("kind", "i1"), ("item", "i8"), ("query", "i8")])
LOADGEN_NOTE = "synthetic, fitted to DIGINETICA"


# --------------------------------------------------------------------------- generation


def search_probability(mix: EventMix) -> float:
    """Chance that a view is preceded by a search, so that searches are ``search_share`` of
    all events (views + purchases + searches)."""
    s = mix.search_share
    if s <= 0 or not mix.queries:
        return 0.0
    return min(1.0, s / (1.0 - s) * (1.0 + mix.purchases_per_view))


def sample_query_lengths(mix: EventMix, rng: np.random.Generator, n: int) -> np.ndarray:
    """Token counts of ``n`` queries drawn as the generator draws them (rows of the file)."""
    lengths = mix.query_lengths()
    return lengths[rng.integers(0, len(lengths), n)] if len(lengths) else np.zeros(0, np.int64)


def session_records(
    fit: DigineticaFit,
    mix: EventMix,
    rng: np.random.Generator,
    starts: np.ndarray,
    first_session: int,
) -> np.ndarray:
    """Every event (views, purchases, searches) of the sessions starting at ``starts`` (ms),
    as ``RECORD`` rows, not yet in time order. Sessions are numbered from ``first_session``."""
    if len(starts) == 0:
        return np.zeros(0, RECORD)
    v = session_views(fit, rng, starts)
    views = np.zeros(len(v.times), RECORD)
    views["t"] = v.times
    views["s"] = first_session + v.session_of
    views["kind"] = VIEW
    views["item"] = v.items
    views["query"] = -1
    parts = [views]
    # Purchases: as many per session as in a random sample session; each after the view at
    # the sample's position (share of the session's views before it) plus one view gap.
    n_buy = rng.choice(mix.purchases_per_session, len(starts))
    total = int(n_buy.sum())
    if total:
        of = np.repeat(np.arange(len(starts)), n_buy)
        length, first = v.lengths[of], v.first[of]
        before = np.clip(np.rint(rng.choice(mix.purchase_at, total) * length), 1, length)
        before = before.astype(np.int64)
        seen = v.items[first + (rng.random(total) * before).astype(np.int64)]
        popular = rng.choice(len(fit.item_ids), total, p=fit.item_p)
        buy = np.zeros(total, RECORD)
        buy["t"] = v.times[first + before - 1] + rng.choice(fit.gaps_ms, total)
        buy["s"] = first_session + of
        buy["kind"] = PURCHASE
        buy["item"] = np.where(rng.random(total) < mix.p_purchase_viewed, seen, popular)
        buy["query"] = -1
        parts.append(buy)
    # Searches: a view is preceded (by up to 2 s, not before its session's start) by a
    # search with probability q.
    q = search_probability(mix)
    if q > 0:
        at = np.flatnonzero(rng.random(len(v.times)) < q)
        search = np.zeros(at.size, RECORD)
        search["t"] = np.maximum(
            starts[v.session_of[at]], v.times[at] - rng.uniform(1.0, 2000.0, at.size)
        )
        search["s"] = first_session + v.session_of[at]
        search["kind"] = SEARCH
        search["item"] = -1
        search["query"] = rng.integers(0, len(mix.queries), at.size)
        parts.append(search)
    return np.concatenate(parts)


@dataclass
class GenStats:
    """What ``generate`` did: events yielded by kind, and the most events it held at once."""

    by_kind: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in KINDS.values()})
    max_held: int = 0
    windows: int = 0


def generate(
    fit: DigineticaFit,
    mix: EventMix,
    n: int,
    *,
    seed: int,
    tag: str,
    site_rate: float = 1000.0,
    chunk: int = 5000,
    base_ms: int | None = None,
    query_text: bool = False,
    stats: GenStats | None = None,
) -> Iterator[list[UserEvent]]:
    """``n`` events in event-time order, in lists of about ``chunk`` events, built lazily.

    Sessions start as a Poisson process (``site_rate`` views/s of event time); the session
    starts of one window of event time are drawn at once, their events added to those still
    pending, and every pending event before the window's end is final (a later session cannot
    start earlier) and yielded. The first window starts one 99th-percentile session duration
    before time 0 and events before 0 are dropped, so the stream starts in steady state.
    Event times are ``base_ms`` (default: now) + the synthetic clock. Event ids are
    ``<tag>-<n>``, users ``<tag>-u<session>`` (one user per session, as in the sample).
    """
    if n <= 0:
        return
    if site_rate <= 0 or chunk <= 0:
        raise ValueError("site_rate and chunk must be positive")
    stats = stats if stats is not None else GenStats()
    rng = np.random.default_rng(seed)
    base = int(time.time() * 1000) if base_ms is None else base_ms
    sessions_per_ms = site_rate / float(fit.session_lengths.mean()) / 1000.0
    window_ms = chunk / site_rate * 1000.0
    t0 = -float(fit.p99_session_ms)
    # Pending events by the window they fall in (a session may run for hours of event time).
    buckets: dict[int, list[np.ndarray]] = defaultdict(list)
    held = next_session = emitted = 0
    tokens: dict[int, list[int]] = {}
    # Bounded: the warm-up windows, then ~n/chunk windows (x20 for Poisson bad luck).
    max_windows = int(-t0 / window_ms) + 20 * (n // chunk + 1) + 100
    for w in range(max_windows):
        lo = t0 + w * window_ms
        k = int(rng.poisson(sessions_per_ms * window_ms))
        new = session_records(fit, mix, rng, rng.uniform(lo, lo + window_ms, k), next_session)
        next_session += k
        if new.size:
            where = ((new["t"] - t0) // window_ms).astype(np.int64)
            order = np.argsort(where, kind="stable")
            keys, at = np.unique(where[order], return_index=True)
            for key, part in zip(keys.tolist(), np.split(new[order], at[1:]), strict=True):
                buckets[key].append(part)
            held += new.size
        stats.max_held = max(stats.max_held, held)
        stats.windows += 1
        parts = buckets.pop(w, [])
        out = np.concatenate(parts) if parts else np.zeros(0, RECORD)
        held -= out.size
        out = out[np.lexsort((-out["kind"], out["t"]))]  # by time; a search before its view
        out = out[out["t"] >= 0][: n - emitted]
        if out.size == 0:
            continue
        events: list[UserEvent] = []
        for rec in out.tolist():
            ts, s, kind, item, query = rec
            etype = KINDS[kind]
            e = UserEvent(
                event_id=f"{tag}-{emitted + len(events)}",
                event_type=etype,
                user_id=f"{tag}-u{s}",
                session_id=f"{tag}-s{s}",
                timestamp_ms=base + int(ts),
            )
            if kind == SEARCH:
                if query not in tokens:
                    tokens[query] = query_tokens(mix.queries[query])
                e.query_tokens = tokens[query]
                if query_text:
                    e.query = mix.queries[query]
            else:
                e.item_id = fit.item_ids[item]
            events.append(e)
            stats.by_kind[etype.value] += 1
        emitted += len(events)
        yield events
        if emitted >= n:
            return
    raise RuntimeError(f"generated only {emitted} of {n} events in {max_windows} windows")


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True, slots=True)
class Pacer:
    """The fixed-rate schedule: event ``i`` (0-based) is due ``i / rate`` s after ``start``;
    rate 0 = as fast as possible (everything is due at once)."""

    rate: float
    start: float

    def due_at(self, i: int) -> float:
        return self.start + i / self.rate if self.rate > 0 else self.start

    def wait_s(self, i: int, now: float) -> float:
        """Seconds to wait before sending event ``i`` (0 when it is due or late)."""
        return max(0.0, self.due_at(i) - now)

    def due(self, now: float) -> int:
        """How many events should have been sent by ``now``."""
        if self.rate <= 0:
            return 2**62  # everything
        return max(0, math.floor((now - self.start) * self.rate) + 1)


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    first_s: float = 0.0  # wall time of the first send
    last_ack_s: float = 0.0  # wall time the last ack was seen
    ack_ms: list[float] = field(default_factory=list)  # send -> ack, sampled
    late_ms: list[float] = field(default_factory=list)  # send time - scheduled time, sampled
    stopped_early: bool = False
    event_ids: list[str] = field(default_factory=list)  # acked ids, with keep_ids

    @property
    def rate(self) -> float:
        """Acked events per second, first send -> last ack."""
        return self.acked / max(1e-9, self.last_ack_s - self.first_s)


async def publish(
    bootstrap: str,
    topic: str,
    chunks: Iterable[list[UserEvent]],
    *,
    rate: float = 0.0,
    max_in_flight: int = 10_000,
    sample_every: int = 1,
    deadline_s: float = 600.0,
    keep_ids: bool = False,
    producer: AIOKafkaProducer | None = None,
) -> PublishStats:
    """Send every event of ``chunks`` (value = event JSON, key = user_id) at ``rate`` events/s
    (0: as fast as possible), acks=all; wait for every ack. At most ``max_in_flight`` sends
    are unacknowledged at a time. Every ``sample_every``-th event's send->ack latency and
    lateness are recorded. Stops sending after ``deadline_s``."""
    own = producer is None
    if producer is None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=65536
        )
        await producer.start()
    stats = PublishStats()
    in_flight: list[tuple[asyncio.Future[object], str]] = []
    loop = asyncio.get_running_loop()

    def acked(fut: asyncio.Future[object], t0: float | None) -> None:
        if fut.cancelled() or fut.exception() is not None:
            stats.errors += 1
            return
        stats.acked += 1
        stats.last_ack_s = time.time()
        if t0 is not None:
            stats.ack_ms.append((loop.time() - t0) * 1000)

    async def drain() -> None:
        await asyncio.gather(*(f for f, _ in in_flight), return_exceptions=True)
        if keep_ids:
            stats.event_ids.extend(
                i for f, i in in_flight if not f.cancelled() and f.exception() is None
            )
        in_flight.clear()

    try:
        # The next chunk is generated in a thread while this one is sent, and the pacing clock
        # starts at the first send (not counting the generator's warm-up).
        source = iter(chunks)
        ahead = asyncio.ensure_future(asyncio.to_thread(next, source, None))
        events = await ahead
        pacer = Pacer(rate, loop.time())
        stats.first_s = time.time()
        give_up = stats.first_s + deadline_s
        i = 0
        while events is not None:
            ahead = asyncio.ensure_future(asyncio.to_thread(next, source, None))
            for e in events:
                if rate > 0:
                    wait = pacer.wait_s(i, loop.time())
                    if wait > 0.001:  # sleep when ahead; when behind, send at once
                        await asyncio.sleep(wait)
                sample = i % sample_every == 0
                now = loop.time()
                if sample and rate > 0:
                    stats.late_ms.append(max(0.0, now - pacer.due_at(i)) * 1000)
                fut = await producer.send(topic, e.to_bytes(), key=e.user_id.encode())
                fut.add_done_callback(lambda f, t0=(now if sample else None): acked(f, t0))
                in_flight.append((fut, e.event_id))
                i += 1
                if len(in_flight) >= max_in_flight:
                    await drain()
            if time.time() > give_up:
                stats.stopped_early = True
                await ahead
                break
            events = await ahead
        stats.sent = i
        await producer.flush()
        await drain()
        return stats
    finally:
        if own:
            await producer.stop()


# --------------------------------------------------------------------------- CLI


def report(
    stats: PublishStats, gen: GenStats, mix: EventMix, rate: float, n: int, topic: str
) -> list[str]:
    a50, a99 = percentiles(stats.ack_ms)
    l50, l99 = percentiles(stats.late_ms)
    total = max(1, sum(gen.by_kind.values()))
    kinds = ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in gen.by_kind.items() if v)
    target = f"{rate:.0f}/s" if rate > 0 else "as fast as possible (--max)"
    lines = [
        f"  events       {stats.sent} of {n} sent to {topic}: {kinds}; {LOADGEN_NOTE}",
        f"               ({DATA_NOTE}; {mix.source})",
        f"  generator    held at most {gen.max_held} events at once ({gen.windows} windows)",
        "",
        f"ACHIEVED {stats.rate:.0f} events/s acked (target {target}); "
        f"{stats.acked} acked, {stats.errors} failed"
        + (", STOPPED at the deadline" if stats.stopped_early else ""),
    ]
    if rate > 0:
        lines.append(
            f"RATIO achieved / target = {stats.rate / rate:.3f}; sends late vs schedule "
            f"p50 {l50:.2f} ms, p99 {l99:.2f} ms"
        )
    lines.append(
        f"send->ack latency p50 {a50:.2f} ms, p99 {a99:.2f} ms ({len(stats.ack_ms)} sampled)"
    )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=50_000)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, default=0.0, help="events/s (fixed rate)")
    mode.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    p.add_argument("--topic", help="publish here (created if missing, kept)")
    p.add_argument("--bootstrap", help="Kafka bootstrap (default: $KAFKA_BOOTSTRAP_SERVERS or a "
                   "local broker on --kafka-port)")  # fmt: skip
    p.add_argument("--kafka-port", type=int, default=29092)
    p.add_argument("--site-rate", type=float, help="event-time views/s (default: --rate or 1000)")
    p.add_argument("--search-share", type=float, default=0.10)
    p.add_argument("--query-text", action="store_true", help="searches carry the text too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="stop sending after S seconds")
    p.add_argument("--quick", action="store_true", help="2,000 events: a smoke run")
    args = p.parse_args()
    n = 2000 if args.quick else args.events
    rate = 0.0 if args.max else args.rate

    services = LocalServices(kafka_port=args.kafka_port)
    run_id = uuid.uuid4().hex[:8]
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    ours: list[str] = []
    try:
        if not bootstrap:
            services.ensure("kafka")
            bootstrap = services.bootstrap
        topic = args.topic or f"bench-loadgen-{run_id}.{USER_EVENTS.name}"
        spec = TopicSpec(topic, USER_EVENTS.partitions, USER_EVENTS.retention_ms, "")
        created = asyncio.run(create_topics(bootstrap, (spec,)))
        if not args.topic:
            ours = created
        fit = fit_diginetica()
        mix = fit_event_mix(search_share=args.search_share)
        gen = GenStats()
        chunks = generate(
            fit,
            mix,
            n,
            seed=args.seed,
            tag=f"lg{run_id}",
            site_rate=args.site_rate or rate or 1000.0,
            query_text=args.query_text,
            stats=gen,
        )
        stats = asyncio.run(
            publish(
                bootstrap,
                topic,
                chunks,
                rate=rate,
                sample_every=max(1, n // 100_000),
                deadline_s=args.timeout,
            )
        )
        lines = [
            "streamrec load generator (bench/loadgen.py)",
            f"  machine      {machine()}",
            f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"  command      {' '.join(sys.argv)}",
            f"  kafka        {bootstrap}, topic {topic} ({spec.partitions} partitions, "
            + ("created and deleted by this run)" if ours else "kept)"),
            *report(stats, gen, mix, rate, n, topic),
        ]
        print("\n".join(lines), flush=True)
        return 0 if stats.errors == 0 else 1
    finally:
        if ours:
            try:
                asyncio.run(delete_topics(bootstrap, ours))
            except Exception as exc:  # cleanup must not hide the report
                print(f"note: could not delete {ours}: {exc}", file=sys.stderr)
        services.stop_started()


if __name__ == "__main__":
    sys.exit(main())
