"""Bad input on the real path: a dead letter with the right reason, the worker keeps serving."""

from __future__ import annotations

import orjson

from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from topics.events import EventType, UserEvent

VALID = {
    "schema_version": 1,
    "event_id": "v",
    "event_type": "view",
    "user_id": "u",
    "session_id": "s",
    "timestamp_ms": 1_464_000_000_000,
    "item_id": "81766",
}


def _with(**changes: object) -> bytes:
    obj = {k: v for k, v in VALID.items() if changes.get(k, 0) is not ...}
    obj.update({k: v for k, v in changes.items() if v is not ...})
    return orjson.dumps(obj)


BAD: dict[str, bytes] = {
    "malformed_json": b'{"event_type": "view", "user_id": ',
    "not_an_object": b'"just a string"',
    "missing_field": _with(event_id="b3", session_id=...),
    "wrong_type": _with(event_id="b4", timestamp_ms="tomorrow"),
    "unknown_event_type": _with(event_id="b5", event_type="wishlist"),
    "oversized": _with(event_id="b6", padding="x" * 20_000),
    "unsupported_schema_version": _with(event_id="b7", schema_version=7),
    "too_many_items": _with(event_id="b8", shown_items=[str(i) for i in range(1000)]),
}


async def test_each_bad_input_is_dead_lettered_and_worker_goes_on(
    worker: WorkerProcess, services: Services
) -> None:
    topic, recs_topic, dead_topic = worker.topics
    messages = [(f"bad-{r}".encode(), raw) for r, raw in BAD.items()]
    after = UserEvent(
        "after-bad", EventType.VIEW, "u-after", "s-after", 1_464_000_000_000, item_id="81766"
    )
    messages.append((b"u-after", after.to_bytes()))
    await produce(services.bootstrap, topic, messages)
    got = await collect(
        services.bootstrap, recs_topic, dead_topic, expect=len(messages), timeout_s=90
    )

    assert worker.alive(), worker.log_tail()
    by_reason = {d.reason: d for d in got.dead_letters}
    assert sorted(by_reason) == sorted(BAD), worker.log_tail()
    assert len(got.dead_letters) == len(BAD)
    for reason, raw in BAD.items():
        letter = by_reason[reason]
        assert letter.raw == raw and letter.detail
        assert letter.key == f"bad-{reason}".encode()
        assert letter.source_topic == topic and letter.offset >= 0 and letter.partition >= 0
    assert set(got.recommendations) == {"after-bad"}

    # Still serving after all of that.
    later = UserEvent("later", EventType.VIEW, "u-later", "s", 1_464_000_000_000, item_id="81766")
    await produce(services.bootstrap, topic, [(b"u-later", later.to_bytes())])
    got = await collect(
        services.bootstrap, recs_topic, dead_topic, expect=len(messages) + 1, timeout_s=60
    )
    assert "later" in got.recommendations
