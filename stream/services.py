"""Starts the local Kafka broker and Redis through deploy/local/*.sh unless existing services
are configured (KAFKA_BOOTSTRAP_SERVERS / REDIS_URL in the environment)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local"


@dataclass
class LocalServices:
    """The local services this process started (and so must stop)."""

    kafka_port: int = 9092
    redis_port: int = 6379
    started: list[str] = field(default_factory=list)
    startup_s: dict[str, float] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STREAMREC_KAFKA_PORT"] = str(self.kafka_port)
        env["STREAMREC_REDIS_PORT"] = str(self.redis_port)
        return env

    def _script(self, name: str, action: str) -> None:
        subprocess.run([str(LOCAL / f"{name}.sh"), action], check=True, env=self._env())

    def running(self, name: str) -> bool:
        return (
            subprocess.run(
                [str(LOCAL / f"{name}.sh"), "status"], env=self._env(), capture_output=True
            ).returncode
            == 0
        )

    def ensure(self, name: str) -> None:
        """Start ``name`` ("kafka" or "redis") unless it already answers on its port."""
        if self.running(name):
            return
        t0 = time.perf_counter()
        self._script(name, "start")
        self.startup_s[name] = time.perf_counter() - t0
        self.started.append(name)

    def stop_started(self) -> None:
        for name in reversed(self.started):
            self._script(name, "stop")
        self.started.clear()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


def resolve_services(local: LocalServices) -> tuple[str, str]:
    """(bootstrap, redis_url): configured ones as they are, local ones started if needed."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("REDIS_URL")
    if not bootstrap:
        local.ensure("kafka")
        bootstrap = local.bootstrap
    if not redis_url:
        local.ensure("redis")
        redis_url = local.redis_url
    return bootstrap, redis_url
