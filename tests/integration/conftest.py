"""Integration fixtures: a real Kafka broker and a real redis-server, started once per test
session through the project's own scripts (deploy/local/*.sh) on ports of their own, unless
KAFKA_BOOTSTRAP_SERVERS / REDIS_URL name existing services. Nothing here is skipped: if a
service cannot start, the tests fail and say why."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.services import LOCAL, LocalServices
from tests.integration.harness import Services, WorkerProcess
from topics.datasets import load_diginetica_views, split_by_time
from topics.events import UserEvent

KAFKA_PORT = int(os.environ.get("STREAMREC_TEST_KAFKA_PORT", "19092"))
REDIS_PORT = int(os.environ.get("STREAMREC_TEST_REDIS_PORT", "16379"))
SAMPLE = Path(__file__).resolve().parents[2] / "stream" / "data" / "diginetica-sample-views.csv.gz"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    local = LocalServices(kafka_port=KAFKA_PORT, redis_port=REDIS_PORT)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("REDIS_URL")
    if not bootstrap:
        env = dict(os.environ, STREAMREC_KAFKA_PORT=str(KAFKA_PORT))
        subprocess.run([str(LOCAL / "kafka.sh"), "wipe"], env=env, check=True)  # fresh log dirs
        local.ensure("kafka")
        bootstrap = local.bootstrap
    if not redis_url:
        local.ensure("redis")
        redis_url = local.redis_url
    print(f"\nservices: kafka {bootstrap} redis {redis_url} started {local.startup_s}")
    yield Services(bootstrap, redis_url)
    local.stop_started()


@pytest.fixture(scope="session")
def diginetica() -> tuple[list[UserEvent], list[UserEvent]]:
    events, report = load_diginetica_views(SAMPLE)
    assert report.bad_rows == 0
    return split_by_time(events, 14)


@pytest.fixture(scope="session")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, diginetica: tuple[list[UserEvent], list[UserEvent]]
) -> Path:
    """A real bundle trained on the sample's training period (few epochs: fast, not tuned)."""
    from stream.train_job import train_and_promote

    root = tmp_path_factory.mktemp("models")
    train, _ = diginetica
    train_and_promote(train, root, source=str(SAMPLE), epochs=2)
    return root


@pytest.fixture()
def worker(services: Services, model_dir: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(services, model_dir, tmp_path)
    w.start()
    yield w
    w.stop()
