"""Fault-injection fixtures: the same real Kafka broker and redis-server as the integration
tests (one set of services per test session, started by tests/integration/conftest.py's
``services``), plus the ``faults`` marker. Tests that stop or restart a service do it through
deploy/local/*.sh and skip when KAFKA_BOOTSTRAP_SERVERS / REDIS_URL name services this session
did not start."""

from __future__ import annotations

import pytest

from tests.faults._helpers import REPORTED
from tests.integration.conftest import diginetica, model_dir, services, worker  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The counts each fault test printed (sent, answered, dead-lettered, lost, duplicated)."""
    if REPORTED:
        terminalreporter.section("fault-injection counts")
        for line in REPORTED:
            terminalreporter.write_line(line)
