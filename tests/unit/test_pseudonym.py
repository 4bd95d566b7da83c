"""Pseudonymised user ids: the documented formula, dead-letter redaction, the worker's wiring
(state, outputs and trackers see only the pseudonym) and the settings that enable it."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest

import stream.agents as agents
from features.pseudonym import REDACTED, Pseudonymiser, pseudonymise
from stream.forget import pseudonymiser_of, read_key, stored_id
from stream.pipeline import BatchResult, Trigger
from stream.settings import ConfigError, load_settings
from tests.unit.test_batch_handler import Sink, handler, msg, rec_for
from topics.dead_letter import DeadLetter
from topics.recommendations import Recommendation

KEY = b"test-key-not-a-secret"


def event(eid: str, user: object = "alice", **extra: object) -> bytes:
    base = {"event_id": eid, "event_type": "view", "user_id": user, "session_id": "s1"}
    return orjson.dumps({**base, "timestamp_ms": 1, "item_id": "i1", **extra})


def test_the_pseudonym_is_the_documented_truncated_hmac() -> None:
    # What a downstream consumer holding the key computes to find a user's records.
    expected = hmac.new(KEY, b"alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert pseudonymise(KEY, "alice@example.com") == expected
    p = Pseudonymiser(KEY)
    assert p("alice@example.com") == expected and len(expected) == 32
    assert p("alice@example.com") != Pseudonymiser(b"other key")("alice@example.com")
    assert p("bob") != p("alice@example.com")
    assert "test-key" not in repr(p)
    with pytest.raises(ValueError):
        Pseudonymiser(b"")


def test_dead_letters_keep_no_raw_user_id() -> None:
    p = Pseudonymiser(KEY)
    raw, key = p.redact_dead_letter(event("e1", extra_field=[1]), b"alice")
    obj = orjson.loads(raw)
    assert obj["user_id"] == p("alice") and obj["extra_field"] == [1] and key == p("alice").encode()
    assert b"alice" not in raw
    raw, _ = p.redact_dead_letter(event("e2", user=12345), None)
    assert orjson.loads(raw)["user_id"] == p("12345")  # parse_event accepts integer ids
    raw, _ = p.redact_dead_letter(event("e3", user={"nested": "alice"}), None)
    assert orjson.loads(raw)["user_id"] == REDACTED
    # Not a JSON object: the id cannot be located, so the raw bytes go.
    for bad in (b'{"user_id": "alice", "ev', b"\xff\xfealice", b'["alice"]', b""):
        assert p.redact_dead_letter(bad, b"alice") == (b"", p("alice").encode())
    assert p.redact_dead_letter(b"{}", None) == (b"{}", None)


async def test_the_worker_uses_only_the_pseudonym(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        seen.extend(t.event.user_id for t in triggers)  # what reaches Redis (user_key)
        return BatchResult([rec_for(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", fake)
    sink = Sink()
    h = handler(sink)
    h.pseudonymise = p = Pseudonymiser(KEY)
    bad = event("e0", timestamp_ms=-5)  # dead-lettered (invalid value)
    await h.handle([msg(0, event("e1")), msg(1, bad), msg(2, b'{"user_id": "alice", "tr')])
    alias = p("alice")
    assert seen == [alias]
    [(key, value)] = [(k, v) for t, k, v in sink.sent if t == "recs"]
    assert key == alias.encode() and Recommendation.from_bytes(value).user_id == alias
    assert list(h.tracker._last) == [alias]
    dead = [DeadLetter.from_bytes(v) for v in sink.on("dead")]
    assert len(dead) == 2 and all(d.key == p("k").encode() for d in dead)  # msg() keys by "k"
    assert orjson.loads(dead[0].raw)["user_id"] == alias and dead[1].raw == b""
    assert not any(b"alice" in v for _, _, v in sink.sent)


async def test_without_a_key_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake(triggers: list[Trigger], *a: Any, **kw: Any) -> BatchResult:
        return BatchResult([rec_for(t) for t in triggers])

    monkeypatch.setattr(agents, "recommend_batch", fake)
    sink = Sink()
    await handler(sink).handle([msg(0, event("e1"))])
    assert Recommendation.from_bytes(sink.on("recs")[0]).user_id == "alice"


def test_the_key_comes_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert pseudonymiser_of(load_settings()) is None
    assert stored_id(load_settings(), "alice") == "alice"
    monkeypatch.setenv("STREAMREC_PSEUDONYMISE_KEY", KEY.decode())
    s = load_settings()
    assert KEY.decode() not in repr(s) and read_key(s) == KEY
    assert stored_id(s, "alice") == pseudonymise(KEY, "alice")
    assert stored_id(s, "abc", pseudonymised=True) == "abc"
    path = tmp_path / "key"
    path.write_text(KEY.decode() + "\n")
    monkeypatch.setenv("STREAMREC_PSEUDONYMISE_KEY_FILE", str(path))
    with pytest.raises(ConfigError, match="both set"):
        load_settings()
    monkeypatch.delenv("STREAMREC_PSEUDONYMISE_KEY")
    assert read_key(load_settings()) == KEY  # whitespace stripped
    path.write_text("  \n")
    with pytest.raises(ConfigError, match="STREAMREC_PSEUDONYMISE_KEY_FILE"):
        read_key(load_settings())
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        pseudonymiser_of(load_settings())
