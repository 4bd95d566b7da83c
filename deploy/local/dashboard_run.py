"""A real run for the dashboard screenshot (docs/operations.md, "Dashboard screenshot").

Starts local Kafka and Redis (deploy/local/*.sh through stream.services, on ports of their
own), a ``streamrec worker`` and a ``streamrec train-agent`` with fixed metrics ports, a local
Prometheus scraping both every second (deploy/local/prometheus.sh), replays the held-out
DIGINETICA sessions at ``--rate`` events/s for ``--seconds`` (malformed messages spread among
them, for the dead-letter panels), waits for the tail to be scraped, renders the dashboard
from Prometheus (deploy/local/render_dashboard.py) and stops everything it started. The
Prometheus data stays in ``--run-dir``, so the PNG can be rendered again from the same run
(the ``run.json`` written there holds the time span and the command).

    python deploy/local/dashboard_run.py --out docs/dashboard.png

The code run is the checkout this file is in: its root goes first on ``sys.path`` here and is
the worker's working directory (``python -m stream.cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stream.demo import BAD_EVENTS, dataset_path  # noqa: E402
from stream.kafka_admin import create_topics, delete_topics  # noqa: E402
from stream.replay import produce, wait_ready, worker_env  # noqa: E402
from stream.services import LocalServices, resolve_services  # noqa: E402
from topics.datasets import load_diginetica_views, split_train_valid_test  # noqa: E402
from topics.names import all_topics, topic_names  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMETHEUS_SH = HERE / "prometheus.sh"
RENDER = HERE / "render_dashboard.py"
HOME = Path(os.environ.get("STREAMREC_HOME", Path.home() / ".cache" / "streamrec"))
# More malformed kinds than the demo's three: an oversized event too.
EXTRA_BAD: list[bytes] = [b'{"event_type": "view", "pad": "' + b"x" * 20_000 + b'"}']


def git_describe(root: Path) -> str:
    """Short commit of ``root``, with "+ local changes" when its tracked files differ."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{sha} + local changes" if dirty else sha


def messages_for(rate: float, seconds: float, bad_every: int) -> list[tuple[bytes | None, bytes]]:
    """``rate * seconds`` held-out events (the demo's split), each keyed by its user, with a
    malformed message after every ``bad_every`` events."""
    events, _ = load_diginetica_views(dataset_path())
    _, _, test = split_train_valid_test(events, 14.0, 7.0)
    want = int(rate * seconds)
    test = test[:want]
    bad = BAD_EVENTS + EXTRA_BAD
    out: list[tuple[bytes | None, bytes]] = []
    for i, e in enumerate(test):
        out.append((e.user_id.encode(), e.to_bytes()))
        if bad_every and (i + 1) % bad_every == 0:
            out.append((b"bad", bad[(i // bad_every) % len(bad)]))
    return out


def start_process(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def prepare_models(run_dir: Path, source: Path | None) -> Path:
    """The run's own model directory (the training agent promotes into it): a copy of
    ``source`` when given, else the directory as it is (``streamrec train --out`` it first)."""
    models = run_dir / "models"
    if source is not None:
        if models.exists():
            shutil.rmtree(models)
        shutil.copytree(source, models)
    if not (models / "CURRENT").is_file():
        raise SystemExit(
            f"no model bundle in {models}: run `python -m stream.cli train --out {models}` "
            "or pass --models-from DIR"
        )
    return models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"), help="PNG to write")
    ap.add_argument("--run-dir", default=str(HOME / "dashboard"), help="logs, models, TSDB")
    ap.add_argument("--models-from", help="copy this bundle root into the run's model dir")
    ap.add_argument("--rate", type=float, default=40.0, help="replay rate, events/s")
    ap.add_argument("--seconds", type=float, default=150.0, help="replay duration")
    ap.add_argument("--bad-every", type=int, default=150, help="a malformed message per N events")
    ap.add_argument("--tail", type=float, default=20.0, help="seconds scraped after the replay")
    ap.add_argument("--no-trainer", action="store_true", help="no training agent")
    ap.add_argument("--kafka-port", type=int, default=29592)
    ap.add_argument("--redis-port", type=int, default=26792)
    ap.add_argument("--worker-metrics-port", type=int, default=29108)
    ap.add_argument("--trainer-metrics-port", type=int, default=29109)
    ap.add_argument("--prometheus-port", type=int, default=29090)
    ap.add_argument(
        "--publish-examples",
        type=int,
        default=1500,
        help="STREAMREC_TRAIN_PUBLISH_EXAMPLES of the agent (small: candidates within the run)",
    )
    args = ap.parse_args(argv)

    run_dir = Path(args.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    models = prepare_models(run_dir, Path(args.models_from) if args.models_from else None)
    name = "dash-" + time.strftime("%Y%m%d%H%M%S")
    prefix = f"{name}."
    commit = git_describe(ROOT)
    messages = messages_for(args.rate, args.seconds, args.bad_every)
    print(f"{name}: code {ROOT} ({commit}), {len(messages)} messages at {args.rate}/s", flush=True)

    os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # always the run's own services
    os.environ.pop("REDIS_URL", None)
    services = LocalServices(kafka_port=args.kafka_port, redis_port=args.redis_port)
    worker: subprocess.Popen[bytes] | None = None
    trainer: subprocess.Popen[bytes] | None = None
    bootstrap = ""
    prom_data = run_dir / f"prometheus-{name}"
    prom = str(args.prometheus_port)
    try:
        bootstrap, redis_url = resolve_services(services)
        asyncio.run(create_topics(bootstrap, all_topics(prefix)))
        common = {
            "STREAMREC_LOG_LEVEL": "INFO",
            "STREAMREC_STATE_TTL_S": "3600",
            "STREAMREC_MODEL_POLL_S": "2",
        }
        env = worker_env(
            bootstrap,
            redis_url,
            models,
            name,
            STREAMREC_METRICS_PORT=str(args.worker_metrics_port),
            # On, so that the Cache row has data (off by default in serving).
            STREAMREC_RESULT_CACHE_TTL_MS="2000",
            **common,
        )
        worker = start_process("worker", env, run_dir / f"{name}-worker.log")
        targets = ["--worker", f"127.0.0.1:{args.worker_metrics_port}"]
        if not args.no_trainer:
            tenv = worker_env(
                bootstrap,
                redis_url,
                models,
                name,
                STREAMREC_TRAIN_METRICS_PORT=str(args.trainer_metrics_port),
                STREAMREC_TRAIN_GROUP_ID=f"{name}-trainer",
                STREAMREC_TRAIN_PUBLISH_EXAMPLES=str(args.publish_examples),
                STREAMREC_TRAIN_MIN_EXAMPLES=str(max(1, args.publish_examples // 3)),
                STREAMREC_TRAIN_PUBLISH_S="60",
                STREAMREC_TRAIN_GATE_EVENTS="500",
                STREAMREC_TRAIN_CHUNK="128",
                **common,
            )
            trainer = start_process("train-agent", tenv, run_dir / f"{name}-train-agent.log")
            targets += ["--trainer", f"127.0.0.1:{args.trainer_metrics_port}"]
        subprocess.run(
            [str(PROMETHEUS_SH), "start", *targets, "--port", prom, "--data", str(prom_data)],
            check=True,
        )
        start = time.time()
        asyncio.run(wait_ready(bootstrap, topic_names(prefix)))
        print(f"worker ready after {time.time() - start:.1f} s; replaying", flush=True)
        asyncio.run(produce(bootstrap, topic_names(prefix)[0], messages, rate=args.rate))
        print(f"replayed; scraping {args.tail:.0f} s more", flush=True)
        time.sleep(args.tail)
        end = time.time()
        for proc, what in ((worker, "worker"), (trainer, "train-agent")):
            if proc is not None and proc.poll() is not None:
                print(f"WARNING: {what} exited early ({proc.returncode})", flush=True)
        render = [
            sys.executable,
            str(RENDER),
            "--prometheus",
            f"http://127.0.0.1:{prom}",
            "--start",
            f"{start:.0f}",
            "--end",
            f"{end:.0f}",
            "--subtitle",
            f"real run {name}: {len(messages)} DIGINETICA events at {args.rate:g}/s, "
            f"commit {commit}",
            "--out",
            str(args.out),
        ]
        (run_dir / f"{name}.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "commit": commit,
                    "code": str(ROOT),
                    "start": start,
                    "end": end,
                    "prometheus_data": str(prom_data),
                    "render": render,
                },
                indent=2,
            )
        )
        subprocess.run(render, check=True)
        return 0
    finally:
        stop_process(trainer)
        stop_process(worker)
        subprocess.run([str(PROMETHEUS_SH), "stop", "--port", prom], check=False)
        if bootstrap:
            try:
                asyncio.run(delete_topics(bootstrap, [t.name for t in all_topics(prefix)]))
            except Exception as err:  # cleanup must not hide the run's outcome
                print(f"note: could not delete the run's topics: {err}")
        services.stop_started()


if __name__ == "__main__":
    sys.exit(main())
