"""Every setting, read from the environment in one place (pydantic-settings).

Names are listed with defaults in deploy/.env.example and docs/configuration.md. An invalid
value stops start-up with a message naming the setting (``load_settings``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".cache" / "streamrec"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    # Transport security and logins (stream/transport.py, docs/security.md "Transport and
    # authentication"). Passwords are SecretStr (masked in repr); the *_file forms read a
    # mounted secret instead. Which combinations are valid: transport.transport_problems.
    kafka_security_protocol: str = Field("PLAINTEXT", pattern=r"^(PLAINTEXT|SSL|SASL_SSL)$")
    kafka_sasl_mechanism: str = Field("SCRAM-SHA-512", pattern=r"^SCRAM-SHA-(512|256)$")
    kafka_username: str = ""
    kafka_password: SecretStr = SecretStr("")
    kafka_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    redis_username: str = ""
    redis_password: SecretStr = SecretStr("")
    redis_password_file: Path | None = None
    redis_ssl_cafile: Path | None = None
    redis_ssl_certfile: Path | None = None
    redis_ssl_keyfile: Path | None = None

    # Kafka topic names allow letters, digits, . _ - only: a bad prefix fails here, not at the
    # first topic creation.
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")
    namespace: str = Field("prod", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    group_id: str = "streamrec-worker"
    # Delivery semantics (docs/reliability.md "Delivery semantics"): at_least_once, or
    # exactly_once (each batch's outputs and offsets in one Kafka transaction, stream/app.py).
    processing_guarantee: str = Field("at_least_once", pattern=r"^(at_least_once|exactly_once)$")
    model_dir: Path = DEFAULT_HOME / "models"

    batch_max: int = Field(64, ge=1, le=10_000)
    batch_wait_ms: float = Field(5.0, gt=0, le=60_000)
    # Trigger -> publish budget (stream/batcher.py): a batch also closes when waiting longer
    # would make its oldest event (Kafka timestamp) miss it, given the batch's estimated
    # processing time; batch_wait_ms stays the longest wait. 0 (default, off): size or
    # batch_wait_ms only -- on the 2-core bench a 25 ms budget made p99 worse (smaller
    # batches; bench/throughput.py --latency-budget-ms), so it is opt-in for now.
    latency_budget_ms: float = Field(0.0, ge=0, le=60_000)
    top_k: int = Field(20, ge=1, le=1000)
    candidates: int = Field(100, ge=1, le=10_000)

    state_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    # None: use the half-life recorded in the model bundle at training time.
    half_life_s: float | None = Field(None, ge=0)
    max_recent: int = Field(20, ge=1, le=255)
    # Online co-visitation and trending in Redis, learnt from every batch.
    online_covisit: bool = True
    # Guarded updates (stream/guard.py): roll back a new version whose live HR@K falls more
    # than guard_margin below the version it replaced, judged on guard_min_judged outcomes
    # each (sliding windows of guard_window). A negative margin disables the guard.
    guard_margin: float = Field(0.02, le=1)
    guard_min_judged: int = Field(500, ge=1)
    guard_window: int = Field(2000, ge=1)
    # A/B between pinned versions: "A=VERSION:WEIGHT,B=VERSION:WEIGHT" (models/ab.py); empty:
    # serve the current version to everyone. The salt reshuffles users between arms.
    ab_arms: str = ""
    ab_salt: str = "streamrec-ab"

    # The training agent (`streamrec train-agent`, stream/train_agent.py): its own consumer
    # group on the events topic; a candidate every train_publish_examples new examples or
    # train_publish_s seconds (whichever first, given train_min_examples), gated, promoted.
    train_group_id: str = "streamrec-trainer"
    train_chunk: int = Field(256, ge=1, le=100_000)
    train_publish_examples: int = Field(20_000, ge=1)
    train_publish_s: float = Field(600.0, gt=0, le=7 * 86_400)
    train_min_examples: int = Field(500, ge=1)
    train_gate_events: int = Field(5000, ge=100, le=1_000_000)
    train_lr: float = Field(5e-4, gt=0, le=1)
    train_threads: int = Field(1, ge=1, le=256)
    # Learn only from the users of this A/B arm (per-arm training data) and publish to it.
    train_arm: str = Field("", pattern=r"^[A-Za-z0-9_-]*$")
    train_metrics_port: int = Field(9109, ge=0, le=65535)
    # Gates for promotion (models/gates.py GateConfig), used by the agent and `models promote`.
    gate_max_hr_drop: float = Field(0.01, ge=0, le=1)
    gate_max_mrr_drop: float = Field(0.01, ge=0, le=1)
    gate_min_overlap: float = Field(0.3, ge=0, le=1)
    gate_max_score_drift: float = Field(0.35, ge=0, le=1)

    # Search and item cold start (docs/architecture.md, "Search").
    text_encoder: str = Field("minilm", pattern=r"^(minilm|none)$")
    search_personal_weight: float = Field(0.1, ge=0, le=100)
    search_candidates: int = Field(100, ge=1, le=10_000)
    search_query_cache: int = Field(10_000, ge=0, le=10_000_000)
    catalogue_sync_s: float = Field(1.0, gt=0, le=3600)
    # Hot swap (docs/architecture.md, "Model updates"): how often a worker checks CURRENT in
    # the model directory besides following the model-updates topic; 0 disables the check.
    model_poll_s: float = Field(5.0, ge=0, le=86_400)
    # Hot-result cache (stream/result_cache_policy.py): lists of repeated contexts (cold
    # users, first items) reused for this long; bounds their staleness. 0 (default): no
    # cache -- on DIGINETICA-like traffic at ~1k events/s it saved nothing (bench/cache.py).
    result_cache_ttl_ms: int = Field(0, ge=0, le=3_600_000)
    # Privacy (docs/security.md): user ids become HMAC-SHA256(key, id)[:32 hex] right after
    # validation (features/pseudonym.py), in workers, the training agent and forget-user alike.
    # Empty key and no file: off. Set at most one of the two.
    pseudonymise_key: SecretStr = SecretStr("")
    pseudonymise_key_file: Path | None = None

    max_event_bytes: int = Field(16_384, ge=256)
    # Input limits (topics/events.py Limits): longer queries and longer shown_items /
    # query_tokens lists are dead-lettered; so are timestamps this far ahead of the worker's
    # clock (0: only the fixed year-3000 bound).
    max_query_chars: int = Field(512, ge=1, le=100_000)
    max_items_per_event: int = Field(200, ge=1, le=100_000)
    max_event_future_s: float = Field(86_400.0, ge=0)
    # Traffic anomalies (features/traffic.py): a user, session or item with more events than
    # this in a sliding minute (event time) is flagged: answered with a non-personalised list
    # and kept out of state, online co-visitation, trending and training. 0 = off.
    anomaly_user_events_per_min: int = Field(120, ge=0)
    anomaly_session_events_per_min: int = Field(120, ge=0)
    anomaly_item_events_per_min: int = Field(3000, ge=0)
    # Keys tracked per kind (least recently seen forgotten first): bounds the detector's memory.
    anomaly_max_keys: int = Field(50_000, ge=1, le=10_000_000)
    metrics_port: int = Field(9108, ge=0, le=65535)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # text: one human line per record; json: one JSON object per line (stream/logs.py).
    log_format: str = Field("text", pattern=r"^(text|json)$")
    auto_offset_reset: str = Field("earliest", pattern=r"^(earliest|latest)$")

    @field_validator("model_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        """redis-py accepts only these schemes; checked here so the worker does not start,
        report itself live and fail at its first batch."""
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_list(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",")]
        if not all(hosts) or any(":" in h and not h.rsplit(":", 1)[1].isdigit() for h in hosts):
            raise ValueError("expected host[:port] entries separated by commas")
        return value

    @field_validator("ab_arms")
    @classmethod
    def _ab_arms_parse(cls, value: str) -> str:
        """The A/B spec is parsed when the serving agent starts; parse it now so that a typo
        stops start-up naming the setting instead of crashing the agent later."""
        if value.strip():
            from models.ab import ABSplit

            ABSplit.parse(value)  # ValueError says which arm is malformed
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Problems of several settings together; each message names them (``ConfigError``
        prints a message whose location is the whole model as is)."""
        problems = []
        if self.train_arm:
            arms = set()
            if self.ab_arms.strip():
                from models.ab import ABSplit

                arms = {a.name for a in ABSplit.parse(self.ab_arms).arms}
            if self.train_arm not in arms:
                problems.append(
                    f"STREAMREC_TRAIN_ARM: {self.train_arm!r} is not an arm of "
                    f"STREAMREC_AB_ARMS ({', '.join(sorted(arms)) or 'empty'})"
                )
        if self.guard_margin >= 0 and self.guard_min_judged > self.guard_window:
            problems.append(
                f"STREAMREC_GUARD_MIN_JUDGED: {self.guard_min_judged} outcomes can never fit "
                f"the STREAMREC_GUARD_WINDOW of {self.guard_window} (the guard would never "
                "decide); lower it or raise the window"
            )
        if self.pseudonymise_key.get_secret_value() and self.pseudonymise_key_file is not None:
            problems.append(
                "STREAMREC_PSEUDONYMISE_KEY and STREAMREC_PSEUDONYMISE_KEY_FILE are both set; "
                "set one of them"
            )
        from stream.transport import transport_problems

        problems.extend(transport_problems(self))
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


class ConfigError(SystemExit):
    """Start-up stops here: the message names each invalid setting."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            if not name:  # a model validator: its message names the settings itself
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            env = (
                name.upper()
                if name.upper() in {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}
                else (f"STREAMREC_{name.upper()}")
            )
            got = err.get("input")
            if name.lower() == "redis_url" or "password" in name:  # never echo a secret
                from stream.transport import redact_url

                got = redact_url(str(got)) if name.lower() == "redis_url" else "***"
            problems.append(f"{env}: {err['msg']} (got {got!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from exc
