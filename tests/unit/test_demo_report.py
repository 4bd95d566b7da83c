"""The demo's accuracy bookkeeping: next-event targets, what is recommendable, POP, scoring."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.demo import _score, next_event_targets, popularity_lists, recommendable_targets
from topics.events import EventType, UserEvent


def ev(eid: str, session: str, item: str, ts: int) -> UserEvent:
    return UserEvent(eid, EventType.VIEW, f"u{session}", session, ts, item_id=item)


TRAIN = [ev("t1", "a", "x", 1), ev("t2", "a", "y", 2), ev("t3", "b", "x", 3)]
TEST = [
    ev("1", "s", "x", 10),
    ev("2", "s", "y", 11),
    ev("3", "s", "x", 12),
    ev("4", "s", "new", 13),
]


def test_next_event_targets_stay_within_the_session() -> None:
    events = [*TEST, ev("5", "other", "y", 14)]
    assert next_event_targets(events) == {"1": "y", "2": "x", "3": "new"}


def test_recommendable_targets_separate_repeats_and_unseen_items() -> None:
    eligible, repeats, unseen = recommendable_targets(TRAIN, TEST)
    assert eligible == {"1": "y"}
    assert (repeats, unseen) == (1, 1)


def test_popularity_lists_exclude_session_items() -> None:
    lists = popularity_lists(TRAIN, TEST, 2)
    assert lists["1"] == ["y"]  # x is most popular but already seen
    assert lists["4"] == []


def test_score_handles_string_ids() -> None:
    lists = {"1": ["sku-b", "sku-a"], "2": ["sku-c"]}
    hr, mrr, n = _score(lists, {"1": "sku-a", "2": "sku-z", "9": "sku-a"}, 20)
    assert (hr, mrr, n) == (0.5, 0.25, 2)


def test_the_demo_retrains_a_bundle_that_predates_the_blended_ranking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import stream.train_job
    from models.bundle import promote, write_bundle
    from stream.demo import ensure_model
    from stream.settings import load_settings

    onnx = tmp_path / "fake.onnx"
    onnx.write_bytes(b"x")
    common = {"onnx_path": onnx, "item_ids": ["a"], "embeddings": np.eye(2, 2, dtype=np.float32),
              "popularity": np.ones(2, np.float32), "max_recent": 4}  # fmt: skip
    old = write_bundle(tmp_path / "m", version="old", metadata={"covisit_blend": 1.0}, **common)  # type: ignore[arg-type]
    promote(tmp_path / "m", old.name)
    trained: list[str] = []
    new = write_bundle(tmp_path / "m", version="new", metadata={"blend": {"neural": 1}},
                       weights={"w": np.zeros(1)}, **common)  # type: ignore[arg-type]  # fmt: skip
    no_weights = write_bundle(tmp_path / "m", version="no-weights",
                              metadata={"blend": {"neural": 1}}, **common)  # type: ignore[arg-type]  # fmt: skip

    def fake_train(*args: object, **kwargs: object) -> Path:
        trained.append("yes")
        promote(tmp_path / "m", new.name)
        return new

    monkeypatch.setattr(stream.train_job, "train_and_promote", fake_train)
    settings = load_settings(model_dir=tmp_path / "m")
    assert ensure_model(settings, [], [], Path("sample.csv")) == new and trained == ["yes"]
    assert ensure_model(settings, [], [], Path("sample.csv")) == new and trained == ["yes"]
    promote(tmp_path / "m", no_weights.name)  # predates online fine-tuning: retrained too
    assert ensure_model(settings, [], [], Path("sample.csv")) == new and trained == ["yes"] * 2
