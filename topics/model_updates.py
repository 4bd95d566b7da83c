"""The ModelUpdate record announced on ``model-updates`` when a bundle is promoted or rolled
back (stream/model_updates.py), so that every worker swaps its served model without a restart.

The record only names a version: the bundle itself stays on the shared model directory, where
each worker verifies its checksums before serving it. A malformed record is logged and ignored
(``parse`` returns None): an announcement is a hint, and the workers' periodic check of
``CURRENT`` still converges on the promoted version.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal, cast

import orjson

log = logging.getLogger("streamrec.model_updates")

SCHEMA_VERSION = 1
MAX_BYTES = 4096
Action = Literal["promote", "rollback"]
ACTIONS: frozenset[str] = frozenset({"promote", "rollback"})
# The bundle version grammar of models/bundle.py: no path separators, so that
# ``model_dir / version`` can never leave the model directory.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ARM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """``version`` became the serving bundle under ``model_dir`` (None: whatever model
    directory each worker serves from) at ``at_ms`` (epoch milliseconds); with ``arm``, the
    version of that A/B arm only (the training agent of an arm publishes so)."""

    version: str
    model_dir: str | None
    action: Action
    at_ms: int
    arm: str | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "version": self.version,
                "model_dir": self.model_dir,
                "action": self.action,
                "at_ms": self.at_ms,
                **({"arm": self.arm} if self.arm is not None else {}),
            }
        )

    @classmethod
    def parse(cls, data: bytes | None) -> ModelUpdate | None:
        """The update in ``data``, or None (with a warning) when it is not a valid one, so that
        one bad record on the topic never stops a worker's model follower."""
        try:
            if data is None or len(data) > MAX_BYTES:
                raise ValueError("empty or oversized record")
            obj = orjson.loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            version, model_dir = obj.get("version"), obj.get("model_dir")
            action, at_ms = obj.get("action"), obj.get("at_ms")
            if not isinstance(version, str) or not _VERSION_RE.match(version):
                raise ValueError(f"invalid version {version!r}")
            if model_dir is not None and not isinstance(model_dir, str):
                raise ValueError(f"invalid model_dir {model_dir!r}")
            if action not in ACTIONS:
                raise ValueError(f"invalid action {action!r}")
            if isinstance(at_ms, bool) or not isinstance(at_ms, int):
                raise ValueError(f"invalid at_ms {at_ms!r}")
            arm = obj.get("arm")
            if arm is not None and (not isinstance(arm, str) or not _ARM_RE.match(arm)):
                raise ValueError(f"invalid arm {arm!r}")
        except (orjson.JSONDecodeError, ValueError) as exc:
            preview = (data or b"")[:200]
            log.warning("ignoring an invalid model update (%s): %r", exc, preview)
            return None
        return cls(version, model_dir, cast(Action, action), at_ms, arm)
