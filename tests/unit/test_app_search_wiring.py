"""The worker's wiring for search (stream/app.py): the catalogue agent and its topic, the
text encoder setting. No broker: a faust App connects only when it starts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from stream.app import create_app, load_text_encoder
from stream.metrics import WorkerMetrics
from stream.settings import ConfigError, load_settings
from tests.unit.text_fakes import FakeEncoder
from topics.names import ALL_TOPICS, ITEM_CATALOGUE, all_topics, catalogue_topic


def test_the_catalogue_topic_is_created_with_the_others_and_kept_forever() -> None:
    assert ITEM_CATALOGUE in ALL_TOPICS and ITEM_CATALOGUE.retention_ms == -1
    assert catalogue_topic("t.") in {s.name for s in all_topics("t.")}


def test_both_agents_consume_their_prefixed_topics(tmp_path: Path) -> None:
    settings = load_settings(topic_prefix="t.", model_dir=tmp_path / "models")
    model = SimpleNamespace(version="v", scorer=SimpleNamespace(provider="cpu"))
    app = create_app(settings, model, WorkerMetrics(), encoder=FakeEncoder())  # type: ignore[arg-type]
    topics = {name.rsplit(".", 1)[-1]: agent.channel.topics for name, agent in app.agents.items()}
    assert topics == {"recommend": ("t.user-events",), "catalogue": ("t.item-catalogue",)}


def test_text_encoder_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_text_encoder(load_settings(text_encoder="none")) is None
    monkeypatch.setenv("STREAMREC_TEXT_ENCODER", "bert")
    with pytest.raises(ConfigError, match="STREAMREC_TEXT_ENCODER"):
        load_settings()
