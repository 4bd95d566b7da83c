"""The training agent without Kafka: examples from events, prequential windows, candidates
written from the learner, gates, promotion (CURRENT or an A/B arm), re-basing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")

from models.ab import ABSplit  # noqa: E402
from models.bundle import WEIGHTS_FILE, Bundle, ModelError, derive_bundle, promote  # noqa: E402
from models.export import load_ranker, train_bundle, write_fine_tuned  # noqa: E402
from models.gates import GateConfig  # noqa: E402
from models.online_training import Example, ExampleBuilder  # noqa: E402
from models.registry import (  # noqa: E402
    HISTORY_FILE,
    arm_version,
    current_version,
    promote_version,
    read_history,
)
from models.training import TrainConfig, build_sessions  # noqa: E402
from stream.train_agent import AgentConfig, TrainerMetrics, TrainingAgent  # noqa: E402
from topics.events import EventType, UserEvent  # noqa: E402

N_ITEMS = 30
LENIENT = GateConfig(max_hr_drop=1.0, max_mrr_drop=1.0, min_overlap=0.0, max_score_drift=1.0)


def walk_events(n_sessions: int, start_ms: int, *, seed: int, users: int = 40) -> list[UserEvent]:
    """Sessions that walk the catalogue one item at a time (item k -> k + 1): a pattern the
    model can learn, so fine-tuning has something to find."""
    rng = np.random.default_rng(seed)
    out: list[UserEvent] = []
    ts = start_ms
    for s in range(n_sessions):
        user = f"u{rng.integers(users)}"
        first = int(rng.integers(N_ITEMS))
        for j in range(5):
            ts += 1000
            kind = EventType.PURCHASE if j == 4 else EventType.VIEW
            out.append(UserEvent(f"e{seed}-{s}-{j}", kind, user, f"{user}-s{seed}-{s}", ts,
                                 item_id=f"i{(first + j) % N_ITEMS}"))  # fmt: skip
    return out


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    events = walk_events(60, 1_700_000_000_000, seed=1)
    data = build_sessions([e.session_id for e in events], [e.item_id for e in events],  # type: ignore[misc]
                          [e.timestamp_ms for e in events])  # fmt: skip
    path = train_bundle(data.item_ids, data.sessions, data.popularity, tmp_path,
                        cfg=TrainConfig(dim=8, max_recent=5, epochs=2, seed=0))  # fmt: skip
    promote(tmp_path, path.name)
    return tmp_path


def agent(root: Path, gates: GateConfig = LENIENT, **cfg: object) -> TrainingAgent:
    announced: list[object] = []
    a = TrainingAgent(
        root,
        AgentConfig(**{"chunk": 50, "publish_examples": 100, "min_examples": 50, **cfg}),  # type: ignore[arg-type]
        gates,
        TrainerMetrics(),
        split=ABSplit.parse("A=x:0.5,B=y:0.5") if cfg.get("arm") else None,
        promote=announced.append,
    )
    a.announced = announced  # type: ignore[attr-defined]
    return a


def test_example_builder_keeps_a_bounded_number_of_sessions() -> None:
    b = ExampleBuilder({"a": 1, "b": 2, "c": 3}, max_recent=2, weights={"purchase": 3.0},
                       max_sessions=2)  # fmt: skip
    assert b.feed("s1", "a", "view") is None  # first of its session
    assert b.feed("s1", "b", "purchase") == Example((1,), 2, 3.0)
    b.feed("s2", "a", "view")
    b.feed("s3", "a", "view")  # s1 is the least recently used: forgotten
    assert len(b) == 2 and b.feed("s1", "c", "view") is None
    assert b.feed("s2", "nope", "view") is None and b.unknown == 1
    assert b.feed("s3", "b", "view") == Example((1,), 2, 1.0)
    b.feed("s3", "c", "view")
    assert b.feed("s3", "a", "view") == Example((2, 3), 1, 1.0)  # at most max_recent items


def test_fine_tuned_bundle_round_trips_its_weights_and_records_its_parent(root: Path) -> None:
    parent = root / current_version(root)  # type: ignore[operator]
    model = load_ranker(parent)
    with torch.no_grad():
        model.item_bias.weight[1:] += 0.5
    path = write_fine_tuned(parent, model, metadata={"online_training": {"examples": 7}})
    child, base = Bundle.load(path), Bundle.load(parent)
    assert child.metadata["parent"] == parent.name
    assert child.metadata["online_training"] == {"examples": 7}
    assert child.item_ids == base.item_ids and child.metadata["blend"] == base.metadata["blend"]
    assert child.space_id != base.space_id  # new embeddings table: a new space
    again = load_ranker(path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value)
    old = derive_bundle(parent, {}, version="no-weights")  # as bundles before weights.npz
    (old / WEIGHTS_FILE).unlink()
    manifest = orjson.loads((old / "MANIFEST.json").read_bytes())
    del manifest["files"][WEIGHTS_FILE]
    (old / "MANIFEST.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ModelError, match="retrain"):
        load_ranker(old)


def test_a_candidate_that_passes_is_promoted_and_announced(root: Path) -> None:
    a = agent(root)
    base = a.start()
    made = a.feed(walk_events(40, 1_700_100_000_000, seed=2))
    assert made == 160 and a.window.examples == 150 and len(a.pending) == 10
    assert a.due()
    out = a.publish()
    assert out.promoted and out.candidate is not None
    assert current_version(root) == out.candidate and a.base == out.candidate
    meta = Bundle.load(root / out.candidate).metadata
    assert meta["parent"] == base and meta["online_training"]["examples"] == 150
    assert 0 <= meta["metrics"]["prequential_hr@20"] <= 1
    assert [r.version for r in a.announced] == [out.candidate]  # type: ignore[attr-defined]
    assert read_history(root)[-1].previous == base
    gates = [orjson.loads(x) for x in (root / "GATES.jsonl").read_bytes().splitlines()]
    assert gates[-1]["version"] == out.candidate and gates[-1]["passed"]
    assert gates[-1]["metrics"]["canary_events"] > 0
    assert not a.due()  # the window restarted


def test_a_candidate_failing_a_gate_is_kept_but_not_promoted(root: Path) -> None:
    strict = GateConfig(max_hr_drop=1.0, max_mrr_drop=1.0, min_overlap=1.01)
    a = agent(root, strict)
    base = a.start()
    a.feed(walk_events(40, 1_700_100_000_000, seed=2))
    out = a.publish()
    assert not out.promoted and out.candidate is not None
    assert (root / out.candidate).is_dir() and current_version(root) == base
    assert "consistency" in out.reason and a.announced == []  # type: ignore[attr-defined]
    failures = a.metrics.registry.get_sample_value(
        "streamrec_trainer_gate_failures_total", {"gate": "consistency"}
    )
    assert failures == 1.0


def test_an_arm_agent_learns_from_its_arm_only_and_promotes_to_it(root: Path) -> None:
    base = current_version(root)
    a = agent(root, arm="B")
    a.split = ABSplit.parse(f"A={base}:0.5,B={base}:0.5")
    a.start()
    events = walk_events(60, 1_700_100_000_000, seed=3)
    a.feed(events)
    in_b = {e.user_id for e, arm in zip(events, a.split.assign([e.user_id for e in events]),
                                         strict=True) if arm.name == "B"}  # fmt: skip
    assert {e.user_id for e in a.recent} == in_b and 0 < len(in_b) < 40
    other = a.metrics.registry.get_sample_value(
        "streamrec_trainer_events_total", {"kind": "other_arm"}
    )
    assert other == sum(e.user_id not in in_b for e in events)
    out = a.publish()
    assert out.promoted and arm_version(root, "B") == out.candidate
    assert current_version(root) == base  # CURRENT is not the arm's
    assert all(r.version != out.candidate for r in read_history(root))
    assert b'"arm":"B"' in (root / HISTORY_FILE).read_bytes()


def test_an_unknown_arm_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="STREAMREC_TRAIN_ARM"):
        TrainingAgent(root, AgentConfig(arm="C"), LENIENT, TrainerMetrics(),
                      split=ABSplit.parse("A=x:0.5,B=y:0.5"))  # fmt: skip


def test_the_agent_re_bases_when_an_operator_changes_current(root: Path) -> None:
    a = agent(root)
    a.start()
    a.feed(walk_events(40, 1_700_100_000_000, seed=2))
    other = derive_bundle(root / a.base, {"note": "operator"}, version="operator-pick")
    promote_version(root, other.name)
    out = a.publish()
    assert out.candidate is None and not out.promoted and a.base == "operator-pick"
    assert a.window.examples == 0 and not a.due()
