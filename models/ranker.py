"""The session ranker: a small GRU over the user's recent items plus their long-term vector.

Training-only module (imports torch). Serving runs the same network through ONNX Runtime
(``models/scoring.py``) after ``models/export.py`` has exported it, so everything in
``forward`` must stay ONNX-exportable (opset 17) and cheap: scoring B=64 events x C=100
candidates has to take well under 5 ms on two CPU cores.

Item indices are ``1..N`` (a bundle's ``item_ids[i - 1]``); index 0 is padding / unknown and
its embedding row is kept at zero, which is also what serving stores for it.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_DIM = 32
DEFAULT_MAX_RECENT = 20
NORM_EPS = 1e-12


class SessionRanker(nn.Module):
    """Scores candidate items for a user from their recent items and long-term vector.

    Inputs of ``forward`` (the ONNX graph has the same names, see ``models/export.py``):

    - ``recent``: ``int64[B, R]`` item indices in CHRONOLOGICAL order, LEFT-padded with 0, so
      the newest item is the last column. Stored user state (``features/user_state.py``) keeps
      recent items NEWEST FIRST; serving reverses them and left-pads (``scoring.pack_recent``).
      Left padding lets the GRU's final hidden state always be the state after the newest item.
    - ``user_vec``: ``float32[B, D]`` the long-term vector from user state: a time-decayed,
      weighted sum of this model's raw item embeddings (``v = decay * v + weight * e``). Its
      length grows with the number of events, so it is L2-normalised inside the model and only
      its direction counts; an all-zero vector (new user) contributes nothing.
    - ``candidates``: ``int64[B, C]`` item indices to score (0 = padding, scored but meaningless).

    Output: ``float32[B, C]`` logits, ``dot(query, E[c]) + bias[c] + sum_j repeat[j] * [c ==
    recent[:, j]]``: the query mixes the GRU state and the normalised user vector; the last term
    is a learned bonus per recent position for re-viewing an item, because about a third of
    next items in session data are repeats, which a dot product learns only slowly. The item
    table is shared between the GRU input and the output side (weight tying), which matters on
    small catalogues with few views per item.
    """

    def __init__(
        self,
        n_items: int,
        dim: int = DEFAULT_DIM,
        max_recent: int = DEFAULT_MAX_RECENT,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if n_items < 1 or dim < 1 or max_recent < 1:
            raise ValueError(f"bad ranker shape: n_items={n_items} dim={dim} R={max_recent}")
        self.n_items = n_items
        self.dim = dim
        self.max_recent = max_recent
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.query = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.repeat = nn.Parameter(torch.ones(max_recent))
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, recent: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        """Query vectors ``float32[B, D]`` from ``recent[B, R]`` and ``user_vec[B, D]``."""
        seq = self.dropout(self.item_emb(recent))
        _, hidden = self.gru(seq)
        norm = torch.sqrt((user_vec * user_vec).sum(dim=1, keepdim=True) + NORM_EPS)
        user = user_vec / norm
        return self.query(torch.cat([hidden[-1], user], dim=1))

    def forward(
        self, recent: torch.Tensor, user_vec: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``float32[B, C]`` for ``candidates[B, C]`` (see the class docstring)."""
        query = self.encode(recent, user_vec)
        cand = self.item_emb(candidates)
        bias = self.item_bias(candidates).squeeze(-1)
        # Two batched matrix products instead of a B x C x R boolean And, Mul and ReduceSum:
        # the repeat bonus was ~60% of an ONNX call at C=500 (bench/compression.py profile).
        w = self.repeat * (recent > 0).to(query.dtype)  # [B, R]: padding earns nothing
        seen = (candidates.unsqueeze(2) == recent.unsqueeze(1)).to(query.dtype)  # [B, C, R]
        repeat = torch.bmm(seen, w.unsqueeze(2)).squeeze(2)
        return torch.bmm(cand, query.unsqueeze(2)).squeeze(2) + bias + repeat

    def catalogue_logits(self, recent: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        """Logits ``float32[B, N + 1]`` over the whole catalogue, for full-softmax training and
        offline evaluation. Column 0 (padding) is set to a large negative value so it never wins
        a softmax or a top-k; columns ``1..N`` equal what ``forward`` gives for those items."""
        query = self.encode(recent, user_vec)
        logits = query @ self.item_emb.weight.T + self.item_bias.weight.T
        repeat = self.repeat.expand_as(recent) * (recent > 0).to(logits.dtype)
        logits = logits.scatter_add(1, recent, repeat)
        pad = torch.zeros_like(logits[:1])
        pad[0, 0] = -1e9
        return logits + pad

    def item_embeddings(self) -> torch.Tensor:
        """Raw item table ``float32[N + 1, D]`` (row 0 zero): what a bundle stores and what serving
        adds into user vectors."""
        return self.item_emb.weight.detach().clone()
