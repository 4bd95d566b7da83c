"""``streamrec evaluate --model``: existing bundles scored beside the baselines, same pairs."""

from __future__ import annotations

from pathlib import Path

from models.bundle import latest_bundle
from stream.eval_job import evaluate_dataset
from stream.evaluate import EvalConfig
from topics.events import UserEvent


def test_existing_bundle_is_evaluated_side_by_side(
    model_dir: Path, diginetica: tuple[list[UserEvent], list[UserEvent]]
) -> None:
    bundle = latest_bundle(model_dir)
    assert bundle is not None
    events = sorted(diginetica[0] + diginetica[1], key=lambda e: e.timestamp_ms)
    cfg = EvalConfig(seeds=(), bundles=(str(bundle),), ks=(20,))
    result = evaluate_dataset("diginetica", events, cfg)
    label = f"streamrec@{bundle.name}"
    assert {label, "pop", "sr", "vsknn"} <= set(result["methods"])
    assert "streamrec" not in result["methods"]  # no seeds: nothing trained
    served = result["methods"][label]["mean"]["HR@20"]
    assert served > result["methods"]["pop"]["mean"]["HR@20"]
