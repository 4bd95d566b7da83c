"""Follow a control topic from its end, forever: the loop behind every process's
``model-updates`` and ``forget-requests`` consumers.

Each process reads the topic in a consumer group of its own (so every process gets every
record), from the latest offset (what was published before it started is covered otherwise:
``CURRENT`` on disk, Redis keys deleted by the command itself). A consumer that fails is
stopped and a new one started after ``retry_s``; cancellation stops it for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

log = logging.getLogger("streamrec.worker")


async def follow_topic(
    topic: str,
    *,
    bootstrap: str,
    group: str,
    client_kwargs: dict[str, Any],
    on_value: Callable[[bytes | None], Awaitable[None]],
    what: str,
    retry_s: float = 5.0,
    before_start: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Call ``on_value`` with each record's value published on ``topic`` from now on.

    ``client_kwargs``: the aiokafka security options (stream/transport.py). ``what`` names the
    records in log lines. ``before_start`` runs before each consumer starts (e.g. creating the
    topic: a consumer subscribed to a missing topic sees it only at its next metadata
    refresh)."""
    while True:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="latest",
            enable_auto_commit=True,
            **client_kwargs,
        )
        try:
            if before_start is not None:
                await before_start()
            await consumer.start()
            following = False
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                if not following and consumer.assignment():
                    following = True
                    log.info("following %s on %s as %s", what, topic, group)
                for records in batch.values():
                    for record in records:
                        await on_value(record.value)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s consumer failed; retrying in %.0fs", what, retry_s)
            await asyncio.sleep(retry_s)
        finally:
            await consumer.stop()
