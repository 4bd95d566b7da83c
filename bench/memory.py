"""Memory and loading: bytes per user in Redis, worker RSS by catalogue size, shared index pages.

(a) Redis bytes per user. ``--users`` users each get ``R`` item events written through the
    worker's own ``features.store.UserStateStore`` (the Lua update, the real bundle's item
    embeddings, D and R as the bundle has them: 32 and 20), so every state is as large as a
    state gets (``32 + 4·D + 8·R`` bytes). Measured: ``MEMORY USAGE`` of a sample of keys, and
    ``INFO memory`` ``used_memory`` before/after divided by the users written (which also counts
    the TTL's entry in the expires table and the hash tables' slots; other clients of the same
    Redis would blur it, so the keys added are printed beside it). Then, to price smaller value
    layouts against the 256 B goal, ``MEMORY USAGE`` of raw values of ``--what-if`` sizes under
    keys of the same length (the layout itself is docs/state-format.md's, not this script's).
(b) Worker memory by catalogue size. Random normalised D=32 embeddings for each ``--sizes``
    entry (default 100k and 1M items; ``--data bundle``: the real bundle's items plus noise,
    which keeps the clusters that random vectors lack and IVF relies on); ``Retriever.build``
    picks the index (flat up to 100k, IVF above, nprobe tuned to recall@20 >= 0.95). Printed:
    build time (1 FAISS thread), bytes on disk, recall@20 of the ANN stage against exact search
    on queries the tuning did not see, and, in a fresh process that loads the file
    (memory-mapped, as ``Retriever.load`` does): load time, RSS before and after the load and
    after the searches (anonymous vs file-backed), and p50/p99 latency of 64-query searches
    (1 thread). ``--flat-reference`` (on by default) adds an exact index over the largest size,
    for the latency ratio IVF vs flat.
(c) Shared pages. While that first process still holds the index, a second process loads the
    same file and searches: its RSS and, from /proc/PID/smaps_rollup, Pss, Shared_Clean and
    private bytes, with mmap and again with both processes reading the file into their own memory.
    Plus the load time of the real bundle (``ServingModel.load``: checksums, arrays, FAISS, ONNX)
    in a fresh process.

Usage: python bench/memory.py [--quick] [--users 20000] [--sizes 100000,1000000]
Starts Redis on 127.0.0.1:26379 through deploy/local/redis.sh unless it already runs there or
REDIS_URL is set (as bench/batching.py), deletes its keys and stops what it started; index files
go to a temporary directory that is removed. Linux only (/proc). Never a test: timings are not
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_MODEL_DIR,
    background_note,
    cpu_seconds,
    ensure_bundle,
    git_commit,
    machine,
    machine_busy_seconds,
    percentiles,
    pid_from_file,
    summary,
)

from models.retrieval import Retriever, ann_recall, serving_like_queries

BATCH = 64  # queries per search, as a worker micro-batch
K = 20  # served top-K
GOAL_BYTES = 256  # per user in Redis
MIB = 1024 * 1024
CHILD_TIMEOUT_S = 120.0
_HELD: list[Any] = []  # a child's loaded index, kept alive while it holds (run_pair)


# --- measurements of this process (/proc) ---------------------------------------------------


def proc_kb(path: str, fields: tuple[str, ...]) -> dict[str, int]:
    """``{field: kB}`` of ``fields`` in /proc/self/status or /proc/self/smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            out[name] = int(rest.split()[0])
    return out


def rss() -> dict[str, int]:
    """RSS of this process, kB: total, anonymous, file-backed (mapped files, libraries)."""
    return proc_kb("/proc/self/status", ("VmRSS", "RssAnon", "RssFile"))


def rollup() -> dict[str, int]:
    """Proportional and shared/private set sizes of this process, kB (smaps_rollup)."""
    fields = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")
    return proc_kb("/proc/self/smaps_rollup", fields)


# --- child processes: load an index (or the bundle) in a fresh interpreter -----------------


def child_index(spec: dict[str, Any]) -> dict[str, Any]:
    """Load ``spec["index"]`` (mmap or not), search ``spec["batches"]`` 64-query batches from
    ``spec["queries"]`` (``float32[M, D]`` .npy), report times and memory."""
    before = rss()
    t0 = time.perf_counter()
    retriever = Retriever.load(spec["index"], threads=1, mmap=spec["mmap"])
    load_ms = (time.perf_counter() - t0) * 1000
    after_load = rss()
    queries = np.load(spec["queries"], allow_pickle=False)
    batches = [queries[i : i + BATCH] for i in range(0, len(queries) - BATCH + 1, BATCH)]
    for q in batches[:2]:  # warm-up: first touch of the pages and FAISS's buffers
        retriever.search(q, K)
    ms: list[float] = []
    for q in batches[2 : 2 + spec["batches"]]:
        t = time.perf_counter()
        retriever.search(q, K)
        ms.append((time.perf_counter() - t) * 1000)
    _HELD.append(retriever)
    return {
        "load_ms": load_ms,
        "before": before,
        "after_load": after_load,
        "after_search": rss(),
        "rollup": rollup(),
        "search_ms": ms,
        "info": retriever.info,
    }


def child_bundle(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the bundle at ``spec["bundle"]`` the way a worker does (``ServingModel.load``)."""
    start = rss()
    from models.bundle import Bundle
    from models.scoring import Scorer
    from models.serving import ServingModel

    imported = rss()
    path = Path(spec["bundle"])
    t0 = time.perf_counter()
    bundle = Bundle.load(path)
    t1 = time.perf_counter()
    retriever = Retriever.load(bundle.index_path, threads=1)
    t2 = time.perf_counter()
    scorer = Scorer(bundle.onnx_path, device="cpu", intra_op_threads=1)
    scorer.warmup()
    t3 = time.perf_counter()
    model = ServingModel(bundle, retriever, scorer)
    t4 = time.perf_counter()
    return {
        "ms": {
            "bundle (checksums + arrays)": (t1 - t0) * 1000,
            "faiss": (t2 - t1) * 1000,
            "onnx session + warm-up": (t3 - t2) * 1000,
            "serving arrays": (t4 - t3) * 1000,
            "total": (t4 - t0) * 1000,
        },
        "start": start,
        "imported": imported,
        "loaded": rss(),
        "items": model.bundle.n_items,
    }


def child_onnx(spec: dict[str, Any]) -> dict[str, Any]:
    """Open ``spec["onnx"]`` with the worker's ``Scorer`` (1 thread), warm it up and score 64
    users x 500 random candidates (``spec["n_items"]`` items), as a worker would."""
    from models.scoring import Scorer

    before = rss()
    t0 = time.perf_counter()
    scorer = Scorer(spec["onnx"], device="cpu", intra_op_threads=1)
    scorer.warmup()
    load_ms = (time.perf_counter() - t0) * 1000
    after_load = rss()
    rng = np.random.default_rng(0)
    ms: list[float] = []
    for _ in range(5):
        recent = rng.integers(1, spec["n_items"] + 1, (BATCH, scorer.max_recent))
        user_vec = rng.standard_normal((BATCH, scorer.dim), dtype=np.float32)
        candidates = rng.integers(1, spec["n_items"] + 1, (BATCH, 500))
        t = time.perf_counter()
        scorer.score(recent, user_vec, candidates)
        ms.append((time.perf_counter() - t) * 1000)
    return {
        "load_ms": load_ms,
        "before": before,
        "after_load": after_load,
        "after_search": rss(),
        "score_ms": ms,
    }


def child_main(spec: dict[str, Any]) -> int:
    """Child entry point: one ``RESULT {json}`` line; with ``hold``, keep the index loaded until
    the parent closes stdin (a second process then shares its pages)."""
    import faiss

    faiss.omp_set_num_threads(1)
    children = {"bundle": child_bundle, "onnx": child_onnx, "index": child_index}
    result = children[spec["kind"]](spec)
    print("RESULT " + json.dumps(result), flush=True)
    if spec.get("hold"):
        sys.stdin.readline()
    return 0


def _child_cmd(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]


def _parse(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"child gave no result:\n{stdout[-2000:]}")


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        _child_cmd(spec), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return _parse(proc.stdout)


def run_pair(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """First process loads ``spec`` and holds it; a second one loads the same while it does."""
    first = subprocess.Popen(
        _child_cmd({**spec, "hold": True}), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert first.stdin is not None and first.stdout is not None
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        line = ""
        while not line.startswith("RESULT "):
            ready, _, _ = select.select(
                [first.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            line = first.stdout.readline() if ready else ""
            if not ready or (not line and first.poll() is not None):
                raise RuntimeError("first process gave no result")
        a = _parse(line)
        b = run_child({**spec, "batches": min(spec["batches"], 10)})
        return a, b
    finally:
        first.stdin.close()
        try:
            first.wait(timeout=10)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()


# --- (a) Redis bytes per user ---------------------------------------------------------------


async def _per_key(client: Any, command: str, keys: list[str]) -> list[int]:
    """``MEMORY USAGE key SAMPLES 0`` or ``STRLEN key`` of each key, one pipeline; a missing
    key (which should not happen: the TTL is 10 minutes) raises."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if command == "memory_usage":
            pipe.memory_usage(key, samples=0)
        else:
            pipe.strlen(key)
    values = await pipe.execute()
    if any(v is None for v in values):
        raise RuntimeError(f"{command}: a key of the benchmark is missing")
    return [int(v) for v in values]


async def redis_part(args: argparse.Namespace, redis_url: str, bundle_path: Path) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from features.keys import id_hash, user_key
    from features.store import StateUpdate, UserStateStore
    from models.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    rng = np.random.default_rng(args.seed)
    run_id = uuid.uuid4().hex[:6]
    namespace = f"mem{run_id}"  # 9 characters, as the what-if namespaces below
    client = aioredis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    store = UserStateStore(
        client,
        namespace=namespace,
        ttl_ms=600_000,
        half_life_ms=float(bundle.metadata.get("half_life_ms", 7 * 24 * 3600 * 1000)),
        max_recent=bundle.max_recent,
        space_id=bundle.space_id,
    )
    users = [f"u{i:09d}" for i in range(args.users)]  # 10-character user ids
    written: list[str] = []
    what_if_keys: list[str] = []
    try:
        await store.load_script()
        await client.execute_command("MEMORY", "PURGE")
        info0 = await client.info("memory")
        keys0 = int(await client.dbsize())
        r = bundle.max_recent
        t0 = time.perf_counter()
        base_ms = 1_700_000_000_000.0
        chunk = max(1, 2000 // r)
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            items = rng.integers(1, bundle.n_items + 1, (len(part), r))
            updates = [
                StateUpdate(
                    user_id=u,
                    now_ms=base_ms + 30_000.0 * j,
                    session_hash=id_hash(f"s-{u}"),
                    item_hash=id_hash(bundle.item_ids[int(items[i, j]) - 1]),
                    weight=1.0,
                    embedding=bundle.embeddings[int(items[i, j])].astype("<f4").tobytes(),
                )
                for j in range(r)
                for i, u in enumerate(part)
            ]
            await store.apply_batch(updates)
            written += part
        write_s = time.perf_counter() - t0
        await client.execute_command("MEMORY", "PURGE")
        info1 = await client.info("memory")
        keys1 = int(await client.dbsize())
        sample = [users[int(i)] for i in rng.choice(len(users), min(500, len(users)), False)]
        usage = await _per_key(client, "memory_usage", [user_key(namespace, u) for u in sample])
        lengths = await _per_key(client, "strlen", [user_key(namespace, u) for u in sample])
        key_len = len(user_key(namespace, users[0]))
        what_if: list[tuple[int, float]] = []
        for size in args.what_if:
            ns = f"w{size:03d}{run_id[:5]}"
            keys = [user_key(ns, u) for u in users[:500]]
            what_if_keys += keys
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, os.urandom(size), px=600_000)
            await pipe.execute()
            sizes = await _per_key(client, "memory_usage", keys)
            what_if.append((size, float(np.mean(sizes))))
        return {
            "users": len(users),
            "events": len(users) * r,
            "write_s": write_s,
            "key_len": key_len,
            "value_bytes": float(np.mean(lengths)),
            "usage": float(np.mean(usage)),
            "usage_min_max": (min(usage), max(usage)),
            "used_delta": (int(info1["used_memory"]) - int(info0["used_memory"])) / len(users),
            "keys_delta": keys1 - keys0,
            "what_if": what_if,
            "dim": bundle.dim,
            "recent": r,
            "redis_version": (await client.info("server"))["redis_version"],
        }
    finally:
        keys = [user_key(namespace, u) for u in written] + what_if_keys
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
        await client.aclose()


# --- (b) and (c): indices by size ------------------------------------------------------------


def bundle_shaped(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``float32[n, D]`` items shaped like a trained catalogue: each is a random item of the
    real bundle ``base`` (normalised, ``float32[M, D]``) plus isotropic noise whose length is
    the median distance between a real item and its nearest neighbour, so the synthetic
    catalogue keeps the real one's clusters at ``n`` items."""
    sims = base @ base.T
    np.fill_diagonal(sims, -1.0)
    nn_dist = float(np.median(np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.max(axis=1)))))
    noise = rng.standard_normal((n, base.shape[1]), dtype=np.float32)
    noise *= np.float32(nn_dist / np.sqrt(base.shape[1]))
    return base[rng.integers(0, len(base), n)] + noise


def index_part(
    n: int, args: argparse.Namespace, tmp: Path, *, flat: bool = False
) -> dict[str, Any]:
    """Build, save and measure the index over ``n`` synthetic normalised items (``args.data``:
    random, or shaped like the bundle's ``args.base``); ``flat``: an exact index whatever the
    size, the reference."""
    rng = np.random.default_rng(args.seed + n)
    table = np.zeros((n + 1, args.dim), dtype=np.float32)
    if args.data == "bundle":
        table[1:] = bundle_shaped(args.base, n, rng)
    else:
        table[1:] = rng.standard_normal((n, args.dim), dtype=np.float32)
    table[1:] /= np.linalg.norm(table[1:], axis=1, keepdims=True)
    t0 = time.perf_counter()
    limit = n if flat else args.flat_max_items
    retriever = Retriever.build(table, threads=1, flat_max_items=limit, seed=args.seed)
    build_s = time.perf_counter() - t0
    path = tmp / f"items-{n}-{retriever.kind}.faiss"
    retriever.save(path)
    eval_rng = np.random.default_rng(args.seed + 7919)  # not the tuning's queries
    queries = serving_like_queries(table[1:], BATCH * (args.batches + 2), eval_rng)
    qpath = tmp / f"queries-{n}.npy"
    np.save(qpath, queries)
    # The reference is exact by construction; its recall would only repeat the exact search.
    recall = 1.0 if flat else ann_recall(retriever, table, queries[: args.recall_queries], K)
    info = dict(retriever.info)
    del retriever, table
    spec = {"kind": "index", "index": str(path), "queries": str(qpath), "batches": args.batches}
    out: dict[str, Any] = {
        "n": n,
        "info": info,
        "build_s": build_s,
        "bytes": path.stat().st_size,
        "recall": recall,
    }
    if flat:  # the reference: latency only, fewer batches (a flat search over 1M is slow)
        out["fresh"] = run_child({**spec, "mmap": True, "batches": min(args.batches, 10)})
        return out
    out["fresh"], out["second"] = run_pair({**spec, "mmap": True})
    out["fresh_copy"], out["second_copy"] = run_pair({**spec, "mmap": False, "batches": 10})
    return out


def onnx_part(n: int, bundle_path: Path, tmp: Path) -> dict[str, Any] | None:
    """The real bundle's ranker with its item tables (every initializer with one row per item)
    grown to ``n`` items, saved inline and with external data, each opened in a fresh process.
    ``None`` without the ``onnx`` package (the train extra)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    from models.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    model = onnx.load(str(bundle.onnx_path))
    rng = np.random.default_rng(n)
    for init in model.graph.initializer:
        if init.dims and init.dims[0] == bundle.n_items + 1:
            shape = (n + 1, *init.dims[1:])
            grown = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
            init.CopyFrom(numpy_helper.from_array(grown, init.name))
    inline, external = tmp / "inline.onnx", tmp / "external.onnx"
    onnx.save_model(model, str(inline))
    onnx.save_model(
        model, str(external), save_as_external_data=True, all_tensors_to_one_file=True,
        location="external.onnx.data", size_threshold=1024,
    )  # fmt: skip
    del model
    out: dict[str, Any] = {"n": n}
    for name, path in (("inline", inline), ("external", external)):
        out[name] = run_child({"kind": "onnx", "onnx": str(path), "n_items": n})
        path.unlink()
    return out


# --- report ----------------------------------------------------------------------------------


def _mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def _row(label: str, *values: str) -> str:
    return f"  {label:<52}" + "".join(f"{v:>24}" for v in values)


def report(
    args: argparse.Namespace,
    redis_url: str,
    red: dict[str, Any] | None,
    sizes: list[dict[str, Any]],
    bundle_load: dict[str, Any],
    onnx_load: dict[str, Any] | None,
    wall_s: float,
    other_s: float,
    ours_s: float,
) -> list[str]:
    lines = [
        "streamrec memory benchmark (bench/memory.py)",
        f"  machine      {machine()}",
        f"  commit       {git_commit()}   date {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"  command      {' '.join(sys.argv)}",
        f"  redis        {redis_url}",
        f"  wall         {wall_s:.1f} s; this process, its children and redis used "
        f"{ours_s:.1f} CPU s",
        f"  background   {background_note(other_s, wall_s)}",
        "  faiss        1 thread everywhere (build, search); embeddings "
        + ("random normalised" if args.data == "random" else "the real bundle's items + noise")
        + f", D={args.dim}; recall on {args.recall_queries} queries the tuning did not see",
        "",
    ]
    header = [f"{s['n']:,} items" + (" flat ref" if s.get("reference") else "") for s in sizes]
    lines.append(_row("measured", *header))
    lines.append(_row("-" * 52, *(["-" * 22] * len(sizes))))

    def row(label: str, fn: Any) -> None:
        values = []
        for s in sizes:
            try:
                values.append(fn(s))
            except KeyError:
                values.append("-")
        lines.append(_row(label, *values))

    def kind(s: dict[str, Any]) -> str:
        i = s["info"]
        return "flat (exact)" if i["kind"] == "flat" else f"IVF {i['nlist']}/{i['nprobe']}"

    row("(b) index (IVF: nlist/nprobe)", kind)
    row(
        "    nprobe tuning: recall@20 (95% lower bound), own queries",
        lambda s: f"{s['info']['recall']:.3f} ({s['info']['recall_lower']:.3f})",
    )
    row("    build s (train + add + nprobe tuning)", lambda s: f"{s['build_s']:.1f}")
    row("    bytes on disk (MiB)", lambda s: f"{s['bytes'] / MIB:.1f}")
    row("    recall@20 of the ANN stage vs exact", lambda s: f"{s['recall']:.3f}")
    row("    fresh process, load ms (mmap)", lambda s: f"{s['fresh']['load_ms']:.1f}")
    row(
        "    RSS MiB before load / after load / after search",
        lambda s: "/".join(
            _mib(s["fresh"][k]["VmRSS"]) for k in ("before", "after_load", "after_search")
        ),
    )
    row(
        "    RSS growth load+search: anon / file MiB",
        lambda s: "/".join(
            _mib(s["fresh"]["after_search"][f] - s["fresh"]["before"][f])
            for f in ("RssAnon", "RssFile")
        ),
    )
    row(
        "    same without mmap: load ms, anon / file MiB",
        lambda s: (
            f"{s['fresh_copy']['load_ms']:.0f}, "
            + "/".join(
                _mib(s["fresh_copy"]["after_search"][f] - s["fresh_copy"]["before"][f])
                for f in ("RssAnon", "RssFile")
            )
        ),
    )
    row(
        "    search 64 queries, p50 / p99 ms",
        lambda s: "/".join(f"{x:.1f}" for x in percentiles(s["fresh"]["search_ms"])),
    )
    ref = [s for s in sizes if s.get("reference")]
    ivf = [
        s for s in sizes if s["info"]["kind"] == "ivf" and s["n"] == (ref[0]["n"] if ref else -1)
    ]
    if ref and ivf:
        ratio = (
            percentiles(ref[0]["fresh"]["search_ms"])[0]
            / percentiles(ivf[0]["fresh"]["search_ms"])[0]
        )
        lines.append(_row(f"    RATIO p50 flat / IVF at {ref[0]['n']:,} items", f"{ratio:.1f}x"))

    def second(key: str) -> Any:
        def fn(s: dict[str, Any]) -> str:
            r = s[key]["rollup"]
            return "/".join(
                _mib(x)
                for x in (
                    r["Rss"],
                    r["Pss"],
                    r["Shared_Clean"],
                    r["Private_Clean"] + r["Private_Dirty"],
                )
            )

        return fn

    lines.append(_row("(c) 2nd process on the host, MiB:", ""))
    row("    mmap:    Rss / Pss / Shared_Clean / Private", second("second"))
    row("    no mmap: Rss / Pss / Shared_Clean / Private", second("second_copy"))
    row(
        "    RATIO Private no mmap / mmap",
        lambda s: f"{_private(s['second_copy']) / max(1, _private(s['second'])):.2f}x",
    )
    row(
        "    Private saved per extra worker (MiB)",
        lambda s: _mib(_private(s["second_copy"]) - _private(s["second"])),
    )
    ms = bundle_load["ms"]
    lines.append(
        _row(
            f"    real bundle ({bundle_load['items']:,} items): ServingModel.load ms",
            f"{ms['total']:.0f}",
        )
    )
    for part, part_ms in ms.items():
        if part != "total":
            lines.append(_row(f"      of which {part}", f"{part_ms:.0f}"))
    lines.append(
        _row(
            "      RSS MiB at start / after imports / loaded",
            "/".join(_mib(bundle_load[k]["VmRSS"]) for k in ("start", "imported", "loaded")),
        )
    )
    if onnx_load is not None:
        lines.append(
            _row(f"(d) ranker ONNX with {onnx_load['n']:,}-item tables, fresh process", "")
        )
        for name in ("inline", "external"):
            o = onnx_load[name]
            growth = "/".join(
                _mib(o["after_search"][f] - o["before"][f]) for f in ("RssAnon", "RssFile")
            )
            lines.append(
                _row(
                    f"    {name + ':':<9} Scorer load ms, RSS growth anon/file MiB",
                    f"{o['load_ms']:.0f}, {growth}",
                )
            )
        inline_kb, external_kb = (_anon_growth(onnx_load[k]) for k in ("inline", "external"))
        lines.append(
            _row(
                "    RATIO anon growth inline / external data",
                f"{inline_kb / max(1, external_kb):.1f}x",
            )
        )
    for s in sizes:
        tag = f"{s['n']:,} items" + (" flat" if s.get("reference") else "")
        if "recall" in s:
            summary("memory", f"{tag}: ANN recall@20", s["recall"], "", ">= 0.95")
        if "fresh" in s:
            summary("memory", f"{tag}: search 64 queries p99",
                    percentiles(s["fresh"]["search_ms"])[1], "ms")  # fmt: skip
        if "rollup" in s.get("second", {}) and "rollup" in s.get("second_copy", {}):
            summary("memory", f"{tag}: 2nd worker private MiB, mmap",
                    _private(s["second"]) / 1024, "MiB")  # fmt: skip
    summary("memory", "ServingModel.load of the bench bundle", bundle_load["ms"]["total"], "ms")
    if red is not None:
        summary("memory", "Redis bytes per user (used_memory delta)", red["used_delta"], "B",
                "<= 256")  # fmt: skip
        value = red["value_bytes"]
        lines += [
            _row(
                f"(a) Redis {red['redis_version']}: {red['users']:,} users, "
                f"D={red['dim']} R={red['recent']}",
                "",
            ),
            _row(
                f"    written through UserStateStore: {red['events']:,} events, s",
                f"{red['write_s']:.1f} ({red['events'] / red['write_s']:,.0f}/s)",
            ),
            _row(
                f"    value bytes (32 + 4·D + 8·R), key {red['key_len']} bytes",
                f"{value:.0f}",
            ),
            _row(
                "    MEMORY USAGE per key, mean of sample (min-max)",
                f"{red['usage']:.0f} ({red['usage_min_max'][0]}-{red['usage_min_max'][1]})",
            ),
            _row(
                f"    INFO used_memory delta / users ({red['keys_delta']:,} keys added)",
                f"{red['used_delta']:.0f}",
            ),
            _row(
                f"    RATIO used_memory per user / goal {GOAL_BYTES} B",
                f"{red['used_delta'] / GOAL_BYTES:.2f}x",
            ),
            _row(
                "    of the per-user bytes: vector 4·D / recent 8·R / header",
                f"{4 * red['dim']}/{8 * red['recent']}/32",
            ),
            _row(
                "    key + object + allocator + TTL + table overhead",
                f"{red['used_delta'] - value:.0f}",
            ),
        ]
        overhead = red["used_delta"] - red["usage"]
        for size, usage in red["what_if"]:
            lines.append(
                _row(
                    f"    what-if value of {size} B: MEMORY USAGE / est. per user",
                    f"{usage:.0f} / {usage + overhead:.0f}",
                )
            )
    return lines


def _anon_growth(child: dict[str, Any]) -> int:
    return int(child["after_search"]["RssAnon"] - child["before"]["RssAnon"])


def _private(child: dict[str, Any]) -> int:
    r = child["rollup"]
    return int(r["Private_Clean"] + r["Private_Dirty"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in ~30 s")
    p.add_argument("--users", type=int, default=20_000, help="(a) users written to Redis")
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[100_000, 1_000_000],
        help="(b) catalogue sizes, comma-separated",
    )
    p.add_argument("--flat-max-items", type=int, default=100_000, help="flat up to, IVF above")
    p.add_argument(
        "--flat-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time an exact index over the largest size (latency ratio IVF vs flat)",
    )
    p.add_argument("--batches", type=int, default=40, help="64-query searches timed per size")
    p.add_argument("--recall-queries", type=int, default=300)
    p.add_argument("--dim", type=int, default=32, help="(b) D of random embeddings")
    p.add_argument(
        "--data",
        choices=("random", "bundle"),
        default="random",
        help="(b) random normalised embeddings (no clusters: IVF's worst case), or the real "
        "bundle's items plus noise (its clusters, at any size; D = the bundle's)",
    )
    p.add_argument(
        "--what-if",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[256, 176, 128, 96],
        help="(a) value sizes to price with MEMORY USAGE",
    )
    p.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(d) the ranker grown to the largest size: inline vs external-data ONNX",
    )
    p.add_argument("--no-redis", action="store_true", help="skip (a)")
    p.add_argument("--redis-port", type=int, default=26379)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="(a), seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    if args.quick:
        args.users = min(args.users, 2000)
        args.sizes = [20_000, 200_000]
        args.flat_max_items = 50_000
        args.batches = 10
        args.recall_queries = 100

    import faiss
    from batching import STREAMREC_HOME

    from stream.services import LocalServices

    faiss.omp_set_num_threads(1)
    bundle_path = ensure_bundle(args.model_dir)
    if args.data == "bundle":
        from models.bundle import Bundle
        from models.retrieval import l2_normalise

        args.base = l2_normalise(Bundle.load(bundle_path).embeddings[1:])
        args.dim = args.base.shape[1]
    services = LocalServices(redis_port=args.redis_port)
    redis_pid = pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid")
    busy0, t_start = machine_busy_seconds(), time.perf_counter()
    ours0 = time.process_time() + cpu_seconds(redis_pid)
    red = None
    try:
        if not args.no_redis:
            redis_url = os.environ.get("REDIS_URL")
            if not redis_url:
                services.ensure("redis")
                redis_url = services.redis_url
                redis_pid = pid_from_file(STREAMREC_HOME / f"redis-run-{args.redis_port}/redis.pid")
            red = asyncio.run(
                asyncio.wait_for(redis_part(args, redis_url, bundle_path), args.timeout)
            )
        else:
            redis_url = "(not used)"
        with tempfile.TemporaryDirectory(prefix="streamrec-bench-memory-") as tmp:
            sizes = [index_part(n, args, Path(tmp)) for n in args.sizes]
            if args.flat_reference and max(args.sizes) > args.flat_max_items:
                ref = index_part(max(args.sizes), args, Path(tmp), flat=True)
                ref["reference"] = True
                ref["second"] = ref["second_copy"] = ref["fresh_copy"] = {}
                sizes.append(ref)
            onnx_load = onnx_part(max(args.sizes), bundle_path, Path(tmp)) if args.onnx else None
        bundle_load = run_child({"kind": "bundle", "bundle": str(bundle_path)})
    finally:
        services.stop_started()
    wall_s = time.perf_counter() - t_start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (
        time.process_time() + cpu_seconds(redis_pid) - ours0 + children.ru_utime + children.ru_stime
    )
    other = max(0.0, machine_busy_seconds() - busy0 - ours)
    print(
        "\n".join(report(args, redis_url, red, sizes, bundle_load, onnx_load, wall_s, other, ours)),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
