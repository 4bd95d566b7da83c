"""Replayed events apply once: the replay list rule (``remember_event``), the in-process
store's check, the pipeline's accounting, and the cluster slot of the applied-events key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from features.keys import applied_key, hash_slot, id_hash, slot_string, user_key
from features.memory_store import InMemoryStateStore
from features.user_state import decode_state, remember_event
from stream.agents import RawMessage
from stream.pipeline import Trigger, online_batch, recommend_batch, state_updates
from tests.unit.test_batch_handler import Sink, handler, valid
from tests.unit.test_recommend_batch import model_and_store
from topics.events import EventType, UserEvent


def test_hash_slot_matches_redis_cluster_keyslot() -> None:
    # Values of CLUSTER KEYSLOT from the Redis documentation.
    assert hash_slot("somekey") == 11058
    assert hash_slot("foo{hash_tag}") == hash_slot("{hash_tag}bar") == 2515
    assert slot_string("a{}b{c}") == "a{}b{c}"  # an empty first tag: the whole key


@given(st.text(min_size=1, max_size=40), st.sampled_from(["prod", "replay", "t-1"]))
def test_applied_key_shares_the_user_keys_slot(user_id: str, namespace: str) -> None:
    key = applied_key(namespace, user_id)
    assert key.startswith(f"sr:{namespace}:ev:{{")
    assert hash_slot(key) == hash_slot(user_key(namespace, user_id))


def test_remember_event_keeps_a_window_newest_first() -> None:
    a, b, c = id_hash("a"), id_hash("b"), id_hash("c")
    seen, applied = remember_event(b"", a, 2)
    assert not seen and applied == a
    seen, applied = remember_event(applied, b, 2)
    assert not seen and applied == b + a
    assert remember_event(applied, a, 2) == (True, b + a)
    seen, applied = remember_event(applied, c, 2)
    assert not seen and applied == c + b  # a forgotten: it would apply again
    assert remember_event(applied, a, 2)[0] is False
    # Only whole hashes match: bytes straddling two hashes are not a hash.
    assert remember_event(a + b, (a + b)[4:12], 4)[0] is False
    assert remember_event(b"xyz", a, 2) == (False, a)  # a corrupt list counts as empty


async def test_memory_store_applies_each_event_once() -> None:
    model, _ = model_and_store()
    store = InMemoryStateStore(namespace="t", half_life_ms=1e9, max_recent=4, space_id=5,
                               replay_window=8)  # fmt: skip
    events = [UserEvent("e1", EventType.VIEW, "u", "s", 1, item_id="a"),
              UserEvent("e2", EventType.VIEW, "u", "s", 2, item_id="b")]  # fmt: skip
    updates, _ = state_updates(events, model)
    assert [u.event_hash for u in updates] == [id_hash("e1"), id_hash("e2")]
    first = await store.apply(updates)
    again = await store.apply(updates)
    assert first.replayed == [False, False] and again.replayed == [True, True]
    assert again.states == [first.states[1]] * 2
    assert decode_state(await store.get("u")).events == 2
    # Off by default (offline evaluation reads its inputs once).
    plain = InMemoryStateStore(namespace="t", half_life_ms=1e9, max_recent=4, space_id=5)
    await plain.apply(updates)
    assert (await plain.apply(updates)).replayed == [False, False]
    assert decode_state(await plain.get("u")).events == 4


async def test_replays_are_answered_counted_and_teach_nothing() -> None:
    model, _ = model_and_store()
    store = InMemoryStateStore(namespace="t", half_life_ms=1e9, max_recent=4, space_id=5,
                               replay_window=8)  # fmt: skip
    events = [UserEvent("e1", EventType.VIEW, "u", "s", 1, item_id="a"),
              UserEvent("e2", EventType.VIEW, "u", "s", 2, item_id="b")]  # fmt: skip
    triggers = [Trigger(e, 0.0) for e in events]
    assert (await recommend_batch(triggers, store, model, k=2, n_candidates=4)).replayed == 0
    result = await recommend_batch(triggers, store, model, k=2, n_candidates=4)
    assert result.replayed == 2
    assert [r.event_id for r in result.recommendations] == ["e1", "e2"]

    states = [decode_state(await store.get("u"))] * 2
    taught = online_batch(events, states, model)
    assert taught.items.size == 2 and taught.src.size == 2
    replay = online_batch(events, states, model, replayed=[True, False])
    assert replay.items.size == 1 and replay.src.size == 1
    assert replay.queries.size == taught.queries.size  # replays still read


async def test_handler_counts_replays_in_metric() -> None:
    """A redelivered batch through the agent's handler: answered again, and counted in
    streamrec_replayed_events_total."""
    model, _ = model_and_store()
    sink = Sink()
    h = handler(sink)
    h.model = model  # type: ignore[assignment]
    store = InMemoryStateStore(namespace="t", half_life_ms=1e9, max_recent=4, space_id=5,
                               replay_window=8)  # fmt: skip
    h.store = store  # type: ignore[assignment]
    batch = [RawMessage("user-events", 0, i, 1000.0, b"u", valid(f"e{i}")) for i in range(3)]
    await h.handle(batch)
    await h.handle(batch)  # the worker was killed before committing: the batch comes again
    replayed = h.metrics.registry.get_sample_value("streamrec_replayed_events_total")
    assert replayed == 3
    assert len(sink.on("recs")) == 6
