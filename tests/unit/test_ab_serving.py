"""A/B in the worker: each user served by their arm's model, records marked with the arm and
kept in batch order; the report sums workers' counters per arm."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import stream.agents as agents
from models.ab import ABSplit
from stream.ab_report import arm_rows, parse_online_counters, render
from stream.pipeline import BatchResult, Trigger
from tests.unit.test_batch_handler import Sink, handler, msg
from topics.recommendations import Recommendation


class FakeModel:
    def __init__(self, version: str) -> None:
        self.version = version


async def test_each_user_is_served_by_the_model_of_their_arm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []

    async def fake(triggers: list[Trigger], store: Any, model: Any, **kw: Any) -> BatchResult:
        calls.append((model.version, len(triggers)))
        return BatchResult([
            Recommendation(t.event.user_id, "s", t.event.event_id, "recommend", ["a"], [1.0],
                           model.version, 2, 1, 1.0)
            for t in triggers
        ])  # fmt: skip

    monkeypatch.setattr(agents, "recommend_batch", fake)
    split = ABSplit.parse("A=v1:0.5,B=v2:0.5")
    sink = Sink()
    h = handler(sink)
    h.ab = (split, {"A": FakeModel("v1"), "B": FakeModel("v2")})  # type: ignore[dict-item]
    users = [f"user-{i}" for i in range(40)]
    values = [orjson.dumps({"event_id": f"e{i}", "event_type": "view", "user_id": u,
                            "session_id": "s", "timestamp_ms": 1, "item_id": "i"})
              for i, u in enumerate(users)]  # fmt: skip
    await h.handle([msg(i, v) for i, v in enumerate(values)])
    recs = [Recommendation.from_bytes(v) for v in sink.on("recs")]
    assert [r.event_id for r in recs] == [f"e{i}" for i in range(40)]  # batch order kept
    expected = {u: a for u, a in zip(users, split.assign(users), strict=True)}
    for r in recs:
        arm = expected[r.user_id]
        assert r.arm == arm.name and r.model_version == arm.version
    assert sorted(v for v, _ in calls) == ["v1", "v2"]  # one call per arm, not per event
    assert sum(n for _, n in calls) == 40


def test_the_report_sums_workers_and_gives_intervals() -> None:
    text = "\n".join([
        "# HELP streamrec_online_judged_total ...",
        'streamrec_online_judged_total{version="v1"} 400.0',
        'streamrec_online_hits_total{version="v1"} 100.0',
        'streamrec_online_judged_total{version="v2"} 100.0',
        'streamrec_online_hits_total{version="v2"} 30.0',
        'streamrec_online_judged_created{version="v1"} 1.7e9',
    ])  # fmt: skip
    counters = parse_online_counters(text)
    assert counters == {("v1", ""): [400.0, 100.0, 0.0, 0.0], ("v2", ""): [100.0, 30.0, 0.0, 0.0]}
    rows = arm_rows(counters, ABSplit.parse("A=v1:0.8,B=v2:0.2,C=v9:0.1"))
    assert [(r.arm, r.judged, r.hits) for r in rows] == [("A", 400, 100), ("B", 100, 30),
                                                         ("C", 0, 0)]  # fmt: skip
    out = render(rows)
    assert "0.2500" in out and "HR +0.0500 vs A" in out and "[0.0000, 1.0000]" in out
    assert "CTR" not in out  # no impressions: no CTR columns


def test_the_report_groups_an_arms_versions_and_gives_ctr() -> None:
    """An online-trained arm serves several versions over time: its rows are summed by the
    arm label; impressions and clicks give CTR with its interval."""
    text = "\n".join([
        'streamrec_online_judged_total{arm="A",version="v1"} 100.0',
        'streamrec_online_hits_total{arm="A",version="v1"} 20.0',
        'streamrec_online_judged_total{arm="B",version="v1"} 50.0',
        'streamrec_online_hits_total{arm="B",version="v1"} 10.0',
        'streamrec_online_judged_total{arm="B",version="v7"} 50.0',
        'streamrec_online_hits_total{arm="B",version="v7"} 20.0',
        'streamrec_online_impressions_total{arm="A",version="v1"} 200.0',
        'streamrec_online_clicks_total{arm="A",version="v1"} 10.0',
        'streamrec_online_impressions_total{arm="B",version="v7"} 100.0',
        'streamrec_online_clicks_total{arm="B",version="v7"} 10.0',
    ])  # fmt: skip
    rows = arm_rows(parse_online_counters(text), ABSplit.parse("A=v1:0.5,B=v1:0.5"))
    b = rows[1]
    assert (b.versions, b.judged, b.hits, b.impressions, b.clicks) == (("v1", "v7"), 100, 30,
                                                                        100, 10)  # fmt: skip
    assert rows[0].ctr == 0.05 and b.ctr == 0.1
    out = render(rows)
    assert "v7 +1" in out and "CTR +0.0500 vs A" in out and "HR +0.1000" in out
