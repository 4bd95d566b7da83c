"""A bundle with one byte changed in any file, or with a file its manifest does not list, is
refused with ``BundleIntegrityError`` naming the file before anything of it is parsed: no
array, FAISS index or ONNX graph is read by any loader (serving, the training agent's
``load_ranker``, promotion, derivation)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

pytest.importorskip("torch")

import faiss
import onnxruntime as ort

from models.bundle import (
    MANIFEST_FILE,
    MODEL_DATA_FILE,
    WEIGHTS_FILE,
    Bundle,
    BundleIntegrityError,
    derive_bundle,
    promote,
)
from models.export import load_ranker, train_bundle
from models.serving import ServingModel
from models.training import TrainConfig, build_sessions
from tests.unit.test_train_agent import walk_events

LOADERS: dict[str, Callable[[Path], Any]] = {
    "Bundle.load": Bundle.load,
    "ServingModel.load": ServingModel.load,
    "load_ranker": load_ranker,  # the training agent's base
    "derive_bundle": lambda p: derive_bundle(p, {"x": 1}),
    "promote": lambda p: promote(p.parent, p.name),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle with every optional file (dim 16: big enough for ONNX external data)."""
    events = walk_events(60, 1_700_000_000_000, seed=1)
    data = build_sessions([e.session_id for e in events], [e.item_id for e in events],  # type: ignore[misc]
                          [e.timestamp_ms for e in events])  # fmt: skip
    root = tmp_path_factory.mktemp("bundles")
    path = train_bundle(data.item_ids, data.sessions, data.popularity, root,
                        cfg=TrainConfig(dim=16, max_recent=5, epochs=1, seed=0))  # fmt: skip
    files = set(orjson.loads((path / MANIFEST_FILE).read_bytes())["files"])
    assert {MODEL_DATA_FILE, WEIGHTS_FILE, "item_ids.json", "knn.npz", "covisit.npz"} <= files
    return path


@pytest.fixture()
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the loaders parsed: numpy arrays, FAISS indexes, ONNX sessions."""
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            calls.append(name)
            return real(*a, **kw)

        return wrapper

    monkeypatch.setattr(np, "load", spy("np.load", np.load))
    monkeypatch.setattr(faiss, "read_index", spy("faiss.read_index", faiss.read_index))
    monkeypatch.setattr(ort, "InferenceSession", spy("InferenceSession", ort.InferenceSession))
    return calls


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "root" / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def test_an_intact_bundle_loads(bundle: Path, parsed: list[str], tmp_path: Path) -> None:
    model = ServingModel.load(copy_of(bundle, tmp_path))
    assert model.version == bundle.name and "InferenceSession" in parsed


@pytest.mark.parametrize("name", ["model.onnx", MODEL_DATA_FILE, WEIGHTS_FILE, "item_ids.json",
                                  "embeddings.npy", "items.faiss", "knn.npz"])  # fmt: skip
@pytest.mark.parametrize("loader", list(LOADERS))
def test_one_changed_byte_is_refused_before_anything_is_parsed(
    bundle: Path, parsed: list[str], tmp_path: Path, name: str, loader: str
) -> None:
    path = copy_of(bundle, tmp_path)
    blob = bytearray((path / name).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (path / name).write_bytes(bytes(blob))
    with pytest.raises(BundleIntegrityError, match=f"{name}: sha256 .* does not match manifest"):
        LOADERS[loader](path)
    assert parsed == []


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_file_the_manifest_does_not_list_is_refused(
    bundle: Path, parsed: list[str], tmp_path: Path, loader: str
) -> None:
    """Dropping an entry from the manifest (or a file into the bundle) must not turn a
    verified file into one that loaders read unverified."""
    path = copy_of(bundle, tmp_path)
    manifest = orjson.loads((path / MANIFEST_FILE).read_bytes())
    del manifest["files"][WEIGHTS_FILE]
    (path / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match=f"not in the manifest: {WEIGHTS_FILE}"):
        LOADERS[loader](path)
    assert parsed == []
