"""The training agent on real Kafka + Redis: it reads the live events topic in its own group,
fine-tunes the serving version, promotes a gated candidate and announces it, and the running
worker serves the new version without losing or duplicating an event."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest

from models.bundle import Bundle, latest_bundle
from models.registry import current_version
from stream.replay import produce
from tests.integration.harness import Services, WorkerProcess, free_port, wait_until
from tests.integration.test_hot_swap import Arrivals, follow, metric, until
from topics.events import UserEvent


@pytest.fixture()
def own_models(model_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    return root


async def test_the_agent_promotes_a_fine_tuned_version_that_the_worker_serves(
    services: Services,
    own_models: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    v1 = latest_bundle(own_models)
    assert v1 is not None
    # Announcements only: the worker's CURRENT polling is off, so serving the new version
    # proves the agent's announcement reached it.
    worker = WorkerProcess(services, own_models, tmp_path / "logs",
                           extra_env={"STREAMREC_MODEL_POLL_S": "0"})  # fmt: skip
    trainer_port = free_port()
    trainer = WorkerProcess(
        services, own_models, tmp_path / "logs", run_id=worker.run_id, command="train-agent",
        extra_env={
            "STREAMREC_TRAIN_GROUP_ID": f"{worker.namespace}-trainer",
            "STREAMREC_TRAIN_METRICS_PORT": str(trainer_port),
            "STREAMREC_TRAIN_CHUNK": "50",
            "STREAMREC_TRAIN_MIN_EXAMPLES": "100",
            "STREAMREC_TRAIN_PUBLISH_EXAMPLES": "100",
            "STREAMREC_TRAIN_GATE_EVENTS": "1000",
            # Bounds wide enough that a short fine-tune passes: the gates' refusals are
            # tested in tests/unit/test_train_agent.py and test_promotion_gates.py.
            "STREAMREC_GATE_MAX_HR_DROP": "0.5",
            "STREAMREC_GATE_MAX_MRR_DROP": "0.5",
            "STREAMREC_GATE_MIN_OVERLAP": "0.05",
            "STREAMREC_GATE_MAX_SCORE_DRIFT": "0.9",
        },
    )  # fmt: skip
    topic, recs_topic, dead_topic = worker.topics
    out = Arrivals()
    worker.start()
    follower = asyncio.create_task(follow(services.bootstrap, recs_topic, dead_topic, out))
    try:
        assert wait_until(lambda: "following model updates" in worker.log_tail(200), 120), (
            worker.log_tail()
        )
        trainer.start()
        assert wait_until(lambda: "training agent on" in trainer.log_tail(200), 120), (
            trainer.log_tail()
        )
        _, test = diginetica
        stream = test[:900]  # ~140 examples: most test items are new to v1
        await produce(services.bootstrap, topic,
                      [(e.user_id.encode(), e.to_bytes()) for e in stream], rate=300)  # fmt: skip
        assert wait_until(lambda: current_version(own_models) != v1.name, 120), trainer.log_tail()
        v2 = current_version(own_models)
        assert v2 is not None
        # Events after the promotion are served by the fine-tuned version.
        tail = test[900:960]
        assert await until(lambda: len(out.recs) >= len(stream), 90), worker.log_tail()
        await asyncio.sleep(2.0)  # the announcement reaches the worker
        await produce(services.bootstrap, topic,
                      [(e.user_id.encode(), e.to_bytes()) for e in tail])  # fmt: skip
        expect = len(stream) + len(tail)
        assert await until(lambda: len(out.recs) + len(out.dead) >= expect, 90), worker.log_tail()
        await asyncio.sleep(1.0)
        promoted = metric(trainer_port, "streamrec_trainer_candidates_total", 'result="promoted"')
        hr = metric(trainer_port, "streamrec_trainer_prequential", 'model="candidate"')
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        trainer.stop()
        worker.stop()

    meta = Bundle.load(own_models / v2).metadata
    assert meta["parent"] == v1.name and meta["online_training"]["examples"] >= 100
    gates = [orjson.loads(x) for x in (own_models / "GATES.jsonl").read_bytes().splitlines()]
    assert any(g["version"] == v2 and g["passed"] for g in gates)
    ids = [r.event_id for _, _, r in out.recs]
    assert out.dead == [] and len(ids) == len(set(ids)) == expect  # none lost, none twice
    by_id = {r.event_id: r for _, _, r in out.recs}
    assert {by_id[e.event_id].model_version for e in tail} == {v2}, worker.log_tail()
    assert "promoted" in trainer.log_tail(400)
    assert promoted is not None and promoted >= 1
    assert hr is not None and 0.0 <= hr <= 1.0
