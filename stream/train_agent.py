"""``streamrec train-agent``: the model keeps learning from the stream it serves.

A consumer of the events topic in a group of its own (``STREAMREC_TRAIN_GROUP_ID``), so it
reads every event the workers read without taking partitions from them. Each item event
whose session already holds a known item becomes an example (models/online_training.py:
recent items -> this item, purchases and carts weighted above views). Examples are learnt in
chunks, **prequentially**: each chunk is first scored by the learner and by the version that
serves now, then learnt. Every ``STREAMREC_TRAIN_PUBLISH_EXAMPLES`` examples or
``STREAMREC_TRAIN_PUBLISH_S`` seconds (given ``STREAMREC_TRAIN_MIN_EXAMPLES``), the learner
becomes a candidate bundle (models/export.py ``write_fine_tuned``) and goes through the gates:

* quality: its prequential HR@20 / MRR@20 over the chunks since the last candidate, against
  the serving version's on the same chunks, events neither had trained on
  (``STREAMREC_GATE_MAX_HR_DROP`` / ``..._MRR_DROP``);
* consistency: top-20 overlap and score drift against the serving version on the most recent
  ``STREAMREC_TRAIN_GATE_EVENTS`` events replayed through the serving code (stream/gates.py).

A candidate that passes is promoted like ``streamrec models promote`` does (CURRENT, history,
Redis mirror, ``model-updates`` announcement), and the workers swap to it. One that fails is
kept on disk, not promoted; the verdict is in GATES.jsonl, the log and the metrics, and the
learner goes on from where it is. With ``STREAMREC_TRAIN_ARM`` the agent learns only from the
users that ``STREAMREC_AB_ARMS`` puts in that arm, and promotes to that arm only
(``<model_dir>/ARM.<name>``, announced with the arm).

The consumer commits after each fetched batch is handed to the learner (at-least-once):
examples still waiting for a full chunk when the agent stops are not learnt, which costs a
little training data and never a served event. Training-only (torch).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from features.traffic import TrafficMonitor
from models.ab import ABSplit
from models.bundle import Bundle
from models.export import load_ranker, write_fine_tuned
from models.gates import GateConfig, GateReport, decide
from models.online_training import (
    Example,
    ExampleBuilder,
    OnlineConfig,
    OnlineLearner,
    prequential_metrics,
)
from models.ranker import SessionRanker
from models.registry import (
    PromotionRecord,
    arm_version,
    current_version,
    promote_arm,
    promote_version,
)
from models.serving import DEFAULT_EVENT_WEIGHTS, ServingModel
from stream.anomaly import check_event, input_limits, rate_bounds
from stream.forget import ForgetRequest, pseudonymiser_of
from stream.gates import GATE_K, canary_consistency, gate_config
from stream.kafka_admin import create_topics
from stream.registry import announce_update, record_gate, record_in_redis
from stream.settings import Settings
from stream.transport import KafkaSecurity
from topics import names
from topics.events import InvalidEvent, UserEvent, parse_event

log = logging.getLogger("streamrec.trainer")

FETCH_MAX_RECORDS = 2000


def session_key_prefix(user_id: str) -> str:
    return f"{user_id}\x1f"


def session_key(event: UserEvent) -> str:
    """The example builder's session key: the user's id, then the session's, so that a
    user's open sessions can be found and dropped (``TrainingAgent.forget``)."""
    return session_key_prefix(event.user_id) + event.session_id


@dataclass(frozen=True, slots=True)
class AgentConfig:
    chunk: int = 256
    publish_examples: int = 20_000
    publish_s: float = 600.0
    min_examples: int = 500
    gate_events: int = 5000
    lr: float = 5e-4
    arm: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> AgentConfig:
        return cls(
            chunk=settings.train_chunk,
            publish_examples=settings.train_publish_examples,
            publish_s=settings.train_publish_s,
            min_examples=settings.train_min_examples,
            gate_events=settings.train_gate_events,
            lr=settings.train_lr,
            arm=settings.train_arm or None,
        )


@dataclass(slots=True)
class Window:
    """Prequential sums since the last candidate: the learner's and the serving version's
    HR/MRR@k on the same chunks, weighted by chunk size."""

    examples: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, n: int, candidate: tuple[float, float], current: tuple[float, float]) -> None:
        self.examples += n
        for key, value in (
            ("candidate_hr", candidate[0]),
            ("candidate_mrr", candidate[1]),
            ("current_hr", current[0]),
            ("current_mrr", current[1]),
        ):
            self.sums[key] = self.sums.get(key, 0.0) + n * value

    def metrics(self, who: str) -> dict[str, float]:
        """``{"HR@20": .., "MRR@20": ..}`` of ``who`` (``candidate`` or ``current``)."""
        n = max(self.examples, 1)
        return {
            f"HR@{GATE_K}": self.sums.get(f"{who}_hr", 0.0) / n,
            f"MRR@{GATE_K}": self.sums.get(f"{who}_mrr", 0.0) / n,
        }


@dataclass(slots=True)
class PublishOutcome:
    """What one publish did: ``candidate`` written (None when the agent re-based instead),
    whether it was promoted, and the gate report behind it."""

    candidate: str | None
    promoted: bool
    report: GateReport | None
    reason: str


class TrainerMetrics:
    """The agent's Prometheus metrics (its own registry and port, apart from workers')."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("streamrec_trainer_events", "Events read by the training agent",
                              ["kind"], registry=r)  # fmt: skip
        self.examples = Counter("streamrec_trainer_examples", "Examples learnt", registry=r)
        self.examples_per_s = Gauge(
            "streamrec_trainer_examples_per_second", "Examples learnt per second of training",
            registry=r,
        )  # fmt: skip
        self.loss = Gauge("streamrec_trainer_loss", "Mean loss of the last chunk", registry=r)
        self.prequential = Gauge(
            "streamrec_trainer_prequential",
            "Prequential metric of the last chunk (scored before learning from it)",
            ["model", "metric"], registry=r,
        )  # fmt: skip
        self.candidates = Counter(
            "streamrec_trainer_candidates", "Candidate versions written, by outcome",
            ["result"], registry=r,
        )  # fmt: skip
        self.gate_failures = Counter(
            "streamrec_trainer_gate_failures", "Candidates refused, by gate", ["gate"], registry=r
        )
        self.base = Gauge("streamrec_trainer_base_info", "The version the learner fine-tunes",
                          ["version"], registry=r)  # fmt: skip
        self.last_publish = Gauge(
            "streamrec_trainer_last_publish_timestamp_seconds", "When the last candidate was made",
            registry=r,
        )  # fmt: skip


class TrainingAgent:
    """The learner and its publishing rule, free of Kafka: ``feed`` it parsed events, ask
    ``due``, call ``publish``. Blocking (torch): the Kafka loop runs it in a thread."""

    def __init__(
        self,
        model_dir: Path,
        cfg: AgentConfig,
        gates: GateConfig,
        metrics: TrainerMetrics,
        *,
        split: ABSplit | None = None,
        promote: Callable[[PromotionRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cfg.arm is not None and (split is None or cfg.arm not in {a.name for a in split.arms}):
            raise ValueError(f"STREAMREC_TRAIN_ARM={cfg.arm!r} is not an arm of STREAMREC_AB_ARMS")
        self.root = Path(model_dir)
        self.cfg = cfg
        self.gates = gates
        self.metrics = metrics
        self.split = split
        self._announce = promote
        self.clock = clock
        self.recent: deque[UserEvent] = deque(maxlen=cfg.gate_events)
        self.base = ""
        self.window = Window()
        self.pending: list[Example] = []
        self.pending_users: list[str] = []  # pending[i] came from pending_users[i] (forget)
        self.since = clock()
        self.train_s = 0.0

    def served_version(self) -> str:
        """The version the agent's traffic is served by: the arm's, or CURRENT."""
        if self.cfg.arm is not None:
            assert self.split is not None
            pinned = next(a.version for a in self.split.arms if a.name == self.cfg.arm)
            return arm_version(self.root, self.cfg.arm) or pinned
        version = current_version(self.root)
        if version is None:
            raise FileNotFoundError(f"no CURRENT model in {self.root}: run `streamrec train`")
        return version

    def start(self) -> str:
        self.rebase(self.served_version())
        return self.base

    def rebase(self, version: str) -> None:
        """Fine-tune ``version`` from now on: a fresh learner on its weights, prequential
        comparisons against it, the window restarted."""
        model = load_ranker(self.root / version)
        bundle = Bundle.load(self.root / version)
        self.current: SessionRanker = model
        self.learner = OnlineLearner(copy.deepcopy(model), OnlineConfig(lr=self.cfg.lr))
        weights = bundle.metadata.get("event_weights") or DEFAULT_EVENT_WEIGHTS
        self.builder = ExampleBuilder(
            {item: i + 1 for i, item in enumerate(bundle.item_ids)}, bundle.max_recent, weights
        )
        self.pending.clear()
        self.pending_users.clear()
        self.window = Window()
        self.since = self.clock()
        self.metrics.base.clear()
        self.metrics.base.labels(version).set(1)
        self.base = version
        log.info("fine-tuning %s (%d items)", version, bundle.n_items)

    def _mine(self, events: Sequence[UserEvent]) -> list[UserEvent]:
        if self.cfg.arm is None:
            return list(events)
        assert self.split is not None
        arms = self.split.assign([e.user_id for e in events])
        return [e for e, a in zip(events, arms, strict=True) if a.name == self.cfg.arm]

    def feed(self, events: Sequence[UserEvent]) -> int:
        """Learn from ``events`` (stream order); returns how many examples they made."""
        mine = self._mine(events)
        self.metrics.events.labels("other_arm").inc(len(events) - len(mine))
        made = 0
        for e in mine:
            self.recent.append(e)
            example = self.builder.feed(session_key(e), e.item_id, e.event_type.value)
            if example is not None:
                self.pending.append(example)
                self.pending_users.append(e.user_id)
                made += 1
        self.metrics.events.labels("learnt_from").inc(len(mine))
        while len(self.pending) >= self.cfg.chunk:
            chunk, self.pending = self.pending[: self.cfg.chunk], self.pending[self.cfg.chunk :]
            del self.pending_users[: self.cfg.chunk]
            self._train(chunk)
        return made

    def forget(self, user_id: str) -> tuple[int, int, int]:
        """Erase ``user_id`` (as stored) from the agent's memory (``streamrec forget-user``):
        their recent events (the consistency gate's canary), their examples not learnt yet and
        their open sessions. Returns those three counts. What was learnt stays in the weights."""
        recent = [e for e in self.recent if e.user_id != user_id]
        n_recent = len(self.recent) - len(recent)
        self.recent = deque(recent, maxlen=self.recent.maxlen)
        keep = [i for i, u in enumerate(self.pending_users) if u != user_id]
        n_pending = len(self.pending) - len(keep)
        self.pending = [self.pending[i] for i in keep]
        self.pending_users = [self.pending_users[i] for i in keep]
        sessions = self.builder.forget(session_key_prefix(user_id))
        return n_recent, n_pending, sessions

    def _train(self, chunk: list[Example]) -> None:
        t0 = time.perf_counter()
        current = prequential_metrics(self.current, chunk, GATE_K)
        result = self.learner.step(chunk)
        self.train_s += time.perf_counter() - t0
        self.window.add(len(chunk), (result.hr, result.mrr), current)
        m = self.metrics
        m.examples.inc(len(chunk))
        m.examples_per_s.set(len(chunk) / max(time.perf_counter() - t0, 1e-9))
        m.loss.set(result.loss)
        for who, (hr, mrr) in (("candidate", (result.hr, result.mrr)), ("current", current)):
            m.prequential.labels(who, f"hr@{GATE_K}").set(hr)
            m.prequential.labels(who, f"mrr@{GATE_K}").set(mrr)

    def due(self) -> bool:
        n = self.window.examples
        if n < self.cfg.min_examples:
            return False
        return n >= self.cfg.publish_examples or self.clock() - self.since >= self.cfg.publish_s

    def publish(self) -> PublishOutcome:
        """Write the learner as a candidate, gate it against the serving version, promote it
        if it passes. If the serving version changed under the agent (an operator promoted or
        rolled back), nothing is written: the agent re-bases on that version instead."""
        served = self.served_version()
        if served != self.base:
            log.info("serving version is now %s (was %s): re-basing", served, self.base)
            self.rebase(served)
            return PublishOutcome(None, False, None, f"re-based on {served}")
        window, n = self.window, self.window.examples
        candidate_q, current_q = window.metrics("candidate"), window.metrics("current")
        path = write_fine_tuned(
            self.root / self.base,
            self.learner.model,
            metadata={
                "online_training": {
                    "examples": n,
                    "examples_total": self.learner.learnt,
                    "seconds": round(self.clock() - self.since, 1),
                    "lr": self.cfg.lr,
                    "arm": self.cfg.arm,
                },
                "metrics": {
                    f"prequential_hr@{GATE_K}": candidate_q[f"HR@{GATE_K}"],
                    f"prequential_mrr@{GATE_K}": candidate_q[f"MRR@{GATE_K}"],
                    f"parent_prequential_hr@{GATE_K}": current_q[f"HR@{GATE_K}"],
                    f"parent_prequential_mrr@{GATE_K}": current_q[f"MRR@{GATE_K}"],
                    "prequential_examples": float(n),
                },
            },
        )
        overlap, drift, canary = canary_consistency(
            ServingModel.load(self.root / self.base), ServingModel.load(path), [],
            sorted(self.recent, key=lambda e: e.timestamp_ms),
        )  # fmt: skip
        report = decide(current_q, candidate_q, overlap, drift, self.gates, k=GATE_K)
        report.metrics.update(examples=float(n), canary_events=float(canary))
        record_gate(self.root, path.name, report)
        self.metrics.last_publish.set(self.clock())
        self.window = Window()
        self.since = self.clock()
        if not report.passed:
            for gate in sorted({r.split(":", 1)[0] for r in report.reasons}):
                self.metrics.gate_failures.labels(gate).inc()
            self.metrics.candidates.labels("refused").inc()
            log.warning("candidate %s not promoted: %s", path.name, "; ".join(report.reasons))
            return PublishOutcome(path.name, False, report, "; ".join(report.reasons))
        if self.cfg.arm is not None:
            record = promote_arm(self.root, self.cfg.arm, path.name)
        else:
            record = promote_version(self.root, path.name)
        self.metrics.candidates.labels("promoted").inc()
        log.info(
            "promoted %s (was %s): prequential HR@%d %.4f vs %.4f, overlap %.3f, drift %.3f",
            path.name, self.base, GATE_K, candidate_q[f"HR@{GATE_K}"],
            current_q[f"HR@{GATE_K}"], overlap, drift,
        )  # fmt: skip
        self.base = path.name
        self.current = copy.deepcopy(self.learner.model).eval()
        self.metrics.base.clear()
        self.metrics.base.labels(path.name).set(1)
        if self._announce is not None:
            self._announce(record)
        return PublishOutcome(path.name, True, report, "promoted")


def announcer(settings: Settings, arm: str | None) -> Callable[[PromotionRecord], None]:
    """What a promotion tells the outside world, as ``streamrec models promote`` does: the
    Redis mirror (CURRENT only) and the ``model-updates`` announcement, each best effort."""

    def tell(record: PromotionRecord) -> None:
        if arm is None:
            record_in_redis(settings, record)
        announce_update(settings, settings.model_dir, record, arm=arm)

    return tell


async def run_agent(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    serve_metrics: bool = True,
    metrics: TrainerMetrics | None = None,
) -> TrainingAgent:
    """Consume the events topic and train until ``stop`` is set (forever without one)."""
    torch.set_num_threads(settings.train_threads)
    metrics = metrics or TrainerMetrics()
    if serve_metrics and settings.train_metrics_port:
        start_http_server(settings.train_metrics_port, registry=metrics.registry)
    cfg = AgentConfig.of(settings)
    split = ABSplit.parse(settings.ab_arms, settings.ab_salt) if settings.ab_arms else None
    agent = TrainingAgent(
        settings.model_dir, cfg, gate_config(settings), metrics,
        split=split, promote=announcer(settings, cfg.arm),
    )  # fmt: skip
    base = await asyncio.to_thread(agent.start)
    from aiokafka import AIOKafkaConsumer

    topic = settings.topic_prefix + names.USER_EVENTS.name
    # streamrec forget-user (stream/forget.py): read in the agent's group with its events.
    forget_topic = names.forget_requests_topic(settings.topic_prefix)
    await create_topics(
        settings.kafka_bootstrap_servers, (names.FORGET_REQUESTS.prefixed(settings.topic_prefix),)
    )
    pseudonymise = pseudonymiser_of(settings)
    consumer = AIOKafkaConsumer(
        topic,
        forget_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.train_group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        **KafkaSecurity.of(settings).client_kwargs(),
    )
    await consumer.start()
    log.info("training agent on %s as group %s, fine-tuning %s", topic,
             settings.train_group_id, base)  # fmt: skip
    limits = input_limits(settings)
    bounds = rate_bounds(settings)
    # The workers' verdicts, recomputed: flagged traffic makes no training examples.
    traffic = TrafficMonitor(bounds) if bounds.enabled else None
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=500, max_records=FETCH_MAX_RECORDS)
            events: list[UserEvent] = []
            forgets: list[ForgetRequest] = []
            for records in fetched.values():
                for record in records:
                    if record.topic == forget_topic:
                        request = ForgetRequest.parse(record.value)
                        if request is not None:
                            forgets.append(request)
                        continue
                    try:
                        event = parse_event(record.value, limits, time.time() * 1000)
                    except InvalidEvent as exc:  # the workers dead-letter it
                        metrics.events.labels(f"invalid_{exc.reason.value}").inc()
                        continue
                    if pseudonymise is not None:
                        event.user_id = pseudonymise(event.user_id)
                    if traffic is not None and check_event(traffic, event):
                        metrics.events.labels("flagged").inc()
                        continue
                    events.append(event)
            if events:
                await asyncio.to_thread(agent.feed, events)
            for request in forgets:  # after the batch's events: none of them survives it
                n_recent, n_pending, n_sessions = agent.forget(request.user_id)
                if traffic is not None:
                    traffic.forget_user(request.user_id)
                log.info("forget request %s applied: %d recent events, %d pending examples, "
                         "%d open sessions", request.request_id, n_recent, n_pending,
                         n_sessions)  # fmt: skip
            if fetched:
                await consumer.commit()
            if agent.due():
                outcome = await asyncio.to_thread(agent.publish)
                log.info("publish: %s", outcome.reason)
    finally:
        await consumer.stop()
    return agent


__all__ = [
    "AgentConfig",
    "PublishOutcome",
    "TrainerMetrics",
    "TrainingAgent",
    "Window",
    "announcer",
    "run_agent",
]
