"""A/B through the real worker: every recommendation carries its arm, each arm's version, and
the split follows the users' stable hash."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from models.ab import ABSplit
from models.bundle import derive_bundle, latest_bundle
from stream.replay import produce
from tests.integration.harness import Services, WorkerProcess
from tests.integration.test_hot_swap import Arrivals, follow, until
from topics.events import UserEvent


async def test_the_worker_serves_each_user_from_their_arm(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
) -> None:
    v1 = latest_bundle(model_dir)
    assert v1 is not None
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    v2 = derive_bundle(root / v1.name, {"note": "arm B"}, version="arm-b")
    spec = f"A={v1.name}:0.5,B={v2.name}:0.5"
    worker = WorkerProcess(services, root, tmp_path / "logs", extra_env={"STREAMREC_AB_ARMS": spec})
    _, test = diginetica
    events = test[:200]
    topic, recs_topic, dead_topic = worker.topics
    worker.start()
    out = Arrivals()
    follower = asyncio.create_task(follow(services.bootstrap, recs_topic, dead_topic, out))
    try:
        await produce(
            services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in events]
        )
        assert await until(lambda: len(out.recs) >= len(events), 120), worker.log_tail()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        worker.stop()
    split = ABSplit.parse(spec)
    recs = [r for _, _, r in out.recs]
    arms = {u: a for u, a in zip([r.user_id for r in recs], split.assign([r.user_id for r in recs]),
                                 strict=True)}  # fmt: skip
    assert {r.arm for r in recs} == {"A", "B"}
    assert all(r.arm == arms[r.user_id].name and r.model_version == arms[r.user_id].version
               for r in recs)  # fmt: skip
