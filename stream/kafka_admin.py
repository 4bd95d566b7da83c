"""Thin aiokafka adapter for topic administration (``streamrec topics create``)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream.transport import KafkaSecurity, kafka_kwargs
from topics.names import TopicSpec


async def create_topics(
    bootstrap: str, specs: tuple[TopicSpec, ...], *, security: KafkaSecurity | None = None
) -> list[str]:
    """Create each topic that does not exist yet; return the names created. ``security``
    None: the configuration in the environment (stream/transport.py), as for every client.
    This is the worker's first connection: a refused login or certificate stops start-up with
    a message saying how it connected (protocol, mechanism, user; never the password)."""
    security = security if security is not None else KafkaSecurity.from_env()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15_000, **kafka_kwargs(security)
    )
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise RuntimeError(
            f"cannot connect to Kafka at {bootstrap} as {security.describe()}: {exc} "
            "(the log line above says why: authentication, certificate or network)"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(s.retention_ms)},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile
                await admin.create_topics(new)
        # Metadata propagates asynchronously; wait until every topic is listed.
        for _ in range(50):
            if {s.name for s in specs} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        return [t.name for t in new]
    except KafkaError as exc:
        raise RuntimeError(f"cannot create topics on {bootstrap}: {exc}") from exc
    finally:
        await admin.close()


async def delete_topics(
    bootstrap: str, names: list[str], *, security: KafkaSecurity | None = None
) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15_000, **kafka_kwargs(security)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
