"""Which rows of a micro-batch may reuse a recent result, and under which context key.

Pure functions over the batch's arrays (no I/O; ``stream.pipeline.recommend_batch`` calls
them, ``features.result_cache`` stores the lists).

What a row's list depends on (``stream.pipeline.score_inputs`` and ``rank_batch``), besides
the model version and the settings ``k`` / ``n_candidates``:

- ``recent[R]`` (model indices, 0 = padding or an unknown item): FAISS's query item, the
  co-visitation and sequential-rule candidates, session kNN and the ranker's input;
- ``user_vec[D]``: the FAISS query and the ranker's input;
- ``session_len``: session kNN and, with ``recent``, the items excluded as seen;
- the online store's answer for the row's query hashes (the session's newest items, unknown
  ones included: the online store knows items the model does not) and, for rows without a
  FAISS query, the trending items. These two change with the traffic: they are the only
  inputs a cached list can be stale in, by at most the TTL.

Nothing else about the user enters (the user id, older sessions beyond ``recent``, ...), so
two rows with equal ``recent``, ``user_vec``, ``session_len`` and query hashes get the same
list, up to that staleness. The context key is a digest of exactly those bytes, which makes a
hit correct by construction whatever the row. The policy only decides which rows are worth a
lookup: rows whose context repeats across users,

- (a) cold rows: no known recent item and no usable vector (a new user, or only items the
  model does not know): the list is trending/popular items;
- (b) short states of at most ``max_items`` stored items (1: a new user's first item event,
  keyed by that item and its event weight, which the vector carries).

A warm user's vector is a decayed sum unique to them: looking it up would never hit, and
filling it would only cost Redis memory. Rows ranked by text (searches, items only the
catalogue knows) are never cacheable: their lists depend on the query and the text index.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Stored items of a state whose context is worth caching (see (b) above).
MAX_CONTEXT_ITEMS = 1
# Bumped when what a cached list depends on changes in code (a new candidate source, ...),
# so that workers of two code versions sharing a Redis never read each other's entries.
CONTEXT_FORMAT = b"rc1"
DIGEST_BYTES = 16


def cacheable_rows(
    recent: np.ndarray,
    user_vec: np.ndarray,
    n_stored: np.ndarray,
    text_rows: np.ndarray | None,
    *,
    max_items: int = MAX_CONTEXT_ITEMS,
) -> np.ndarray:
    """``bool[B]``: rows worth a lookup (cold, or at most ``max_items`` stored items) and not
    ranked by text.

    recent:    int64[B, R]   model indices, chronological, 0 = padding or unknown
    user_vec:  float32[B, D] the vector the pipeline serves with (``build_arrays``)
    n_stored:  int64[B]      recent item hashes stored in each state (known or not)
    text_rows: int64[T]      rows ranked by text (``TextRows.rows``), or None
    """
    cold = ~recent.any(axis=1) & ~user_vec.any(axis=1)
    ok = cold | (n_stored <= max_items)
    if text_rows is not None and text_rows.size:
        ok[text_rows] = False
    return np.asarray(ok, dtype=bool)


def context_salt(*, k: int, n_candidates: int, online: bool) -> bytes:
    """The settings a list depends on besides the model version (which is in the key itself):
    rows served with another ``k``, candidate count or without the online store never share
    an entry."""
    return CONTEXT_FORMAT + np.array([k, n_candidates, int(online)], dtype="<i8").tobytes()


def context_digests(
    rows: np.ndarray,
    recent: np.ndarray,
    user_vec: np.ndarray,
    session_len: np.ndarray,
    queries: np.ndarray,
    salt: bytes,
) -> list[str]:
    """Hex digest (``DIGEST_BYTES``) of each of ``rows``' inputs: one per row, equal exactly
    when the rows' lists are equal (up to the online store's staleness).

    rows:        int64[H]       rows to key (``cacheable_rows``)
    recent:      int64[B, R]
    user_vec:    float32[B, D]
    session_len: int64[B]
    queries:     uint64[B, Q]   the online store's query hashes of each row (0 = none; Q = 0
                                without the online store)
    """
    if rows.size == 0:
        return []
    parts = [
        np.ascontiguousarray(recent[rows], dtype="<i8").view(np.uint8),
        np.ascontiguousarray(user_vec[rows], dtype="<f4").view(np.uint8),
        np.ascontiguousarray(session_len[rows, None], dtype="<i8").view(np.uint8),
        np.ascontiguousarray(queries[rows], dtype="<u8").view(np.uint8),
    ]
    matrix = np.ascontiguousarray(np.concatenate(parts, axis=1))
    return [hashlib.blake2b(salt + row.tobytes(), digest_size=DIGEST_BYTES).hexdigest()
            for row in matrix]  # fmt: skip
