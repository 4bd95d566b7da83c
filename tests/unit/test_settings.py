"""Settings: every variable is documented, and invalid values name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return str(alias) if alias else f"STREAMREC_{field.upper()}"


def test_every_setting_is_documented_in_both_places() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "deploy" / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"`{env_name(field)}`" in docs, field
        assert f"#{env_name(field)}=" in example, field


def test_invalid_values_stop_startup_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_BATCH_MAX", "0")
    monkeypatch.setenv("STREAMREC_DEVICE", "tpu")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "STREAMREC_BATCH_MAX" in message and "STREAMREC_DEVICE" in message


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("STREAMREC_MODEL_DIR", "~/models")
    s = load_settings()
    assert s.kafka_bootstrap_servers == "broker:29092"
    assert s.model_dir == Path.home() / "models"
    assert s.half_life_s is None
