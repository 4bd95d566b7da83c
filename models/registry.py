"""The model registry on the filesystem: which bundles exist, which one serves, and how it got
there (``streamrec models``).

The registry *is* the bundle directory: ``<root>/<version>/`` bundles (models/bundle.py),
``<root>/CURRENT`` naming the serving one, and ``<root>/HISTORY.jsonl``, one JSON line per
promotion (``version``, ``previous``, ``action``, ``at``, ``at_ms``). The history lives next
to the bundles, not only in Redis, so that ``rollback`` works when Redis is down or was wiped:
the filesystem is what workers serve from, so it is the record of truth. Promotions hold an
exclusive ``flock`` on ``<root>/.registry.lock`` so that two operators promoting at once never
record a ``previous`` that was not current.

Nothing here touches Redis or Kafka (stream/registry.py adds those), so it is usable and
testable with a directory alone.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import orjson

from models.bundle import (
    CURRENT_FILE,
    ITEM_IDS_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    BundleIntegrityError,
    ModelError,
    promote,
    sha256_file,
    verify_bundle,
)

HISTORY_FILE = "HISTORY.jsonl"
LOCK_FILE = ".registry.lock"
PromotionAction = Literal["promote", "rollback"]
EVAL_K = 20  # the cut-off train_job records metrics at (heldout_hr@20, blend_tuning hr@20)


class RegistryError(ModelError):
    """A registry operation that cannot be done: unknown version, nothing to roll back to."""


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """One row of ``models list``: a bundle directory with a manifest, valid or not.

    ``error`` is None for a bundle whose every checksum matches; otherwise it says why the
    bundle would be refused, and the metadata fields are whatever could still be read."""

    version: str
    path: Path
    current: bool
    error: str | None = None
    created_at: str | None = None
    parent: str | None = None
    n_items: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    """One promotion as HISTORY.jsonl and Redis record it."""

    version: str
    previous: str | None
    action: PromotionAction
    at_ms: int

    @property
    def at(self) -> str:
        return datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat(timespec="seconds")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "previous": self.previous,
            "action": self.action,
            "at": self.at,
            "at_ms": self.at_ms,
        }


def current_version(root: Path) -> str | None:
    """The version named by ``<root>/CURRENT``, or None when nothing was promoted."""
    path = Path(root) / CURRENT_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def _read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def key_metrics(metadata: dict[str, Any]) -> dict[str, float]:
    """The metrics worth a column: the ranker's held-out HR/MRR@20 and the tuned blend's
    validation HR/MRR@20 (keys ``hr``, ``mrr``, ``blend_hr``, ``blend_mrr``), when present."""
    out: dict[str, float] = {}
    metrics = metadata.get("metrics")
    if isinstance(metrics, dict):
        for name, key in (("hr", f"heldout_hr@{EVAL_K}"), ("mrr", f"heldout_mrr@{EVAL_K}")):
            if isinstance(metrics.get(key), int | float):
                out[name] = float(metrics[key])
    tuning = metadata.get("blend_tuning")
    if isinstance(tuning, dict):
        for name, key in (("blend_hr", f"hr@{EVAL_K}"), ("blend_mrr", f"mrr@{EVAL_K}")):
            if isinstance(tuning.get(key), int | float):
                out[name] = float(tuning[key])
    return out


def bundle_dirs(root: Path) -> list[Path]:
    """Bundle directories under ``root``: not hidden (those are bundles being written), with a
    manifest (a directory without one is not a bundle), sorted by name, which sorts default
    version names by age."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    )


def bundle_info(path: Path, *, current: str | None = None) -> BundleInfo:
    """Verify the bundle at ``path`` and summarise it; never raises for a broken bundle."""
    error: str | None = None
    try:
        verify_bundle(path)
    except BundleIntegrityError as exc:
        error = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}/")
    meta: dict[str, Any] = {}
    try:
        loaded = _read_json(path / METADATA_FILE)
        if isinstance(loaded, dict):
            meta = loaded
    except (OSError, orjson.JSONDecodeError) as exc:
        error = error or f"unreadable {METADATA_FILE} ({exc})"
    n_items = meta.get("n_items")
    return BundleInfo(
        version=path.name,
        path=path,
        current=path.name == current,
        error=error,
        created_at=meta.get("created_at"),
        parent=meta.get("parent") or meta.get("derived_from"),
        n_items=int(n_items) if isinstance(n_items, int) else None,
        metrics=key_metrics(meta),
    )


def list_bundles(root: Path) -> list[BundleInfo]:
    """Every bundle under ``root`` (checksums verified), in version order."""
    current = current_version(root)
    return [bundle_info(p, current=current) for p in bundle_dirs(root)]


def bundle_path(root: Path, version: str) -> Path:
    """``<root>/<version>``, refusing names that are not a bundle directory (so that a version
    argument never escapes the registry)."""
    if not version or "/" in version or version.startswith("."):
        raise RegistryError(f"invalid version name {version!r}")
    path = Path(root) / version
    if not (path / MANIFEST_FILE).is_file():
        raise RegistryError(f"no bundle {version!r} under {root}")
    return path


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One manifest entry against the file on disk: status ``ok``, ``mismatch`` or
    ``missing``."""

    name: str
    bytes: int
    sha256: str
    status: str


def check_files(path: Path) -> list[FileCheck]:
    """Every file the manifest lists, each checked; unlike ``verify_bundle``, which stops at
    the first problem, this reports all of them (what ``models show`` prints)."""
    manifest = _read_json(path / MANIFEST_FILE)
    out = []
    for name, entry in sorted(manifest.get("files", {}).items()):
        file = path / name
        if not file.is_file():
            status = "missing"
        else:
            status = "ok" if sha256_file(file) == entry.get("sha256") else "mismatch"
        out.append(FileCheck(name, int(entry.get("bytes", 0)), str(entry.get("sha256")), status))
    return out


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def append_history(root: Path, record: PromotionRecord) -> None:
    """Append one line to HISTORY.jsonl in a single ``O_APPEND`` write, fsynced: a reader never
    sees a half line from a finished promotion, and a crash loses at most the last one."""
    line = orjson.dumps(record.to_dict()) + b"\n"
    fd = os.open(Path(root) / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(root: Path) -> list[PromotionRecord]:
    """Promotions in the order they happened; a torn or foreign line is skipped, not fatal,
    because the history only ever guides a rollback, which verifies what it promotes."""
    path = Path(root) / HISTORY_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            row = orjson.loads(line)
            if row.get("arm") is not None:  # an A/B arm's promotion: CURRENT is untouched
                continue
            out.append(
                PromotionRecord(
                    version=str(row["version"]),
                    previous=None if row.get("previous") is None else str(row["previous"]),
                    action=cast(
                        PromotionAction,
                        "rollback" if row.get("action") == "rollback" else "promote",
                    ),
                    at_ms=int(row.get("at_ms", 0)),
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


def serving_stack(history: list[PromotionRecord], current: str | None) -> list[str]:
    """Versions that served, oldest first, with rolled-back ones removed: a promote pushes, a
    rollback pops. So ``rollback`` twice from C (after A, B, C) goes to B, then A, never back
    to the bad C. A version made current outside the registry (``streamrec train``) is taken
    as pushed on top, so a rollback after it returns to what was current before."""
    stack: list[str] = []
    for rec in history:
        if rec.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != rec.version:
                stack.append(rec.version)
            continue
        if rec.previous is not None and (not stack or stack[-1] != rec.previous):
            stack.append(rec.previous)
        if not stack or stack[-1] != rec.version:
            stack.append(rec.version)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    return stack


def rollback_target(root: Path) -> str:
    """The version that served before the current one (see ``serving_stack``)."""
    stack = serving_stack(read_history(root), current_version(root))
    if len(stack) < 2:
        raise RegistryError(f"no earlier promoted version in {Path(root) / HISTORY_FILE}")
    return stack[-2]


def _promote_locked(root: Path, version: str, action: PromotionAction) -> PromotionRecord:
    bundle_path(root, version)
    previous = current_version(root)
    promote(root, version)  # verifies every checksum; BundleIntegrityError if tampered
    record = PromotionRecord(version, previous, action, int(time.time() * 1000))
    append_history(root, record)
    return record


def promote_version(root: Path, version: str) -> PromotionRecord:
    """Verify ``version``, make it CURRENT and record the promotion in HISTORY.jsonl.

    Raises ``RegistryError`` for an unknown version and ``BundleIntegrityError`` for a bundle
    whose checksums fail; CURRENT and the history are untouched then."""
    root = Path(root)
    with _locked(root):
        return _promote_locked(root, version, "promote")


def rollback(root: Path) -> PromotionRecord:
    """Promote the version that served before the current one (action ``rollback``)."""
    root = Path(root)
    with _locked(root):
        return _promote_locked(root, rollback_target(root), "rollback")


ARM_PREFIX = "ARM."  # <root>/ARM.<name>: the version an online-trained A/B arm serves now


def arm_version(root: Path, arm: str) -> str | None:
    """The version the training agent of ``arm`` last promoted for it (``<root>/ARM.<arm>``),
    or None: the arm then serves the version pinned in ``STREAMREC_AB_ARMS``."""
    path = Path(root) / f"{ARM_PREFIX}{arm}"
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def promote_arm(root: Path, arm: str, version: str) -> PromotionRecord:
    """Make ``version`` the served version of A/B arm ``arm`` (verified, written atomically,
    recorded in HISTORY.jsonl with the action ``promote`` and ``previous`` the arm's)."""
    root = Path(root)
    with _locked(root):
        bundle_path(root, version)
        verify_bundle(root / version)
        previous = arm_version(root, arm)
        tmp = root / f".{ARM_PREFIX}{arm}.{os.getpid()}"
        tmp.write_text(version + "\n", encoding="utf-8")
        os.replace(tmp, root / f"{ARM_PREFIX}{arm}")
        record = PromotionRecord(version, previous, "promote", int(time.time() * 1000))
        line = orjson.dumps({**record.to_dict(), "arm": arm}) + b"\n"
        with open(root / HISTORY_FILE, "ab") as fh:
            fh.write(line)
        return record


@dataclass(frozen=True, slots=True)
class BundleDiff:
    """What differs between bundles A and B (``models diff``)."""

    metadata: list[tuple[str, Any, Any]]  # (dotted key, value in A, value in B)
    files: dict[str, str]  # name -> "same", "differs", "only in A", "only in B"
    items_only_a: int
    items_only_b: int
    items_both: int
    same_space: bool


# Keys that always differ between two bundles or say nothing on their own.
_DIFF_SKIP = {"version", "space", "space_id"}  # the space: BundleDiff.same_space


def _flatten(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def diff_bundles(a: Path, b: Path) -> BundleDiff:
    """Metadata differences (nested keys flattened: ``blend.covisit``, ``metrics.heldout_hr@20``,
    ``training_data.from``), files whose sha256 differ, and catalogue overlap. Reads manifests
    and metadata as they are: a diff explains a broken bundle rather than refusing it."""
    meta_a = _flatten(_read_json(a / METADATA_FILE))
    meta_b = _flatten(_read_json(b / METADATA_FILE))
    changed = [
        (key, meta_a.get(key), meta_b.get(key))
        for key in sorted(meta_a.keys() | meta_b.keys())
        if key not in _DIFF_SKIP and meta_a.get(key) != meta_b.get(key)
    ]
    files_a = _read_json(a / MANIFEST_FILE).get("files", {})
    files_b = _read_json(b / MANIFEST_FILE).get("files", {})
    files = {}
    for name in sorted(files_a.keys() | files_b.keys()):
        if name not in files_b:
            files[name] = "only in A"
        elif name not in files_a:
            files[name] = "only in B"
        else:
            same = files_a[name].get("sha256") == files_b[name].get("sha256")
            files[name] = "same" if same else "differs"
    items_a = set(_read_json(a / ITEM_IDS_FILE))
    items_b = set(_read_json(b / ITEM_IDS_FILE))
    return BundleDiff(
        metadata=changed,
        files=files,
        items_only_a=len(items_a - items_b),
        items_only_b=len(items_b - items_a),
        items_both=len(items_a & items_b),
        same_space=meta_a.get("space") == meta_b.get("space"),
    )
