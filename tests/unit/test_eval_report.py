"""The evaluation report's goal check: the served ranking against the best other method."""

from __future__ import annotations

from typing import Any

from stream.eval_report import goal_check, render_markdown


def _block(hr: float, mrr: float) -> dict[str, Any]:
    return {"mean": {"HR@20": hr, "MRR@20": mrr}, "std": {"HR@20": 0.01, "MRR@20": 0.0}}


def test_goal_check_compares_with_the_best_rival_per_metric() -> None:
    summary = {
        "config": {"test_days": 14, "valid_days": 7, "seeds": [0], "min_valid_events": 2000},
        "seconds": 1.0,
        "datasets": [
            {
                "dataset": "d",
                "events": {"train": 1, "valid": 1, "test": 1},
                "catalogue": 3,
                "test_pairs": 2,
                "dropped_unseen_targets": 0,
                "dropped_repeat_targets": 0,
                "seconds": {},
                "blend_per_seed": [{"neural": 1.0, "knn": 8.0, "online": 0.0}],
                "methods": {
                    "streamrec": _block(0.30, 0.10),
                    "streamrec@v1": _block(0.90, 0.90),  # an old bundle: not a rival
                    "vsknn": _block(0.29, 0.12),
                    "sr": _block(0.20, 0.11),
                },
            }
        ],
    }
    rows = goal_check(summary)
    assert [(r["metric"], r["best_other"], r["wins"]) for r in rows] == [
        ("HR@20", "vsknn", True),
        ("MRR@20", "vsknn", False),
    ]
    text = render_markdown(summary)
    assert "| d | MRR@20 | 0.1000 ± 0.0000 | 0.1200 (vsknn) | **no** |" in text
    assert "per seed: neural 1, knn 8." in text
