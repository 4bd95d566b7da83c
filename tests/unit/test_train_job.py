"""Training-job choices that do not need torch to check."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from models.training import TrainConfig
from stream.train_job import EXAMPLE_BUDGET, default_epochs


def test_epochs_shrink_with_data_size() -> None:
    assert default_epochs(1_000) == TrainConfig().epochs
    assert default_epochs(EXAMPLE_BUDGET // 3) == 3
    assert default_epochs(10 * EXAMPLE_BUDGET) == 1
