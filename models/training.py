"""Offline training of the session ranker (next-item prediction). Imports torch.

Every prefix of every session is one example: ``s[:t] -> s[t]``. The loss is a full softmax
cross-entropy over the catalogue, affordable at 7k-45k items and free of the sampling bias of
negative sampling.

The ``user_vec`` input must look like what serving stores: ``v = decay * v + weight * e`` over
the raw item embeddings of every item the user touched, the newest included. Training uses
weight 1 and no decay, i.e. the plain sum of the embeddings of the whole prefix, which is what
serving stores when the half-life is long compared with a session. It is not detached: the
embeddings learn to be useful as a sum. The model normalises the vector, so only its
direction matters and the missing decay changes little. ``half_life_ms`` and
``event_weights`` are serving parameters recorded with the model, not used by training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.bundle import ModelError
from models.ranker import SessionRanker
from models.scoring import pack_recent

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000


def _default_weights() -> dict[str, float]:
    return {"view": 1.0, "click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training hyper-parameters (defaults picked on a random-session validation split of the
    DIGINETICA sample) plus the serving parameters recorded in the bundle's metadata."""

    dim: int = 32
    max_recent: int = 20
    epochs: int = 12
    lr: float = 3e-3
    batch_size: int = 256
    weight_decay: float = 1e-4
    dropout: float = 0.5
    seed: int = 0
    half_life_ms: float = 7 * DAY_MS
    event_weights: dict[str, float] = field(default_factory=_default_weights)


@dataclass(slots=True)
class SessionData:
    """``item_ids[i]`` is item index ``i + 1``; ``sessions`` hold indices in time order;
    ``popularity`` is ``float32[N + 1]`` event counts (0 for padding)."""

    item_ids: list[str]
    sessions: list[list[int]]
    popularity: np.ndarray


def build_sessions(
    session_ids: Sequence[str],
    item_ids: Sequence[str],
    timestamps_ms: Sequence[int],
    *,
    min_length: int = 2,
    vocabulary: Sequence[str] | None = None,
) -> SessionData:
    """Group parallel event arrays into sessions of item indices.

    Sessions are ordered by their first event, events within a session by time (stable, so
    equal timestamps keep input order). Sessions shorter than ``min_length`` are dropped: they
    hold no prefix -> next pair. Without ``vocabulary`` the catalogue is every item of a kept
    session, in order of first appearance. With one (a trained bundle's ``item_ids``) unknown
    items are dropped from the sessions, which is how held-out data is encoded.
    """
    if not len(session_ids) == len(item_ids) == len(timestamps_ms):
        raise ValueError("session_ids, item_ids and timestamps_ms must have the same length")
    grouped: dict[str, list[tuple[int, int, str]]] = {}
    for pos, (sid, item, ts) in enumerate(zip(session_ids, item_ids, timestamps_ms, strict=True)):
        grouped.setdefault(sid, []).append((int(ts), pos, item))
    ordered = sorted((sorted(events) for events in grouped.values()), key=lambda e: e[0][:2])
    index: dict[str, int] = {item: i + 1 for i, item in enumerate(vocabulary or [])}
    sessions: list[list[int]] = []
    for events in ordered:
        if vocabulary is None:
            if len(events) < min_length:
                continue
            for _, _, item in events:
                index.setdefault(item, len(index) + 1)
        encoded = [index[item] for _, _, item in events if item in index]
        if len(encoded) >= min_length:
            sessions.append(encoded)
    popularity = np.zeros(len(index) + 1, dtype=np.float32)
    for session in sessions:
        np.add.at(popularity, session, 1.0)
    return SessionData(list(index), sessions, popularity)


@dataclass(slots=True)
class Pairs:
    """All prefix -> next examples. ``recent`` is ``int64[P, R]`` (model input layout) and
    ``targets`` ``int64[P]``; pair p's prefix is ``flat[starts[p] : starts[p] + lengths[p]]``."""

    recent: np.ndarray
    targets: np.ndarray
    flat: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    def bags(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, offsets)`` for ``F.embedding_bag``: the prefixes of ``rows``."""
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        positions = np.repeat(self.starts[rows] - offsets, lengths) + np.arange(lengths.sum())
        return torch.from_numpy(self.flat[positions]), torch.from_numpy(offsets)


def make_pairs(sessions: Sequence[Sequence[int]], max_recent: int) -> Pairs:
    flat = np.fromiter((i for s in sessions for i in s), dtype=np.int64)
    starts, lengths, prefixes, targets = [], [], [], []
    start = 0
    for session in sessions:
        for t in range(1, len(session)):
            starts.append(start)
            lengths.append(t)
            prefixes.append(session[:t][::-1])
            targets.append(session[t])
        start += len(session)
    return Pairs(
        recent=pack_recent(prefixes, max_recent),
        targets=np.asarray(targets, dtype=np.int64),
        flat=flat,
        starts=np.asarray(starts, dtype=np.int64),
        lengths=np.asarray(lengths, dtype=np.int64),
    )


def train_ranker(
    sessions: Sequence[Sequence[int]], n_items: int, cfg: TrainConfig | None = None
) -> SessionRanker:
    """Train a ``SessionRanker`` on item-index sessions (indices 1..``n_items``). Deterministic
    for a given ``cfg.seed`` and thread count; returns the model in eval mode."""
    cfg = cfg or TrainConfig()
    flat_items = [i for s in sessions for i in s]
    if flat_items and not 1 <= min(flat_items) <= max(flat_items) <= n_items:
        raise ModelError(f"session items must be in 1..{n_items}")
    pairs = make_pairs(sessions, cfg.max_recent)
    if len(pairs.targets) == 0:
        raise ModelError("no training pairs: every session is shorter than 2 items")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = SessionRanker(n_items, cfg.dim, cfg.max_recent, cfg.dropout)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.epochs):
        model.train()
        total, batches = 0.0, 0
        perm = rng.permutation(len(pairs.targets))
        for lo in range(0, len(perm), cfg.batch_size):
            rows = perm[lo : lo + cfg.batch_size]
            indices, offsets = pairs.bags(rows)
            user_vec = F.embedding_bag(indices, model.item_emb.weight, offsets, mode="sum")
            logits = model.catalogue_logits(torch.from_numpy(pairs.recent[rows]), user_vec)
            loss = F.cross_entropy(logits, torch.from_numpy(pairs.targets[rows]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                model.item_emb.weight[0].zero_()
                model.item_bias.weight[0].zero_()
            total += loss.item()
            batches += 1
        log.info("epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, total / batches)
    return model.eval()


@torch.no_grad()
def predict_top_k(
    model: SessionRanker, prefixes: Sequence[Sequence[int]], k: int, batch_size: int = 512
) -> list[list[int]]:
    """Top-``k`` next items (indices, best first) over the whole catalogue for each
    chronological prefix, with ``user_vec`` built exactly as in training (sum of the prefix's
    embeddings). Items of the prefix are NOT excluded: repeat views are common next items."""
    model.eval()
    out: list[list[int]] = []
    table = model.item_emb.weight
    for lo in range(0, len(prefixes), batch_size):
        chunk = prefixes[lo : lo + batch_size]
        recent = torch.from_numpy(pack_recent([p[::-1] for p in chunk], model.max_recent))
        user_vec = torch.stack([table[list(p)].sum(0) for p in chunk]) if chunk else table[:0]
        logits = model.catalogue_logits(recent, user_vec)
        out.extend(torch.topk(logits, min(k, model.n_items), dim=1).indices.tolist())
    return out
