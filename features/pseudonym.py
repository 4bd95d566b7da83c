"""Pseudonymised user ids: a keyed hash applied right after validation.

With ``STREAMREC_PSEUDONYMISE_KEY`` (or ``..._KEY_FILE``) set, the worker and the training
agent replace every event's ``user_id`` by

    hex(HMAC-SHA256(key, utf8(user_id)))[:32]     (128 bits, 32 lowercase hex characters)

before it is used for anything: Redis keys, A/B arms, trackers, ``Recommendation.user_id``
and the Kafka keys of recommendations all carry the pseudonym, never the raw id. HMAC rather
than a plain hash: without the key, nobody can confirm a guessed id (ids are often e-mail
addresses or small integers, which a plain hash would reveal by enumeration). Truncated to
128 bits: collisions need ~2^64 users. The same key gives the same pseudonym in every process,
so workers, the training agent and ``streamrec forget-user`` agree without coordination; a
downstream consumer holding the key maps a raw id to its pseudonym the same way (there is no
way back from a pseudonym without the list of raw ids). Changing the key re-keys every user:
their state and A/B arms start afresh.

Dead letters carry the raw input by design (to inspect and re-publish it); with the option on
they are redacted (``redact_dead_letter``): the record key and a JSON object's ``user_id``
become the pseudonym, and input that is not a JSON object (whose id cannot be located) loses
its raw bytes -- the letter still names its source topic, partition and offset.

Pure functions; reading the key from settings is ``stream.forget.pseudonymiser_of``.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

PSEUDONYM_HEX_CHARS = 32
REDACTED = "<redacted>"


def pseudonymise(key: bytes, user_id: str) -> str:
    """``hex(HMAC-SHA256(key, user_id))[:32]``: stable for one key, meaningless without it."""
    digest = hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_CHARS]


class Pseudonymiser:
    """``pseudonymise`` bound to one key; the key never appears in ``repr`` or logs."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a pseudonymisation key must not be empty")
        self._key = key

    def __call__(self, user_id: str) -> str:
        return pseudonymise(self._key, user_id)

    def __repr__(self) -> str:
        return "Pseudonymiser(key=***)"

    def redact_dead_letter(self, raw: bytes, key: bytes | None) -> tuple[bytes, bytes | None]:
        """``(raw, key)`` of a dead letter with no raw user id left in them.

        key: the Kafka record key (producers key events by user id): its pseudonym.
        raw: a JSON object keeps every field but ``user_id``, which becomes its pseudonym
        (``REDACTED`` when it is not a string or an integer); anything else (truncated JSON,
        invalid UTF-8, a JSON array, ...) becomes ``b""``, because an id inside it cannot be
        found reliably.
        """
        new_key = self(key.decode("utf-8", "replace")).encode() if key else key
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return b"", new_key
        if not isinstance(obj, dict):
            return b"", new_key
        if "user_id" in obj:
            uid = obj["user_id"]
            if isinstance(uid, str):
                obj["user_id"] = self(uid)
            elif isinstance(uid, int) and not isinstance(uid, bool):
                obj["user_id"] = self(str(uid))
            else:
                obj["user_id"] = REDACTED
        try:
            return orjson.dumps(obj), new_key
        except (orjson.JSONEncodeError, TypeError):  # e.g. integers beyond 64 bits
            return b"", new_key


__all__ = ["PSEUDONYM_HEX_CHARS", "REDACTED", "Pseudonymiser", "pseudonymise"]
