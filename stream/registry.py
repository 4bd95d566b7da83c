"""``streamrec models list | show | promote | rollback | diff``: the model registry from the
command line.

The filesystem part is models/registry.py; this adds what a promotion tells the outside
world, each step best effort after CURRENT is written: the Redis mirror
(features/registry_store.py) and an announcement on the ``model-updates`` topic so that
workers switch at once. Workers also poll CURRENT, so a Redis or Kafka outage delays
nothing but the announcement and must not fail a promotion that already happened: those
print a warning and the command still exits 0.

Exit codes: 0 done, 1 ``show`` of a bundle that fails verification, 2 refused (unknown
version, tampered bundle, nothing to roll back to).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from features.registry_store import RedisRegistryStore, RegistryStore
from models.bundle import MANIFEST_FILE, METADATA_FILE, BundleIntegrityError, verify_bundle
from models.gates import GateReport
from models.registry import (
    HISTORY_FILE,
    BundleInfo,
    PromotionRecord,
    RegistryError,
    bundle_path,
    check_files,
    current_version,
    diff_bundles,
    list_bundles,
    promote_version,
    rollback,
)
from stream.settings import Settings, load_settings
from stream.transport import redact_url

REDIS_TIMEOUT_S = 5.0
ANNOUNCE_TIMEOUT_S = 5.0
MODEL_UPDATES_TOPIC = "model-updates"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _model_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.model_dir).expanduser() if args.model_dir else settings.model_dir


# ---------------------------------------------------------------- Redis and Kafka, best effort


def _redis_store(settings: Settings) -> tuple[RegistryStore, Callable[[], Awaitable[None]]]:
    """The Redis mirror and how to close it (a seam: tests put the in-memory twin here)."""
    from stream.transport import redis_client

    client = redis_client(
        settings, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
    )
    return RedisRegistryStore(client, namespace=settings.namespace), client.aclose


async def _record_in_redis(settings: Settings, record: PromotionRecord) -> None:
    store, close = _redis_store(settings)
    try:
        await store.record(record.version, record.action, record.at_ms, record.previous)
    finally:
        await close()


def record_in_redis(settings: Settings, record: PromotionRecord) -> bool:
    """Mirror the promotion into Redis; False (with a warning) when Redis is unreachable."""
    try:
        asyncio.run(asyncio.wait_for(_record_in_redis(settings, record), REDIS_TIMEOUT_S + 1))
    except Exception as exc:  # any outage: the filesystem promotion stands
        reason = f"{type(exc).__name__}: {exc}"
        _warn(f"promotion not recorded in Redis ({redact_url(settings.redis_url)}): {reason}")
        return False
    return True


def announce_update(
    settings: Settings, model_dir: Path, record: PromotionRecord, *, arm: str | None = None
) -> bool:
    """Publish a ModelUpdate on ``<prefix>model-updates`` (for A/B arm ``arm`` only, if
    given); False (with a warning) when the announcer is not installed or Kafka does not
    answer within ``ANNOUNCE_TIMEOUT_S``."""
    topic = settings.topic_prefix + MODEL_UPDATES_TOPIC
    fallback = "workers will pick the version up by polling CURRENT"
    try:  # lazily: the announcer is optional for a filesystem promotion
        from stream.model_updates import announce
        from topics.model_updates import ModelUpdate
    except ImportError as exc:
        _warn(f"cannot announce on {topic} ({exc}); {fallback}")
        return False
    update = ModelUpdate(
        version=record.version,
        model_dir=str(model_dir),
        action=record.action,
        at_ms=record.at_ms,
        arm=arm,
    )
    bootstrap = settings.kafka_bootstrap_servers
    try:
        # TLS/SASL from the environment, as these settings were (stream/transport.py).
        asyncio.run(asyncio.wait_for(announce(bootstrap, topic, update), ANNOUNCE_TIMEOUT_S))
    except Exception as exc:  # Kafka down or slow: polling still delivers the version
        reason = f"{type(exc).__name__}: {exc}"
        _warn(f"announcement on {topic} via {bootstrap} failed ({reason}); {fallback}")
        return False
    return True


# ---------------------------------------------------------------------------- the commands


def format_list(rows: list[BundleInfo]) -> list[str]:
    head = ("", "VERSION", "CREATED", "PARENT", "ITEMS", "HR@20", "MRR@20", "BLEND HR", "BLEND MRR")
    table: list[tuple[str, ...]] = [head]
    for r in rows:
        if r.error is not None:
            table.append(("*" if r.current else "", r.version, f"INVALID ({r.error})"))
            continue
        m = r.metrics
        table.append(
            (
                "*" if r.current else "",
                r.version,
                _fmt(r.created_at),
                _fmt(r.parent),
                _fmt(r.n_items),
                *(_fmt(m.get(k)) for k in ("hr", "mrr", "blend_hr", "blend_mrr")),
            )
        )
    full = [row for row in table if len(row) == len(head)]  # INVALID rows set no widths
    widths = [max(len(row[i]) for row in full) for i in range(len(head))]
    out = []
    for row in table:
        if len(row) < len(head):  # an INVALID row: the reason takes the rest of the line
            out.append(f"{row[0]:1s} {row[1]:{widths[1]}s}  {row[2]}")
        else:
            cells = [f"{c:{w}s}" for c, w in zip(row[1:], widths[1:], strict=True)]
            out.append(f"{row[0]:1s} " + "  ".join(cells).rstrip())
    return out


def cmd_list(args: argparse.Namespace) -> int:
    root = _model_dir(args, load_settings())
    rows = list_bundles(root)
    if not rows:
        print(f"no bundles under {root}")
        return 0
    for line in format_list(rows):
        print(line)
    current = current_version(root)
    if current is not None and not any(r.current for r in rows):
        print(f"CURRENT names {current!r}, which is not a bundle under {root}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    root = _model_dir(args, load_settings())
    try:
        path = bundle_path(root, args.version)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle   {path}")
    try:
        verify_bundle(path)
        verdict, code = "OK (every sha256 matches the manifest)", 0
    except BundleIntegrityError as exc:
        verdict, code = f"INVALID ({exc})", 1
    print(f"verified {verdict}")
    print(f"\n{METADATA_FILE}:")
    try:
        meta = orjson.loads((path / METADATA_FILE).read_bytes())
        text = orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        print("\n".join("  " + line for line in text.splitlines()))
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"  unreadable ({exc})")
    print(f"\n{MANIFEST_FILE}:")
    try:
        checks = check_files(path)
    except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
        print(f"  unreadable ({exc})")
        return 1
    width = max((len(c.name) for c in checks), default=4)
    for c in checks:
        print(f"  {c.name:{width}s}  {c.bytes:>12,d} B  sha256 {c.sha256[:12]}  {c.status}")
    print(f"  {len(checks)} files, {sum(c.bytes for c in checks):,d} bytes")
    return code


def _announce_and_mirror(
    args: argparse.Namespace, settings: Settings, root: Path, record: PromotionRecord
) -> None:
    was = f" (was {record.previous})" if record.previous else ""
    print(f"{record.action}: {record.version} is CURRENT in {root}{was}")
    print(f"history: {root / HISTORY_FILE}")
    if record_in_redis(settings, record):
        print(f"redis: sr:{settings.namespace}:models:current = {record.version}")
    if args.no_announce:
        return
    if announce_update(settings, root, record):
        print(f"announced on {settings.topic_prefix + MODEL_UPDATES_TOPIC}")


def _run_promotion(args: argparse.Namespace, version: str | None) -> int:
    settings = load_settings()
    root = _model_dir(args, settings)
    try:
        record = rollback(root) if version is None else promote_version(root, version)
    except BundleIntegrityError as exc:
        print(
            f"error: refusing to promote a bundle that fails verification: {exc}", file=sys.stderr
        )
        return 2
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _announce_and_mirror(args, settings, root, record)
    return 0


GATES_FILE = "GATES.jsonl"


def gate_candidate(root: Path, version: str, events_file: Path) -> GateReport | None:
    """The gates of ``version`` against CURRENT on the events of ``events_file`` (replayed
    through the serving code for both); None when nothing is current yet."""
    from models.bundle import latest_bundle
    from models.serving import ServingModel
    from stream.gates import check_candidate, gate_config
    from stream.import_job import load_events_file

    current = latest_bundle(root)
    if current is None or current.name == version:
        return None
    events, _ = load_events_file(events_file)
    return check_candidate(ServingModel.load(current), ServingModel.load(root / version),
                           [], sorted(events, key=lambda e: e.timestamp_ms),
                           gate_config(load_settings()))  # fmt: skip


def record_gate(root: Path, version: str, report: GateReport) -> None:
    """Append the verdict to ``<root>/GATES.jsonl`` (bundles are immutable: their metadata is
    covered by the manifest, so a verdict reached later is kept beside them)."""
    line = orjson.dumps({"version": version, "at_ms": int(time.time() * 1000),
                         **report.to_dict()})  # fmt: skip
    with open(root / GATES_FILE, "ab") as fh:
        fh.write(line + b"\n")


def cmd_promote(args: argparse.Namespace) -> int:
    gate_events = getattr(args, "gate_events", None)
    if gate_events is not None:
        root = _model_dir(args, load_settings())
        report = gate_candidate(root, args.version, gate_events)
        if report is not None:
            record_gate(root, args.version, report)
            verdict = "passed" if report.passed else "FAILED"
            numbers = ", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())
            print(f"gates {verdict} for {args.version}: {numbers}")
            for reason in report.reasons:
                print(f"  {reason}")
            if not report.passed and not args.force:
                print(f"not promoted (--force overrides); verdict in {root / GATES_FILE}")
                return 3
    return _run_promotion(args, args.version)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _run_promotion(args, None)


def cmd_diff(args: argparse.Namespace) -> int:
    root = _model_dir(args, load_settings())
    try:
        a, b = bundle_path(root, args.a), bundle_path(root, args.b)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"A = {args.a}\nB = {args.b}")
    for name, path in (("A", a), ("B", b)):
        try:
            verify_bundle(path)
        except BundleIntegrityError as exc:
            print(f"warning: {name} fails verification: {exc}")
    d = diff_bundles(a, b)
    print("\nmetadata:")
    if not d.metadata:
        print("  identical")
    width = max((len(k) for k, _, _ in d.metadata), default=0)
    for key, va, vb in d.metadata:
        print(f"  {key:{width}s}  {_fmt(va)} -> {_fmt(vb)}")
    space = "same (user state carries over)" if d.same_space else "different"
    print(f"  embedding space: {space}")
    print("\nfiles (sha256):")
    width = max((len(n) for n in d.files), default=0)
    for name, state in d.files.items():
        print(f"  {name:{width}s}  {state}")
    print(
        f"\nitems: {d.items_both} in both, {d.items_only_a} only in A, {d.items_only_b} only in B"
    )
    return 0


def _training_sessions(path: Path, data: Path | None, test_days: float) -> list[list[int]]:
    """Item-index sessions of the bundle's training period: ``data`` (else the file or
    dataset its metadata names, else the DIGINETICA sample) split as ``streamrec train``
    splits it (the last ``test_days`` and the validation days before them left out)."""
    from models.bundle import Bundle
    from models.compress import sessions_of
    from stream.demo import dataset_path
    from stream.evaluate import EvalConfig
    from stream.import_job import load_events_file
    from topics.datasets import split_train_valid_test
    from topics.loaders import DATASETS, load_dataset

    bundle = Bundle.load(path)
    source = str((bundle.metadata.get("training_data") or {}).get("source") or "")
    if data is not None:
        events, _ = load_events_file(data)
    elif source in DATASETS:
        events, _ = load_dataset(source)
    else:
        events, _ = load_events_file(Path(source) if Path(source).is_file() else dataset_path())
    cfg = EvalConfig()  # streamrec train's validation split: same valid_days / min events
    train, _, _ = split_train_valid_test(
        events, test_days, cfg.valid_days, min_valid_events=cfg.min_valid_events
    )
    return sessions_of(train, bundle.item_ids)


def cmd_compress(args: argparse.Namespace) -> int:
    """A compressed variant of VERSION (models/compress.py) written as a new version beside
    it; it serves once promoted (``models promote``) or pinned in an A/B arm."""
    from models.compress import NEEDS_SESSIONS, CompressionError, compress_bundle

    root = _model_dir(args, load_settings())
    try:
        path = bundle_path(root, args.version)
        sessions = None
        if args.variant in NEEDS_SESSIONS:
            sessions = _training_sessions(path, args.data, args.test_days)
            print(f"{len(sessions):,d} training sessions for {args.variant}")
        out = compress_bundle(path, args.variant, sessions=sessions)
    except (CompressionError, BundleIntegrityError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = orjson.loads((out / METADATA_FILE).read_bytes())["compression"]
    print(f"{args.variant} of {args.version}: {out.name}")
    print(f"  model.onnx {info['parent_model_bytes']:,d} -> {info['model_bytes']:,d} bytes; "
          f"max |score diff| vs parent {info['max_abs_diff_vs_parent']:.4g} "
          f"({info['checked_on']})")  # fmt: skip
    print(f"serve it: streamrec models promote {out.name} (or pin it in STREAMREC_AB_ARMS)")
    return 0


COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "diff": cmd_diff,
    "compress": cmd_compress,
}
