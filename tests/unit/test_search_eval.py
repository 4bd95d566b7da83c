"""Search evaluation (models/search_eval.py, stream/search_eval_job.py) on toy data.

Metric values are computed by hand in the comments; the encoder is a deterministic
character-trigram hashing stand-in (no model files needed).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from models.search_eval import (
    BM25,
    CATALOGUE,
    RERANK,
    Fusion,
    best_reciprocal_rank,
    cached_encode,
    evaluate_queries,
    fuse,
    gain,
    informative,
    load_search_csv,
    ndcg_at_k,
    ranks_of,
    split_queries,
    tokenize,
)

L3 = math.log2(3)  # discount of rank 2


class HashingEncoder:
    """Stand-in TextEncoder: bag of hashed character trigrams, L2-normalised."""

    dim = 64
    name = "hashing-trigram-64"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            s = f"  {t.lower()} "
            for j in range(len(s) - 2):
                h = int.from_bytes(hashlib.md5(s[j : j + 3].encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def _one(ranks: list[int], grades: list[float]) -> tuple[float, float]:
    r = np.array([ranks])
    g = np.array([grades], dtype=np.float64)
    v = np.ones_like(r, dtype=bool)
    return float(ndcg_at_k(r, g, v)[0]), float(best_reciprocal_rank(r, g, v)[0])


# ----------------------------------------------------------------------------- metrics


def test_gain_formula() -> None:
    np.testing.assert_allclose(gain(np.array([1.0, 2.0, 3.0, 2.33])), [0, 1, 3, 2**1.33 - 1])


def test_ndcg_perfect_and_swapped_graded_gains() -> None:
    # gains 3, 1, 0; ideal DCG = 3 + 1/log2(3)
    assert _one([1, 2, 3], [3, 2, 1])[0] == pytest.approx(1.0)
    # the 3-graded at rank 2, the 2-graded at rank 1: (3/log2(3) + 1) / (3 + 1/log2(3))
    assert _one([2, 1, 3], [3, 2, 1])[0] == pytest.approx((3 / L3 + 1) / (3 + 1 / L3))


def test_ndcg_continuous_grade_and_fewer_than_ten_graded() -> None:
    # two graded products, one outside the top 10: only the rank-1 one counts
    g233 = 2**1.33 - 1
    ndcg, rr = _one([1, 11], [2.33, 3.0])
    assert ndcg == pytest.approx(g233 / (3 + g233 / L3))
    assert rr == pytest.approx(1 / 11)  # the best-graded (3) is at rank 11
    # a graded product at rank 10 still counts, 11 does not
    assert _one([10], [3.0])[0] == pytest.approx(1 / math.log2(11))
    assert _one([11], [3.0])[0] == 0.0


def test_ndcg_undefined_without_gain_and_padding_ignored() -> None:
    assert math.isnan(_one([1, 2], [1.0, 1.0])[0])
    r = np.array([[1, 0, 0]])
    g = np.array([[3.0, 3.0, 3.0]])
    v = np.array([[True, False, False]])
    assert ndcg_at_k(r, g, v)[0] == pytest.approx(1.0)
    assert best_reciprocal_rank(r, g, v)[0] == 1.0


def test_mrr_best_grade_ties_take_the_first_in_the_ranking() -> None:
    assert _one([3, 1, 5], [3.0, 2.0, 3.0])[1] == pytest.approx(1 / 3)
    assert _one([7, 4, 2], [2.67, 2.67, 1.0])[1] == pytest.approx(1 / 4)


def test_ranks_break_score_ties_by_lowest_column() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    idx = np.array([[1, 2, 0, 3], [3, 0, 2, 1]])
    valid = np.array([[True, True, True, True], [True, True, False, True]])
    np.testing.assert_array_equal(ranks_of(scores, idx, valid), [[1, 2, 3, 4], [4, 1, 0, 2]])


def test_ranks_match_a_stable_sort() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(6, 40)).astype(np.float32)  # many ties
    idx = np.tile(np.arange(40), (6, 1))
    ranks = ranks_of(scores, idx, np.ones_like(idx, dtype=bool))
    for r in range(6):
        order = np.argsort(-scores[r], kind="stable")
        expected = np.empty(40, dtype=np.int64)
        expected[order] = np.arange(1, 41)
        np.testing.assert_array_equal(ranks[r], expected)


# ----------------------------------------------------------------------------- BM25

DOCS = [
    "DEWALT 20-Volt Max Cordless Drill Kit",
    "Simpson Strong-Tie 12-Gauge Angle",
    "Hampton Bay Ceiling Fan in White",
    "Drill Bit Set (10-Piece)",
    "Cordless Leaf Blower",
]


def test_tokenizer_lowercases_splits_and_depluralises() -> None:
    assert tokenize("Drill Bits, 1/2-in. GLASS batteries") == [
        "drill",
        "bit",
        "1",
        "2",
        "in",
        "glass",
        "battery",
    ]
    assert tokenize("Bolts", stem=False) == ["bolts"]


def test_bm25_ranks_the_exact_term_match_first() -> None:
    bm = BM25(DOCS)
    s = bm.score(["cordless drill", "angle", "ceiling fans", "zzz"])
    assert s.shape == (4, len(DOCS))
    assert int(np.argmax(s[0])) == 0  # the only title with both terms
    assert int(np.argmax(s[1])) == 1
    assert int(np.argmax(s[2])) == 2  # "fans" matches "fan" through the plural stemmer
    assert not s[3].any()  # unknown term: zero everywhere


def test_bm25_score_by_hand() -> None:
    # docs "a b", "a c c"; query "c": idf = ln(1 + (2 - 1 + .5) / (1 + .5)) = ln 2,
    # doc 2: tf 2, |d| 3, avgdl 2.5 -> 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / 2.5))
    s = BM25(["a b", "a c c"], stem=False).score(["c", "c c"])
    expected = math.log(2) * 4.4 / (2 + 1.2 * (0.25 + 0.75 * 3 / 2.5))
    np.testing.assert_allclose(s[0], [0.0, expected], rtol=1e-6)
    np.testing.assert_allclose(s[1], [0.0, 2 * expected], rtol=1e-6)  # query tf counts


# ----------------------------------------------------------------------------- data


HEADER = b'"id","product_uid","product_title","search_term","relevance"\n'


def _write_csv(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(HEADER + b"".join(lines))
    return path


def test_loader_reads_latin1_and_counts_bad_rows(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "train.csv.gz",
        [
            b'1,100001,"Angle 90\xb0 Bracket","angle bracket",3\n',  # latin-1 degree sign
            b'2,100001,"Angle 90\xb0 Bracket","L  Bracket ",2.33\n',
            b'3,100002,"Deck \xe5\xa1 Coating","deck over",2\n',
            b'4,100003,"Bad Grade","x",high\n',  # relevance not a number
            b'5,100003,"Bad Grade","x",4\n',  # outside [1, 3]
            b'6,abc,"Bad Uid","x",2\n',
            b'7,100004,"Too Few","x"\n',
            b'8,100005,"Empty Query","   ",2\n',
            b'9,100002,"Deck \xe5\xa1 Coating","DECK over",3\n',  # duplicate pair, grades averaged
            b'10,100001,"Angle Bracket (new title)","angle",2\n',  # conflicting title
        ],
    )
    data = load_search_csv(path)
    r = data.report
    assert (r.rows, r.parsed, r.bad_rows) == (10, 5, 5)
    assert r.rows == r.parsed + r.bad_rows  # nothing vanishes
    assert r.bad_reasons == {
        "relevance not a number": 1,
        "relevance outside [1, 3]": 1,
        "product_uid not an integer": 1,
        "4 fields, expected 5": 1,
        "empty search_term": 1,
    }
    assert (r.title_conflicts, r.duplicate_pairs) == (1, 1)
    assert data.titles == ["Angle 90° Bracket", "Deck å¡ Coating"]
    np.testing.assert_array_equal(data.product_ids, [100001, 100002])
    assert data.queries == ["angle", "angle bracket", "deck over", "l bracket"]
    docs, grades = data.graded(data.queries.index("deck over"))
    np.testing.assert_array_equal(docs, [1])
    np.testing.assert_allclose(grades, [2.5])
    assert "5 unparseable" in r.summary()


def test_loader_rejects_a_file_without_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_search_csv(path)


def test_split_is_disjoint_deterministic_and_stable_under_subsets() -> None:
    queries = [f"query {i}" for i in range(5000)]
    a = split_queries(queries, 0.2, seed=0)
    b = split_queries(queries, 0.2, seed=0)
    np.testing.assert_array_equal(a, b)
    valid = {q for q, v in zip(queries, a, strict=True) if v}
    test = {q for q, v in zip(queries, a, strict=True) if not v}
    assert not valid & test and len(valid) + len(test) == len(queries)
    assert 0.17 < len(valid) / len(queries) < 0.23
    sub = queries[::7][::-1]  # a subset, reordered: each query keeps its side
    np.testing.assert_array_equal(split_queries(sub, 0.2, seed=0), a[::7][::-1])
    assert (split_queries(queries, 0.2, seed=1) != a).any()


# ----------------------------------------------------------------------------- hybrid


def _toy_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    nouns = ["drill", "fan", "bracket", "faucet", "paint", "hose", "lamp", "saw", "door", "tile"]
    adjs = ["cordless", "white", "steel", "outdoor", "led", "brass", "oak", "blue"]
    titles = [f"{a} {n} model {i}" for i, (a, n) in enumerate((a, n) for a in adjs for n in nouns)]
    lines, row = [], 1
    for a in adjs:
        for n in nouns:
            query = f"{a} {n}s"
            for p in rng.choice(len(titles), size=5, replace=False):
                t = titles[p]
                grade = 3.0 if t.startswith(f"{a} {n}") else 2.0 if n in t else 1.0 + rng.random()
                lines.append(f'{row},{200000 + p},"{t}","{query}",{grade:.2f}\n'.encode())
                row += 1
    return _write_csv(tmp_path / "toy.csv.gz", lines)


def test_hybrid_at_alpha_0_and_1_is_bm25_and_the_encoder(tmp_path: Path) -> None:
    data = load_search_csv(_toy_data(tmp_path))
    enc = HashingEncoder()
    bm = BM25(data.titles)
    q_emb = enc.encode(data.queries)
    t_emb = enc.encode(data.titles)
    fusions = [Fusion(how, a) for how in ("minmax", "zscore", "rrf") for a in (0.0, 1.0)]
    for setting in (CATALOGUE, RERANK):
        qids = np.flatnonzero(informative(data, setting))
        res = evaluate_queries(
            data,
            qids,
            bm25=bm,
            query_emb=q_emb,
            title_emb=t_emb,
            fusions=fusions,
            setting=setting,
            chunk=7,
        )
        for f in fusions:
            ref = "encoder" if f.alpha == 1.0 else "bm25"
            np.testing.assert_array_equal(res.ndcg[f.label], res.ndcg[ref])
            np.testing.assert_array_equal(res.rr[f.label], res.rr[ref])
    # and the fused score arrays themselves
    b = bm.score(data.queries[:3])
    e = q_emb[:3] @ t_emb.T
    assert fuse(e, b, Fusion("minmax", 0.0), depth=10) is b
    assert fuse(e, b, Fusion("zscore", 1.0), depth=10) is e


def test_minmax_hybrid_mixes_normalised_scores() -> None:
    enc = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
    bm = np.array([[0.0, 10.0, 5.0]], dtype=np.float32)
    # normalised over all three: enc -> 1, .5, 0; bm -> 0, 1, .5
    got = fuse(enc, bm, Fusion("minmax", 0.25), depth=None)
    np.testing.assert_allclose(got, [[0.25, 0.875, 0.375]], rtol=1e-6)
    # rrf with k=0: ranks enc 1,2,3; bm 3,1,2
    got = fuse(enc, bm, Fusion("rrf", 0.5, rrf_k=0.0), depth=None)
    np.testing.assert_allclose(got, [[0.5 * (1 + 1 / 3), 0.5 * (1 / 2 + 1), 0.5 * (1 / 3 + 1 / 2)]])


def test_cached_encode_reuses_the_file(tmp_path: Path) -> None:
    enc = HashingEncoder()
    texts = ["b longer text", "a", "ccc"]
    first, _, hit1 = cached_encode(enc, texts, tmp_path, batch=2)
    np.testing.assert_allclose(first, enc.encode(texts))  # input order kept across batches
    calls = enc.calls
    again, seconds, hit2 = cached_encode(enc, texts, tmp_path)
    assert (hit1, hit2, enc.calls, seconds) == (False, True, calls, 0.0)
    np.testing.assert_array_equal(first, again)
    assert len(list(tmp_path.glob("hashing-trigram-64-*.npy"))) == 1


# ----------------------------------------------------------------------------- the job


def test_job_writes_report_and_results(tmp_path: Path) -> None:
    from stream.cli import build_parser
    from stream.search_eval_job import run_search_eval

    args = build_parser().parse_args(["evaluate-search", "--limit-queries", "5"])
    assert args.limit_queries == 5 and args.func.__name__ == "_cmd_evaluate_search"

    out = tmp_path / "report"
    lines: list[str] = []
    results = run_search_eval(
        _toy_data(tmp_path),
        out,
        encoder=HashingEncoder(),
        cache_dir=tmp_path / "cache",
        log=lines.append,
    )
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["settings"].keys() == {CATALOGUE, RERANK}
    for block in on_disk["settings"].values():
        assert block["n_valid"] > 0 and block["n_test"] > 0
        assert len(block["test"]) == 3 and block["chosen"]["how"] in {"minmax", "zscore", "rrf"}
    assert results["timings"]["embed_titles"]["cached"] is False
    report = (out / "report.md").read_text()
    assert "| setting | method | NDCG@10 | MRR | test queries |" in report
    assert "hybrid: " in report
    again = run_search_eval(
        _toy_data(tmp_path),
        tmp_path / "report2",
        encoder=HashingEncoder(),
        cache_dir=tmp_path / "cache",
        log=lines.append,
    )
    assert again["timings"]["embed_titles"]["cached"] is True
    assert again["settings"] == results["settings"]
