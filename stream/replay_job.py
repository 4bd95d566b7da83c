"""``streamrec replay``: a dataset, or a range of a live topic, through the real path.

``--data FILE`` produces the file's events in event-time order; ``--topic T --from A --to B``
re-reads ``[A, B)`` of an existing topic (stream.replay.read_topic_range: its own consumer,
never a commit) and forwards every valid record as it is. Either way the events go into topics
of the run's own (prefix, consumer group and Redis namespace ``replay-<time>-<hex>``), are
answered by a real ``streamrec worker`` process serving the current model bundle, and every
Recommendation read back is written as one JSON object per line with its trigger's session,
item, type and time. Nothing of production (its topics, its Redis namespace) is written.

The lines are then scored as ``streamrec evaluate`` scores the served ranking (``score_replay``:
the protocol's own ``build_test_pairs`` and ``score_lists``), so a replayed range and an offline
evaluation report the same HR/MRR/NDCG from the same code.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.bundle import Bundle, latest_bundle
from stream.evaluate import build_test_pairs, score_lists
from stream.replay import (
    Collected,
    IsolatedRun,
    RangeBound,
    SourceRecord,
    TopicRangeError,
    merge_partitions,
    read_topic_range,
    replay_messages,
)
from stream.services import LocalServices, resolve_services
from stream.settings import Settings
from topics.events import InvalidEvent, Limits, UserEvent, parse_event

KS = (5, 10, 20)  # the cut-offs of the offline evaluation (stream.evaluate.EvalConfig.ks)
MAX_EXAMPLES = 3  # bad records quoted (partition@offset) per reason


def recommendation_lines(events: list[UserEvent], collected: Collected) -> list[bytes]:
    """One JSON line per answered event, in event order, with its trigger's context."""
    lines: list[bytes] = []
    for e in events:
        rec = collected.recommendations.get(e.event_id)
        if rec is None:
            continue
        obj: dict[str, Any] = rec.to_dict()
        obj["trigger"] = {
            "session_id": e.session_id,
            "item_id": e.item_id,
            "event_type": e.event_type.value,
            "timestamp_ms": e.timestamp_ms,
        }
        lines.append(orjson.dumps(obj))
    return lines


def score_replay(
    lines: Sequence[bytes],
    events: Sequence[UserEvent],
    item_ids: Sequence[str],
    popularity: np.ndarray,
    ks: Sequence[int] = KS,
) -> dict[str, Any]:
    """Score recommendation lines against the replayed events the way ``streamrec evaluate``
    scores the served ranking: the next item of each trigger's session is its target
    (``build_test_pairs``, known items = the bundle's ``item_ids``), lists ranked over that
    catalogue (``score_lists``; ``popularity`` is the bundle's ``float[N + 1]``). A trigger
    without a line scores as an empty list, a miss, as in the offline evaluation, and is
    counted in ``unanswered_examples``. ``metrics`` is empty when there is no example."""
    if len(popularity) != len(item_ids) + 1:
        raise ValueError(f"popularity has {len(popularity)} entries for {len(item_ids)} items")
    answered: dict[str, list[str]] = {}
    for line in lines:
        obj = orjson.loads(line)
        answered[obj["event_id"]] = list(obj["items"])
    # build_test_pairs walks each session in list order: event time, as the evaluation's.
    pairs = build_test_pairs(sorted(events, key=lambda e: e.timestamp_ms), set(item_ids))
    lists = [answered.get(t, []) for t in pairs.trigger_ids]
    metrics: dict[str, float] = {}
    if len(pairs):
        pop = np.asarray(popularity, dtype=np.float64)
        metrics = score_lists(lists, pairs, list(item_ids), pop, ks)
    return {
        "examples": len(pairs),
        "unanswered_examples": sum(t not in answered for t in pairs.trigger_ids),
        "dropped_unseen": pairs.dropped_unseen,
        "dropped_repeat": pairs.dropped_repeat,
        "metrics": metrics,
    }


def format_scores(score: dict[str, Any], ks: Sequence[int] = KS) -> str:
    """The printed summary of ``score_replay``: example counts, then HR/MRR/NDCG per K."""
    head = (
        f"scored {score['examples']} examples (next item of the session; dropped: "
        f"{score['dropped_unseen']} targets outside the bundle's catalogue, "
        f"{score['dropped_repeat']} re-views; {score['unanswered_examples']} unanswered = misses)"
    )
    metrics = score["metrics"]
    if not metrics:
        return head + "\nno example to score: no session has a next item the bundle knows"
    rows = [head, f"{'':>6} {'HR':>7} {'MRR':>7} {'NDCG':>7}"]
    for k in ks:
        rows.append(
            f"{'@' + str(k):>6} {metrics[f'HR@{k}']:7.4f} {metrics[f'MRR@{k}']:7.4f} "
            f"{metrics[f'NDCG@{k}']:7.4f}"
        )
    return "\n".join(rows)


@dataclass
class DecodedRange:
    """The records of a topic range as events to replay, and what could not be replayed:
    ``bad`` counts records ``parse_event`` refuses by reason (``bad_examples`` quotes the first
    few as ``partition@offset``), ``duplicates`` counts repeated event ids (at-least-once
    delivery upstream), kept once since a trigger is answered once."""

    records: int = 0
    events: list[UserEvent] = field(default_factory=list)
    messages: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    bad: dict[str, int] = field(default_factory=dict)
    bad_examples: dict[str, list[str]] = field(default_factory=dict)
    duplicates: int = 0


def decode_records(records: Iterable[SourceRecord], limits: Limits) -> DecodedRange:
    """Validate each record with the worker's own ``parse_event`` (same limits), keeping the
    valid ones' raw key and value for the replay, so that the worker gets production's bytes.
    Every record ends up in exactly one of events, ``bad`` or ``duplicates``."""
    out = DecodedRange()
    seen: set[str] = set()
    for r in records:
        out.records += 1
        try:
            event = parse_event(r.value, limits)
        except InvalidEvent as exc:
            reason = exc.reason.value
            out.bad[reason] = out.bad.get(reason, 0) + 1
            examples = out.bad_examples.setdefault(reason, [])
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"{r.partition}@{r.offset}: {exc.detail[:120]}")
            continue
        if event.event_id in seen:
            out.duplicates += 1
            continue
        seen.add(event.event_id)
        assert r.value is not None  # parse_event refuses a null value
        key = r.key if r.key is not None else event.user_id.encode()
        out.events.append(event)
        out.messages.append((key, r.value))
    return out


@contextmanager
def _services() -> Iterator[tuple[str, str]]:
    """(bootstrap, redis_url) as ``resolve_services`` gives them; local services this started
    are stopped on exit."""
    services = LocalServices(
        kafka_port=int(os.environ.get("STREAMREC_KAFKA_PORT", "9092")),
        redis_port=int(os.environ.get("STREAMREC_REDIS_PORT", "6379")),
    )
    try:
        yield resolve_services(services)
    finally:
        services.stop_started()


def _run_name() -> str:
    """``replay-<time>-<hex>``: time for people, the suffix so that two replays started in the
    same second (or a topic deleted a moment ago) never share topics or state."""
    return f"replay-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def _through_worker(
    bootstrap: str,
    redis_url: str,
    name: str,
    settings: Settings,
    messages: list[tuple[bytes | None, bytes]],
    rate: float,
) -> tuple[Collected, float]:
    """``messages`` through an ``IsolatedRun`` (own prefix, group, Redis namespace, worker)."""
    run = IsolatedRun(bootstrap, redis_url, settings.model_dir, name, settings.model_dir.parent)
    with run:
        return asyncio.run(
            replay_messages(bootstrap, run.topics, messages, rate=rate, timeout_s=120)
        )


def _write_report(report: Path | None, obj: dict[str, Any]) -> None:
    if report is None:
        return
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    print(f"report written to {report}")


def finish_replay(
    events: list[UserEvent],
    collected: Collected,
    start: float,
    *,
    out: Path,
    report: Path | None,
    bundle: Bundle,
    source: dict[str, Any],
) -> int:
    """Write the lines, print what came back and the scores, write the JSON report; the exit
    status is 1 when an event went unanswered (neither recommendation nor dead letter)."""
    lines = recommendation_lines(events, collected)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"".join(line + b"\n" for line in lines))
    dead: dict[str, int] = {}
    for d in collected.dead_letters:
        dead[d.reason] = dead.get(d.reason, 0) + 1
    missing = len(events) - len(lines) - len(collected.dead_letters)
    elapsed = max(1e-9, collected.last_received_s - start)
    print(
        f"replayed {len(events)} events: {len(lines)} recommendations -> {out}, "
        f"{len(collected.dead_letters)} dead letters {dead or ''}, {missing} unanswered, "
        f"{len(events) / elapsed:.0f} events/s"
    )
    versions: dict[str, int] = {}
    for rec in collected.recommendations.values():
        versions[rec.model_version] = versions.get(rec.model_version, 0) + 1
    if set(versions) - {bundle.version}:
        print(f"note: scored with bundle {bundle.version}, but answers came from {versions}")
    score = score_replay(lines, events, bundle.item_ids, bundle.popularity)
    print(format_scores(score))
    _write_report(
        report,
        {
            "source": source,
            "bundle": bundle.version,
            "model_versions": versions,
            "events": len(events),
            "recommendations": len(lines),
            "dead_letters": dead,
            "unanswered": missing,
            "out": str(out),
            **score,
        },
    )
    return 1 if missing else 0


def _current_bundle(settings: Settings) -> Bundle | None:
    """The bundle the run's worker will serve (CURRENT of the model dir), for scoring."""
    path = latest_bundle(settings.model_dir)
    if path is None:
        print(f"no model bundle in {settings.model_dir}: run `streamrec train --data FILE` first")
        return None
    return Bundle.load(path)


def run_replay(
    events: list[UserEvent],
    *,
    out: Path,
    rate: float,
    settings: Settings,
    report: Path | None = None,
) -> int:
    """``--data`` / ``--dataset``: ``events`` in event-time order through an isolated worker."""
    bundle = _current_bundle(settings)
    if bundle is None:
        return 2
    events = sorted(events, key=lambda e: e.timestamp_ms)
    messages: list[tuple[bytes | None, bytes]] = [
        (e.user_id.encode(), e.to_bytes()) for e in events
    ]
    name = _run_name()
    with _services() as (bootstrap, redis_url):
        collected, start = _through_worker(bootstrap, redis_url, name, settings, messages, rate)
    source = {"kind": "events", "events": len(events), "run": name}
    return finish_replay(
        events, collected, start, out=out, report=report, bundle=bundle, source=source
    )


def describe_range(decoded: DecodedRange, topic: str, ranges: dict[int, tuple[int, int]]) -> str:
    """What was read: per partition ``[start, stop)``, records, and every record not replayed
    (bad by reason with examples, duplicates), so that none is dropped without a word."""
    spans = ", ".join(f"p{p} [{a}, {b})" for p, (a, b) in sorted(ranges.items()))
    text = (
        f"read {decoded.records} records of {topic} ({spans}): {len(decoded.events)} events, "
        f"{sum(decoded.bad.values())} bad, {decoded.duplicates} duplicate event ids"
    )
    for reason, count in sorted(decoded.bad.items()):
        text += f"\n  bad {reason:28s} {count}  e.g. {'; '.join(decoded.bad_examples[reason])}"
    return text


def run_topic_replay(
    topic: str,
    start: RangeBound,
    stop: RangeBound,
    *,
    out: Path,
    rate: float,
    settings: Settings,
    report: Path | None = None,
) -> int:
    """``--topic T --from A --to B``: re-read ``[A, B)`` of ``topic`` (the name as given, no
    ``STREAMREC_TOPIC_PREFIX``), validate it, and replay the valid records through an
    isolated worker. Exit status 2 for a missing topic, 1 when the range holds no valid event
    or an event went unanswered, else 0; bad records are reported, not failures."""
    bundle = _current_bundle(settings)
    if bundle is None:
        return 2
    with _services() as (bootstrap, redis_url):
        name = _run_name()
        try:
            read = asyncio.run(
                read_topic_range(bootstrap, topic, start, stop, group_id=f"{name}-reader")
            )
        except TopicRangeError as err:
            print(err)
            return 2
        decoded = decode_records(
            merge_partitions(read.records), Limits(max_bytes=settings.max_event_bytes)
        )
        print(describe_range(decoded, topic, read.ranges))
        source: dict[str, Any] = {
            "kind": "topic",
            "run": name,  # the replay's own topic prefix, consumer group and Redis namespace
            "topic": topic,
            "from": str(start),
            "to": str(stop),
            "partitions": {str(p): list(r) for p, r in sorted(read.ranges.items())},
            "records": decoded.records,
            "bad": decoded.bad,
            "bad_examples": decoded.bad_examples,
            "duplicates": decoded.duplicates,
        }
        if not decoded.events:
            print(f"nothing to replay: no valid event in [{start}, {stop}) of {topic}")
            _write_report(report, {"source": source, "bundle": bundle.version, "events": 0})
            return 1
        collected, t0 = _through_worker(
            bootstrap, redis_url, name, settings, decoded.messages, rate
        )
    return finish_replay(
        decoded.events, collected, t0, out=out, report=report, bundle=bundle, source=source
    )
