"""The spine on real Kafka + Redis: N valid events in -> exactly N recommendations out."""

from __future__ import annotations

import orjson

from stream.replay import collect, produce
from tests.integration.harness import Services, WorkerProcess
from topics.events import EventType, UserEvent

K = 20
MAX_RECENT = 20


def _extra_events(base_ts: int) -> list[UserEvent]:
    """Event kinds the DIGINETICA sample lacks: an unknown item, a search, a cart, a purchase."""
    return [
        UserEvent("x-unknown", EventType.VIEW, "xu", "xs", base_ts, item_id="never-seen-item"),
        UserEvent("x-search", EventType.SEARCH, "xu", "xs", base_ts + 1, query="shoes"),
        UserEvent("x-cart", EventType.ADD_TO_CART, "xu", "xs", base_ts + 2, item_id="81766"),
        UserEvent(
            "x-buy",
            EventType.PURCHASE,
            "xu",
            "xs",
            base_ts + 3,
            item_id="81766",
            quantity=1,
            price=9.5,
        ),
        UserEvent("x-cold", EventType.VIEW, "brand-new-user", "new-s", base_ts, item_id="nope"),
    ]


async def test_n_events_in_n_recommendations_out(
    worker: WorkerProcess, services: Services, diginetica: tuple[list[UserEvent], list[UserEvent]]
) -> None:
    _, test = diginetica
    events = test[:300] + _extra_events(test[0].timestamp_ms)
    topic, recs_topic, dead_topic = worker.topics
    await produce(services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in events])
    got = await collect(
        services.bootstrap, recs_topic, dead_topic, expect=len(events), timeout_s=90
    )
    assert worker.alive(), worker.log_tail()
    assert set(got.recommendations) == {e.event_id for e in events}, worker.log_tail()
    assert got.duplicates == 0 and got.dead_letters == []

    seen: dict[str, list[str]] = {}
    for e in events:
        rec = got.recommendations[e.event_id]
        assert got.keys[e.event_id] == e.user_id.encode()  # keyed by user
        assert rec.user_id == e.user_id and rec.session_id == e.session_id
        assert rec.kind == ("search" if e.event_type is EventType.SEARCH else "recommend")
        assert len(rec.items) == K and len(set(rec.items)) == K
        assert rec.scores == sorted(rec.scores, reverse=True)
        assert rec.model_version and rec.latency_ms >= 0
        session = seen.setdefault(e.session_id, [])
        if e.item_id is not None:
            session.insert(0, e.item_id)
        # Nothing the user already interacted with in this session (the state keeps the
        # newest MAX_RECENT items, so that is the window the filter promises).
        assert not set(rec.items) & set(session[:MAX_RECENT]), e.event_id


async def test_recommendation_record_matches_published_schema(
    worker: WorkerProcess, services: Services
) -> None:
    topic, recs_topic, dead_topic = worker.topics
    event = UserEvent("schema-1", EventType.VIEW, "su", "ss", 1_464_000_000_000, item_id="81766")
    await produce(services.bootstrap, topic, [(b"su", event.to_bytes())])
    got = await collect(services.bootstrap, recs_topic, dead_topic, expect=1, timeout_s=90)
    rec = got.recommendations["schema-1"]
    payload = orjson.loads(orjson.dumps(rec.to_dict()))
    assert set(payload) == {
        "schema_version",
        "user_id",
        "session_id",
        "event_id",
        "kind",
        "items",
        "scores",
        "model_version",
        "produced_at_ms",
        "trigger_timestamp_ms",
        "latency_ms",
    }
    assert payload["trigger_timestamp_ms"] == event.timestamp_ms
