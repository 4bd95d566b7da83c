"""The training agent's speed and what its gates decide, on real data in time order.

In process, no Kafka (the agent's Kafka loop only hands it parsed events): the first
``--train-share`` of the events (by time) trains a bundle as ``streamrec train`` would; the
rest is fed to ``stream.train_agent.TrainingAgent`` in fetches of ``--fetch`` events, as the
consumer does, with the default gates. Every ``--publish-examples`` examples the agent writes
a candidate and gates it (prequential quality against the serving version, consistency on
the recent events), promoting it or not.

Printed: examples learnt per second of training (prequential scoring included) with chunks
of ``--chunk`` vs chunks of 16 (the RATIO, measured in this run on the same first examples),
the time a publish takes (export, bundle, consistency replay, promotion) p50/max, and per
candidate its prequential HR@20 against the serving version's and the gates' verdict.

Usage: python bench/training_agent.py [--dataset diginetica|online-retail|movielens]
Never a test: timings are not assertions.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from _common import git_commit, machine, percentiles, summary

from models.gates import GateConfig
from stream.train_agent import AgentConfig, TrainerMetrics, TrainingAgent
from topics.events import UserEvent


def load(dataset: str | None) -> list[UserEvent]:
    if dataset:
        from topics.loaders import load_dataset

        events, _ = load_dataset(dataset)
    else:
        from stream.demo import dataset_path
        from stream.import_job import load_events_file

        events, _ = load_events_file(dataset_path())
    return sorted(events, key=lambda e: e.timestamp_ms)


def examples_per_second(agent: TrainingAgent, events: list[UserEvent], chunk: int) -> float:
    """Examples/s of ``feed`` on ``events`` with chunks of ``chunk``, on a copy of the
    agent's learner (nothing is published, the agent is left as it was)."""
    probe = copy.copy(agent)
    probe.cfg = AgentConfig(chunk=chunk, publish_examples=10**9, min_examples=10**9)
    probe.learner = copy.deepcopy(agent.learner)
    probe.builder = copy.deepcopy(agent.builder)
    probe.pending, probe.window = [], type(agent.window)()
    probe.metrics = TrainerMetrics()
    probe.train_s = 0.0
    probe.feed(events)
    return probe.window.examples / max(probe.train_s, 1e-9)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default=None, help="a ready-made dataset (default: the sample)")
    p.add_argument("--train-share", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--fetch", type=int, default=500, help="events per consumer fetch")
    p.add_argument("--publish-examples", type=int, default=300)
    p.add_argument("--max-events", type=int, default=60_000, help="stream events fed at most")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the agent's default)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from stream.train_job import train_and_promote

    events = load(args.dataset)
    cut = int(len(events) * args.train_share)
    head, tail = events[:cut], events[cut : cut + args.max_events]
    lines = [
        f"machine: {machine()}",
        f"commit: {git_commit()}",
        f"data: {args.dataset or 'DIGINETICA sample'}: {len(head)} events train the bundle, "
        f"{len(tail)} stream through the agent (real events, time order)",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        train_and_promote(head, root, source="bench", epochs=args.epochs)
        lines.append(f"initial bundle trained in {time.perf_counter() - t0:.1f} s")
        cfg = AgentConfig(chunk=args.chunk, publish_examples=args.publish_examples,
                          min_examples=min(500, args.publish_examples))  # fmt: skip
        agent = TrainingAgent(root, cfg, GateConfig(), TrainerMetrics())
        agent.start()
        probe = tail[: min(len(tail), 4000)]
        fast = examples_per_second(agent, probe, args.chunk)
        slow = examples_per_second(agent, probe, 16)
        publish_s: list[float] = []
        rows: list[str] = []
        for lo in range(0, len(tail), args.fetch):
            agent.feed(tail[lo : lo + args.fetch])
            if agent.due():
                window = agent.window
                cand, cur = window.metrics("candidate"), window.metrics("current")
                t1 = time.perf_counter()
                out = agent.publish()
                publish_s.append(time.perf_counter() - t1)
                verdict = "promoted" if out.promoted else f"refused ({out.reason})"
                rows.append(
                    f"  {window.examples:>6} ex  HR@20 {cand['HR@20']:.4f} vs serving "
                    f"{cur['HR@20']:.4f}  MRR@20 {cand['MRR@20']:.4f} vs {cur['MRR@20']:.4f}  "
                    f"{verdict}  {publish_s[-1]:.2f} s"
                )
        lines += [
            "",
            f"learning: {fast:,.0f} examples/s with chunks of {args.chunk}, {slow:,.0f} with "
            f"chunks of 16 (ratio {fast / max(slow, 1e-9):.2f}; prequential scoring included)",
        ]
        summary("training_agent", f"examples/s, chunks of {args.chunk}", fast)
        summary("training_agent", f"chunk {args.chunk} / chunk 16 examples/s", fast / slow)
        if publish_s:
            p50, mx = percentiles(publish_s, (50,))[0], max(publish_s)
            summary("training_agent", "candidate due -> promoted, p50", p50, "s")
            lines.append(f"publish (export, bundle, consistency replay, promote): p50 {p50:.2f} s,"
                         f" max {mx:.2f} s over {len(publish_s)} candidates")  # fmt: skip
        lines += ["candidates (prequential, since the previous candidate):", *rows]
        promoted = sum("promoted" in r for r in rows)
        lines.append(f"{promoted} of {len(rows)} candidates promoted; unknown-item events "
                     f"(not learnt): {agent.builder.unknown}")  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
