"""The pure logic of bench/loadgen.py and bench/_common.py's event mix (no Kafka, no Redis)."""

from __future__ import annotations

import csv
import gzip
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    DigineticaFit,
    EventMix,
    fit_diginetica,
    fit_event_mix,
    query_tokens,
    synthesise,
)
from loadgen import (  # noqa: E402
    GenStats,
    Pacer,
    generate,
    sample_query_lengths,
    search_probability,
)

from topics.events import EventType, UserEvent, parse_event  # noqa: E402


def small_fit() -> DigineticaFit:
    p = np.array([0.5, 0.3, 0.2])
    return DigineticaFit(
        item_ids=["a", "b", "c"],
        item_p=p,
        session_lengths=np.array([1, 2, 3, 4], dtype=np.int64),
        gaps_ms=np.array([1000, 5000, 20000], dtype=np.int64),
        p_review=0.2,
        p99_session_ms=60_000.0,
    )


def small_mix(search_share: float = 0.1, queries: list[str] | None = None) -> EventMix:
    return EventMix(
        purchases_per_session=np.array([0, 0, 0, 1], dtype=np.int64),
        purchase_at=np.array([1.0, 0.5]),
        p_purchase_viewed=0.5,
        purchases_per_view=0.1,
        queries=["red shoes", "drill", "angle bracket 12 inch"] if queries is None else queries,
        search_share=search_share,
        source="test",
    )


def flat(chunks: Iterable[list[UserEvent]]) -> list[UserEvent]:
    return [e for chunk in chunks for e in chunk]


def test_pacer_schedules_event_i_at_i_over_rate() -> None:
    pacer = Pacer(rate=100.0, start=10.0)
    assert pacer.due_at(0) == 10.0
    assert pacer.due_at(50) == pytest.approx(10.5)
    assert pacer.wait_s(50, now=10.2) == pytest.approx(0.3)
    assert pacer.wait_s(50, now=11.0) == 0.0  # late: send at once
    assert pacer.due(now=9.0) == 0
    assert pacer.due(now=10.0) == 1
    assert pacer.due(now=10.995) == 100


def test_pacer_without_a_rate_sends_everything_at_once() -> None:
    pacer = Pacer(rate=0.0, start=5.0)
    assert pacer.wait_s(10**6, now=5.0) == 0.0
    assert pacer.due(now=0.0) > 10**9


def test_search_probability_makes_searches_the_given_share_of_all_events() -> None:
    mix = small_mix(search_share=0.2)
    q = search_probability(mix)
    views = 1.0
    purchases = mix.purchases_per_view * views
    searches = q * views
    assert searches / (views + purchases + searches) == pytest.approx(0.2)
    assert search_probability(small_mix(search_share=0.0)) == 0.0
    assert search_probability(small_mix(queries=[])) == 0.0


def test_query_tokens_are_stable_ids_one_per_word_case_insensitive() -> None:
    assert query_tokens("Angle Bracket 12") == query_tokens("angle  bracket 12")
    assert len(query_tokens("angle bracket 12")) == 3
    assert all(isinstance(t, int) and t > 0 for t in query_tokens("x y"))
    assert query_tokens("") == []


def test_sampled_query_lengths_follow_the_queries() -> None:
    mix = small_mix(queries=["a", "a b", "a b", "a b c d"])
    lengths = sample_query_lengths(mix, np.random.default_rng(0), 40_000)
    share = Counter(lengths.tolist())
    assert set(share) == {1, 2, 4}
    assert share[2] / 40_000 == pytest.approx(0.5, abs=0.02)


def test_generate_yields_n_valid_events_in_time_order_with_unique_ids() -> None:
    stats = GenStats()
    events = flat(
        generate(
            small_fit(),
            small_mix(),
            3000,
            seed=1,
            tag="t",
            site_rate=50.0,
            chunk=200,
            base_ms=1_700_000_000_000,
            stats=stats,
        )
    )
    assert len(events) == 3000
    assert len({e.event_id for e in events}) == 3000
    times = [e.timestamp_ms for e in events]
    assert times == sorted(times)
    assert times[0] >= 1_700_000_000_000
    for e in events:
        assert parse_event(e.to_bytes()).to_dict() == e.to_dict()  # what the worker accepts
        assert e.user_id.replace("-u", "-s") == e.session_id  # one user per session
        if e.event_type is EventType.SEARCH:
            assert e.item_id is None and e.query_tokens and e.query is None
        else:
            assert e.item_id in {"a", "b", "c"}
    assert sum(stats.by_kind.values()) == 3000
    assert stats.max_held > 0


def test_generate_mixes_event_types_as_fitted() -> None:
    events = flat(generate(small_fit(), small_mix(search_share=0.2), 20_000, seed=2, tag="m"))
    kinds = Counter(e.event_type for e in events)
    assert kinds[EventType.SEARCH] / len(events) == pytest.approx(0.2, abs=0.02)
    views_per_session = float(np.mean([1, 2, 3, 4]))
    purchases_per_view = 0.25 / views_per_session  # a quarter of sessions buy once
    assert kinds[EventType.PURCHASE] / kinds[EventType.VIEW] == pytest.approx(
        purchases_per_view, rel=0.25
    )
    # A search comes before the view it precedes, so some sessions start with one.
    by_session: dict[str, list[UserEvent]] = {}
    for e in events:
        by_session.setdefault(e.session_id, []).append(e)
    assert any(s[0].event_type is EventType.SEARCH for s in by_session.values())


def test_generate_is_deterministic_per_seed_and_lazy() -> None:
    def run(seed: int) -> list[bytes]:
        gen = generate(small_fit(), small_mix(), 500, seed=seed, tag="d", base_ms=0, chunk=100)
        return [e.to_bytes() for e in flat(gen)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    chunks = generate(small_fit(), small_mix(), 10**9, seed=0, tag="l", chunk=100)
    first = next(iter(chunks))  # a billion events are not built up front
    assert 0 < len(first) < 1000


def test_generate_query_text_is_optional() -> None:
    events = flat(generate(small_fit(), small_mix(0.3), 500, seed=0, tag="q", query_text=True))
    searches = [e for e in events if e.event_type is EventType.SEARCH]
    assert searches and all(e.query and query_tokens(e.query) == e.query_tokens for e in searches)


def _write_gz_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def test_fit_event_mix_joins_purchases_to_the_sample_sessions(tmp_path: Path) -> None:
    dg = tmp_path / "diginetica"
    views = [
        ["1", "NA", "10", "0", "2016-05-09"],
        ["1", "NA", "11", "1000", "2016-05-09"],
        ["2", "NA", "12", "0", "2016-05-09"],
        ["3", "NA", "10", "0", "2016-05-09"],
    ]
    _write_gz_csv(
        dg / "sample_train-item-views.csv.gz",
        ["session_id", "user_id", "item_id", "timeframe", "eventdate"],
        views,
        ";",
    )
    buys = [
        ["1", "NA", "5000", "2016-05-09", "1", "11"],  # viewed in its session
        ["1", "NA", "6000", "2016-05-09", "2", "99"],  # not viewed
        ["7", "NA", "6000", "2016-05-09", "3", "10"],  # session not in the sample: ignored
    ]
    _write_gz_csv(
        dg / "train-purchases.csv.gz",
        ["sessionId", "userId", "timeframe", "eventdate", "ordernumber", "itemId"],
        buys,
        ";",
    )
    hd = tmp_path / "homedepot-search-relevance" / "train.csv.gz"
    _write_gz_csv(
        hd,
        ["id", "product_uid", "product_title", "search_term", "relevance"],
        [["1", "2", "t", "angle  bracket", "3"], ["2", "3", "t", " ", "1"]],
        ",",
    )

    mix = fit_event_mix(tmp_path, search_share=0.1)
    assert sorted(mix.purchases_per_session.tolist()) == [0, 0, 2]
    assert mix.purchases_per_view == pytest.approx(2 / 4)
    assert mix.p_purchase_viewed == pytest.approx(0.5)
    assert mix.purchase_at.tolist() == [1.0, 1.0]  # after both views of session 1
    assert mix.queries == ["angle bracket"]
    assert mix.query_lengths().tolist() == [2]
    assert mix.search_share == 0.1


def test_fit_event_mix_without_the_files_has_no_purchases_or_searches(tmp_path: Path) -> None:
    mix = fit_event_mix(tmp_path)
    assert mix.purchases_per_view == 0.0
    assert mix.search_share == 0.0
    assert "absent" in mix.source
    with pytest.raises(ValueError):
        fit_event_mix(tmp_path, search_share=0.9)


def test_synthesise_is_unchanged_by_the_shared_session_draws() -> None:
    fit = fit_diginetica()
    a = synthesise(fit, 300, seed=5, tag="s")
    b = synthesise(fit, 300, seed=5, tag="s")
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert all(e.event_type is EventType.VIEW for e in a)
    assert [e.timestamp_ms for e in a] == sorted(e.timestamp_ms for e in a)
