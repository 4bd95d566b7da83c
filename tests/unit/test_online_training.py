"""Online fine-tuning: examples from the stream, prequential order, rehearsal buffer."""

from __future__ import annotations

import torch

from models.online_training import Example, OnlineConfig, OnlineLearner, prequential_metrics
from models.ranker import SessionRanker
from stream.online_eval import stream_examples
from topics.events import EventType, UserEvent


def test_examples_follow_sessions_and_weigh_by_event_type() -> None:
    ev = [
        UserEvent("1", EventType.VIEW, "u", "s", 1, item_id="a"),
        UserEvent("2", EventType.VIEW, "u", "s", 2, item_id="zzz"),  # unknown: skipped
        UserEvent("3", EventType.PURCHASE, "u", "s", 3, item_id="b"),
        UserEvent("4", EventType.VIEW, "u", "s", 4, item_id="b"),  # repeat of the last: none
        UserEvent("5", EventType.SEARCH, "u", "s", 5, query="x"),
        UserEvent("6", EventType.VIEW, "v", "t", 6, item_id="c"),  # first of its session
    ]
    out = list(stream_examples(ev, {"a": 1, "b": 2, "c": 3}, max_recent=4))
    assert [pos for pos, _ in out] == [0, 1, 2, 3, 4, 5]
    examples = [ex for _, ex in out]
    assert examples[2] == Example((1,), 2, 3.0)
    assert [examples[i] for i in (0, 1, 3, 4, 5)] == [None] * 5


def test_a_chunk_is_scored_before_it_is_learnt_and_learning_helps() -> None:
    torch.manual_seed(0)
    model = SessionRanker(12, 8, 4, 0.0).eval()
    learner = OnlineLearner(model, OnlineConfig(lr=0.05, passes=20, k=1, replay_size=5))
    chunk = [Example((1,), 7), Example((2,), 9)] * 4
    before = prequential_metrics(model, chunk, 1)
    first = learner.step(chunk)
    assert (first.hr, first.mrr) == before  # scored on the model that had not seen it
    second = learner.step(chunk)
    assert second.hr == 1.0 and second.hr > first.hr
    assert len(learner.buffer) == 5 and learner.learnt == 16  # bounded rehearsal buffer
