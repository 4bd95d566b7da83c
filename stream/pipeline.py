"""One micro-batch of valid events in, one Recommendation per event out. No Kafka in here.

Per batch, whatever its size: one pipelined Redis round trip (read + update every user's
state), one FAISS search plus vectorised co-visitation and session-kNN lookups for
candidates, one ONNX Runtime call, one vectorised blend and top-K. The worker (agents.py),
the demo and offline replays all call ``recommend_batch``.

With a ``TextSearch`` (the worker's item text index and text encoder), searches and views of
items only the catalogue knows are ranked by text similarity too: one encoder call for the
batch's query texts and one text-index search for all such rows (``text_rows``), whose hits
join the candidates and are scored by ``search_scores``.

With a ``ResultCache`` (the hot-result cache, stream/result_cache_policy.py), rows whose
context repeats across users (cold users, a user's first item) reuse a list computed for the
same inputs at most the TTL ago: one MGET alongside the online store's call, and those rows
skip retrieval, scoring and ranking (``recommend_cached``); their state is updated all the
same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from features.keys import hashes_to_u64, id_hash
from features.online_covisit import CovisitBatch, CovisitRead, CovisitStore
from features.result_cache import (
    ResultCache,
    ResultCacheError,
    decode_result,
    encode_result,
    result_key,
)
from features.store import StateStore, StateUpdate
from features.user_state import UserState, decode_state
from models.covisit import covisit_candidates, covisit_scores
from models.serving import BlendWeights, ServingModel
from models.session_knn import knn_scores, sparse_lookup
from models.text_index import ItemTextIndex
from models.topk import top_k_excluding
from stream.result_cache_policy import cacheable_rows, context_digests, context_salt
from topics.events import ITEM_EVENTS, EventType, UserEvent
from topics.recommendations import Recommendation

if TYPE_CHECKING:  # the encoder module loads tokenizers; the pipeline only calls .encode
    from models.text_encoder import TextEncoder

# Share of the newest item (vs the long-term vector) in the retrieval query.
LAST_ITEM_SHARE = 0.7
# Best session-kNN items added to each row's candidates.
KNN_CANDIDATES = 50
# Online co-visitation is read for the session's newest ONLINE_DEPTH items (weights 1, 1/2, ..).
ONLINE_DEPTH = 3
# Weight of the normalised personal score against the text cosine in search ranking.
DEFAULT_PERSONAL_WEIGHT = 0.1
# Text-index results per search (or per text-seeded view).
DEFAULT_TEXT_HITS = 100
# Query vectors kept for repeated queries (384 floats each: 10 000 take 15 MB).
DEFAULT_QUERY_CACHE = 10_000
_NO_ITEM = bytes(8)

log = logging.getLogger("streamrec.worker")


@dataclass(slots=True)
class Trigger:
    """A valid event and the Kafka timestamp (ms) at which its producer sent it."""

    event: UserEvent
    sent_ms: float


@dataclass(slots=True)
class BatchResult:
    recommendations: list[Recommendation]
    stage_ms: dict[str, float] = field(default_factory=dict)
    unknown_items: int = 0
    # Rows by hot-result cache outcome ("hit", "miss", "uncacheable"); empty without a cache.
    cache_lookups: dict[str, int] = field(default_factory=dict)
    # Triggers whose event had already been applied to its user's state (a redelivery): state
    # and online co-visitation left alone, the Recommendation computed from the current state.
    replayed: int = 0


@dataclass(slots=True)
class BatchArrays:
    """Model inputs for a batch of B states.

    recent:   int64[B, R]  item indices, chronological, left-padded with 0 (newest last)
    user_vec: float32[B, D]
    last:     int64[B]     index of the newest known recent item, 0 if none
    seen:     list of B sets of item indices seen in the current session
    session_len: int64[B]  how many of ``recent``'s newest columns are the current session
    """

    recent: np.ndarray
    user_vec: np.ndarray
    last: np.ndarray
    seen: list[set[int]]
    session_len: np.ndarray


def build_arrays(states: list[UserState], model: ServingModel) -> BatchArrays:
    """Map every state's recent item hashes to model indices in one vectorised lookup.

    A stored vector of another embedding space (written under another model version) cannot
    be mixed with this model's: such a user's vector is re-encoded from their recent items in
    this model's space (the sum of their embeddings, what training feeds the model), until
    the update rule restarts it in this space (docs/state-format.md)."""
    b, r, d = len(states), model.max_recent, model.dim
    counts = [min(len(s.recent), r) for s in states]
    flat = model.indices_of(hashes_to_u64([h for s in states for h in s.recent[:r]]))
    recent = np.zeros((b, r), dtype=np.int64)
    user_vec = np.zeros((b, d), dtype=np.float32)
    last = np.zeros(b, dtype=np.int64)
    seen: list[set[int]] = []
    pos = 0
    for i, (s, n) in enumerate(zip(states, counts, strict=True)):
        newest_first = flat[pos : pos + n]
        pos += n
        if n:
            recent[i, r - n :] = newest_first[::-1]
            known = newest_first[newest_first > 0]
            if known.size:
                last[i] = known[0]
        seen.append({int(x) for x in newest_first[: s.n_session] if x > 0})
        if s.vector.shape[0] == d and s.space_id == model.space_id:
            user_vec[i] = s.vector
        elif n:  # another space (a new version): re-encode from the recent items
            user_vec[i] = model.embeddings[newest_first].sum(axis=0)
    session_len = np.minimum(np.array([s.n_session for s in states], dtype=np.int64), r)
    return BatchArrays(recent, user_vec, last, seen, session_len)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def retrieval_queries(arrays: BatchArrays, model: ServingModel) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``float32[B, D]`` for ANN search and a bool mask of rows that have one.

    The query blends the newest item's normalised embedding with the normalised long-term
    vector; a user with neither (cold start) gets popular items instead.
    """
    last_vec = model.normalised_embeddings[arrays.last]
    long_term = _normalise(arrays.user_vec)
    q = LAST_ITEM_SHARE * last_vec + (1.0 - LAST_ITEM_SHARE) * long_term
    q = _normalise(q.astype(np.float32))
    has_query = np.linalg.norm(q, axis=1) > 0
    return q, has_query


def candidates_for(
    arrays: BatchArrays, model: ServingModel, n: int, popular: np.ndarray | None = None
) -> np.ndarray:
    """``int64[B, n]`` candidate indices: one FAISS search for all warm rows; cold rows get
    ``popular`` (trending items from the stream) or else the training period's popular."""
    q, has_query = retrieval_queries(arrays, model)
    fill = model.popular if popular is None else popular
    cands = np.tile(fill[:n], (q.shape[0], 1))
    if cands.shape[1] < n:
        cands = np.pad(cands, ((0, 0), (0, n - cands.shape[1])))
    if has_query.any():
        _, idx = model.retriever.search(q[has_query], n)
        cands[has_query, : idx.shape[1]] = idx
    return cands


def state_updates(events: list[UserEvent], model: ServingModel) -> tuple[list[StateUpdate], int]:
    """One StateUpdate per event, carrying the hash of its event_id so that a redelivered
    event is not applied twice; item embeddings looked up for the whole batch at once."""
    item_hashes = [id_hash(e.item_id) if e.item_id is not None else None for e in events]
    present = [h for h in item_hashes if h is not None]
    idx = model.indices_of(hashes_to_u64(present)) if present else np.zeros(0, np.int64)
    updates: list[StateUpdate] = []
    unknown = 0
    j = 0
    for e, h in zip(events, item_hashes, strict=True):
        emb = b""
        if h is not None:
            item_index = int(idx[j])
            j += 1
            if item_index > 0:
                emb = model.embeddings[item_index].tobytes()
            else:
                unknown += 1
        updates.append(
            StateUpdate(
                user_id=e.user_id,
                now_ms=float(e.timestamp_ms),
                session_hash=id_hash(e.session_id),
                item_hash=h,
                weight=model.event_weights.get(e.event_type.value, 0.0),
                embedding=emb,
                event_hash=id_hash(e.event_id),
            )
        )
    return updates, unknown


def online_batch(
    events: list[UserEvent],
    states: list[UserState],
    model: ServingModel,
    *,
    read: bool = True,
    replayed: Sequence[bool] | None = None,
) -> CovisitBatch:
    """What a batch teaches the online co-visitation store and asks of it. ``states`` are the
    states *after* each event, so an item event's item is ``recent[0]`` and the session's
    previous item ``recent[1]``: one transition per event that continues a session. Queries:
    each row's newest ONLINE_DEPTH session items (empty hash where the session is shorter);
    none when not ``read`` (warming the store). Events flagged in ``replayed`` (already
    applied: their state is the current one, not the one they produced) teach nothing, so a
    redelivery does not count a transition or an interaction twice; they still query."""
    src: list[bytes] = []
    dst: list[bytes] = []
    t_ms: list[float] = []
    items: list[bytes] = []
    item_ms: list[float] = []
    item_w: list[float] = []
    queries: list[bytes] = []
    skip = replayed if replayed is not None else [False] * len(events)
    for e, s, again in zip(events, states, skip, strict=True):
        n = min(s.n_session, len(s.recent))
        if e.item_id is not None and n and not again:
            items.append(s.recent[0])
            item_ms.append(float(e.timestamp_ms))
            item_w.append(model.event_weights.get(e.event_type.value, 0.0))
            if n >= 2:
                src.append(s.recent[1])
                dst.append(s.recent[0])
                t_ms.append(float(e.timestamp_ms))
        if read:
            queries += [s.recent[p] if p < n else _NO_ITEM for p in range(ONLINE_DEPTH)]
    return CovisitBatch(
        src=hashes_to_u64(src),
        dst=hashes_to_u64(dst),
        transition_ms=np.array(t_ms, dtype=np.float64),
        items=hashes_to_u64(items),
        item_ms=np.array(item_ms, dtype=np.float64),
        item_weight=np.array(item_w, dtype=np.float32),
        queries=hashes_to_u64(queries),
        now_ms=float(max(e.timestamp_ms for e in events)),
    )


@dataclass(slots=True)
class OnlineNeighbours:
    """The online store's answer in model indices.

    candidates: int64[B, ONLINE_DEPTH * M]  neighbours of each row's newest items (0 = none)
    keys, values: the per-(row, item) summed weights (newest item 1, then 1/2, 1/3), sorted
    trending:   int64[P] known trending items, heaviest first
    """

    candidates: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    span: int
    trending: np.ndarray

    @classmethod
    def of(cls, read: CovisitRead, model: ServingModel, rows: int) -> OnlineNeighbours:
        m = read.neighbours.shape[1]
        idx = model.indices_of(read.neighbours.ravel()).reshape(rows, ONLINE_DEPTH * m)
        depth_w = np.repeat(1.0 / np.arange(1, ONLINE_DEPTH + 1), m)
        w = read.weights.reshape(rows, ONLINE_DEPTH * m).astype(np.float64) * depth_w
        span = len(model.item_ids) + 1
        key = (np.arange(rows, dtype=np.int64)[:, None] * span + idx)[idx > 0]
        keys, inverse = np.unique(key, return_inverse=True)
        values = np.bincount(inverse, weights=w[idx > 0], minlength=keys.size)
        trending = model.indices_of(read.trending)
        return cls(idx, keys, values, span, trending[trending > 0])

    def lookup(self, candidates: np.ndarray) -> np.ndarray:
        return sparse_lookup(self.keys, self.values, self.span, candidates)

    def subset(self, rows: np.ndarray) -> OnlineNeighbours:
        """The answer for ``rows`` (int64[H], ascending) only, renumbered 0..H-1."""
        owner = self.keys // self.span
        pos = np.minimum(np.searchsorted(rows, owner), max(rows.size - 1, 0))
        keep = rows[pos] == owner if rows.size else np.zeros(owner.size, dtype=bool)
        keys = pos[keep] * self.span + self.keys[keep] % self.span  # still ascending
        return OnlineNeighbours(self.candidates[rows], keys, self.values[keep], self.span,
                                self.trending)  # fmt: skip


@dataclass(slots=True)
class Signals:
    """Ranking signals of a batch's candidates, each ``float32[B, C]``; None = not computed
    (its blend weight is 0). ``neural`` is the ONNX ranker's logit; the others are raw scores
    that ``blend_scores`` compresses with log1p."""

    neural: np.ndarray
    covisit: np.ndarray | None = None
    sequential: np.ndarray | None = None
    knn: np.ndarray | None = None
    online: np.ndarray | None = None


def blend_scores(signals: Signals, weights: BlendWeights) -> np.ndarray:
    """``float32[B, C]`` served score (formula: models.serving.BlendWeights)."""
    score = np.float32(weights.neural) * signals.neural
    for name in ("covisit", "sequential", "knn", "online"):
        w, values = getattr(weights, name), getattr(signals, name)
        if w and values is not None:
            score = score + np.float32(w) * np.log1p(values)
    return score.astype(np.float32)


class QueryCache:
    """Least-recently-used query text -> unit vector ``float32[dim]``.

    Encoding a query costs milliseconds of CPU (MiniLM: about 4 ms for a short query on one
    core, far more than the rest of a search), and shoppers repeat queries a lot, so a
    repeated query is not encoded again. Keys are lower-cased with whitespace collapsed, which
    the uncased encoder does not tell apart either. ``capacity`` 0 keeps nothing.
    """

    def __init__(self, capacity: int = DEFAULT_QUERY_CACHE) -> None:
        self.capacity = capacity
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        """``float32[N, dim]`` for ``texts``: one encoder call for the distinct texts not
        cached (none when all are)."""
        keys = [" ".join(t.lower().split()) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = np.asarray(encoder.encode(missing), dtype=np.float32)
            fresh = dict(zip(missing, vectors, strict=True))
        out = np.empty((len(keys), encoder.dim), dtype=np.float32)
        for row, key in enumerate(keys):
            vec = fresh.get(key)
            if vec is None:
                vec = self._vectors[key]
                self._vectors.move_to_end(key)
            out[row] = vec
        if self.capacity:
            self._vectors.update(fresh)
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)
        return out


@dataclass(slots=True)
class TextSearch:
    """Search and text cold start: what the pipeline needs beyond the model bundle.

    index:           catalogue titles as unit vectors of one encoder (``models.text_index``)
    encoder:         embeds query text into ``index``'s space; None: text searches are answered
                     from the session, as without search
    token_encoder:   embeds token-id queries (``query_tokens``, ids joined by spaces, e.g. the
                     hashed DIGINETICA tokens) into ``index``'s space; None (the default, none
                     is trained): such searches are answered from the session
    personal_weight: ``w`` of ``search_scores``
    hits:            text-index results per query
    cache:           vectors of recent query texts (``encoder``'s)
    """

    index: ItemTextIndex
    encoder: TextEncoder | None = None
    token_encoder: TextEncoder | None = None
    personal_weight: float = DEFAULT_PERSONAL_WEIGHT
    hits: int = DEFAULT_TEXT_HITS
    cache: QueryCache = field(default_factory=QueryCache)


@dataclass(slots=True)
class TextRows:
    """The rows of a batch ranked by text, and their text-index hits (H per row).

    rows:  int64[T]       batch rows that have a text query and at least one hit
    hits:  int64[B, H]    hit candidates: model indices 1..N, then N + 1 + j for ``extra[j]``
                          (items only the catalogue knows); 0 = none, and 0 on other rows
    cos:   float32[B, H]  cosine of each hit with its row's query, 0 where there is none
    extra: ids of the catalogue-only items among the hits, ``extra_hashes`` uint64[E] theirs
    personal_weight: ``w`` of ``search_scores``
    """

    rows: np.ndarray
    hits: np.ndarray
    cos: np.ndarray
    extra: list[str]
    extra_hashes: np.ndarray
    personal_weight: float

    def subset(self, rows: np.ndarray) -> TextRows:
        """The text rows of a batch cut to ``rows`` (int64[H], ascending, holding every text
        row), renumbered 0..H-1."""
        return TextRows(np.searchsorted(rows, self.rows), self.hits[rows], self.cos[rows],
                        self.extra, self.extra_hashes, self.personal_weight)  # fmt: skip


async def text_rows(
    events: list[UserEvent],
    states: list[UserState],
    model: ServingModel,
    search: TextSearch,
    stage: dict[str, float],
) -> TextRows | None:
    """Text queries of a batch and their hits: at most one encoder call for the searches'
    texts (those not in ``search.cache``; one more for token-only searches when there is a
    token encoder) and one text-index search for every such row; None when no row has a text
    query or the index is empty.

    Rows with a text query: a search with a non-blank ``query`` (given an encoder) or else
    ``query_tokens`` (given a token encoder); and an item event whose item the bundle does not
    know but the catalogue does, whose query is that item's stored title vector (no encoder
    call): this is how a brand-new item seeds recommendations. Catalogue-only items of the
    session are added to ``seen`` of ``states``' rows by the caller (``exclude_extra``).

    The encoder runs on a worker thread (ONNX Runtime releases the GIL): a batch of cold
    queries costs ~5 ms each on CPU, and the event loop must keep consuming and publishing
    meanwhile (the catalogue agent's encoder call does the same).
    """
    if not len(search.index):
        return None
    t0 = time.perf_counter()
    text_at: list[int] = []
    texts: list[str] = []
    token_at: list[int] = []
    tokens: list[str] = []
    item_at: list[int] = []
    for i, e in enumerate(events):
        if e.event_type is EventType.SEARCH:
            if search.encoder is not None and e.query and e.query.strip():
                text_at.append(i)
                texts.append(e.query)
            elif search.token_encoder is not None and e.query_tokens:
                token_at.append(i)
                tokens.append(" ".join(str(t) for t in e.query_tokens))
        elif e.event_type in ITEM_EVENTS and states[i].recent:
            item_at.append(i)
    rows: list[np.ndarray] = []
    queries: list[np.ndarray] = []
    if item_at:
        newest = hashes_to_u64([states[i].recent[0] for i in item_at])
        seeded = (model.indices_of(newest) == 0) & search.index.contains(newest)
        if seeded.any():
            rows.append(np.array(item_at, dtype=np.int64)[seeded])
            queries.append(search.index.vectors_of(newest[seeded]))
    t_enc = time.perf_counter()
    if text_at and search.encoder is not None:
        rows.append(np.array(text_at, dtype=np.int64))
        queries.append(await asyncio.to_thread(search.cache.encode, search.encoder, texts))
    if token_at and search.token_encoder is not None:
        rows.append(np.array(token_at, dtype=np.int64))
        vectors = await asyncio.to_thread(search.token_encoder.encode, tokens)
        queries.append(np.asarray(vectors, dtype=np.float32))
    if text_at or token_at:
        stage["encode"] = (time.perf_counter() - t_enc) * 1000
    if not rows:
        return None
    row_index = np.concatenate(rows)
    n = min(search.hits, len(search.index))
    scores, hashes = search.index.search(np.concatenate(queries), n)
    found = np.isfinite(scores)
    n_model = len(model.item_ids)
    flat = hashes.ravel()
    idx = model.indices_of(flat)
    new = (idx == 0) & found.ravel()
    extra_hashes, inverse = np.unique(flat[new], return_inverse=True)
    idx[new] = n_model + 1 + inverse
    idx[~found.ravel()] = 0
    b = len(events)
    hits = np.zeros((b, n), dtype=np.int64)
    cos = np.zeros((b, n), dtype=np.float32)
    hits[row_index] = idx.reshape(scores.shape)
    cos[row_index] = np.where(found, scores, 0.0)
    extra = [search.index.item_id(h) for h in extra_hashes.tolist()]
    # "text": the lookups and the text-index search; the encoder's share is "encode".
    stage["text"] = (time.perf_counter() - t0) * 1000 - stage.get("encode", 0.0)
    return TextRows(row_index, hits, cos, extra, extra_hashes, search.personal_weight)


def token_rows(
    events: list[UserEvent], model: ServingModel, search: TextSearch | None
) -> TextRows | None:
    """Searches that carry only hashed ``query_tokens`` (no text ``search`` handles), answered
    with the bundle's learned token encoder (models/token_encoder.py) in the bundle's item
    space: one encode call and one FAISS search for all such rows of the batch; the hits'
    cosines then rank like text hits (``search_scores``). None without a token encoder or
    such rows."""
    encoder = model.token_encoder
    if encoder is None or (search is not None and search.token_encoder is not None):
        return None
    text_ok = search is not None and search.encoder is not None and len(search.index) > 0
    at = [
        i
        for i, e in enumerate(events)
        if e.event_type is EventType.SEARCH
        and e.query_tokens
        and not (text_ok and e.query and e.query.strip())
    ]
    if not at:
        return None
    queries = encoder.encode([" ".join(str(t) for t in events[i].query_tokens or ()) for i in at])
    has = np.linalg.norm(queries, axis=1) > 0
    if not has.any():
        return None
    rows = np.array(at, dtype=np.int64)[has]
    n = min(DEFAULT_TEXT_HITS, len(model.item_ids))
    cos, idx = model.retriever.search(queries[has], n)
    hits = np.zeros((len(events), n), dtype=np.int64)
    sims = np.zeros((len(events), n), dtype=np.float32)
    hits[rows] = idx
    sims[rows] = np.where(idx > 0, cos, 0.0)
    weight = search.personal_weight if search is not None else DEFAULT_PERSONAL_WEIGHT
    return TextRows(rows, hits, sims, [], np.zeros(0, dtype=np.uint64), weight)


def merge_rows(a: TextRows | None, b: TextRows | None) -> TextRows | None:
    """One ``TextRows`` from two with disjoint rows (hits padded to the wider of the two)."""
    if a is None or b is None:
        return a or b
    width = max(a.hits.shape[1], b.hits.shape[1])

    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, width - x.shape[1])))

    return TextRows(
        np.concatenate([a.rows, b.rows]),
        pad(a.hits) + pad(b.hits),
        pad(a.cos) + pad(b.cos),
        a.extra + b.extra,
        np.concatenate([a.extra_hashes, b.extra_hashes]),
        a.personal_weight,
    )


def exclude_extra(
    text: TextRows, states: list[UserState], seen: list[set[int]], n_model: int
) -> None:
    """Add the catalogue-only items of each text row's current session to its ``seen`` set (as
    their ``extra`` indices), so that a viewed new item is not recommended back to its
    viewer."""
    if not text.extra:
        return
    position = {h: n_model + 1 + j for j, h in enumerate(text.extra_hashes.tolist())}
    for r in text.rows.tolist():
        s = states[r]
        session = hashes_to_u64(s.recent[: s.n_session]).tolist()
        seen[r].update(position[h] for h in session if h in position)


def search_scores(
    blended: np.ndarray, candidates: np.ndarray, text: TextRows, n_model: int
) -> np.ndarray:
    """``float32[B, C]``: ``blended`` with the text rows re-scored; the hit columns are the last
    H columns of ``candidates``.

    On a text row, ``score = cos + w * personal``. ``cos`` is the candidate's cosine with the
    query (text-index hits; 0 for the other candidates, whose text was not among the H best).
    ``personal`` is the bundle's served score for this user and candidate (``blended``: the
    ranker's logit plus the blended signals) min-max normalised to [0, 1] over the row's
    candidates the bundle knows, and 0 for items it does not know (catalogue-only, scored by
    text alone). Logits have no fixed scale across users, cosines do: normalising within the
    row makes ``w`` (``STREAMREC_SEARCH_PERSONAL_WEIGHT``, default 0.1) the most that
    personalisation can add, so it reorders matches of similar relevance (MiniLM cosines of
    relevant titles differ by a few hundredths) without lifting an unrelated item above a
    clear match; the session's usual candidates still fill the list when the text matches
    run out. For a user without history the personal score is the bundle's prior.
    """
    rows = text.rows
    out = blended.copy()
    if rows.size == 0:
        return out
    cands = candidates[rows]
    score = blended[rows]
    known = (cands > 0) & (cands <= n_model) & np.isfinite(score)
    lo = np.where(known, score, np.inf).min(axis=1, keepdims=True)
    hi = np.where(known, score, -np.inf).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # rows without a known candidate: inf - inf
        spread = np.where(np.isfinite(hi - lo) & (hi > lo), hi - lo, 1.0)
        personal = np.where(known & (hi > lo), (score - lo) / spread, 0.0)
    cos = np.zeros(score.shape, dtype=np.float32)
    cos[:, cands.shape[1] - text.hits.shape[1] :] = text.cos[rows]
    out[rows] = cos + np.float32(text.personal_weight) * personal
    return out.astype(np.float32)


@dataclass(slots=True)
class ScoredBatch:
    """A batch after state, retrieval and scoring, before blending and top-K: what the
    validation-time tuning captures to try many blends without replaying again."""

    arrays: BatchArrays
    candidates: np.ndarray  # int64[B, C]
    signals: Signals
    stage_ms: dict[str, float]
    unknown_items: int
    text: TextRows | None = None


@dataclass(slots=True)
class BatchInputs:
    """A batch after its Redis round trips (state, online store) and text queries, before
    retrieval and scoring: everything ``score_inputs`` needs, row by row, so that rows served
    from the hot-result cache can be left out (``subset``) and skip FAISS and ONNX.

    arrays:    the model inputs of the B rows (``build_arrays``)
    live:      the online store's answer, or None without the store
    text:      the rows ranked by text (``text_rows`` / ``token_rows``), or None
    n_stored:  int64[B]                  recent item hashes stored in each state
    queries:   uint64[B, ONLINE_DEPTH]   the online store's query hashes of each row (0 = none);
               uint64[B, 0] without the store
    stage_ms:  stages measured so far (state, online, encode, text)
    arrays_ms: ``build_arrays``'s share of the "retrieval" stage
    lookup:    the hot-result cache's keys and answers for the batch, or None without a cache
    replayed:  how many of the B events had already been applied (``Applied.replayed``)
    """

    arrays: BatchArrays
    live: OnlineNeighbours | None
    text: TextRows | None
    n_stored: np.ndarray
    queries: np.ndarray
    stage_ms: dict[str, float]
    arrays_ms: float
    unknown_items: int
    lookup: CacheLookup | None = None
    replayed: int = 0

    @property
    def rows(self) -> int:
        return int(self.n_stored.shape[0])

    def subset(self, rows: np.ndarray) -> BatchInputs:
        """Only ``rows`` (int64[H], ascending), renumbered 0..H-1; every text row must be
        among them (text rows are never served from the cache)."""
        a = self.arrays
        arrays = BatchArrays(a.recent[rows], a.user_vec[rows], a.last[rows],
                             [a.seen[i] for i in rows.tolist()], a.session_len[rows])  # fmt: skip
        live = self.live.subset(rows) if self.live is not None else None
        text = self.text.subset(rows) if self.text is not None else None
        return BatchInputs(arrays, live, text, self.n_stored[rows], self.queries[rows],
                           dict(self.stage_ms), self.arrays_ms, self.unknown_items)  # fmt: skip


@dataclass(slots=True)
class CacheLookup:
    """The hot-result cache's part of one batch (``recommend_cached``).

    keys:  row -> key, for the rows the policy finds cacheable (text rows not yet excluded)
    found: key -> (items, scores) of the keys the cache held
    ms:    time spent on keys, the lookup (when it did not travel with the online store's
           round trip) and decoding
    """

    keys: dict[int, str]
    found: dict[str, tuple[list[str], list[float]]]
    ms: float = 0.0


def cache_keys(
    arrays: BatchArrays,
    n_stored: np.ndarray,
    queries: np.ndarray,
    *,
    namespace: str,
    version: str,
    salt: bytes,
) -> dict[int, str]:
    """row -> cache key of every row the policy finds cacheable (stream/result_cache_policy.py):
    namespace, model version and the digest of the row's inputs."""
    rows = np.flatnonzero(cacheable_rows(arrays.recent, arrays.user_vec, n_stored, None))
    digests = context_digests(rows, arrays.recent, arrays.user_vec, arrays.session_len, queries,
                              salt)  # fmt: skip
    return {int(r): result_key(namespace, version, d)
            for r, d in zip(rows.tolist(), digests, strict=True)}  # fmt: skip


async def fetch_cached(
    cache: ResultCache, keys: dict[int, str]
) -> dict[str, tuple[list[str], list[float]]]:
    """One ``get_many`` for the distinct ``keys``; key -> (items, scores) of those found. A
    failing cache is logged and answers nothing (see ``recommend_cached``)."""
    distinct = list(dict.fromkeys(keys.values()))
    if not distinct:
        return {}
    try:
        values = await cache.get_many(distinct)
    except ResultCacheError as exc:
        log.warning("result cache lookup failed (%s); serving the batch without it", exc)
        return {}
    found: dict[str, tuple[list[str], list[float]]] = {}
    for key, value in zip(distinct, values, strict=True):
        hit = decode_result(value) if value is not None else None
        if hit is not None:
            found[key] = hit
    return found


async def prepare_batch(
    triggers: list[Trigger],
    store: StateStore,
    model: ServingModel,
    *,
    online: CovisitStore | None = None,
    search: TextSearch | None = None,
    cache: ResultCache | None = None,
    cache_salt: bytes = b"",
) -> BatchInputs:
    """Update state for every trigger (one Redis round trip), apply and read the online
    co-visitation store (one more, when given; it learns from every batch whatever the
    blend), map states to model inputs and find the text rows (with ``search``: one encoder
    call, one text-index search). Every row's state is updated here, whether its list is then
    computed or taken from the hot-result cache.

    With ``cache``, the cacheable rows' keys are looked up here (``inputs.lookup``), in one
    ``get_many`` sent concurrently with the online store's call: the online script runs for
    milliseconds in Redis, and the lookup's round trip hides behind it (what does not hide,
    such as parsing the reply, counts in the "online" stage then)."""
    stage: dict[str, float] = {}
    events = [t.event for t in triggers]
    t0 = time.perf_counter()
    updates, unknown = state_updates(events, model)
    applied = await store.apply(updates)
    states = [decode_state(b) for b in applied.states]
    t1 = time.perf_counter()
    stage["state"] = (t1 - t0) * 1000

    batch = (
        online_batch(events, states, model, replayed=applied.replayed)
        if online is not None
        else None
    )
    t2 = time.perf_counter()
    arrays = build_arrays(states, model)
    n_stored = np.array([len(s.recent) for s in states], dtype=np.int64)
    t3 = time.perf_counter()
    arrays_ms = (t3 - t2) * 1000
    queries = (
        batch.queries.reshape(len(states), ONLINE_DEPTH)
        if batch is not None
        else np.zeros((len(states), 0), dtype=np.uint64)
    )
    lookup = None
    if cache is not None:
        keys = cache_keys(arrays, n_stored, queries, namespace=cache.namespace,
                          version=model.version, salt=cache_salt)  # fmt: skip
        lookup = CacheLookup(keys, {})
    t4 = time.perf_counter()
    live: OnlineNeighbours | None = None
    if online is not None and batch is not None:
        call = online.update_and_read(batch)
        if cache is not None and lookup is not None and lookup.keys:
            read, lookup.found = await asyncio.gather(call, fetch_cached(cache, lookup.keys))
        else:
            read = await call
        live = OnlineNeighbours.of(read, model, len(states))
        stage["online"] = ((t2 - t1) + (time.perf_counter() - t4)) * 1000
    elif cache is not None and lookup is not None:
        lookup.found = await fetch_cached(cache, lookup.keys)
    if lookup is not None:
        # The keys, plus the lookup itself unless it travelled with the online store's call.
        alone = (time.perf_counter() - t4) * 1000 if online is None else 0.0
        lookup.ms = (t4 - t3) * 1000 + alone
    text = None
    if search is not None:
        text = await text_rows(events, states, model, search, stage)
        if text is not None:
            exclude_extra(text, states, arrays.seen, len(model.item_ids))
    if model.token_encoder is not None:
        t_tok = time.perf_counter()
        text = merge_rows(text, token_rows(events, model, search))
        stage["text"] = stage.get("text", 0.0) + (time.perf_counter() - t_tok) * 1000
    return BatchInputs(arrays, live, text, n_stored, queries, stage, arrays_ms, unknown, lookup,
                       applied.n_replayed)  # fmt: skip


def score_inputs(
    inputs: BatchInputs,
    model: ServingModel,
    *,
    k: int,
    n_candidates: int,
    every_signal: bool = False,
) -> ScoredBatch:
    """Gather candidates from every source in use and compute their signals: one FAISS
    search, one ONNX call. Signals (and their candidate sources) whose blend weight is 0 are
    skipped unless ``every_signal``. The text rows' hits are the last candidate columns;
    catalogue-only hits are scored as padding by the bundle and re-scored in ``rank_batch``."""
    stage = dict(inputs.stage_ms)
    weights = model.blend
    arrays, live, text = inputs.arrays, inputs.live, inputs.text
    t1 = time.perf_counter()
    popular = None
    if live is not None and live.trending.size:
        popular = np.concatenate([live.trending, model.popular])
    n = max(n_candidates, k + model.max_recent)
    parts = [candidates_for(arrays, model, n, popular)]
    use_online = live is not None and (every_signal or weights.online > 0)
    if use_online and live is not None:
        parts.append(live.candidates)
    use_covisit = (every_signal or weights.covisit > 0) and model.covisit_neighbours.shape[1] > 0
    if use_covisit:
        parts.append(covisit_candidates(arrays.recent, model.covisit_neighbours))
    use_seq = (every_signal or weights.sequential > 0) and model.sequential_neighbours.shape[1] > 0
    if use_seq:
        parts.append(covisit_candidates(arrays.recent, model.sequential_neighbours, depth=1))
    knn = None
    if every_signal or weights.knn > 0:
        knn = knn_scores(model.session_index, arrays.recent, arrays.session_len)
        parts.append(knn.top(KNN_CANDIDATES))
    if text is not None:
        parts.append(text.hits)  # last: search_scores finds the hits' cosines there
    cands = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    # The bundle scores catalogue-only hits as padding (their scores are replaced later).
    known = (
        cands if text is None or not text.extra else np.where(cands > len(model.item_ids), 0, cands)
    )
    t2 = time.perf_counter()
    stage["retrieval"] = inputs.arrays_ms + (t2 - t1) * 1000

    signals = Signals(model.scorer.score(arrays.recent, arrays.user_vec, known))
    if use_covisit:
        signals.covisit = covisit_scores(arrays.recent, known, model.covisit_neighbours,
                                         model.covisit_weights)  # fmt: skip
    if use_seq:
        signals.sequential = covisit_scores(arrays.recent, known, model.sequential_neighbours,
                                            model.sequential_weights, depth=1)  # fmt: skip
    if knn is not None:
        signals.knn = knn.lookup(known)
    if use_online and live is not None:
        signals.online = live.lookup(known)
    stage["scoring"] = (time.perf_counter() - t2) * 1000
    return ScoredBatch(arrays, cands, signals, stage, inputs.unknown_items, text)


async def score_batch(
    triggers: list[Trigger],
    store: StateStore,
    model: ServingModel,
    *,
    k: int,
    n_candidates: int,
    online: CovisitStore | None = None,
    every_signal: bool = False,
    search: TextSearch | None = None,
) -> ScoredBatch:
    """Update state for every trigger, gather candidates from every source in use and
    compute their signals (``prepare_batch`` then ``score_inputs``): one Redis round trip for
    user state, one for the online co-visitation store (when given), one FAISS search, one
    ONNX call."""
    inputs = await prepare_batch(triggers, store, model, online=online, search=search)
    return score_inputs(inputs, model, k=k, n_candidates=n_candidates, every_signal=every_signal)


def make_recommendation(
    t: Trigger, items: list[str], scores: list[float], version: str, now_ms: float
) -> Recommendation:
    """The Recommendation answering ``t`` with ``items`` (best first) and their ``scores``."""
    e = t.event
    return Recommendation(
        user_id=e.user_id,
        session_id=e.session_id,
        event_id=e.event_id,
        kind="search" if e.event_type is EventType.SEARCH else "recommend",
        items=items,
        scores=scores,
        model_version=version,
        produced_at_ms=int(now_ms),
        trigger_timestamp_ms=e.timestamp_ms,
        latency_ms=round(max(0.0, now_ms - t.sent_ms), 3),
    )


def rank_batch(
    triggers: list[Trigger],
    scored: ScoredBatch,
    model: ServingModel,
    *,
    k: int,
    clock: Callable[[], float] = time.time,
) -> BatchResult:
    """Blend the signals (text rows: ``search_scores``), take the top-K unseen items and
    build one Recommendation per trigger, in order."""
    t3 = time.perf_counter()
    scores = blend_scores(scored.signals, model.blend)
    item_ids = model.item_ids
    n_model = len(item_ids)
    extra: list[str] = []
    if scored.text is not None:
        scores = search_scores(scores, scored.candidates, scored.text, n_model)
        extra = scored.text.extra
    ranked_items, ranked_scores = top_k_excluding(
        np.round(scores, 5), scored.candidates, scored.arrays.seen, k
    )
    now_ms = clock() * 1000
    recs = [
        make_recommendation(
            t,
            [item_ids[i - 1] if i <= n_model else extra[i - n_model - 1] for i in idx_row],
            score_row,
            model.version,
            now_ms,
        )
        for t, idx_row, score_row in zip(triggers, ranked_items, ranked_scores, strict=True)
    ]
    stage = dict(scored.stage_ms)
    stage["rank"] = (time.perf_counter() - t3) * 1000
    return BatchResult(recs, stage, scored.unknown_items)


async def recommend_batch(
    triggers: list[Trigger],
    store: StateStore,
    model: ServingModel,
    *,
    k: int,
    n_candidates: int,
    online: CovisitStore | None = None,
    search: TextSearch | None = None,
    clock: Callable[[], float] = time.time,
    cache: ResultCache | None = None,
) -> BatchResult:
    """Update state for every trigger and return one Recommendation per trigger, in order.
    With ``cache`` (the hot-result cache), rows whose context repeats take their list from
    it and skip retrieval and scoring (``recommend_cached``)."""
    if not triggers:
        return BatchResult([])
    salt = context_salt(k=k, n_candidates=n_candidates, online=online is not None)
    inputs = await prepare_batch(triggers, store, model, online=online, search=search,
                                 cache=cache, cache_salt=salt)  # fmt: skip
    if cache is not None:
        result = await recommend_cached(triggers, inputs, model, cache, k=k,
                                        n_candidates=n_candidates, clock=clock)  # fmt: skip
    else:
        scored = score_inputs(inputs, model, k=k, n_candidates=n_candidates)
        result = rank_batch(triggers, scored, model, k=k, clock=clock)
    result.replayed = inputs.replayed
    return result


async def recommend_cached(
    triggers: list[Trigger],
    inputs: BatchInputs,
    model: ServingModel,
    cache: ResultCache,
    *,
    k: int,
    n_candidates: int,
    clock: Callable[[], float] = time.time,
) -> BatchResult:
    """The batch's lists with the hot-result cache (stream/result_cache_policy.py says what
    is cacheable and why a hit is the list the pipeline would compute, up to the TTL's
    staleness of online co-visitation and trending).

    ``inputs.lookup`` holds the cacheable rows' keys and what one ``get_many`` (MGET) found
    (``prepare_batch``). Retrieval, scoring and ranking run for the uncacheable rows and the
    first row of each missed key only (a later row with the same key copies that list: same
    inputs, same read of the online store); then one ``put_many`` (one EVAL of SET PX) fills
    the computed keys. A cache that fails is logged and served around: the batch's state and
    online-store updates are done, so failing it would only delay its answers (a retry
    finds its events applied and skips the online store's update for them).
    ``cache_lookups`` counts rows: ``hit`` (reused, from the cache or an identical earlier
    row), ``miss`` (computed and filled) and ``uncacheable`` (warm users, text rows)."""
    b = inputs.rows
    lookup = inputs.lookup if inputs.lookup is not None else CacheLookup({}, {})
    key_of = dict(lookup.keys)
    if inputs.text is not None:  # ranked by text: never from the cache
        for r in inputs.text.rows.tolist():
            key_of.pop(int(r), None)
    cached = lookup.found
    compute: list[int] = []
    computed_by: dict[str, int] = {}  # missed key -> the row that computes it
    counts = {"hit": 0, "miss": 0, "uncacheable": 0}
    for i in range(b):
        row_key = key_of.get(i)
        if row_key is None:
            counts["uncacheable"] += 1
            compute.append(i)
        elif row_key in cached or row_key in computed_by:
            counts["hit"] += 1
        else:
            counts["miss"] += 1
            computed_by[row_key] = i
            compute.append(i)

    recs: list[Recommendation | None] = [None] * b
    stage = dict(inputs.stage_ms)
    if compute:
        part = inputs if len(compute) == b else inputs.subset(np.array(compute, dtype=np.int64))
        scored = score_inputs(part, model, k=k, n_candidates=n_candidates)
        ranked = rank_batch([triggers[i] for i in compute], scored, model, k=k, clock=clock)
        stage = ranked.stage_ms
        for i, rec in zip(compute, ranked.recommendations, strict=True):
            recs[i] = rec
    t1 = time.perf_counter()
    now_ms = clock() * 1000
    out: list[Recommendation] = []
    for i, computed in enumerate(recs):
        if computed is None:
            key = key_of[i]
            if key in cached:
                items, scores = cached[key]
            else:
                source = recs[computed_by[key]]
                assert source is not None
                items, scores = source.items, source.scores
            computed = make_recommendation(triggers[i], list(items), list(scores),
                                           model.version, now_ms)  # fmt: skip
        out.append(computed)
    fills = [(key, encode_result(out[i].items, out[i].scores)) for key, i in computed_by.items()]
    try:
        await cache.put_many(fills)
    except ResultCacheError as exc:
        log.warning("result cache fill failed (%s); the batch is served regardless", exc)
    stage["cache"] = lookup.ms + (time.perf_counter() - t1) * 1000
    return BatchResult(out, stage, inputs.unknown_items, cache_lookups=counts)
