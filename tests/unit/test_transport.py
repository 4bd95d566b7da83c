"""Transport settings (stream/transport.py): valid combinations, client options, no leaks."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import faust
import pytest

from stream.settings import ConfigError, load_settings
from stream.transport import KafkaSecurity, redact_url, redis_kwargs

SECRET = "s3cret-Pa55"


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A password file (with the trailing newline editors add) and a CA file."""
    password = tmp_path / "password"
    password.write_text(SECRET + "\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed by the settings check\n")
    return {"password": password, "ca": ca, "empty": _empty(tmp_path)}


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty"
    path.write_text("\n")
    return path


def _problems(**env: object) -> str:
    with pytest.raises(ConfigError) as exc:
        load_settings(**env)
    return str(exc.value)


def test_defaults_are_plaintext_with_no_client_options() -> None:
    s = load_settings()
    assert KafkaSecurity.of(s).client_kwargs() == {}
    assert KafkaSecurity.of(s).faust_credentials() is None
    assert redis_kwargs(s) == {}


def test_sasl_ssl_from_a_password_file(files: dict[str, Path]) -> None:
    s = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_username="app",
        kafka_password_file=files["password"],
    )
    security = KafkaSecurity.of(s)
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "app"
    assert kwargs["sasl_plain_password"] == SECRET  # newline stripped
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    creds = security.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert (creds.username, creds.password) == ("app", SECRET)
    # Masked wherever the object or the settings are printed.
    assert SECRET not in repr(security) and SECRET not in str(security)
    assert SECRET not in repr(load_settings(kafka_password=SECRET, kafka_username="app",
                                            kafka_security_protocol="SASL_SSL"))  # fmt: skip
    assert security.describe() == "SASL_SSL (SCRAM-SHA-512 as app)"


def test_ssl_only_gives_ssl_credentials() -> None:
    security = KafkaSecurity.of(load_settings(kafka_security_protocol="SSL"))
    assert set(security.client_kwargs()) == {"security_protocol", "ssl_context"}
    assert isinstance(security.faust_credentials(), faust.SSLCredentials)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "STREAMREC_KAFKA_USERNAME"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_username": "a"}, "PASSWORD_FILE"),
        ({"kafka_username": "a", "kafka_password": "p"}, "STREAMREC_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_ssl_cafile": "CA"}, "STREAMREC_KAFKA_SSL_* files are set"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent"},
         "STREAMREC_KAFKA_SSL_CAFILE: /nonexistent is not a readable file"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "CA"},
         "STREAMREC_KAFKA_SSL_KEYFILE needs STREAMREC_KAFKA_SSL_CERTFILE"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_username": "a",
          "kafka_password": "p", "kafka_password_file": "PW"}, "are both set"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_username": "a",
          "kafka_password_file": "EMPTY"}, "STREAMREC_KAFKA_PASSWORD_FILE"),
        ({"kafka_security_protocol": "TLS"}, "STREAMREC_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "STREAMREC_KAFKA_SASL_MECHANISM"),
        ({"redis_ssl_cafile": "CA"}, "REDIS_URL is not rediss://"),
        ({"redis_username": "app"}, "STREAMREC_REDIS_USERNAME needs"),
        ({"REDIS_URL": "redis://u:p@h:6379/0", "redis_password": "q"}, "give it once"),
        ({"redis_password_file": "/nonexistent"}, "STREAMREC_REDIS_PASSWORD_FILE"),
    ],
)  # fmt: skip
def test_invalid_combinations_stop_start_up_naming_the_setting(
    env: dict[str, str], named: str, files: dict[str, Path]
) -> None:
    paths = {"CA": files["ca"], "PW": files["password"], "EMPTY": files["empty"]}
    values = {k: paths.get(v, v) for k, v in env.items()}
    assert named in _problems(**values)


def test_redis_login_and_tls_options(files: dict[str, Path]) -> None:
    s = load_settings(
        REDIS_URL="rediss://redis.internal:6380/0",
        redis_username="app",
        redis_password_file=files["password"],
        redis_ssl_cafile=files["ca"],
    )
    assert redis_kwargs(s) == {
        "username": "app",
        "password": SECRET,
        "ssl_ca_certs": str(files["ca"]),
    }
    assert SECRET not in repr(s)


def test_redact_url() -> None:
    assert redact_url("rediss://app:pw@h:6380/0") == "rediss://app:***@h:6380/0"
    assert redact_url("redis://:pw@h/0") == "redis://:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("redis://u@h:6379/0") == "redis://u@h:6379/0"


def test_errors_never_echo_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected REDIS_URL is shown redacted; transport problems name settings, not values."""
    monkeypatch.setenv("REDIS_URL", f"redis+bad://app:{SECRET}@h:6379/0")
    message = _problems()
    assert "REDIS_URL" in message and "app:***@h" in message and SECRET not in message
    monkeypatch.delenv("REDIS_URL")
    message = _problems(kafka_password=SECRET)  # a password with PLAINTEXT
    assert "STREAMREC_KAFKA_SECURITY_PROTOCOL" in message and SECRET not in message


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) in names or getattr(node.func, "attr", None) in names)
    ]


def test_every_client_of_the_project_takes_the_transport_settings() -> None:
    """A Kafka client built without ``**kafka_kwargs(...)`` / ``**...client_kwargs()`` would
    connect in clear (or fail to log in) on that path only; a Redis client must come from
    ``redis_client`` so it gets the user, password and CA; faust gets broker_credentials."""
    root = Path(__file__).resolve().parents[2] / "stream"
    kafka = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
    seen = 0
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for call in _calls(tree, kafka):
            seen += 1
            spread = [ast.unparse(k.value) for k in call.keywords if k.arg is None]
            assert any("kafka_kwargs" in s or "client_kwargs" in s for s in spread), (
                f"{path.name}:{call.lineno}: {ast.unparse(call.func)} without transport settings"
            )
        if path.name != "transport.py":
            assert not _calls(tree, {"from_url"}), f"{path.name}: use stream.transport.redis_client"
        for call in _calls(tree, {"App"}):
            assert "broker_credentials" in {k.arg for k in call.keywords}, path.name
    assert seen >= 10  # the walk found the clients (app, replay, admin, agent, forget, ...)
