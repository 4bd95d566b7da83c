"""Search quality on real queries: BM25 vs a text encoder vs a hybrid of both.

The data is Home Depot's product search relevance set: customer search terms, each paired
with a product that was shown for it and a human grade (the mean of >= 3 raters, 1 = not
relevant .. 3 = highly relevant). Each query is ranked against

* the whole title catalogue (every distinct ``product_uid``), and
* its own graded set only (a re-ranking task: which of the shown products is best?).

Metrics, per query, then averaged over queries:

* ``NDCG@10`` with graded gain ``gain = 2 ** (grade - 1) - 1`` on the continuous grade
  (1 -> 0, 2 -> 1, 2.33 -> 1.51, 3 -> 3) and discount ``1 / log2(rank + 1)``; the ideal DCG
  sorts the query's own graded set by gain. Unjudged products have gain 0.
* ``MRR``: the reciprocal rank of the best-graded product; when several share the best
  grade, the first of them in the ranking counts.

Every ranking breaks score ties by catalogue row (lowest first; rows are sorted by
``product_uid``), so results are deterministic; BM25 has many exact ties (titles with no
query term all score 0; about 1,200 titles occur under two product ids).

Only ranks of the graded products are ever needed (DCG sums the gains of graded products
in the top 10; MRR needs the best one's rank), so no method sorts the catalogue: ranks
are counted with comparisons against each graded product's score (``ranks_of``), exact
over the whole catalogue.

The module is pure numpy/scipy; the encoder and the data are passed in (``TextEncoder``
is structural, so ``models.text_encoder.MiniLMEncoder`` or a test stand-in both fit).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TextIO

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

COLUMNS = ("product_uid", "product_title", "search_term", "relevance")
GRADE_MIN, GRADE_MAX = 1.0, 3.0
K = 10
FusionHow = Literal["minmax", "zscore", "rrf"]
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # encoder weight; 0 / 1 are the parts


class TextEncoder(Protocol):
    """What the evaluation needs from a text encoder (see ``models/text_encoder.py``)."""

    dim: int
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32[N, dim], rows L2-normalised (so a dot product is the cosine)."""
        ...


# ----------------------------------------------------------------------------- loading


@dataclass
class SearchLoadReport:
    """What the loader read and what it could not use; nothing is dropped silently."""

    source: str
    rows: int = 0  # data rows seen (header excluded), parsed or not
    parsed: int = 0
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)  # first few, as line numbers + why
    title_conflicts: int = 0  # rows whose product_uid was seen with another title (first kept)
    duplicate_pairs: int = 0  # (query, product) seen again after normalisation (grades averaged)

    def bad(self, line: int, reason: str) -> None:
        self.bad_rows += 1
        self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + 1
        if len(self.bad_examples) < 5:
            self.bad_examples.append(f"line {line}: {reason}")

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.bad_reasons.items())) or "none"
        return (
            f"{self.rows} rows, {self.parsed} parsed, {self.bad_rows} unparseable ({reasons}); "
            f"{self.title_conflicts} rows with a conflicting title (first kept), "
            f"{self.duplicate_pairs} duplicate query-product pairs (grades averaged)"
        )


@dataclass(frozen=True)
class SearchData:
    """Queries, the title catalogue and the graded pairs, in CSR form.

    Query ``q``'s graded products are catalogue rows ``qrel_doc[qrel_ptr[q]:qrel_ptr[q+1]]``
    (sorted by row) with grades ``qrel_grade[...]`` in [1, 3].
    """

    queries: list[str]  # Q normalised query texts, sorted
    product_ids: np.ndarray  # int64[P], sorted; catalogue row -> product_uid
    titles: list[str]  # P titles, by catalogue row
    qrel_ptr: np.ndarray  # int64[Q + 1]
    qrel_doc: np.ndarray  # int64[R] catalogue rows
    qrel_grade: np.ndarray  # float64[R]
    report: SearchLoadReport

    def graded(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue rows int64[n], grades float64[n]) of query ``q``."""
        lo, hi = self.qrel_ptr[q], self.qrel_ptr[q + 1]
        return self.qrel_doc[lo:hi], self.qrel_grade[lo:hi]


def normalise_query(text: str) -> str:
    """Grouping key of a search term: lowercase, stripped, inner whitespace collapsed."""
    return " ".join(text.lower().split())


def _open_text(path: Path) -> TextIO:
    # latin-1 maps every byte, so decoding never fails; the file's few non-ASCII bytes are
    # mojibake from the source (see the dataset README).
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="latin-1", newline="")
    return open(path, encoding="latin-1", newline="")


def _rows(f: Iterable[str], report: SearchLoadReport) -> Iterator[tuple[int, list[str]]]:
    """csv rows with their line number; a row the csv module rejects is counted as bad."""
    reader = csv.reader(f)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a NUL byte: the reader resumes at the next line
            report.rows += 1
            report.bad(reader.line_num, f"csv: {err}")
            continue
        yield reader.line_num, row


def load_search_csv(path: str | Path) -> SearchData:
    """Read the Home Depot ``train.csv`` (gzip or plain, latin-1).

    A row is unparseable (counted by reason in ``report``, never silently dropped) when it
    has the wrong number of fields, a non-integer product_uid, a relevance that is not a
    number in [1, 3], or an empty search term or title.
    """
    path = Path(path)
    report = SearchLoadReport(source=str(path))
    titles: dict[int, str] = {}
    grades: dict[tuple[str, int], list[float]] = {}
    with _open_text(path) as f:
        rows = _rows(f, report)
        _, header = next(rows, (0, []))
        header = [h.strip() for h in header]
        if not set(COLUMNS) <= set(header):
            raise ValueError(f"{path}: expected columns {list(COLUMNS)}, header is {header}")
        cols = [header.index(c) for c in COLUMNS]
        width = len(header)
        for line, row in rows:
            report.rows += 1
            if len(row) != width:
                report.bad(line, f"{len(row)} fields, expected {width}")
                continue
            uid_s, title, term, rel_s = (row[c] for c in cols)
            try:
                uid = int(uid_s)
            except ValueError:
                report.bad(line, "product_uid not an integer")
                continue
            try:
                grade = float(rel_s)
            except ValueError:
                report.bad(line, "relevance not a number")
                continue
            if not GRADE_MIN <= grade <= GRADE_MAX:  # also rejects nan
                report.bad(line, "relevance outside [1, 3]")
                continue
            query = normalise_query(term)
            if not query:
                report.bad(line, "empty search_term")
                continue
            if not title.strip():
                report.bad(line, "empty product_title")
                continue
            report.parsed += 1
            seen = titles.setdefault(uid, title)
            if seen != title:
                report.title_conflicts += 1
            key = (query, uid)
            if key in grades:
                report.duplicate_pairs += 1
            grades.setdefault(key, []).append(grade)

    product_ids = np.array(sorted(titles), dtype=np.int64)
    row_of = {int(u): i for i, u in enumerate(product_ids)}
    queries = sorted({q for q, _ in grades})
    q_of = {q: i for i, q in enumerate(queries)}
    triples = sorted((q_of[q], row_of[u], float(np.mean(g))) for (q, u), g in grades.items())
    qs = np.array([t[0] for t in triples], dtype=np.int64)
    ptr = np.zeros(len(queries) + 1, dtype=np.int64)
    np.add.at(ptr, qs + 1, 1)
    return SearchData(
        queries=queries,
        product_ids=product_ids,
        titles=[titles[int(u)] for u in product_ids],
        qrel_ptr=np.cumsum(ptr),
        qrel_doc=np.array([t[1] for t in triples], dtype=np.int64),
        qrel_grade=np.array([t[2] for t in triples], dtype=np.float64),
        report=report,
    )


def split_queries(queries: Sequence[str], valid_frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """bool[Q]: True for validation queries, chosen by a seeded hash of the query text.

    A hash of the text (not a permutation of positions) keeps each query on the same side
    whatever subset of queries is evaluated (``--limit-queries``) and however they are
    ordered. Alpha and the fusion method are chosen on validation; test is reported.
    """
    out = np.empty(len(queries), dtype=bool)
    salt = f"search-split-{seed}:".encode()
    for i, q in enumerate(queries):
        h = int.from_bytes(hashlib.sha256(salt + q.encode()).digest()[:8], "big")
        out[i] = h / 2.0**64 < valid_frac
    return out


# ----------------------------------------------------------------------------- BM25

_TOKEN = re.compile(r"[a-z0-9]+")


def _stem(tok: str) -> str:
    """A light plural stemmer: bolts -> bolt, batteries -> battery; glass, bus stay."""
    if len(tok) > 4 and tok.endswith("ies"):
        return tok[:-3] + "y"
    if len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def tokenize(text: str, *, stem: bool = True) -> list[str]:
    """Lowercase, split on non-alphanumerics, optionally de-pluralise. Queries and titles
    share it, so a query term matches a title term iff they tokenise the same."""
    toks = _TOKEN.findall(text.lower())
    return [_stem(t) for t in toks] if stem else toks


class BM25:
    """Okapi BM25 over a fixed corpus as one sparse matrix, scored by a sparse product.

    ``rank-bm25``'s ``BM25Okapi`` loops in Python per query over every document, far too
    slow for 55k titles x 12k queries; here a query batch is ``Q[c, V] @ W[V, P]`` where
    ``W[t, d] = idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))`` and ``Q`` holds
    query term counts (a repeated query term counts twice, as in ``rank-bm25``). idf is
    Lucene's ``ln(1 + (N - n + 0.5) / (n + 0.5))``, always positive.
    """

    def __init__(
        self, docs: Sequence[str], *, k1: float = 1.2, b: float = 0.75, stem: bool = True
    ) -> None:
        self.k1, self.b, self.stem = k1, b, stem
        self.vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        for d, text in enumerate(docs):
            for tok in tokenize(text, stem=stem):
                rows.append(self.vocab.setdefault(tok, len(self.vocab)))
                cols.append(d)
        n_docs, n_terms = len(docs), len(self.vocab)
        tf = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n_terms, n_docs)
        )
        tf.sum_duplicates()  # [V, P] term counts
        doc_len = np.asarray(tf.sum(axis=0)).ravel()  # [P]
        avgdl = float(doc_len.mean()) if n_docs else 0.0
        df = np.diff(tf.indptr)  # [V] documents per term (csr row lengths)
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))  # [V]
        norm = k1 * (1.0 - b + b * doc_len / max(avgdl, 1e-12))  # [P]
        coo = tf.tocoo()
        data = self.idf[coo.row] * coo.data * (k1 + 1.0) / (coo.data + norm[coo.col])
        self.weights = sp.csr_matrix(
            (data.astype(np.float32), (coo.row, coo.col)), shape=(n_terms, n_docs)
        )  # [V, P]

    @property
    def n_docs(self) -> int:
        return int(self.weights.shape[1])

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """float32[c, V] sparse query term counts (terms outside the corpus are ignored)."""
        rows: list[int] = []
        cols: list[int] = []
        for i, q in enumerate(queries):
            for tok in tokenize(q, stem=self.stem):
                if (t := self.vocab.get(tok)) is not None:
                    rows.append(i)
                    cols.append(t)
        m = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)),
            shape=(len(queries), len(self.vocab)),
        )
        m.sum_duplicates()
        return m

    def score(self, queries: Sequence[str]) -> np.ndarray:
        """float32[c, P] BM25 score of every document for every query."""
        return np.asarray((self.query_matrix(queries) @ self.weights).toarray(), dtype=np.float32)


# ----------------------------------------------------------------------------- encoder


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def cached_encode(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache_dir: Path | None,
    *,
    batch: int = 2048,
    progress: str | None = None,
) -> tuple[np.ndarray, float, bool]:
    """(float32[N, dim] embeddings, seconds spent encoding, whether it came from the cache).

    The file is ``<cache_dir>/<encoder name>-<sha256 of the texts>.npy``: embedding 55k
    titles with a CPU MiniLM takes minutes; a rerun with the same encoder and titles loads
    it in milliseconds. ``cache_dir=None`` disables the cache. Texts are encoded in calls
    of ``batch``, sorted by length so each call pads little; ``progress`` names a tqdm bar.
    """
    path = None
    if cache_dir is not None:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)
        path = Path(cache_dir) / f"{safe}-{_texts_digest(texts)}.npy"
        if path.exists():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(texts), encoder.dim):
                return arr.astype(np.float32, copy=False), 0.0, True
    t0 = time.perf_counter()
    arr = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    starts = range(0, len(texts), batch)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        rows = order[start : start + batch]
        out = np.asarray(encoder.encode([texts[i] for i in rows]), dtype=np.float32)
        if out.shape != (len(rows), encoder.dim):
            raise ValueError(
                f"{encoder.name}: encode gave {out.shape}, want {(len(rows), encoder.dim)}"
            )
        arr[rows] = out
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
    return arr, seconds, False


def encoder_scores(query_emb: np.ndarray, title_emb: np.ndarray) -> np.ndarray:
    """float32[c, P] cosine of each query row (float32[c, d]) with each title (float32[P, d])."""
    return np.asarray(query_emb @ title_emb.T, dtype=np.float32)


# ----------------------------------------------------------------------------- fusion


@dataclass(frozen=True)
class Fusion:
    """How the hybrid combines the two methods' scores for one query's candidates.

    * ``minmax`` / ``zscore``: each method's scores are normalised per query with statistics
      over that method's own candidates (its top ``depth`` over the catalogue, or the graded
      set in the re-ranking task), then ``alpha * encoder + (1 - alpha) * bm25``. The
      normalisation is affine, so every catalogue product gets a fused score and the
      ranking stays exact over the whole catalogue.
    * ``rrf``: weighted reciprocal rank fusion, ``alpha / (k + rank_enc) + (1 - alpha) /
      (k + rank_bm25)`` over each method's top ``depth`` (a product outside a list gets 0
      from it; products in neither list tie at 0, after all others).

    ``alpha`` 1 is the encoder alone and 0 BM25 alone, exactly (the raw scores are returned:
    a normalisation could merge nearly equal floats into ties and reorder them).
    """

    how: FusionHow
    alpha: float
    depth: int = 100
    rrf_k: float = 60.0

    @property
    def label(self) -> str:
        return f"hybrid {self.how} alpha={self.alpha:g}"


def _normalise(
    scores: np.ndarray, how: str, depth: int | None, valid: np.ndarray | None
) -> np.ndarray:
    """float32[c, n] scores normalised per row over the row's candidates.

    Candidates: the ``valid`` entries (all if None), cut to the top ``depth`` (None: all).
    A row whose candidates all score the same is only shifted (its top maps to 0).
    """
    s = scores.astype(np.float64)
    cand = np.where(valid, s, -np.inf) if valid is not None else s
    n = cand.shape[1]
    if depth is not None and depth < n:
        top = -np.partition(-cand, depth - 1, axis=1)[:, :depth]  # [c, depth], unordered
    else:
        top = cand
    ok = np.isfinite(top)
    cnt = np.maximum(ok.sum(axis=1, keepdims=True), 1)
    if how == "minmax":
        hi = np.where(ok, top, -np.inf).max(axis=1, keepdims=True)
        lo = np.where(ok, top, np.inf).min(axis=1, keepdims=True)
        hi = np.where(np.isfinite(hi), hi, 0.0)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        span = hi - lo
        out = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), s - hi)
    elif how == "zscore":
        z = np.where(ok, top, 0.0)
        mean = z.sum(axis=1, keepdims=True) / cnt
        var = (np.where(ok, top - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / cnt
        std = np.sqrt(var)
        out = np.where(std > 0, (s - mean) / np.where(std > 0, std, 1.0), s - mean)
    else:
        raise ValueError(f"unknown normalisation {how!r}")
    return out.astype(np.float32)


def _rrf_part(
    scores: np.ndarray, depth: int | None, valid: np.ndarray | None, k: float
) -> np.ndarray:
    """float32[c, n]: 1 / (k + rank) for each row's top ``depth`` candidates, 0 elsewhere."""
    c, n = scores.shape
    cand = np.where(valid, scores, -np.inf) if valid is not None else scores
    d = n if depth is None else min(depth, n)
    if d < n:
        top = np.argpartition(-cand, d - 1, axis=1)[:, :d]  # [c, d] columns, unordered
    else:
        top = np.broadcast_to(np.arange(n), (c, n))
    vals = np.take_along_axis(cand, top, axis=1)
    # order the top by (score desc, column asc): the ranking's tie rule
    order = np.lexsort((top, -vals), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    part = np.zeros((c, n), dtype=np.float32)
    rr = (1.0 / (k + np.arange(1, d + 1))).astype(np.float32)
    np.put_along_axis(part, top, np.where(np.isfinite(vals), rr[None, :], 0.0), axis=1)
    return part


def fusion_parts(
    enc: np.ndarray,
    bm25: np.ndarray,
    fusion: Fusion,
    *,
    depth: int | None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(encoder part, BM25 part), float32[c, n] each: the normalised scores (or RRF terms)
    that ``fuse`` mixes. They do not depend on alpha, so an alpha grid computes them once."""
    if fusion.how == "rrf":
        return (
            _rrf_part(enc, depth, valid, fusion.rrf_k),
            _rrf_part(bm25, depth, valid, fusion.rrf_k),
        )
    return _normalise(enc, fusion.how, depth, valid), _normalise(bm25, fusion.how, depth, valid)


def fuse(
    enc: np.ndarray,
    bm25: np.ndarray,
    fusion: Fusion,
    *,
    depth: int | None,
    valid: np.ndarray | None = None,
    parts: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """float32[c, n] hybrid scores from the encoder's and BM25's float32[c, n] scores.

    ``depth``: candidates per method for the statistics (catalogue: ``fusion.depth``;
    re-ranking: None, the whole graded set given by ``valid``). ``parts``: precomputed
    ``fusion_parts`` for the same scores and fusion method.
    """
    if fusion.alpha >= 1.0:
        return enc
    if fusion.alpha <= 0.0:
        return bm25
    pe, pb = (
        parts if parts is not None else fusion_parts(enc, bm25, fusion, depth=depth, valid=valid)
    )
    a = np.float32(fusion.alpha)
    return np.asarray(a * pe + (1 - a) * pb, dtype=np.float32)


# ----------------------------------------------------------------------------- metrics


def ranks_of(scores: np.ndarray, idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int64[c, m] 1-based rank of column ``idx[r, j]`` in row ``r`` of ``scores``.

    ``scores``: float[c, n]; ``idx``: int[c, m] columns; ``valid``: bool[c, m] (invalid
    entries get rank 0). Rank = 1 + #(higher scores) + #(equal scores in lower columns):
    the ranking sorts by score descending, ties to the lowest column. Costs O(c m n)
    comparisons, no sort.
    """
    c, n = scores.shape
    m = idx.shape[1]
    rows = np.arange(c)
    cols = np.arange(n)
    out = np.zeros((c, m), dtype=np.int64)
    for j in range(m):
        live = valid[:, j]
        if not live.any():
            continue
        r = rows[live]
        s = scores[r]
        col = idx[r, j]
        v = s[np.arange(len(r)), col][:, None]
        higher = (s > v).sum(axis=1)
        tied_before = ((s == v) & (cols[None, :] < col[:, None])).sum(axis=1)
        out[r, j] = higher + tied_before + 1
    return out


def gain(grades: np.ndarray) -> np.ndarray:
    """Graded gain ``2 ** (grade - 1) - 1``: 1 (not relevant) -> 0, 2 -> 1, 3 -> 3."""
    return np.exp2(np.asarray(grades, dtype=np.float64) - 1.0) - 1.0


def ndcg_at_k(ranks: np.ndarray, grades: np.ndarray, valid: np.ndarray, k: int = K) -> np.ndarray:
    """float64[c] NDCG@k of each row (nan where the graded set has no gain).

    ``ranks``: int[c, m] ranks of the row's graded products in the evaluated ranking;
    ``grades``: float[c, m]; ``valid``: bool[c, m]. Unjudged products count as gain 0, so
    DCG only needs the graded ones in the top ``k``; the ideal DCG puts the graded set's
    gains in decreasing order.
    """
    g = np.where(valid, gain(grades), 0.0)
    hit = valid & (ranks >= 1) & (ranks <= k)
    dcg = np.where(hit, g / np.log2(np.maximum(ranks, 1) + 1.0), 0.0).sum(axis=1)
    ideal = -np.sort(-g, axis=1)[:, :k]
    idcg = (ideal / np.log2(np.arange(2, ideal.shape[1] + 2))).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def best_reciprocal_rank(ranks: np.ndarray, grades: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float64[c]: 1 / rank of the best-graded product (the first one in the ranking when
    several share the best grade); nan for a row with no graded product."""
    g = np.where(valid, grades, -np.inf)
    best = valid & np.isclose(g, g.max(axis=1, keepdims=True), rtol=0.0, atol=1e-9)
    r = np.where(best, ranks, np.iinfo(np.int64).max).min(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(best.any(axis=1), 1.0 / r, np.nan)


# ----------------------------------------------------------------------------- evaluation

CATALOGUE = "catalogue"
RERANK = "graded set"
SETTINGS = (CATALOGUE, RERANK)


def informative(data: SearchData, setting: str) -> np.ndarray:
    """bool[Q]: the queries a setting can score.

    Catalogue: some graded product is relevant (best grade > 1), else NDCG is 0/0.
    Graded set: also >= 2 products with different grades; one grade for all makes every
    order perfect (NDCG = MRR = 1 for any method), which says nothing.
    """
    out = np.zeros(len(data.queries), dtype=bool)
    for q in range(len(data.queries)):
        _, g = data.graded(q)
        ok = len(g) > 0 and g.max() > GRADE_MIN
        if setting == RERANK:
            ok = ok and len(g) >= 2 and g.max() - g.min() > 1e-9
        out[q] = ok
    return out


@dataclass
class PerQuery:
    """Per-query metrics of every method: ``ndcg[method]`` and ``rr[method]`` float64[n]."""

    qids: np.ndarray  # int64[n] query ids, in the order of the arrays
    ndcg: dict[str, np.ndarray] = field(default_factory=dict)
    rr: dict[str, np.ndarray] = field(default_factory=dict)

    def mean(self, method: str) -> tuple[float, float]:
        return float(np.nanmean(self.ndcg[method])), float(np.nanmean(self.rr[method]))


def _padded(data: SearchData, qids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows int64[c, m], grades float64[c, m], valid bool[c, m]) of the queries' graded sets."""
    sizes = data.qrel_ptr[qids + 1] - data.qrel_ptr[qids]
    m = max(int(sizes.max()), 1) if len(qids) else 1
    rows = np.zeros((len(qids), m), dtype=np.int64)
    grades = np.zeros((len(qids), m), dtype=np.float64)
    valid = np.arange(m)[None, :] < sizes[:, None]
    for i, q in enumerate(qids):
        d, g = data.graded(int(q))
        rows[i, : len(d)] = d
        grades[i, : len(g)] = g
    return rows, grades, valid


def evaluate_queries(
    data: SearchData,
    qids: np.ndarray,
    *,
    bm25: BM25,
    query_emb: np.ndarray,
    title_emb: np.ndarray,
    fusions: Sequence[Fusion],
    setting: str,
    chunk: int = 128,
    extra: dict[str, np.ndarray] | None = None,
) -> PerQuery:
    """NDCG@10 and best-graded RR per query for BM25, the encoder and each fusion.

    ``qids``: int64[n] query ids; ``query_emb``: float32[Q, d] for all queries (indexed by
    id); ``title_emb``: float32[P, d]. ``setting`` is ``CATALOGUE`` (rank among all P titles)
    or ``RERANK`` (rank among the query's graded set). ``extra``: named float32[P] score
    vectors shared by all queries (e.g. a random order), ranked like the methods.
    Queries are processed in chunks of similar graded-set size to keep padding small.
    """
    qids = np.asarray(qids, dtype=np.int64)
    methods = ["bm25", "encoder", *(f.label for f in fusions), *(extra or {})]
    res = PerQuery(qids=qids)
    for name in methods:
        res.ndcg[name] = np.full(len(qids), np.nan)
        res.rr[name] = np.full(len(qids), np.nan)
    sizes = data.qrel_ptr[qids + 1] - data.qrel_ptr[qids]
    order = np.argsort(sizes, kind="stable")
    texts = data.queries
    for start in range(0, len(order), chunk):
        pos = order[start : start + chunk]
        batch = qids[pos]
        rows, grades, valid = _padded(data, batch)
        bm = bm25.score([texts[int(q)] for q in batch])  # [c, P]
        en = encoder_scores(query_emb[batch], title_emb)  # [c, P]
        scored: dict[str, np.ndarray] = {"bm25": bm, "encoder": en}
        for name, vec in (extra or {}).items():
            scored[name] = np.broadcast_to(vec, bm.shape)
        parts: dict[tuple[str, int, float], tuple[np.ndarray, np.ndarray]] = {}
        if setting == CATALOGUE:
            for f in fusions:
                key = (f.how, f.depth, f.rrf_k)
                if key not in parts:
                    parts[key] = fusion_parts(en, bm, f, depth=f.depth)
                scored[f.label] = fuse(en, bm, f, depth=f.depth, parts=parts[key])
            target, mask = rows, valid
        elif setting == RERANK:
            # the graded set becomes the candidate list: column j is the j-th graded product
            scored = {
                k: np.where(valid, np.take_along_axis(v, rows, axis=1), -np.inf)
                for k, v in scored.items()
            }
            for f in fusions:
                key = (f.how, 0, f.rrf_k)
                if key not in parts:
                    parts[key] = fusion_parts(
                        scored["encoder"], scored["bm25"], f, depth=None, valid=valid
                    )
                scored[f.label] = fuse(
                    scored["encoder"], scored["bm25"], f, depth=None, parts=parts[key]
                )
            target = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
            mask = valid
        else:
            raise ValueError(f"unknown setting {setting!r}")
        for name in methods:
            ranks = ranks_of(scored[name], target, mask)
            res.ndcg[name][pos] = ndcg_at_k(ranks, grades, mask)
            res.rr[name][pos] = best_reciprocal_rank(ranks, grades, mask)
    return res


def fusion_grid(
    hows: Sequence[FusionHow] = ("minmax", "zscore", "rrf"),
    alphas: Sequence[float] = ALPHAS,
    depth: int = 100,
) -> list[Fusion]:
    """The hybrids tried on validation (alpha 0 and 1 are BM25 and the encoder themselves)."""
    return [Fusion(how, a, depth) for how in hows for a in alphas]


def choose_fusion(res: PerQuery, fusions: Sequence[Fusion]) -> Fusion:
    """The fusion with the best mean NDCG@10 (first in grid order on ties)."""
    best = max(range(len(fusions)), key=lambda i: (res.mean(fusions[i].label)[0], -i))
    return fusions[best]


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, n: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean difference, 2.5 %, 97.5 % bootstrap quantiles) of ``a - b`` over queries.

    ``a``, ``b``: float64[n_queries] per-query metrics of two methods on the same queries
    (nan rows are dropped from both). Resampling queries keeps the pairing.
    """
    ok = ~(np.isnan(a) | np.isnan(b))
    d = (a - b)[ok]
    if not len(d):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for start in range(0, n, 200):  # 200 resamples at a time bounds the index array
        stop = min(start + 200, n)
        means[start:stop] = d[rng.integers(0, len(d), size=(stop - start, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)
