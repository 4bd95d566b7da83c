"""Online fine-tuning of the session ranker from the event stream, evaluated prequentially.

The training agent sees the same events the worker serves. Each item event whose session
already holds a known item is one example: the session's recent items -> that item, weighted
by event type (a purchase teaches more than a view). Examples arrive in chunks; for every
chunk the learner first *evaluates* the current model on it (it has not trained on those
events: prequential "test, then train"), then takes gradient steps on the chunk plus a sample
from a bounded replay buffer of older examples, so that it adapts to what is new without
forgetting what it knew.

Training-only (torch, ``train`` extra). The catalogue is the model's: events on items it does
not know are counted, not learnt (a new catalogue needs a retrained bundle).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.ranker import SessionRanker
from models.training import pack_recent, predict_top_k


@dataclass(frozen=True, slots=True)
class OnlineConfig:
    """Fine-tuning settings. ``lr`` 5e-4 (a sixth of TrainConfig's 3e-3) was chosen among
    2e-3, 5e-4 and 2e-4 on the DIGINETICA replay of docs/quality.md and checked, unchanged, on
    MovieLens: larger steps forget faster than they adapt."""

    lr: float = 5e-4
    batch_size: int = 128
    replay_size: int = 20_000  # examples kept for rehearsal
    replay_ratio: float = 1.0  # old examples drawn per new example in each update
    passes: int = 2  # passes over (new + rehearsal) per chunk
    k: int = 20
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Example:
    prefix: tuple[int, ...]  # the session's known items so far, oldest first (1..N)
    target: int
    weight: float = 1.0


@dataclass(slots=True)
class ChunkResult:
    examples: int
    hr: float  # prequential HR@k on the chunk, before learning from it
    mrr: float
    loss: float = 0.0  # mean weighted cross-entropy of the updates on it


@dataclass(slots=True)
class ExampleBuilder:
    """Turns a stream of item events into examples: each event on a known item whose session
    already holds another known item is ``session's recent items -> this item``, weighted by
    event type. Sessions are kept in a bounded LRU (``max_sessions``), so a long-running
    agent's memory does not grow with the number of sessions it has ever seen."""

    item_index: Mapping[str, int]  # item id -> model index (1..N)
    max_recent: int
    weights: Mapping[str, float]
    max_sessions: int = 200_000
    _sessions: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)
    unknown: int = 0  # item events on items the model does not know

    def feed(self, session_id: str, item_id: str | None, event_type: str) -> Example | None:
        """The example this event makes (None when it teaches nothing), then remember it."""
        if item_id is None:
            return None
        idx = self.item_index.get(item_id)
        if idx is None:
            self.unknown += 1
            return None
        prefix = self._sessions.get(session_id)
        if prefix is None:
            prefix = self._sessions[session_id] = []
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session_id)
        example = None
        if prefix and prefix[-1] != idx:
            example = Example(tuple(prefix[-self.max_recent :]), idx,
                              self.weights.get(event_type, 1.0))  # fmt: skip
        prefix.append(idx)
        del prefix[: -self.max_recent]
        return example

    def __len__(self) -> int:
        return len(self._sessions)

    def forget(self, prefix: str) -> int:
        """Drop every open session whose id starts with ``prefix`` (a user's sessions, when
        session ids are keyed by user: ``streamrec forget-user``); returns how many. A scan of
        at most ``max_sessions`` keys: erasure is rare."""
        doomed = [s for s in self._sessions if s.startswith(prefix)]
        for s in doomed:
            del self._sessions[s]
        return len(doomed)


def prequential_metrics(
    model: SessionRanker, examples: Sequence[Example], k: int
) -> tuple[float, float]:
    """``(HR@k, MRR@k)`` of ``model`` on ``examples`` (over the whole catalogue)."""
    if not examples:
        return 0.0, 0.0
    ranked = predict_top_k(model, [list(e.prefix) for e in examples], k)
    hits, rr = 0, 0.0
    for row, e in zip(ranked, examples, strict=True):
        if e.target in row:
            hits += 1
            rr += 1.0 / (row.index(e.target) + 1)
    return hits / len(examples), rr / len(examples)


@dataclass(slots=True)
class OnlineLearner:
    """Fine-tunes ``model`` in place, chunk by chunk."""

    model: SessionRanker
    cfg: OnlineConfig = field(default_factory=OnlineConfig)
    buffer: deque[Example] = field(init=False)
    optimiser: torch.optim.Optimizer = field(init=False)
    rng: np.random.Generator = field(init=False)
    learnt: int = 0

    def __post_init__(self) -> None:
        self.buffer = deque(maxlen=self.cfg.replay_size)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.rng = np.random.default_rng(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def step(self, examples: Sequence[Example]) -> ChunkResult:
        """Evaluate on ``examples``, then learn from them (plus rehearsal)."""
        hr, mrr = prequential_metrics(self.model, examples, self.cfg.k)
        loss = self.learn(examples)
        return ChunkResult(len(examples), hr, mrr, loss)

    def learn(self, examples: Sequence[Example]) -> float:
        """Gradient steps on ``examples`` plus rehearsal; returns the mean update loss."""
        if not examples:
            return 0.0
        old = list(self.buffer)
        n_old = min(len(old), int(self.cfg.replay_ratio * len(examples)))
        rehearse = (
            [old[i] for i in self.rng.choice(len(old), n_old, replace=False)] if n_old else []
        )
        batch = list(examples) + rehearse
        self.model.train()
        losses: list[float] = []
        for _ in range(self.cfg.passes):
            order = self.rng.permutation(len(batch))
            for lo in range(0, len(order), self.cfg.batch_size):
                rows = [batch[i] for i in order[lo : lo + self.cfg.batch_size]]
                losses.append(self._update(rows))
        self.model.eval()
        self.buffer.extend(examples)
        self.learnt += len(examples)
        return float(np.mean(losses))

    def _update(self, rows: Sequence[Example]) -> float:
        m = self.model
        recent = torch.from_numpy(pack_recent([list(e.prefix)[::-1] for e in rows], m.max_recent))
        table = m.item_emb.weight
        user_vec = torch.stack([table[list(e.prefix)].sum(0) for e in rows])
        logits = m.catalogue_logits(recent, user_vec)
        targets = torch.tensor([e.target for e in rows], dtype=torch.int64)
        weights = torch.tensor([e.weight for e in rows], dtype=torch.float32)
        loss = (F.cross_entropy(logits, targets, reduction="none") * weights).sum() / weights.sum()
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        with torch.no_grad():
            m.item_emb.weight[0].zero_()
            m.item_bias.weight[0].zero_()
        return float(loss.item())


__all__ = [
    "ChunkResult",
    "Example",
    "ExampleBuilder",
    "OnlineConfig",
    "OnlineLearner",
    "prequential_metrics",
]
