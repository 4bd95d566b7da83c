"""Settings that are invalid alone or together stop start-up naming the variable."""

from __future__ import annotations

import pytest

from stream.settings import ConfigError, load_settings


def message(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    return str(exc.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STREAMREC_AB_ARMS": "A=v1:0.5,B"}, "STREAMREC_AB_ARMS"),
        ({"STREAMREC_AB_ARMS": "A=v1:0.5,A=v2:0.5"}, "STREAMREC_AB_ARMS"),
        ({"STREAMREC_AB_ARMS": "A=v1:-1"}, "STREAMREC_AB_ARMS"),
        ({"STREAMREC_TRAIN_ARM": "C", "STREAMREC_AB_ARMS": "A=v1:0.5,B=v2:0.5"},
         "STREAMREC_TRAIN_ARM"),
        ({"STREAMREC_TRAIN_ARM": "B"}, "STREAMREC_TRAIN_ARM"),
        ({"STREAMREC_GUARD_MIN_JUDGED": "600", "STREAMREC_GUARD_WINDOW": "500"},
         "STREAMREC_GUARD_MIN_JUDGED"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "a:9092,,b:9092"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "a:port"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"STREAMREC_TOPIC_PREFIX": "bad prefix/"}, "STREAMREC_TOPIC_PREFIX"),
        ({"STREAMREC_LOG_FORMAT": "xml"}, "STREAMREC_LOG_FORMAT"),
    ],
)  # fmt: skip
def test_invalid_configuration_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    text = message(monkeypatch, **env)
    assert text.startswith("invalid configuration:")
    assert f"  {named}:" in text, text


def test_consistent_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_AB_ARMS", "A=v1:0.9, B=v2:0.1")
    monkeypatch.setenv("STREAMREC_TRAIN_ARM", "B")
    monkeypatch.setenv("STREAMREC_LOG_FORMAT", "json")
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@redis:6380/1")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2")
    s = load_settings()
    assert (s.train_arm, s.log_format) == ("B", "json")


def test_a_disabled_guard_needs_no_consistent_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_GUARD_MARGIN", "-1")
    monkeypatch.setenv("STREAMREC_GUARD_MIN_JUDGED", "600")
    monkeypatch.setenv("STREAMREC_GUARD_WINDOW", "500")
    assert load_settings().guard_min_judged == 600


def test_every_problem_is_listed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    text = message(monkeypatch, STREAMREC_BATCH_MAX="0", STREAMREC_AB_ARMS="nonsense")
    assert "STREAMREC_BATCH_MAX" in text and "STREAMREC_AB_ARMS" in text
