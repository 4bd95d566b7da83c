"""``streamrec replay --data FILE --out recs.jsonl``: a dataset through the real path.

The events are produced in event-time order into topics of the run's own (prefix, consumer
group and Redis namespace ``replay-<time>``), answered by a real ``streamrec worker`` process
serving the current model bundle, and every Recommendation read back is written as one JSON
object per line with its trigger's session, item, type and time, so anyone can score the live
path with their own script. Nothing of production (topics, state) is touched.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson

from models.bundle import latest_bundle
from stream.replay import Collected, IsolatedRun, replay_messages
from stream.services import LocalServices, resolve_services
from stream.settings import Settings
from topics.events import UserEvent


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


def run_replay(events: list[UserEvent], *, out: Path, rate: float, settings: Settings) -> int:
    if latest_bundle(settings.model_dir) is None:
        print(f"no model bundle in {settings.model_dir}: run `streamrec train --data FILE` first")
        return 2
    events = sorted(events, key=lambda e: e.timestamp_ms)
    services = LocalServices(
        kafka_port=int(os.environ.get("STREAMREC_KAFKA_PORT", "9092")),
        redis_port=int(os.environ.get("STREAMREC_REDIS_PORT", "6379")),
    )
    try:
        bootstrap, redis_url = resolve_services(services)
        name = f"replay-{time.strftime('%Y%m%d%H%M%S')}"
        run = IsolatedRun(bootstrap, redis_url, settings.model_dir, name, settings.model_dir.parent)
        messages: list[tuple[bytes | None, bytes]] = [
            (e.user_id.encode(), e.to_bytes()) for e in events
        ]
        with run:
            collected, start = asyncio.run(
                replay_messages(bootstrap, run.topics, messages, rate=rate, timeout_s=120)
            )
    finally:
        services.stop_started()
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
    return 1 if missing else 0
