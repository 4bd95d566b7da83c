"""Kafka over SASL_SSL (SCRAM-SHA-512) and Redis with TLS and an ACL user, for real.

A module fixture makes throwaway certificates (deploy/local/certs.sh), starts a broker with
``kafka.sh`` in ``sasl_ssl`` mode and a redis-server with ``redis.sh`` in ``tls`` mode on
ports of their own (STREAMREC_TEST_SECURE_KAFKA_PORT / _REDIS_PORT, default 19392 / 16579),
and stops both at the end. A real worker configured that way answers events produced over
SASL_SSL and keeps its state in the TLS Redis; the wrong password, plaintext, an unverified
certificate, Redis's default user and keys outside ``sr:*`` are all refused; neither password
appears in the worker's log.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr

from stream.replay import collect, produce
from stream.services import LOCAL
from stream.settings import load_settings
from stream.transport import KafkaSecurity, redis_client
from tests.integration.harness import Services, WorkerProcess, wait_until
from topics.events import UserEvent

KAFKA_PORT = int(os.environ.get("STREAMREC_TEST_SECURE_KAFKA_PORT", "19392"))
REDIS_PORT = int(os.environ.get("STREAMREC_TEST_SECURE_REDIS_PORT", "16579"))
USER = "streamrec"


@dataclass(frozen=True)
class Secure:
    """The running secure services and what a client needs to reach them."""

    certs: Path
    kafka_password: str
    redis_password: str
    client_env: dict[str, str]  # the worker's transport settings (passwords as files)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{KAFKA_PORT}"

    @property
    def redis_url(self) -> str:
        return f"rediss://127.0.0.1:{REDIS_PORT}/0"

    def kafka(self, password: str | None = None, cafile: Path | None = None) -> KafkaSecurity:
        return KafkaSecurity(
            "SASL_SSL",
            username=USER,
            password=SecretStr(self.kafka_password if password is None else password),
            cafile=cafile or self.certs / "ca.pem",
        )


def _script(name: str, action: str, env: dict[str, str]) -> None:
    subprocess.run([str(LOCAL / f"{name}.sh"), action], env=env, check=True, timeout=240)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("secure")
    certs = root / "certs"
    subprocess.run([str(LOCAL / "certs.sh"), str(certs)], check=True, timeout=60)
    # Hex: no character the SCRAM format command or a URL would need to quote.
    kafka_password, admin_password, redis_password = (secrets.token_hex(16) for _ in range(3))
    files = {}
    for name, value in (
        ("kafka", kafka_password),
        ("admin", admin_password),
        ("redis", redis_password),
    ):
        files[name] = root / f"{name}.password"
        files[name].write_text(value + "\n")  # a trailing newline, as editors write it
        files[name].chmod(0o600)
    client_env = {
        "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMREC_KAFKA_USERNAME": USER,
        "STREAMREC_KAFKA_PASSWORD_FILE": str(files["kafka"]),
        "STREAMREC_KAFKA_SSL_CAFILE": str(certs / "ca.pem"),
        "STREAMREC_REDIS_USERNAME": USER,
        "STREAMREC_REDIS_PASSWORD_FILE": str(files["redis"]),
        "STREAMREC_REDIS_SSL_CAFILE": str(certs / "ca.pem"),
    }
    env = dict(
        os.environ,
        **client_env,
        STREAMREC_KAFKA_PORT=str(KAFKA_PORT),
        STREAMREC_KAFKA_SECURITY="sasl_ssl",
        STREAMREC_KAFKA_SSL_KEYSTORE=str(certs / "server.p12"),
        STREAMREC_KAFKA_SSL_KEYSTORE_PASSWORD_FILE=str(certs / "server.p12.password"),
        STREAMREC_KAFKA_ADMIN_PASSWORD_FILE=str(files["admin"]),
        STREAMREC_REDIS_PORT=str(REDIS_PORT),
        STREAMREC_REDIS_SECURITY="tls",
        STREAMREC_REDIS_TLS_CERT_FILE=str(certs / "server.pem"),
        STREAMREC_REDIS_TLS_KEY_FILE=str(certs / "server.key"),
    )
    _script("kafka", "wipe", env)  # SCRAM users are created when the data dir is formatted
    _script("redis", "stop", env)
    try:
        _script("kafka", "start", env)
        _script("redis", "start", env)
        yield Secure(certs, kafka_password, redis_password, client_env)
    finally:
        _script("redis", "stop", env)
        _script("kafka", "wipe", env)


async def test_worker_serves_over_sasl_ssl_and_tls_redis(
    secure: Secure,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    worker = WorkerProcess(
        Services(secure.bootstrap, secure.redis_url), model_dir, tmp_path,
        extra_env=secure.client_env,
    )  # fmt: skip
    worker.start()
    try:
        events = diginetica[1][:60]
        topic, recs_topic, dead_topic = worker.topics
        kafka = secure.kafka()
        messages = [(e.user_id.encode(), e.to_bytes()) for e in events]
        await produce(secure.bootstrap, topic, messages, security=kafka)
        got = await collect(
            secure.bootstrap, recs_topic, dead_topic, expect=len(events), timeout_s=120,
            security=kafka,
        )  # fmt: skip
        assert worker.alive(), worker.log_tail()
        assert set(got.recommendations) == {e.event_id for e in events}, worker.log_tail()
        assert got.dead_letters == []
        print(f"\nsecure: {len(events)} events over SASL_SSL -> {len(got.recommendations)} recs")

        # The state went to the TLS Redis under the worker's namespace.
        settings = load_settings(REDIS_URL=secure.redis_url, **_settings_of(secure.client_env))
        client = redis_client(settings)
        try:
            keys = [k async for k in client.scan_iter(match=f"sr:{worker.namespace}:*")]
        finally:
            await client.aclose()
        assert keys, "no state written to the TLS Redis"
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "SASL_SSL (SCRAM-SHA-512 as streamrec)" in log  # the start-up line says how
    assert secure.kafka_password not in log and secure.redis_password not in log


def _settings_of(env: dict[str, str]) -> dict[str, str]:
    """Settings field names of STREAMREC_* variables (for ``load_settings(**...)``)."""
    return {k.removeprefix("STREAMREC_").lower(): v for k, v in env.items()}


async def test_worker_with_a_wrong_kafka_password_stops_saying_why(
    secure: Secure, model_dir: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-" + secrets.token_hex(4))
    worker = WorkerProcess(
        Services(secure.bootstrap, secure.redis_url), model_dir, tmp_path,
        extra_env={**secure.client_env, "STREAMREC_KAFKA_PASSWORD_FILE": str(wrong)},
    )  # fmt: skip
    worker.start()
    try:
        assert await asyncio.to_thread(wait_until, lambda: not worker.alive(), 180)
        assert worker.proc is not None and worker.proc.returncode != 0
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "Authentication failed" in log, log[-2000:]  # aiokafka's reason
    assert "cannot connect to Kafka at" in log and "as SASL_SSL (SCRAM-SHA-512 as streamrec)" in log
    assert wrong.read_text() not in log and secure.kafka_password not in log


async def _refused(kwargs: dict[str, object], bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kwargs)
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(producer.start(), 60)
    finally:
        await producer.stop()


async def test_kafka_refuses_wrong_password_plaintext_and_unverified_tls(secure: Secure) -> None:
    await _refused(secure.kafka(password="wrong").client_kwargs(), secure.bootstrap)
    await _refused({}, secure.bootstrap)  # PLAINTEXT on the SASL_SSL port
    # The system CAs do not vouch for the throwaway CA: certificates are verified.
    system_cas = KafkaSecurity("SASL_SSL", username=USER, password=SecretStr(secure.kafka_password))
    await _refused(system_cas.client_kwargs(), secure.bootstrap)
    # ...and the right settings are let in.
    producer = AIOKafkaProducer(
        bootstrap_servers=secure.bootstrap, **secure.kafka().client_kwargs()
    )
    await producer.start()
    await producer.stop()


def test_redis_refuses_plaintext_and_the_default_user(secure: Secure) -> None:
    ca = str(secure.certs / "ca.pem")
    plain = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain.ping()
    anonymous = redis.Redis.from_url(secure.redis_url, ssl_ca_certs=ca, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    as_default = redis.Redis.from_url(
        secure.redis_url, ssl_ca_certs=ca, username="default", password=secure.redis_password
    )
    with pytest.raises(redis.AuthenticationError):
        as_default.ping()
    wrong = redis.Redis.from_url(secure.redis_url, ssl_ca_certs=ca, username=USER, password="x")
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


def test_redis_acl_user_is_confined_to_sr_keys_and_data_commands(secure: Secure) -> None:
    from stream.transport import sync_redis_client

    settings = load_settings(REDIS_URL=secure.redis_url, **_settings_of(secure.client_env))
    client = sync_redis_client(settings, socket_timeout=5)
    try:
        assert client.set("sr:acl-test:x", "1") and client.get("sr:acl-test:x") == b"1"
        assert client.delete("sr:acl-test:x") == 1
        for refused in (
            lambda: client.set("other:x", "1"),
            lambda: client.get("user:1"),
            lambda: client.flushall(),
            lambda: client.config_get("*"),
            lambda: client.keys("*"),
            lambda: client.acl_list(),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
    finally:
        client.close()
