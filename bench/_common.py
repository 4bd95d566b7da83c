"""Shared helpers of the benchmarks (not a benchmark itself; ``make bench`` does not run it).

- ``fit_diginetica`` / ``synthesise``: synthetic user events fitted to the DIGINETICA sample
  (item popularity, session lengths, within-session re-view rate and gaps between views).
- ``fit_event_mix``, ``session_views``, ``query_tokens``: purchases and searches for the mixed
  stream of bench/loadgen.py.
- ``ensure_bundle``: the model bundle the benchmarks serve (trained once if absent).
- ``machine``, ``cpu_seconds``, ``machine_busy_seconds``, ``percentiles``: what every report
  prints.
- ``summary``: one row of the table bench/run_all.py (``make bench``) prints at the end.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import platform
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere, even without the install
    sys.path.insert(0, str(ROOT))

from topics.datasets import load_diginetica_views  # noqa: E402
from topics.events import EventType, UserEvent  # noqa: E402
from topics.loaders import datasets_root, load_diginetica  # noqa: E402

SAMPLE = ROOT / "stream" / "data" / "diginetica-sample-views.csv.gz"
DEFAULT_MODEL_DIR = Path(
    os.environ.get("STREAMREC_BENCH_MODEL_DIR", str(Path.home() / ".cache/streamrec/bench-models"))
)
DATA_NOTE = (
    "synthetic, fitted to DIGINETICA (item popularity, session lengths, re-view rate and "
    "gaps between views of stream/data/diginetica-sample-views.csv.gz)"
)


@dataclass(frozen=True, slots=True)
class DigineticaFit:
    """Empirical distributions of the sample that the synthetic stream draws from."""

    item_ids: list[str]
    item_p: np.ndarray  # view share of each item (popularity)
    session_lengths: np.ndarray  # views per session, one entry per sample session
    gaps_ms: np.ndarray  # ms between consecutive views of one session
    p_review: float  # share of views that re-view an item seen earlier in the session
    p99_session_ms: float  # 99th percentile of first-to-last view time of a session


def fit_diginetica(path: Path = SAMPLE) -> DigineticaFit:
    events, _ = load_diginetica_views(path)
    popularity = Counter(e.item_id for e in events if e.item_id is not None)
    item_ids = sorted(popularity)
    counts = np.array([popularity[i] for i in item_ids], dtype=np.float64)
    sessions: dict[str, list[UserEvent]] = defaultdict(list)
    for e in events:
        sessions[e.session_id].append(e)
    lengths, gaps, durations, reviews = [], [], [], 0
    for evs in sessions.values():
        lengths.append(len(evs))
        durations.append(evs[-1].timestamp_ms - evs[0].timestamp_ms)
        seen: set[str | None] = set()
        for i, e in enumerate(evs):
            if e.item_id in seen:
                reviews += 1
            seen.add(e.item_id)
            if i:
                gaps.append(e.timestamp_ms - evs[i - 1].timestamp_ms)
    return DigineticaFit(
        item_ids=item_ids,
        item_p=counts / counts.sum(),
        session_lengths=np.array(lengths, dtype=np.int64),
        gaps_ms=np.array(gaps, dtype=np.int64),
        p_review=reviews / len(events),
        p99_session_ms=float(np.percentile(durations, 99)),
    )


# DIGINETICA's search log (train-queries.csv) is not in shared/datasets (see its README), so
# the share of searches is an assumption (bench/search.py's mixed workload uses the same 10%)
# and query lengths come from real search terms of another shop, Home Depot.
SEARCH_SHARE = 0.10


def homedepot_queries_path(root: Path | None = None) -> Path:
    return datasets_root(root) / "homedepot-search-relevance" / "train.csv.gz"


@dataclass(frozen=True, slots=True)
class EventMix:
    """What the views-only ``DigineticaFit`` lacks for a mixed stream: purchases (DIGINETICA's
    train-purchases joined to the views sample's sessions) and searches."""

    purchases_per_session: np.ndarray  # int64, purchases of each sample session (mostly 0)
    # float64, share of the session's views before each purchase. The purchases file's
    # timeframes do not line up with the views' (median 77 min after the session's previous
    # view, some days later), so only the order is kept: a synthetic purchase follows its
    # view after one of the sample's gaps between views.
    purchase_at: np.ndarray
    p_purchase_viewed: float  # share of purchases of an item viewed earlier in the session
    purchases_per_view: float  # purchases / views of the sample sessions
    queries: list[str]  # search terms, one per row of their file (frequent terms repeat)
    search_share: float  # searches / all events
    source: str  # where each part comes from, for reports

    def query_lengths(self) -> np.ndarray:
        """Words (= tokens) per query, one entry per row of ``queries``."""
        return np.array([len(q.split()) for q in self.queries], dtype=np.int64)


def query_tokens(query: str) -> list[int]:
    """DIGINETICA-style hashed token ids of a query: one stable id per lower-cased word."""
    return [zlib.crc32(w.encode()) % 1_000_000 + 1 for w in query.lower().split()]


def read_queries(path: Path) -> list[str]:
    """Non-blank ``search_term`` of every row of a Home Depot train.csv(.gz) (latin-1)."""
    with gzip.open(path, "rt", encoding="latin-1", newline="") as fh:
        return [q for row in csv.DictReader(fh) if (q := " ".join(row["search_term"].split()))]


def fit_event_mix(
    root: Path | None = None,
    *,
    search_share: float = SEARCH_SHARE,
    queries: list[str] | None = None,
) -> EventMix:
    """Purchases from ``<root>/diginetica`` (views sample + its purchases; none when the
    folder is absent), queries from Home Depot's search terms (or ``queries``; searches are
    off when neither is there)."""
    if not 0.0 <= search_share <= 0.5:
        raise ValueError(f"search_share must be within [0, 0.5], got {search_share}")
    sources = []
    per_session: list[int] = []
    at: list[float] = []
    viewed = n_views = n_purchases = 0
    folder = datasets_root(root) / "diginetica"
    if (folder / "train-purchases.csv.gz").exists():
        events, _ = load_diginetica(datasets_root(root))
        sessions: dict[str, list[UserEvent]] = defaultdict(list)
        for e in events:  # in time order
            sessions[e.session_id].append(e)
        for evs in sessions.values():
            seen: set[str | None] = set()
            views = [e for e in evs if e.event_type is EventType.VIEW]
            bought = 0
            for e in evs:
                if e.event_type is EventType.VIEW:
                    seen.add(e.item_id)
                    continue
                bought += 1
                viewed += e.item_id in seen
                before = sum(v.timestamp_ms <= e.timestamp_ms for v in views)
                at.append(before / max(1, len(views)))
            per_session.append(bought)
            n_views += len(views)
            n_purchases += bought
        buying = sum(1 for x in per_session if x)
        sources.append(
            f"purchases: diginetica/train-purchases.csv.gz joined to the views sample, "
            f"{n_purchases} in {buying} of its {len(per_session)} sessions"
        )
    else:
        sources.append(f"purchases: none ({folder} absent)")
    if queries is None:
        path = homedepot_queries_path(root)
        queries = read_queries(path) if path.exists() else []
        sources.append(
            f"search share {search_share:.0%} assumed; query lengths and words: "
            + ("Home Depot search terms" if queries else f"none ({path} absent)")
        )
    else:
        sources.append(f"search share {search_share:.0%} assumed; {len(queries)} given queries")
    return EventMix(
        purchases_per_session=np.array(per_session or [0], dtype=np.int64),
        purchase_at=np.array(at or [1.0], dtype=np.float64),
        p_purchase_viewed=viewed / max(1, n_purchases),
        purchases_per_view=n_purchases / max(1, n_views),
        queries=queries,
        search_share=search_share if queries else 0.0,
        source="; ".join(sources),
    )


@dataclass(frozen=True, slots=True)
class SessionViews:
    """The views of a set of sessions, session by session (not yet in time order)."""

    lengths: np.ndarray  # int64[S] views per session
    session_of: np.ndarray  # int64[V] session (0..S-1) of each view
    first: np.ndarray  # int64[S] index of each session's first view
    times: np.ndarray  # float64[V] ms, on the clock of ``starts``
    items: np.ndarray  # int64[V] index into ``fit.item_ids``


def session_views(fit: DigineticaFit, rng: np.random.Generator, starts: np.ndarray) -> SessionViews:
    """Views of sessions starting at ``starts`` (ms): each session's length from the sample's
    session lengths, the gaps between its views from the sample's gaps, its items from the
    sample's item popularity, re-viewing an item of the same session with the sample's
    re-view rate. (``synthesise`` and bench/loadgen.py draw sessions through this.)"""
    n_sessions = len(starts)
    lengths = rng.choice(fit.session_lengths, n_sessions)
    total = int(lengths.sum())
    session_of = np.repeat(np.arange(n_sessions), lengths)
    first_idx = np.cumsum(lengths) - lengths
    first = np.zeros(total, dtype=bool)
    first[first_idx] = True
    gaps = np.where(first, 0, rng.choice(fit.gaps_ms, total)).astype(np.float64)
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[first], lengths)  # restart the running sum per session
    times = starts[session_of] + offsets
    items = rng.choice(len(fit.item_ids), total, p=fit.item_p)
    review = rng.random(total) < fit.p_review
    # A re-view repeats one of the session's earlier items (the previous one if it is the
    # second view); the first view of a session cannot be a re-view.
    pos = np.arange(total) - np.repeat(first_idx, lengths)
    for i in np.flatnonzero(review & (pos > 0)):
        items[i] = items[i - 1 - rng.integers(0, pos[i])]
    return SessionViews(lengths, session_of, first_idx, times, items)


def synthesise(
    fit: DigineticaFit, n: int, *, seed: int, tag: str, site_rate: float = 100.0
) -> list[UserEvent]:
    """``n`` view events of a steady-state stream, in event-time order.

    Sessions (one user each, as in the sample) start as a Poisson process chosen so that the
    site sees ``site_rate`` views/s; each session's length is drawn from the sample's session
    lengths, its items from the sample's item popularity (re-viewing an item of the same
    session with the sample's re-view rate) and the gaps between its views from the sample's
    gaps. The ``n`` events are the first ones after a warm-up as long as the 99th percentile
    session, so sessions already in progress are interleaved as in real traffic.
    """
    rng = np.random.default_rng(seed)
    mean_len = float(fit.session_lengths.mean())
    warmup_ms = float(np.percentile(fit.gaps_ms, 99)) * float(
        np.percentile(fit.session_lengths, 99)
    )
    span_ms = warmup_ms + 1.5 * n / site_rate * 1000
    n_sessions = int(span_ms / 1000 * site_rate / mean_len) + 1
    starts = rng.uniform(0.0, span_ms, n_sessions)
    views = session_views(fit, rng, starts)
    session_of, times, items = views.session_of, views.times, views.items
    order = np.argsort(times, kind="stable")
    order = order[times[order] >= warmup_ms][:n]
    if order.size < n:
        raise RuntimeError(f"synthesised only {order.size} of {n} events")
    base_ms = 1_700_000_000_000 - int(span_ms)
    out: list[UserEvent] = []
    for j, i in enumerate(order.tolist()):
        s = int(session_of[i])
        out.append(
            UserEvent(
                event_id=f"{tag}-{j}",
                event_type=EventType.VIEW,
                user_id=f"{tag}-u{s}",
                session_id=f"{tag}-s{s}",
                timestamp_ms=base_ms + int(times[i]),
                item_id=fit.item_ids[int(items[i])],
            )
        )
    return out


# What a bundle's training and exported graph depend on: a bench bundle made by other code
# than this would time another model.
_MODEL_CODE = ("models/ranker.py", "models/training.py", "models/export.py")


def model_code_digest() -> str:
    digest = zlib.crc32(b"".join((ROOT / name).read_bytes() for name in _MODEL_CODE))
    return f"{digest:08x}"


def ensure_bundle(model_dir: Path) -> Path:
    """The current bundle under ``model_dir``; trains one on the sample (~15 s) if absent or
    if it was trained by other model code (``bench_model_code`` in its metadata)."""
    import orjson

    from models.bundle import METADATA_FILE, latest_bundle

    path = latest_bundle(model_dir)
    digest = model_code_digest()
    if path is not None:
        made_by = orjson.loads((path / METADATA_FILE).read_bytes()).get("bench_model_code")
        if made_by == digest:
            return path
        why = f"bundle {path.name} was trained by other model code"
    else:
        why = f"no model bundle in {model_dir}"
    from models.bundle import derive_bundle, promote
    from stream.train_job import train_from_file

    print(f"{why}: training one on the DIGINETICA sample ...", flush=True)
    trained = train_from_file(SAMPLE, model_dir, test_days=14.0, epochs=None, seed=0)
    tagged = derive_bundle(trained, {"bench_model_code": digest})
    promote(model_dir, tagged.name)
    return tagged


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def machine() -> str:
    """'<cpu model>, N cores, X GiB RAM, no GPU used' (Linux /proc; lscpu when present)."""
    model = platform.processor() or "unknown cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, CPU only (no GPU used)"


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of ``pid`` so far (0 when unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used so far (/proc/stat, all cores)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def background_note(other_cpu_s: float, wall_s: float) -> str:
    """One line on CPU used by processes the benchmark did not start; a warning when it is
    more than 10% of one core, since the numbers then measure a shared machine."""
    share = other_cpu_s / max(wall_s, 1e-9)
    line = f"other processes used {other_cpu_s:.1f} CPU s ({100 * share:.0f}% of one core)"
    if share > 0.10:
        line += " -- WARNING: the machine was not quiet; numbers are pessimistic"
    return line


def pid_from_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 99)) -> list[float]:
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return [float("nan")] * len(qs)
    return [float(x) for x in np.percentile(arr, qs)]


SUMMARY_ENV = "STREAMREC_BENCH_SUMMARY"


def summary(bench: str, metric: str, value: float, unit: str = "", goal: str = "") -> None:
    """Record one headline number of this run for bench/run_all.py's closing table (a JSON
    line appended to the file named by ``STREAMREC_BENCH_SUMMARY``; nothing when unset, so
    every script still runs on its own)."""
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    row = {"bench": bench, "metric": metric, "value": float(value), "unit": unit, "goal": goal}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
