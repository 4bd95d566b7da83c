"""Versioned model bundles on disk and the registry that says which one serves.

Serving-side, never imports torch. A bundle is a directory ``<root>/<version>/`` holding::

    model.onnx       the exported ranker (models/export.py)
    model.onnx.data  optional: its weights as ONNX external data (memory-mapped by ONNX Runtime)
    items.faiss      inner-product index over normalised item embeddings (models/retrieval.py)
    item_ids.json    list of item id strings; position i is item index i + 1 (0 = padding)
    embeddings.npy   float32[N + 1, D] raw item embeddings, row 0 zero: serving adds them into
                     user vectors in Redis, so they must be the model's own table
    popularity.npy   float32[N + 1] training counts, the cold-start fallback
    metadata.json    training data, date, config, metrics, dim, max_recent, embedding space
    weights.npz      optional: the ranker's parameters, for online fine-tuning (no pickle)
    MANIFEST.json    sha256 and size of every file above

A bundle is written into a hidden temporary directory and renamed into place, so a reader
never sees half a bundle; ``Bundle.load`` checks every checksum anyway, because a worker that
serves a corrupt or mismatched model produces wrong recommendations without failing.
``<root>/CURRENT`` names the promoted version.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from features.keys import item_hashes_u64
from models.retrieval import Retriever
from models.session_knn import SessionIndex
from models.token_encoder import TOKENS_FILE, TokenEncoder

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
# The ranker's weights as ONNX external data beside the graph: ONNX Runtime maps the file
# instead of copying the tensors, so workers on one host share those pages. Optional: a
# graph with its weights inline (older bundles, compressed variants) has none.
MODEL_DATA_FILE = "model.onnx.data"
INDEX_FILE = "items.faiss"
ITEM_IDS_FILE = "item_ids.json"
EMBEDDINGS_FILE = "embeddings.npy"
POPULARITY_FILE = "popularity.npy"
METADATA_FILE = "metadata.json"
COVISIT_FILE = "covisit.npz"  # optional: bundles written before it serve without co-visitation
KNN_FILE = "knn.npz"  # optional: training sessions for session kNN (models/session_knn.py)
# optional: the ranker's parameters (name -> array, no pickle) for online fine-tuning
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "MANIFEST.json"
CURRENT_FILE = "CURRENT"
FILES = (MODEL_FILE, INDEX_FILE, ITEM_IDS_FILE, EMBEDDINGS_FILE, POPULARITY_FILE, METADATA_FILE)
_REQUIRED_META = ("version", "dim", "max_recent", "space", "space_id")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_JSON_OPTS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


class ModelError(Exception):
    """Base error of the models package: a bundle, model or input that cannot be used."""


class BundleIntegrityError(ModelError):
    """A bundle file is missing or its checksum does not match the manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def space_id_of(space: str) -> int:
    """u32 id of an embedding space as user state stores it; never 0, which state uses for
    "no vector yet"."""
    return zlib.crc32(space.encode("utf-8")) or 1


def new_version() -> str:
    """A fresh version name: UTC time (so names sort by age) plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def write_bundle(
    root: Path,
    *,
    onnx_path: Path,
    item_ids: list[str],
    embeddings: np.ndarray,
    popularity: np.ndarray,
    max_recent: int,
    metadata: dict[str, Any] | None = None,
    version: str | None = None,
    retriever: Retriever | None = None,
    covisit: tuple[np.ndarray, np.ndarray] | None = None,
    sequential: tuple[np.ndarray, np.ndarray] | None = None,
    session_index: SessionIndex | None = None,
    token_encoder: TokenEncoder | None = None,
    weights: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``<root>/<version>/`` atomically and return its path.

    ``embeddings`` is ``float32[N + 1, D]`` with row 0 zero, ``popularity`` ``float32[N + 1]``.
    The FAISS index is built from ``embeddings`` unless ``retriever`` is given. ``metadata`` is
    stored with ``version``, ``dim``, ``max_recent``, ``n_items``, ``space``, ``space_id`` and
    ``created_at`` added. ``weights`` (the ranker's parameters by name) let the training
    agent fine-tune the version without the training run that made it. An existing version
    is never overwritten.
    """
    version = version or new_version()
    if not _VERSION_RE.match(version):
        raise ModelError(f"invalid bundle version name {version!r}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    popularity = np.ascontiguousarray(popularity, dtype=np.float32)
    n = len(item_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != n + 1 or popularity.shape != (n + 1,):
        raise ModelError(
            f"{n} item ids need embeddings (N+1, D) and popularity (N+1,), "
            f"got {embeddings.shape} and {popularity.shape}"
        )
    root = Path(root)
    final = root / version
    if final.exists():
        raise ModelError(f"bundle {final} already exists")
    emb_digest = hashlib.sha256(embeddings.tobytes()).hexdigest()[:16]
    space = f"{version}:{emb_digest}"
    meta = dict(metadata or {})
    meta.update(
        format_version=FORMAT_VERSION,
        version=version,
        dim=int(embeddings.shape[1]),
        max_recent=int(max_recent),
        n_items=n,
        space=space,
        space_id=space_id_of(space),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        shutil.copyfile(onnx_path, tmp / MODEL_FILE)
        data = Path(onnx_path).parent / MODEL_DATA_FILE
        extra: list[str] = []
        if data.is_file():  # the graph's external weights (models/export.py writes them)
            shutil.copyfile(data, tmp / MODEL_DATA_FILE)
            os.chmod(tmp / MODEL_DATA_FILE, 0o644)
            extra.append(MODEL_DATA_FILE)
        (retriever or Retriever.build(embeddings)).save(tmp / INDEX_FILE)
        (tmp / ITEM_IDS_FILE).write_bytes(orjson.dumps(list(item_ids)))
        np.save(tmp / EMBEDDINGS_FILE, embeddings, allow_pickle=False)
        np.save(tmp / POPULARITY_FILE, popularity, allow_pickle=False)
        (tmp / METADATA_FILE).write_bytes(orjson.dumps(meta, option=_JSON_OPTS))
        names = list(FILES) + extra
        if covisit is not None:
            seq = sequential or (covisit[0][:, :0], covisit[1][:, :0])
            np.savez(tmp / COVISIT_FILE, neighbours=covisit[0], weights=covisit[1],
                     seq_neighbours=seq[0], seq_weights=seq[1])  # fmt: skip
            names.append(COVISIT_FILE)
        if session_index is not None:
            if session_index.n_items != n:
                raise ModelError(f"session index has {session_index.n_items} items, bundle {n}")
            session_index.save(tmp / KNN_FILE)
            names.append(KNN_FILE)
        if token_encoder is not None and len(token_encoder):
            if token_encoder.dim != embeddings.shape[1]:
                raise ModelError(
                    f"token vectors: {token_encoder.dim} dims, items {embeddings.shape[1]}"
                )
            token_encoder.save(tmp / TOKENS_FILE)
            names.append(TOKENS_FILE)
        if weights:
            np.savez(tmp / WEIGHTS_FILE, allow_pickle=False, **weights)  # type: ignore[arg-type]
            names.append(WEIGHTS_FILE)
        files = {name: _manifest_entry(tmp / name) for name in names}
        manifest = {"format_version": FORMAT_VERSION, "version": version, "files": files}
        (tmp / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=_JSON_OPTS))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_bundle(path: Path) -> dict[str, Any]:
    """Check every file of the bundle at ``path`` against its manifest; return the manifest."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleIntegrityError(f"{path}: missing {MANIFEST_FILE}")
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
        files = manifest["files"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleIntegrityError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    for name in FILES:
        if name not in files:
            raise BundleIntegrityError(f"{path}: manifest does not list {name}")
    # A file the manifest does not list would be read unverified by a loader that looks for it
    # (model.onnx.data through ONNX Runtime, weights.npz, covisit.npz, knn.npz, ...): refused.
    unlisted = sorted(
        p.name
        for p in path.iterdir()
        if p.name != MANIFEST_FILE and p.name not in files and not p.is_dir()
    )
    if unlisted:
        raise BundleIntegrityError(f"{path}: files not in the manifest: {', '.join(unlisted)}")
    for name in files:  # every listed file, optional ones included
        if not (path / name).is_file():
            raise BundleIntegrityError(f"{path}: missing {name}")
        actual = sha256_file(path / name)
        if actual != files[name]["sha256"]:
            raise BundleIntegrityError(
                f"{path / name}: sha256 {actual} does not match manifest {files[name]['sha256']}"
            )
    return manifest


@dataclass(frozen=True, slots=True, eq=False)
class Bundle:
    """A verified bundle in memory. ``embeddings`` is ``float32[N + 1, D]``, ``popularity``
    ``float32[N + 1]``; ``item_ids[i]`` is item index ``i + 1``."""

    version: str
    path: Path
    metadata: dict[str, Any]
    item_ids: list[str]
    embeddings: np.ndarray
    popularity: np.ndarray
    _sorted_hashes: np.ndarray
    _sorted_indices: np.ndarray
    # Co-visitation (models/covisit.py): int64 / float32 [N + 1, M]; M = 0 when absent.
    covisit_neighbours: np.ndarray
    covisit_weights: np.ndarray
    # Sequential rules (forward only, scored from the newest item), same layout; M may be 0.
    sequential_neighbours: np.ndarray
    sequential_weights: np.ndarray
    # Training sessions for session kNN; None when the bundle has none.
    session_index: SessionIndex | None = None
    # Token-id query encoder into the item space (models/token_encoder.py); None when absent.
    token_encoder: TokenEncoder | None = None

    @classmethod
    def load(cls, path: Path | str) -> Bundle:
        path = Path(path)
        verify_bundle(path)
        metadata = orjson.loads((path / METADATA_FILE).read_bytes())
        missing = [k for k in _REQUIRED_META if k not in metadata]
        if missing:
            raise ModelError(f"{path}: metadata lacks {missing}")
        item_ids = orjson.loads((path / ITEM_IDS_FILE).read_bytes())
        embeddings = np.load(path / EMBEDDINGS_FILE, allow_pickle=False)
        popularity = np.load(path / POPULARITY_FILE, allow_pickle=False)
        n = len(item_ids)
        if embeddings.dtype != np.float32 or embeddings.shape != (n + 1, metadata["dim"]):
            raise ModelError(f"{path}: embeddings {embeddings.dtype}{embeddings.shape}, N={n}")
        if popularity.shape != (n + 1,):
            raise ModelError(f"{path}: popularity shape {popularity.shape}, N={n}")
        if space_id_of(metadata["space"]) != metadata["space_id"]:
            raise ModelError(f"{path}: space_id does not match space {metadata['space']!r}")
        hashes = item_hashes_u64(item_ids)
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        if n > 1 and np.any(sorted_hashes[1:] == sorted_hashes[:-1]):
            raise ModelError(f"{path}: duplicate item ids (or a 64-bit hash collision)")
        neighbours = np.zeros((n + 1, 0), dtype=np.int64)
        weights = np.zeros((n + 1, 0), dtype=np.float32)
        seq_neighbours, seq_weights = neighbours, weights
        if (path / COVISIT_FILE).is_file():
            with np.load(path / COVISIT_FILE, allow_pickle=False) as covisit:
                neighbours, weights = covisit["neighbours"], covisit["weights"]
                if "seq_neighbours" in covisit:
                    seq_neighbours, seq_weights = covisit["seq_neighbours"], covisit["seq_weights"]
            for nb, wt in ((neighbours, weights), (seq_neighbours, seq_weights)):
                if nb.shape != wt.shape or nb.shape[0] != n + 1:
                    raise ModelError(f"{path}: co-visitation shape {nb.shape}, N={n}")
        session_index = None
        if (path / KNN_FILE).is_file():
            try:
                session_index = SessionIndex.load(path / KNN_FILE, n)
            except (ValueError, KeyError) as exc:
                raise ModelError(f"{path}: {exc}") from exc
        token_encoder = None
        if (path / TOKENS_FILE).is_file():
            try:
                token_encoder = TokenEncoder.load(path / TOKENS_FILE)
            except (ValueError, KeyError) as exc:
                raise ModelError(f"{path}: {exc}") from exc
            if token_encoder.dim != metadata["dim"]:
                raise ModelError(
                    f"{path}: token vectors {token_encoder.dim} dims, not {metadata['dim']}"
                )
        return cls(
            version=str(metadata["version"]),
            path=path,
            metadata=metadata,
            item_ids=item_ids,
            embeddings=embeddings,
            popularity=popularity.astype(np.float32),
            _sorted_hashes=sorted_hashes,
            _sorted_indices=(order + 1).astype(np.int64),
            covisit_neighbours=neighbours.astype(np.int64),
            covisit_weights=weights.astype(np.float32),
            sequential_neighbours=seq_neighbours.astype(np.int64),
            sequential_weights=seq_weights.astype(np.float32),
            session_index=session_index,
            token_encoder=token_encoder,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.metadata["dim"])

    @property
    def max_recent(self) -> int:
        return int(self.metadata["max_recent"])

    @property
    def space_id(self) -> int:
        return int(self.metadata["space_id"])

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_FILE

    def indices_of(self, hashes: np.ndarray) -> np.ndarray:
        """Item indices ``int64[M]`` (1..N, 0 for unknown) of item hashes ``uint64[M]``
        (``features.keys.item_hashes_u64``): one binary search per hash, no Python loop."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if self.n_items == 0 or hashes.size == 0:
            return np.zeros(hashes.shape, dtype=np.int64)
        pos = np.searchsorted(self._sorted_hashes, hashes)
        pos = np.minimum(pos, self.n_items - 1)
        found = self._sorted_hashes[pos] == hashes
        return np.where(found, self._sorted_indices[pos], 0).astype(np.int64)


def derive_bundle(source: Path, updates: dict[str, Any], *, version: str | None = None) -> Path:
    """A new version beside ``source`` with the same files and ``updates`` merged into its
    metadata (e.g. a serving parameter tuned after training); the embedding space is kept,
    so user state written by the source version stays valid."""
    source = Path(source)
    verify_bundle(source)
    version = version or new_version()
    if not _VERSION_RE.match(version):
        raise ModelError(f"invalid bundle version name {version!r}")
    final = source.parent / version
    tmp = source.parent / f".tmp-{version}-{secrets.token_hex(4)}"
    shutil.copytree(source, tmp)
    try:
        meta = orjson.loads((tmp / METADATA_FILE).read_bytes())
        meta.update(
            updates,
            version=version,
            derived_from=source.name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        (tmp / METADATA_FILE).write_bytes(orjson.dumps(meta, option=_JSON_OPTS))
        manifest = orjson.loads((tmp / MANIFEST_FILE).read_bytes())
        manifest["version"] = version
        manifest["files"][METADATA_FILE] = _manifest_entry(tmp / METADATA_FILE)
        (tmp / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=_JSON_OPTS))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def promote(root: Path, version: str) -> None:
    """Make ``version`` the serving bundle by (atomically) rewriting ``<root>/CURRENT``."""
    root = Path(root)
    verify_bundle(root / version)
    tmp = root / f".{CURRENT_FILE}.{secrets.token_hex(4)}"
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, root / CURRENT_FILE)


def latest_bundle(root: Path) -> Path | None:
    """The bundle named by ``<root>/CURRENT``; without CURRENT, the most recently written
    complete bundle (by its manifest's mtime); ``None`` when there is none. A CURRENT that
    names a missing bundle is an error, not a reason to serve something else."""
    root = Path(root)
    current = root / CURRENT_FILE
    if current.is_file():
        path = root / current.read_text(encoding="utf-8").strip()
        if not (path / MANIFEST_FILE).is_file():
            raise ModelError(f"{current} names {path.name!r}, which is not a complete bundle")
        return path
    if not root.is_dir():
        return None
    complete = [
        p for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    ]
    if not complete:
        return None
    return max(complete, key=lambda p: ((p / MANIFEST_FILE).stat().st_mtime_ns, p.name))
