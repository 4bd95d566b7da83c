"""``streamrec forget-user ID``: erase one user from everything streamrec keeps about them.

Where per-user data lives, and what erases it:

- **Redis**: the user's state ``sr:{ns}:u:{id}`` and the hashes of their last applied events
  ``sr:{ns}:ev:{tag}`` (the replay check; ``user_keys`` lists every per-user key).
  Deleted by the command, and again by each worker when the request reaches it: an event of
  the user handled in between would have re-created it. Nothing else in Redis holds a user
  id: online co-visitation and trending hold item hashes summed over users, the catalogue
  holds items, cached results (``sr:{ns}:rc:*``) hold item lists under a digest of a context
  shared by every user in it (cold, or one stored item) and expire within their TTL.
- **Every worker's memory**: the user's pending recommendation list (``HitTracker``, live
  HR@K) and pending impression (``ImpressionTracker``, CTR).
- **The training agent's memory**: the user's events among the recent ones kept for the
  consistency gate, the examples not learnt yet, and the open sessions of the example builder.

How a request reaches every process: one record on the ``forget-requests`` topic (1
partition, 1 day retention), published with ``acks=all`` before the command returns. Each
worker reads it in a consumer group of its own from the end, as it does ``model-updates`` (a
worker started later has nothing of the user in memory); the training agent reads it in its
own group with its events, so a request made while it is down is applied when it comes back.
Kafka rather than a Redis key or stream: a request must name the user, and the proof that
nothing is left is a SCAN of the namespace that finds no trace of them -- a request kept in
Redis would be such a trace. The topic is one more place the (pseudonymised) id sits for a day,
next to ``user-events``, which holds it for its own retention anyway.

With ``STREAMREC_PSEUDONYMISE_KEY`` set, the command takes the raw id and pseudonymises it
itself (features/pseudonym.py), as the workers do; ``--pseudonymised`` takes the pseudonym.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from features.keys import applied_key, user_key
from features.pseudonym import Pseudonymiser
from stream.settings import ConfigError, Settings
from stream.transport import KafkaSecurity, kafka_kwargs, redis_client
from topics.names import FORGET_REQUESTS, forget_requests_topic

if TYPE_CHECKING:
    from stream.agents import BatchHandler

log = logging.getLogger("streamrec.worker")

FOLLOW_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class ForgetRequest:
    """One ``forget-requests`` record: the user as stored (the pseudonym when pseudonymisation
    is on), an id for the logs (which never name the user) and when it was made."""

    user_id: str
    request_id: str
    at_ms: int

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"user_id": self.user_id, "request_id": self.request_id, "at_ms": self.at_ms}
        )

    @classmethod
    def parse(cls, raw: bytes | None) -> ForgetRequest | None:
        """The request in ``raw``; None for anything malformed (skipped, never fatal)."""
        try:
            obj = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        user, rid, at = obj.get("user_id"), obj.get("request_id"), obj.get("at_ms")
        if not (isinstance(user, str) and user and isinstance(rid, str) and isinstance(at, int)):
            return None
        return cls(user, rid, at)


def read_key(settings: Settings) -> bytes | None:
    """The pseudonymisation key (``STREAMREC_PSEUDONYMISE_KEY`` or the file named by
    ``..._KEY_FILE``, whitespace stripped); None when the option is off. An unreadable or empty
    file stops start-up (``ConfigError``), naming the setting but never the key."""
    path = settings.pseudonymise_key_file
    if path is not None:
        try:
            text = path.expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"invalid configuration:\n  STREAMREC_PSEUDONYMISE_KEY_FILE: cannot read {path} "
                f"({type(exc).__name__})"
            ) from exc
        if not text:
            raise ConfigError(
                f"invalid configuration:\n  STREAMREC_PSEUDONYMISE_KEY_FILE: {path} is empty"
            )
        return text.encode("utf-8")
    key = settings.pseudonymise_key.get_secret_value()
    return key.encode("utf-8") if key else None


def pseudonymiser_of(settings: Settings) -> Pseudonymiser | None:
    """The pseudonymiser every process applies right after validation; None when off."""
    key = read_key(settings)
    return Pseudonymiser(key) if key is not None else None


def stored_id(settings: Settings, user_id: str, *, pseudonymised: bool = False) -> str:
    """The id under which ``user_id`` is stored: its pseudonym when the option is on (unless
    ``pseudonymised`` says it already is one), else itself."""
    pseudo = pseudonymiser_of(settings)
    if pseudo is None or pseudonymised:
        return user_id
    return pseudo(user_id)


def user_keys(namespace: str, user_id: str) -> list[str]:
    """Every Redis key that holds data of one user (``user_id`` as stored). A new per-user key
    builder in features/keys.py must be added here (tests/unit/test_forget.py checks)."""
    return [user_key(namespace, user_id), applied_key(namespace, user_id)]


async def delete_user_keys(client: aioredis.Redis, namespace: str, user_id: str) -> int:
    """Delete ``user_keys``; returns how many existed."""
    return int(await client.delete(*user_keys(namespace, user_id)))


@dataclass(slots=True)
class Forgotten:
    """What one process erased for one request (counts only: logs never name the user)."""

    redis_keys: int = 0
    hit_lists: int = 0
    impressions: int = 0
    rate_counters: int = 0

    def __str__(self) -> str:
        return (
            f"{self.redis_keys} redis keys, {self.hit_lists} pending lists, "
            f"{self.impressions} pending impressions, {self.rate_counters} rate counters"
        )


async def forget_in_worker(handler: BatchHandler, user_id: str) -> Forgotten:
    """Erase ``user_id`` (as stored) from a worker: its trackers, and its Redis keys again."""
    out = Forgotten(
        hit_lists=int(handler.tracker.forget(user_id)),
        impressions=int(handler.impressions.forget(user_id)),
    )
    if handler.traffic is not None:
        out.rate_counters = int(handler.traffic.forget_user(user_id))
    client = getattr(handler.store, "client", None)
    if client is not None:
        out.redis_keys = await delete_user_keys(client, handler.store.namespace, user_id)
    return out


async def follow_forget_requests(
    bootstrap: str,
    prefix: str,
    group: str,
    apply: Callable[[ForgetRequest], Awaitable[None]],
    kafka: dict[str, Any] | None = None,
) -> None:
    """Apply every request published on ``{prefix}forget-requests`` from now on (a consumer
    group of this process's own, from the end), forever (stream/follow.py); ``kafka``: the
    client security options, None for the configuration in the environment."""
    from stream.follow import follow_topic
    from stream.kafka_admin import create_topics

    async def on_value(value: bytes | None) -> None:
        request = ForgetRequest.parse(value)
        if request is not None:
            await apply(request)

    await follow_topic(
        forget_requests_topic(prefix),
        bootstrap=bootstrap,
        group=group,
        client_kwargs=kafka if kafka is not None else kafka_kwargs(),  # stream/transport.py
        on_value=on_value,
        what="forget requests",
        retry_s=FOLLOW_RETRY_S,
        before_start=lambda: create_topics(bootstrap, (FORGET_REQUESTS.prefixed(prefix),)),
    )


@dataclass(frozen=True, slots=True)
class ForgetOutcome:
    request: ForgetRequest
    topic: str
    redis_keys: int


async def forget_user(
    settings: Settings, user_id: str, *, pseudonymised: bool = False
) -> ForgetOutcome:
    """``streamrec forget-user``: delete the user's Redis keys, then announce the request to
    every process (acks=all); each worker deletes the keys again when the request reaches it,
    in case one of its batches re-created them meanwhile. Idempotent: run it again after a
    failure."""
    from aiokafka import AIOKafkaProducer

    from stream.kafka_admin import create_topics

    uid = stored_id(settings, user_id, pseudonymised=pseudonymised)
    request = ForgetRequest(uid, uuid.uuid4().hex, int(time.time() * 1000))
    client: Any = redis_client(settings, socket_timeout=10)
    try:
        deleted = await delete_user_keys(client, settings.namespace, uid)
    finally:
        await client.aclose()
    topic = forget_requests_topic(settings.topic_prefix)
    await create_topics(
        settings.kafka_bootstrap_servers, (FORGET_REQUESTS.prefixed(settings.topic_prefix),)
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        **KafkaSecurity.of(settings).client_kwargs(),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, request.to_bytes())
    finally:
        await producer.stop()
    return ForgetOutcome(request, topic, deleted)


__all__ = [
    "ForgetOutcome",
    "ForgetRequest",
    "Forgotten",
    "delete_user_keys",
    "follow_forget_requests",
    "forget_in_worker",
    "forget_user",
    "pseudonymiser_of",
    "read_key",
    "stored_id",
    "user_keys",
]
