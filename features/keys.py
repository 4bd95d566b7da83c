"""Redis key builders and stable 64-bit hashes of item and session ids.

Key layout (also in docs/state-format.md):

    sr:{namespace}:u:{user_id}     user state, binary (features/user_state.py), with a TTL
    sr:{namespace}:ev:{tag}        hashes of the user's last applied events (replay check),
                                   same TTL; ``{tag}`` is a Redis Cluster hash tag that puts
                                   it in the user state's slot (``applied_key``)

``namespace`` isolates pipelines that share one Redis (a replay never touches production
state). Item and session ids are stored as 8-byte hashes so that state stays small and
independent of any model's item index: a new model version maps the same hashes to its own
indices.
"""

from __future__ import annotations

import binascii
import hashlib
from functools import lru_cache

import numpy as np

HASH_BYTES = 8
CLUSTER_SLOTS = 16384


def user_key(namespace: str, user_id: str) -> str:
    return f"sr:{namespace}:u:{user_id}"


def slot_string(key: str) -> str:
    """What Redis Cluster hashes of ``key``: the text between the first ``{`` and the next
    ``}`` when that is not empty (a hash tag), else the whole key. ``{`` and ``}`` are ASCII,
    so finding them in the ``str`` finds them in its UTF-8 bytes."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def hash_slot(key: str) -> int:
    """Redis Cluster slot of ``key`` (``CLUSTER KEYSLOT``): CRC16-XMODEM of its slot string
    modulo 16384; ``binascii.crc_hqx(data, 0)`` is that CRC."""
    return binascii.crc_hqx(slot_string(key).encode("utf-8"), 0) % CLUSTER_SLOTS


@lru_cache(maxsize=CLUSTER_SLOTS)
def _tag_of_slot(slot: int) -> str:
    """The smallest decimal number whose slot is ``slot`` (every slot has one below 10^6)."""
    n = 0
    while binascii.crc_hqx(str(n).encode(), 0) % CLUSTER_SLOTS != slot:
        n += 1
    return str(n)


def applied_key(namespace: str, user_id: str) -> str:
    """Key of the hashes of ``user_id``'s last applied events: ``sr:{namespace}:ev:{tag}``.

    The state script reads and writes it together with ``user_key`` in one call, so both
    must live in one Redis Cluster slot. Its hash tag is therefore the user key's own slot
    string (the user key itself, unless the user id holds a tag), which keeps the key
    readable; when that string contains ``}`` (user ids with braces) and so cannot be a tag,
    the tag is a number picked to hash to the same slot instead."""
    state = user_key(namespace, user_id)
    tag = slot_string(state)
    if "}" in tag:
        tag = _tag_of_slot(hash_slot(state))
    return f"sr:{namespace}:ev:{{{tag}}}"


def id_hash(value: str) -> bytes:
    """8-byte blake2b digest of an id (item or session): stable across processes and hosts."""
    return hashlib.blake2b(value.encode("utf-8"), digest_size=HASH_BYTES).digest()


def hashes_to_u64(hashes: list[bytes]) -> np.ndarray:
    """Pack 8-byte hashes into a ``uint64[N]`` array (little-endian) for vectorised lookup."""
    if not hashes:
        return np.zeros(0, dtype=np.uint64)
    return np.frombuffer(b"".join(hashes), dtype="<u8").astype(np.uint64)


def item_hashes_u64(item_ids: list[str]) -> np.ndarray:
    """``uint64[N]`` hashes of ``item_ids``; what a model bundle indexes its catalogue by."""
    return hashes_to_u64([id_hash(i) for i in item_ids])
