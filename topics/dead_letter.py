"""The DeadLetter record published to ``dead-letters`` for input that failed validation.

The raw bytes are kept (base64) with the source coordinates, so an operator can inspect,
fix and re-publish a message; nothing bad is silently dropped.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA_VERSION = 1


@dataclass(slots=True)
class DeadLetter:
    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    raw: bytes
    failed_at_ms: int
    key: bytes | None = None
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "schema_version": self.schema_version,
                "reason": self.reason,
                "detail": self.detail,
                "source_topic": self.source_topic,
                "partition": self.partition,
                "offset": self.offset,
                "raw_b64": base64.b64encode(self.raw).decode("ascii"),
                "key_b64": base64.b64encode(self.key).decode("ascii") if self.key else None,
                "failed_at_ms": self.failed_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetter:
        obj: dict[str, Any] = orjson.loads(data)
        key = obj.get("key_b64")
        return cls(
            reason=obj["reason"],
            detail=obj["detail"],
            source_topic=obj["source_topic"],
            partition=obj["partition"],
            offset=obj["offset"],
            raw=base64.b64decode(obj["raw_b64"]),
            failed_at_ms=obj["failed_at_ms"],
            key=base64.b64decode(key) if key else None,
            schema_version=obj.get("schema_version", SCHEMA_VERSION),
        )
