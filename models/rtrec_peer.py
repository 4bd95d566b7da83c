"""rtrec (https://github.com/myui/rtrec, pip ``rtrec``) as a public peer in the offline evaluation.

A library we did not write, fitted on the same training sessions and asked for the same test
prefixes as the baselines in models/baselines.py, whose conventions it shares (catalogue in
popularity order, unknown prefix items dropped, ``exclude``, POP fill, ties by popularity then
id). Only the offline evaluation uses it; rtrec comes with the ``eval`` extra and is imported
inside :meth:`RtrecPeer.fit`, so importing this module never needs it.

How rtrec is used, and why:

* **Model: rtrec's SLIM** (``rtrec.models.SLIM``: one non-negative ElasticNet regression per
  item over the user-item matrix, giving a sparse item-item matrix ``W``, float,
  ``(n_items, n_items)``; ``W[i, j]`` is item i's weight in predicting item j). rtrec scores a
  user as their interaction row times ``W`` (``SLIMElastic.predict``), which works for a user
  it never saw, so a test prefix needs no refit. rtrec's other models (LightFM and the
  ``HybridSlimFM`` ensemble) score users by a fitted user embedding, and an unseen session only
  gets rtrec's cold-start answer (popular items).
* **Fit:** each training session is one rtrec user and each event one interaction of rating
  1.0 (rtrec sums them per (user, item), clipped to its maximum of 10), added with
  ``add_interactions`` and fitted once with ``bulk_fit``. ``partial_fit`` per event costs about
  19 ms/event, because each call rebuilds the interaction matrix and refits the items it
  touched. The fit runs in one process. rtrec's ``parallel=True`` forks a pool of 70% of the
  cores, which is a single worker on the evaluation's two cores.
* **Regularisation:** scikit-learn's ElasticNet, which rtrec wraps, divides the squared loss
  by the number of samples (sessions here), so rtrec's default ``alpha=0.1`` acts per session.
  On 2.5k-18k sessions it zeroes nearly all of ``W``: 12 non-zeros on DIGINETICA, where every
  list is then POP fill. That is why the earlier near-random result (HR@20 about 0.006)
  happened. Here ``alpha = regularisation / n_sessions``, so that every fit solves the
  unnormalised SLIM objective of Ning & Karypis (2011), whatever the number of sessions:
  ``1/2 ||a_j - A w_j||^2 + l1 ||w_j||_1 + l2/2 ||w_j||^2`` with
  ``l1 = regularisation * l1_ratio`` and ``l2 = regularisation * (1 - l1_ratio)``. rtrec's
  ``l1_ratio`` default of 0.1 is kept.
* **Feature selection:** with ``neighbours`` set, each item's regression sees only the items
  that co-occur with it most (rtrec's ``nn_feature_selection``: fsSLIM from the same paper).
  Without it the fit took 170 s on MovieLens' 9.7k items on two shared cores, over the
  evaluation's budget.
* **Query:** ``"last"`` scores the prefix as an rtrec user whose only interaction is its last
  known item (the row ``W[last]``). ``"session"`` uses all of it, the way rtrec scores a user:
  counts per item, clipped to 10. rtrec's ``similar_items`` reads the column ``W[:, q]``
  instead, i.e. the items that predict q. That is the reverse of its own scoring direction,
  and on validation it had a lower MRR@20 (0.166 against 0.179).
* **Dtype pitfall:** rtrec's single-process fit leaves ``W`` float64, while the user rows it
  builds are float32. With recent scikit-learn (1.9 here) rtrec's dense-output ``recommend``
  then fails with "Dtype of A and B must be the same". Here ``W`` is read out once as
  float64 CSR arrays and scored with numpy, so the mismatch cannot occur.

The defaults were chosen on the protocol's validation split, never on test: models fitted on
train and scored on the validation sessions (pairs built as for test). On Online Retail (18.6k
validation pairs; DIGINETICA's 34 and MovieLens' 24 are too few to decide anything):

* ``"last"``: HR@20 0.29-0.31. ``"session"``: 0.22-0.23. A position-weighted prefix: 0.27.
* ``regularisation`` from 0.1 to 100 changed HR@20 by at most 0.002. On DIGINETICA, the
  larger values lost hits: 8 at 1, 4 at 10 and 0 at 100 with the whole-prefix query.
* ``neighbours=200``: HR@20 0.302 against 0.308 with no selection and 0.292 at 100, for half
  the fit time of no selection.

Only the evaluation uses this module: numpy here; rtrec (and with it scipy and scikit-learn)
is imported in ``fit``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import repeat

import numpy as np

from models.baselines import SCORE_DECIMALS, CatalogueBaseline, FloatArray, IntArray

QUERIES = ("last", "session")
MAX_RATING = 10.0  # rtrec's UserItemInteractions default max_value: summed ratings clip here
INSTALL_HINT = "pip install 'streamrec[eval]'"


class RtrecPeer(CatalogueBaseline):
    """rtrec's SLIM, fitted on the training sessions (one rtrec user per session) and queried
    with each prefix (see the module doc for what each parameter maps to in rtrec and why).

    Items scoring <= 0 count as unscored; POP fills the list past them. rtrec's SLIM keeps
    weights non-negative (``positive_only``), so that only drops items with no weight from the
    query.
    """

    name = "rtrec"

    def __init__(
        self,
        regularisation: float = 1.0,
        l1_ratio: float = 0.1,
        neighbours: int | None = 200,
        query: str = "last",
    ) -> None:
        super().__init__()
        if regularisation <= 0 or not 0.0 <= l1_ratio <= 1.0:
            raise ValueError("need regularisation > 0 and 0 <= l1_ratio <= 1")
        if neighbours is not None and neighbours < 1:
            raise ValueError("neighbours must be >= 1 (None: every item is a feature)")
        if query not in QUERIES:
            raise ValueError(f"query must be one of {QUERIES}")
        self.regularisation = regularisation
        self.l1_ratio = l1_ratio
        self.neighbours = neighbours
        self.query = query
        # rtrec's item_similarity W (n_items x n_items) in catalogue index order, as CSR arrays
        # by source item: row i's targets are indices[indptr[i]:indptr[i + 1]], with weights
        # at the same places in data. indptr (n_items + 1,), indices and data (nnz,).
        self.indptr: IntArray = np.zeros(1, dtype=np.int64)
        self.indices: IntArray = np.zeros(0, dtype=np.int64)
        self.data: FloatArray = np.zeros(0)

    def fit(
        self, sessions: Sequence[Sequence[str]], timestamps: Sequence[int] | None = None
    ) -> None:
        """Fit rtrec's SLIM on ``sessions``; ``timestamps`` are the session starts in ms."""
        try:
            from rtrec.models import SLIM
        except ImportError as e:
            raise ImportError(f"RtrecPeer needs the rtrec package: {INSTALL_HINT}") from e
        if timestamps is not None and len(timestamps) != len(sessions):
            raise ValueError(f"{len(timestamps)} timestamps for {len(sessions)} sessions")
        flat, offsets = self._fit_catalogue(sessions)
        n_items = len(self.item_ids)
        self.indptr = np.zeros(n_items + 1, dtype=np.int64)
        self.indices, self.data = np.zeros(0, dtype=np.int64), np.zeros(0)
        if n_items == 0:
            return
        model = SLIM(
            alpha=self.regularisation / len(sessions),
            l1_ratio=self.l1_ratio,
            nn_feature_selection=self.neighbours,
        )
        # rtrec takes int ids as they are (its "pass-through" mode), so the session number is
        # the rtrec user and the catalogue index the rtrec item: W's rows and columns come out
        # in catalogue order. Timestamps in seconds, as rtrec expects; they only matter if time
        # decay is enabled, and it is off by default.
        owner = np.repeat(np.arange(len(sessions)), np.diff(offsets))
        start_s = (
            np.zeros(len(sessions))
            if timestamps is None
            else np.asarray(timestamps, dtype=np.float64) / 1000.0
        )
        model.add_interactions(
            zip(owner.tolist(), flat.tolist(), start_s[owner].tolist(), repeat(1.0), strict=False)
        )
        model.bulk_fit(parallel=False, progress_bar=False)
        similarity = model.model.item_similarity
        if similarity is None or similarity.shape != (n_items, n_items):
            shape = None if similarity is None else similarity.shape
            raise RuntimeError(f"rtrec returned item_similarity of shape {shape}, not {n_items}²")
        weights = similarity.tocsr()
        weights.eliminate_zeros()  # feature selection stores the zero coefficients too
        weights.sort_indices()
        self.indptr = np.asarray(weights.indptr, dtype=np.int64)
        self.indices = np.asarray(weights.indices, dtype=np.int64)
        self.data = np.asarray(weights.data, dtype=np.float64)

    def recommend(self, prefix: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[str]:
        known, excluded = self._prepare(prefix, exclude)
        ranked = self._ranked(known, k + len(excluded)) if known and k > 0 else []
        return self._finish(ranked, k, excluded)

    def _scores(self, known: list[int]) -> tuple[IntArray, FloatArray]:
        """The prefix's SLIM scores ``x @ W`` as (item indices, scores), both ``(m,)``; ``x``
        is the query vector (module doc), so each query item adds its row of ``W`` times its
        weight in ``x``."""
        ptr = self.indptr
        if self.query == "last":
            row = known[-1]
            return self.indices[ptr[row] : ptr[row + 1]], self.data[ptr[row] : ptr[row + 1]]
        items, counts = np.unique(np.asarray(known, dtype=np.int64), return_counts=True)
        targets: list[IntArray] = []
        weights: list[FloatArray] = []
        for i, count in zip(items.tolist(), counts.tolist(), strict=True):
            targets.append(self.indices[ptr[i] : ptr[i + 1]])
            weights.append(self.data[ptr[i] : ptr[i + 1]] * min(count, MAX_RATING))
        scores = np.bincount(np.concatenate(targets), np.concatenate(weights), len(ptr) - 1)
        scored = np.flatnonzero(scores)
        return scored, scores[scored].astype(np.float64)

    def _ranked(self, known: list[int], needed: int) -> list[int]:
        """The best ``needed`` items with a positive score, best first (ties: lower index)."""
        items, scores = self._scores(known)
        value = np.round(scores, SCORE_DECIMALS)
        keep = value > 0
        items, value = items[keep], value[keep]
        if len(items) > needed:
            best = value >= np.partition(value, len(value) - needed)[len(value) - needed]
            items, value = items[best], value[best]
        ranked: list[int] = items[np.lexsort((items, -value))][:needed].tolist()
        return ranked


__all__ = ["INSTALL_HINT", "QUERIES", "RtrecPeer"]
