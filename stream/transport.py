"""Transport security: Settings -> the options of every Kafka and Redis client the project makes.

Why one module: a client built anywhere without these options would talk plaintext, or fail
to log in, only on the path that built it. So every ``AIOKafkaProducer``/``Consumer``/
``AdminClient`` takes ``**kafka_kwargs(...)``, the faust App takes ``faust_credentials()``,
and every Redis client comes from ``redis_client`` / ``sync_redis_client``. Secrets (Kafka
and Redis passwords) come from the environment or from files (``*_FILE``: a mounted secret,
read when the clients are built) and stay ``SecretStr`` until handed to the client
library; ``redact_url`` hides a password written into ``REDIS_URL`` wherever one is printed.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis
    from faust.types.auth import CredentialsT

    from stream.settings import Settings

REDACTED = "***"


def read_secret(value: SecretStr, file: Path | None) -> SecretStr:
    """The secret given inline, or the content of ``file`` with surrounding whitespace (a
    trailing newline) stripped; an empty SecretStr when neither is set."""
    if file is not None:
        return SecretStr(file.read_text().strip())
    return value


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***`` (user kept), for logs
    and messages: ``rediss://app:s3cret@host:6380/0`` -> ``rediss://app:***@host:6380/0``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
    except ValueError:  # unparsable: say nothing of it rather than leak it
        return REDACTED


def _readable(path: Path | None) -> bool:
    return path is not None and path.is_file() and os.access(path, os.R_OK)


def transport_problems(s: Settings) -> list[str]:
    """Invalid combinations of the transport settings, each message naming the variables.
    Options that would be silently ignored (credentials with PLAINTEXT, a CA with redis://)
    are refused too: a deployment that believes it is encrypted must not run in clear."""
    problems: list[str] = []
    files = {
        "STREAMREC_KAFKA_PASSWORD_FILE": s.kafka_password_file,
        "STREAMREC_KAFKA_SSL_CAFILE": s.kafka_ssl_cafile,
        "STREAMREC_KAFKA_SSL_CERTFILE": s.kafka_ssl_certfile,
        "STREAMREC_KAFKA_SSL_KEYFILE": s.kafka_ssl_keyfile,
        "STREAMREC_REDIS_PASSWORD_FILE": s.redis_password_file,
        "STREAMREC_REDIS_SSL_CAFILE": s.redis_ssl_cafile,
        "STREAMREC_REDIS_SSL_CERTFILE": s.redis_ssl_certfile,
        "STREAMREC_REDIS_SSL_KEYFILE": s.redis_ssl_keyfile,
    }
    for name, path in files.items():
        if path is not None and not _readable(path):
            problems.append(f"{name}: {path} is not a readable file")
    for service in ("KAFKA", "REDIS"):
        inline = getattr(s, f"{service.lower()}_password").get_secret_value()
        file = getattr(s, f"{service.lower()}_password_file")
        if inline and file is not None:
            problems.append(
                f"STREAMREC_{service}_PASSWORD and STREAMREC_{service}_PASSWORD_FILE are both "
                "set; set one of them"
            )
        elif file is not None and _readable(file) and not file.read_text().strip():
            problems.append(f"STREAMREC_{service}_PASSWORD_FILE: {file} is empty")
        key, cert = (getattr(s, f"{service.lower()}_ssl_{k}file") for k in ("key", "cert"))
        if key is not None and cert is None:
            problems.append(
                f"STREAMREC_{service}_SSL_KEYFILE needs STREAMREC_{service}_SSL_CERTFILE"
            )

    kafka_password = bool(s.kafka_password.get_secret_value() or s.kafka_password_file)
    protocol = s.kafka_security_protocol
    if protocol == "SASL_SSL" and not (s.kafka_username and kafka_password):
        problems.append(
            "STREAMREC_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs STREAMREC_KAFKA_USERNAME and "
            "STREAMREC_KAFKA_PASSWORD_FILE (or STREAMREC_KAFKA_PASSWORD)"
        )
    if protocol != "SASL_SSL" and (s.kafka_username or kafka_password):
        problems.append(
            f"STREAMREC_KAFKA_USERNAME/PASSWORD are set but STREAMREC_KAFKA_SECURITY_PROTOCOL "
            f"is {protocol} (they would be ignored); set it to SASL_SSL or unset them"
        )
    if protocol == "PLAINTEXT" and (
        s.kafka_ssl_cafile or s.kafka_ssl_certfile or s.kafka_ssl_keyfile
    ):
        problems.append(
            "STREAMREC_KAFKA_SSL_* files are set but STREAMREC_KAFKA_SECURITY_PROTOCOL is "
            "PLAINTEXT (they would be ignored); set it to SSL or SASL_SSL"
        )

    try:
        url = urlsplit(s.redis_url)
        url_user, url_password = url.username, url.password
    except ValueError:
        problems.append("REDIS_URL: not a valid URL")
        return problems
    redis_password = bool(s.redis_password.get_secret_value() or s.redis_password_file)
    if redis_password and url_password:
        problems.append(
            "REDIS_URL holds a password and STREAMREC_REDIS_PASSWORD(_FILE) is set too; "
            "give it once (better in the file)"
        )
    if s.redis_username and url_user:
        problems.append("REDIS_URL holds a user name and STREAMREC_REDIS_USERNAME is set too")
    if s.redis_username and not (redis_password or url_password):
        problems.append(
            "STREAMREC_REDIS_USERNAME needs STREAMREC_REDIS_PASSWORD_FILE "
            "(or STREAMREC_REDIS_PASSWORD)"
        )
    if url.scheme != "rediss" and (
        s.redis_ssl_cafile or s.redis_ssl_certfile or s.redis_ssl_keyfile
    ):
        problems.append(
            "STREAMREC_REDIS_SSL_* files are set but REDIS_URL is not rediss:// "
            "(they would be ignored and the connection would be in clear)"
        )
    return problems


# --------------------------------------------------------------------------------- Kafka


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How to reach the brokers: ``PLAINTEXT``, ``SSL`` or ``SASL_SSL`` with SCRAM. The
    password is a ``SecretStr``, so the repr of this object (and of a log line that prints
    it) shows ``**********``."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: SecretStr = field(default_factory=lambda: SecretStr(""))
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    @classmethod
    def of(cls, s: Settings) -> KafkaSecurity:
        return cls(
            protocol=s.kafka_security_protocol,
            mechanism=s.kafka_sasl_mechanism,
            username=s.kafka_username,
            password=read_secret(s.kafka_password, s.kafka_password_file),
            cafile=s.kafka_ssl_cafile,
            certfile=s.kafka_ssl_certfile,
            keyfile=s.kafka_ssl_keyfile,
        )

    @classmethod
    def from_env(cls) -> KafkaSecurity:
        """From the environment (``load_settings``): what a function that was given only a
        bootstrap string uses, so that no client is ever built without the configuration."""
        from stream.settings import load_settings

        return cls.of(load_settings())

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (hostname checked; the CA file, else the system's CAs),
        with the client certificate when one is configured; None for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return None
        context = ssl.create_default_context(
            cafile=str(self.cafile) if self.cafile is not None else None
        )
        if self.certfile is not None:
            context.load_cert_chain(
                str(self.certfile), str(self.keyfile) if self.keyfile is not None else None
            )
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {
            "security_protocol": self.protocol,
            "ssl_context": self.ssl_context(),
        }
        if self.protocol == "SASL_SSL":
            kwargs.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password.get_secret_value(),
            )
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """``faust.App(broker_credentials=...)``: faust hands these to every aiokafka client
        it makes (consumer, producer, topic creation)."""
        import faust

        if self.protocol == "PLAINTEXT":
            return None
        context = self.ssl_context()
        if self.protocol == "SSL":
            return faust.SSLCredentials(context)
        return faust.SASLCredentials(
            username=self.username,
            password=self.password.get_secret_value(),
            ssl_context=context,
            mechanism=self.mechanism,
        )

    def describe(self) -> str:
        """For logs: protocol, mechanism and user, never the password."""
        if self.protocol == "SASL_SSL":
            return f"SASL_SSL ({self.mechanism} as {self.username})"
        return self.protocol


def kafka_kwargs(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """aiokafka client options for ``security``; None: the configuration in the environment."""
    return (security if security is not None else KafkaSecurity.from_env()).client_kwargs()


# --------------------------------------------------------------------------------- Redis


def redis_kwargs(s: Settings) -> dict[str, Any]:
    """redis-py ``from_url`` options beyond the URL: the user and password (so the password
    need not be in ``REDIS_URL``) and, for ``rediss://``, the CA and the client certificate.
    Certificates are verified and the host name checked (redis-py's defaults)."""
    kwargs: dict[str, Any] = {}
    password = read_secret(s.redis_password, s.redis_password_file).get_secret_value()
    if s.redis_username:
        kwargs["username"] = s.redis_username
    if password:
        kwargs["password"] = password
    if s.redis_url.startswith("rediss://"):
        for key, path in (
            ("ssl_ca_certs", s.redis_ssl_cafile),
            ("ssl_certfile", s.redis_ssl_certfile),
            ("ssl_keyfile", s.redis_ssl_keyfile),
        ):
            if path is not None:
                kwargs[key] = str(path)
    return kwargs


def redis_client(s: Settings, **options: Any) -> aioredis.Redis:
    """The asyncio Redis client of ``REDIS_URL`` with the configured login and TLS;
    ``options`` are further redis-py options (timeouts)."""
    import redis.asyncio as aioredis

    return aioredis.from_url(s.redis_url, **redis_kwargs(s), **options)


def sync_redis_client(s: Settings, **options: Any) -> redis.Redis:
    """As ``redis_client``, blocking (command-line tools)."""
    import redis

    return redis.Redis.from_url(s.redis_url, **redis_kwargs(s), **options)


__all__ = [
    "KafkaSecurity",
    "kafka_kwargs",
    "read_secret",
    "redact_url",
    "redis_client",
    "redis_kwargs",
    "sync_redis_client",
    "transport_problems",
]
