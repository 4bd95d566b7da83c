"""Imports flow one way: topics <- features <- models <- stream. Serving never imports torch."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["topics", "features", "models", "stream"]
TRAINING_ONLY = {
    "models/ranker.py",
    "models/training.py",
    "models/export.py",
    "models/online_training.py",
    "stream/train_job.py",
    "stream/train_agent.py",
    "models/distill.py",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layers_import_only_downwards() -> None:
    for rank, layer in enumerate(LAYERS):
        forbidden = set(LAYERS[rank + 1 :])
        for path in (ROOT / layer).rglob("*.py"):
            bad = _imports(path) & forbidden
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_serving_modules_never_import_torch() -> None:
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel in TRAINING_ONLY:
                continue
            assert "torch" not in _imports(path), f"{rel} imports torch"


def test_loading_the_worker_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, stream.worker, stream.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
