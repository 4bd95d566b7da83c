"""Redis key builders and stable 64-bit hashes of item and session ids.

Key layout (also in docs/state-format.md):

    sr:{namespace}:u:{user_id}     user state, binary (features/user_state.py), with a TTL

``namespace`` isolates pipelines that share one Redis (a replay never touches production
state). Item and session ids are stored as 8-byte hashes so that state stays small and
independent of any model's item index: a new model version maps the same hashes to its own
indices.
"""

from __future__ import annotations

import hashlib

import numpy as np

HASH_BYTES = 8


def user_key(namespace: str, user_id: str) -> str:
    return f"sr:{namespace}:u:{user_id}"


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
