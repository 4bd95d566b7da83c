"""Deterministic stand-ins for the text encoder and a counting item text index (unit tests)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from models.text_index import ItemTextIndex

DIM = 384


class FakeEncoder:
    """Hashed bag of words projected to 384 signed dimensions, L2-normalised: texts that share
    words are close, others nearly orthogonal. Records every call (one list of texts each)."""

    def __init__(self, name: str = "fake-bow") -> None:
        self.dim = DIM
        self.name = name
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()) or ["<empty>"]:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                slot = int.from_bytes(digest[:4], "little") % DIM
                out[row, slot] += 1.0 if digest[4] & 1 else -1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class CountingIndex(ItemTextIndex):
    """An ``ItemTextIndex`` that counts its searches."""

    def __init__(self, dim: int = DIM, name: str = "fake-bow") -> None:
        super().__init__(dim, name)
        self.searches = 0

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        self.searches += 1
        return super().search(queries, n)
