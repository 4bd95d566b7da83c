"""A learned encoder for searches that carry only hashed token ids (DIGINETICA's queries are
token ids, not words), behind the same ``TextEncoder`` interface as MiniLM.

MiniLM cannot read hashed tokens, and such datasets have no titles either, so there is no text
space to search. Instead each token is embedded in the *model bundle's item space*: its vector
is the normalised sum of the unit embeddings of the items viewed right after searches that
contained it (a centroid of what people looked for with that word). A query is the normalised
mean of its known tokens' vectors and is searched in the bundle's FAISS item index. Fitted with
numpy at training time (``stream/train_job.py``), shipped in the bundle (``tokens.npz``).

``encode`` takes texts of space-separated token ids (how ``TextSearch`` hands over
``query_tokens``); unknown tokens are ignored and a query without a known token is a zero row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOKENS_FILE = "tokens.npz"


class TokenEncoder:
    """``tokens`` int64[T] ascending, ``vectors`` float32[T, D] unit rows (``TextEncoder``)."""

    def __init__(self, tokens: np.ndarray, vectors: np.ndarray) -> None:
        if tokens.ndim != 1 or vectors.ndim != 2 or len(tokens) != len(vectors):
            raise ValueError(f"tokens {tokens.shape} and vectors {vectors.shape} do not match")
        if len(tokens) > 1 and not (np.diff(tokens) > 0).all():
            raise ValueError("tokens must be strictly ascending")
        self.tokens = tokens.astype(np.int64)
        self.vectors = vectors.astype(np.float32)
        self.dim = int(vectors.shape[1])
        digest = hashlib.sha256(self.tokens.tobytes() + self.vectors.tobytes()).hexdigest()
        self.name = f"token-centroids-{digest[:12]}"

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def fit(
        cls, queries: Sequence[Sequence[int]], targets: np.ndarray, item_vectors: np.ndarray
    ) -> TokenEncoder:
        """From searches ``queries`` (token ids) and the item index each led to (``targets``
        int64[Q]) in ``item_vectors`` float32[N + 1, D] (unit rows, row 0 unused)."""
        if len(queries) != len(targets):
            raise ValueError(f"{len(queries)} queries for {len(targets)} targets")
        dim = item_vectors.shape[1]
        lengths = np.fromiter((len(set(q)) for q in queries), np.int64, len(queries))
        flat = np.fromiter((t for q in queries for t in sorted(set(q))), np.int64, lengths.sum())
        if not flat.size:
            return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        tokens, inverse = np.unique(flat, return_inverse=True)
        sums = np.zeros((len(tokens), dim), dtype=np.float64)
        np.add.at(sums, inverse, item_vectors[np.repeat(np.asarray(targets), lengths)])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        vectors = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
        return cls(tokens, vectors.astype(np.float32))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[N, D]``: each text's known tokens' mean vector, normalised (0 if none)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(self.tokens):
            return out
        for i, text in enumerate(texts):
            ids = np.array([int(t) for t in text.split() if t.lstrip("-").isdigit()], np.int64)
            pos = np.minimum(np.searchsorted(self.tokens, ids), len(self.tokens) - 1)
            known = pos[self.tokens[pos] == ids] if ids.size else pos[:0]
            if known.size:
                v = self.vectors[known].sum(axis=0)
                norm = float(np.linalg.norm(v))
                if norm > 0:
                    out[i] = v / norm
        return out

    def save(self, path: Path) -> None:
        np.savez(path, tokens=self.tokens, vectors=self.vectors)

    @classmethod
    def load(cls, path: Path) -> TokenEncoder:
        with np.load(path, allow_pickle=False) as z:
            return cls(np.asarray(z["tokens"]), np.asarray(z["vectors"]))


__all__ = ["TOKENS_FILE", "TokenEncoder"]
