"""Pseudonymisation and ``streamrec forget-user`` on real Kafka and Redis, with a real worker
process and the training agent in-process: after a user's events and ``forget-user``, nothing
of the user is left in the Redis namespace, in the worker's trackers or in the agent's memory,
while another user's data stays."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from features.keys import id_hash
from features.pseudonym import pseudonymise
from stream.replay import produce
from stream.services import ROOT
from tests.integration.harness import Services, WorkerProcess
from tests.integration.test_hot_swap import Arrivals, follow, until
from topics.events import UserEvent

pytest.importorskip("torch")

KEY = "integration-test-key"


def sessions_for(train: list[UserEvent], users: list[str], per_user: int = 2) -> list[UserEvent]:
    """``per_user`` sessions of >= 4 events (items the model knows: examples for the agent)
    from the end of the training period, re-assigned to ``users``, re-timed to now."""
    counts = Counter(e.session_id for e in train)
    chosen = [s for s in dict.fromkeys(e.session_id for e in reversed(train)) if counts[s] >= 4]
    out: list[UserEvent] = []
    for u, user in enumerate(users):
        for j, sid in enumerate(chosen[u * per_user : (u + 1) * per_user]):
            mine = [e for e in train if e.session_id == sid]
            out += [replace(e, user_id=user, session_id=f"{user}-s{j}",
                            event_id=f"{user}-{j}-{i}") for i, e in enumerate(mine)]  # fmt: skip
    now = int(time.time() * 1000) - len(out) * 1000
    return [replace(e, timestamp_ms=now + i * 1000) for i, e in enumerate(out)]


async def namespace_dump(client: aioredis.Redis, namespace: str) -> dict[bytes, list[bytes]]:
    """Every key of ``namespace`` with its content, whatever its type."""
    out: dict[bytes, list[bytes]] = {}
    async for key in client.scan_iter(match=f"sr:{namespace}:*", count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            parts = [await client.get(key)]
        elif kind == "hash":
            parts = [b for kv in (await client.hgetall(key)).items() for b in kv]
        elif kind == "list":
            parts = await client.lrange(key, 0, -1)
        elif kind == "set":
            parts = list(await client.smembers(key))
        elif kind == "zset":
            parts = [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            parts = [b for _, f in await client.xrange(key) for kv in f.items() for b in kv]
        else:
            parts = [await client.dump(key) or b""]
        out[key] = [p for p in parts if p is not None]
    return out


def traces(dump: dict[bytes, list[bytes]], needles: list[bytes]) -> list[bytes]:
    return [k for k, parts in dump.items() if any(n in k or any(n in p for p in parts)
                                                  for n in needles)]  # fmt: skip


async def test_forget_user_leaves_nothing_of_the_user(
    services: Services,
    model_dir: Path,
    tmp_path: Path,
    diginetica: tuple[list[UserEvent], list[UserEvent]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = WorkerProcess(services, model_dir, tmp_path / "logs",
                           extra_env={"STREAMREC_PSEUDONYMISE_KEY": KEY})  # fmt: skip
    ns = worker.namespace
    victim, other = f"forget.me-{worker.run_id}@example.com", f"keep.me-{worker.run_id}"
    alias, other_alias = pseudonymise(KEY.encode(), victim), pseudonymise(KEY.encode(), other)
    # Every form the user could leave behind: raw id, pseudonym, and their 8-byte id hashes.
    needles = [victim.encode(), alias.encode(), id_hash(victim), id_hash(alias),
               hashlib.sha256(victim.encode()).digest()[:8]]  # fmt: skip
    env = {"KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "REDIS_URL": services.redis_url,
           "STREAMREC_TOPIC_PREFIX": worker.prefix, "STREAMREC_NAMESPACE": ns,
           "STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_PSEUDONYMISE_KEY": KEY,
           "STREAMREC_TRAIN_GROUP_ID": f"{ns}-trainer", "STREAMREC_TRAIN_CHUNK": "100000",
           "STREAMREC_TRAIN_METRICS_PORT": "0"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from stream.settings import load_settings
    from stream.train_agent import TrainerMetrics, run_agent

    topic, recs_topic, dead_topic = worker.topics
    out = Arrivals()
    stop = asyncio.Event()
    metrics = TrainerMetrics()
    caplog.set_level(logging.INFO, logger="streamrec.trainer")
    worker.start()
    follower = asyncio.create_task(follow(services.bootstrap, recs_topic, dead_topic, out))
    trainer: asyncio.Task[object] | None = None
    client = aioredis.from_url(services.redis_url)
    try:
        assert await until(lambda: "following forget requests" in worker.log_tail(400), 180), (
            worker.log_tail()
        )
        # After the worker made the topics: a consumer subscribed to a missing topic would see
        # it only at its next metadata refresh.
        trainer = asyncio.create_task(run_agent(load_settings(), stop=stop, metrics=metrics))
        assert await until(lambda: "training agent on" in caplog.text, 120), caplog.text
        train, _ = diginetica
        events = sessions_for(train, [victim, other])
        await produce(services.bootstrap, topic,
                      [(e.user_id.encode(), e.to_bytes()) for e in events], rate=200)  # fmt: skip
        assert await until(lambda: len(out.recs) >= len(events), 120), worker.log_tail()
        learnt = metrics.events.labels("learnt_from")
        assert await until(lambda: learnt._value.get() >= len(events), 60), caplog.text
        # Pseudonymisation: outputs and Redis carry the pseudonym, never the raw id.
        assert {r.user_id for _, _, r in out.recs} == {alias, other_alias}
        before = await namespace_dump(client, ns)
        assert traces(before, [alias.encode()]) and not traces(before, [victim.encode()])

        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "stream.cli", "forget-user", victim],
                             cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        cli_s = time.perf_counter() - t0
        assert "redis: 0 key(s)" not in cli.stdout, cli.stdout  # the command deleted the state
        assert victim not in cli.stdout + cli.stderr and alias not in cli.stdout + cli.stderr
        request_id = cli.stdout.split("request ", 1)[1].split()[0]
        print(cli.stdout)
        assert await until(lambda: f"forget request {request_id} applied" in worker.log_tail(400),
                           60), worker.log_tail()  # fmt: skip
        assert await until(lambda: f"forget request {request_id} applied" in caplog.text, 60), (
            caplog.text
        )

        print(f"forget-user: command {cli_s:.2f} s (a Python process start included); "
              f"applied by the worker and the agent {time.perf_counter() - t0:.2f} s after it "
              "started")  # fmt: skip

        # Redis: no key and no value holds the user in any form; the other user's state stays.
        after = await namespace_dump(client, ns)
        assert traces(after, needles) == []
        assert traces(after, [other_alias.encode()])
        print(f"redis keys in namespace: {len(before)} before, {len(after)} after forget-user")

        # The training agent, stopped here (what it would read later is new data): none of the
        # user's recent events, pending examples or open sessions; the other user's stay.
        stop.set()
        agent = await asyncio.wait_for(trainer, 60)
        line = next(r.getMessage() for r in caplog.records if request_id in r.getMessage())
        print(line)
        assert " 0 pending examples" not in line  # the user had pending examples to erase
        assert alias not in agent.pending_users and other_alias in agent.pending_users
        assert all(e.user_id != alias for e in agent.recent)
        assert len(agent.pending_users) == len(agent.pending) > 0
        assert agent.builder.forget(f"{alias}\x1f") == 0  # (forget returns how many it dropped)
        assert agent.builder.forget(f"{other_alias}\x1f") > 0

        # The worker's trackers: the user's next item event, on an item of their last list,
        # judges nothing (it would have without forget-user); the other user's still does.
        last = {r.user_id: r for _, _, r in out.recs}
        judged_before = judged(worker.metrics_port)
        tail = [replace(events[-1], user_id=u, event_id=f"{u}-tail", item_id=last[a].items[0],
                        timestamp_ms=int(time.time() * 1000))
                for u, a in ((victim, alias), (other, other_alias))]  # fmt: skip
        n = len(out.recs)
        await produce(services.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in tail])
        assert await until(lambda: len(out.recs) >= n + 2, 60), worker.log_tail()
        assert await until(lambda: judged(worker.metrics_port) >= judged_before + 1, 30)
        await asyncio.sleep(1.0)
        assert judged(worker.metrics_port) == judged_before + 1  # the other user's list only
    finally:
        stop.set()
        follower.cancel()
        if trainer is not None and not trainer.done():
            trainer.cancel()
        await asyncio.gather(follower, *([trainer] if trainer else []), return_exceptions=True)
        await client.aclose()
        worker.stop()


def judged(port: int) -> float:
    """Sum of ``streamrec_online_judged_total`` over its labels."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("streamrec_online_judged_total{"))  # fmt: skip
