"""Model bundles: round trip, checksum verification, hash -> index lookup, the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from features.keys import item_hashes_u64
from models.bundle import (
    CURRENT_FILE,
    EMBEDDINGS_FILE,
    FILES,
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    Bundle,
    BundleIntegrityError,
    ModelError,
    latest_bundle,
    promote,
    space_id_of,
    write_bundle,
)
from models.retrieval import Retriever

ITEMS = ["a", "b", "c", "d"]


def _write(root: Path, version: str | None = "v1", **meta: object) -> Path:
    onnx = root.parent / "fake.onnx"
    onnx.write_bytes(b"not parsed by bundle.py")
    emb = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    emb[0] = 0.0
    return write_bundle(
        root,
        onnx_path=onnx,
        item_ids=ITEMS,
        embeddings=emb,
        popularity=np.array([0, 4, 3, 2, 1], dtype=np.float32),
        max_recent=7,
        metadata={"training_data": "unit test", **meta},
        version=version,
    )


def test_round_trip_keeps_arrays_metadata_and_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "bundles", source="x")
    bundle = Bundle.load(path)
    assert path == tmp_path / "bundles" / "v1"
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, MANIFEST_FILE])
    assert bundle.version == "v1" and bundle.item_ids == ITEMS
    assert bundle.embeddings.dtype == np.float32 and bundle.embeddings.shape == (5, 3)
    assert bundle.embeddings[2].tolist() == [6.0, 7.0, 8.0]
    assert bundle.popularity.tolist() == [0, 4, 3, 2, 1]
    assert (bundle.dim, bundle.max_recent, bundle.n_items) == (3, 7, 4)
    assert bundle.metadata["source"] == "x" and bundle.metadata["training_data"] == "unit test"
    assert bundle.space_id == space_id_of(bundle.metadata["space"]) != 0
    assert bundle.onnx_path.read_bytes() == b"not parsed by bundle.py"
    assert Retriever.load(bundle.index_path).n_items == 4


def test_no_partial_bundle_or_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    _write(root)
    with pytest.raises(ModelError, match="already exists"):
        _write(root)
    with pytest.raises(ModelError, match="invalid bundle version"):
        _write(root, version="../escape")
    assert [p.name for p in root.iterdir()] == ["v1"]


def test_default_versions_differ_and_spaces_differ(tmp_path: Path) -> None:
    a = Bundle.load(_write(tmp_path / "r", version=None))
    b = Bundle.load(_write(tmp_path / "r", version=None))
    assert a.version != b.version and a.space_id != b.space_id


@pytest.mark.parametrize("name", [MODEL_FILE, INDEX_FILE, EMBEDDINGS_FILE, METADATA_FILE])
def test_tampered_file_is_rejected_by_name(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / "bundles")
    with open(path / name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleIntegrityError, match=name.replace(".", r"\.")):
        Bundle.load(path)


def test_missing_file_and_missing_manifest_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "bundles")
    (path / EMBEDDINGS_FILE).unlink()
    with pytest.raises(BundleIntegrityError, match=f"missing {EMBEDDINGS_FILE}"):
        Bundle.load(path)
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(BundleIntegrityError, match=f"missing {MANIFEST_FILE}"):
        Bundle.load(path)


def test_manifest_that_omits_a_file_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "bundles")
    manifest = orjson.loads((path / MANIFEST_FILE).read_bytes())
    del manifest["files"][INDEX_FILE]
    (path / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match=f"does not list {INDEX_FILE}"):
        Bundle.load(path)


def test_indices_of_maps_known_hashes_and_unknown_to_zero(tmp_path: Path) -> None:
    bundle = Bundle.load(_write(tmp_path / "bundles"))
    hashes = item_hashes_u64(["c", "zzz", "a", "d", "b", "a"])
    assert bundle.indices_of(hashes).tolist() == [3, 0, 1, 4, 2, 1]
    assert bundle.indices_of(hashes).dtype == np.int64
    assert bundle.indices_of(np.zeros(0, dtype=np.uint64)).shape == (0,)
    beyond = np.array([np.iinfo(np.uint64).max, 0], dtype=np.uint64)
    assert bundle.indices_of(beyond).tolist() == [0, 0]


def test_latest_bundle_prefers_current_then_newest(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    assert latest_bundle(root) is None
    old = _write(root, version="old")
    new = _write(root, version="new")
    os.utime(old / MANIFEST_FILE, ns=(1, 1))
    assert latest_bundle(root) == new
    promote(root, "old")
    assert (root / CURRENT_FILE).read_text().strip() == "old"
    assert latest_bundle(root) == old


def test_promote_refuses_a_broken_bundle_and_current_must_exist(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    path = _write(root)
    (path / MODEL_FILE).write_bytes(b"other")
    with pytest.raises(BundleIntegrityError):
        promote(root, "v1")
    (root / CURRENT_FILE).write_text("gone\n")
    with pytest.raises(ModelError, match="gone"):
        latest_bundle(root)


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import models.bundle, models.retrieval, models.scoring, models.topk, models.evaluation\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_token_encoder_ships_in_the_bundle_and_must_match_its_space(tmp_path: Path) -> None:
    from models.token_encoder import TOKENS_FILE, TokenEncoder

    onnx = tmp_path / "fake.onnx"
    onnx.write_bytes(b"not parsed by bundle.py")
    emb = np.eye(5, 3, k=-1, dtype=np.float32)
    common = {"onnx_path": onnx, "item_ids": ITEMS, "embeddings": emb, "max_recent": 7,
              "popularity": np.ones(5, dtype=np.float32)}  # fmt: skip
    tokens = TokenEncoder.fit([[11], [12]], np.array([1, 2]), emb)
    path = write_bundle(tmp_path / "m", version="v1", token_encoder=tokens, **common)  # type: ignore[arg-type]
    loaded = Bundle.load(path)
    assert loaded.token_encoder is not None and loaded.token_encoder.name == tokens.name
    assert (path / TOKENS_FILE).is_file()
    assert Bundle.load(_write(tmp_path / "n")).token_encoder is None  # optional
    wrong = TokenEncoder(np.array([1]), np.ones((1, 4), np.float32))
    with pytest.raises(ModelError, match="4 dims"):
        write_bundle(tmp_path / "m", version="v2", token_encoder=wrong, **common)  # type: ignore[arg-type]
