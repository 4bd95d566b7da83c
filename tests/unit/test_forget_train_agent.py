"""The training agent erases a user from its memory on a forget request (stream/forget.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.unit.test_train_agent import agent, walk_events
from tests.unit.test_train_agent import root as root


def test_the_training_agent_forgets_a_user(root: Path) -> None:
    a = agent(root, chunk=10_000)  # nothing learnt: every example stays pending
    a.start()
    events = walk_events(30, 1_700_100_000_000, seed=3, users=3)
    a.feed(events)
    users = {e.user_id for e in events}
    victim = events[0].user_id
    before = (sum(e.user_id == victim for e in a.recent), len(a.pending), len(a.builder))
    n_recent, n_pending, n_sessions = a.forget(victim)
    assert n_recent == before[0] > 0 and n_pending > 0 and n_sessions > 0
    assert len(a.pending) == before[1] - n_pending == len(a.pending_users)
    assert victim not in a.pending_users and set(a.pending_users) == users - {victim}
    assert all(e.user_id != victim for e in a.recent)
    assert not any(k.startswith(f"{victim}\x1f") for k in a.builder._sessions)
    assert len(a.builder) == before[2] - n_sessions
    # The agent goes on learning from the others.
    assert a.feed(walk_events(5, 1_700_200_000_000, seed=4, users=3)) > 0
