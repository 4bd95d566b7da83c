"""Helpers for integration tests: a real worker process and unique topic/namespace names."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stream.replay import worker_env
from stream.services import ROOT
from topics.names import topic_names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Services:
    bootstrap: str
    redis_url: str


@dataclass
class WorkerProcess:
    """``streamrec worker`` (or another ``command``, e.g. ``train-agent``) in its own process,
    isolated by prefix, group and namespace."""

    services: Services
    model_dir: Path
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    metrics_port: int = field(default_factory=free_port)
    command: str = "worker"

    @property
    def prefix(self) -> str:
        return f"{self.namespace}."

    @property
    def namespace(self) -> str:
        return f"t-{self.run_id}"

    @property
    def topics(self) -> tuple[str, str, str]:
        return topic_names(self.prefix)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.command}-{self.run_id}.log"

    def start(self) -> None:
        env = worker_env(
            self.services.bootstrap,
            self.services.redis_url,
            self.model_dir,
            self.namespace,  # prefix "t-<id>.", group and namespace "t-<id>"
            STREAMREC_METRICS_PORT=str(self.metrics_port),
            STREAMREC_STATE_TTL_S="600",
            STREAMREC_LOG_LEVEL="INFO",
        )
        env.update(self.extra_env)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", self.command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
