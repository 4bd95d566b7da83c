"""``streamrec``: the one entry point for every user-facing job."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from stream.settings import load_settings


def _cmd_worker(args: argparse.Namespace) -> int:
    from stream.worker import run_worker

    run_worker(load_settings())
    return 0


def _cmd_train_agent(args: argparse.Namespace) -> int:
    import signal

    from stream.logs import setup_logging
    from stream.train_agent import run_agent

    settings = load_settings(**({"model_dir": Path(args.model_dir)} if args.model_dir else {}))
    setup_logging(settings.log_level, settings.log_format)  # STREAMREC_LOG_FORMAT, as the worker

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.max_seconds:
            loop.call_later(args.max_seconds, stop.set)
        await run_agent(settings, stop=stop)

    from models.bundle import ModelError

    try:
        asyncio.run(main())
    except (FileNotFoundError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_forget_user(args: argparse.Namespace) -> int:
    from stream.forget import forget_user

    settings = load_settings()
    out = asyncio.run(forget_user(settings, args.user_id, pseudonymised=args.pseudonymised))
    # The user is not named: this output may end up in logs.
    print(f"redis: {out.redis_keys} key(s) deleted in namespace {settings.namespace}")
    print(f"kafka: request {out.request.request_id} on {out.topic}: every worker and training "
          "agent erases the user from memory (and Redis again) as it reads it")  # fmt: skip
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from stream.kafka_admin import create_topics
    from topics.names import all_topics

    settings = load_settings()
    specs = all_topics(settings.topic_prefix)
    created = asyncio.run(create_topics(settings.kafka_bootstrap_servers, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:40s} partitions={spec.partitions:<3d} {state}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from stream.train_job import train_from_file

    settings = load_settings()
    out = Path(args.out) if args.out else settings.model_dir
    path = train_from_file(
        Path(args.data) if args.data else None,
        out,
        dataset=args.dataset,
        test_days=args.test_days,
        epochs=args.epochs,
        seed=args.seed,
        promote=not args.no_promote,
    )
    print(f"bundle written: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(rate=args.rate, test_days=args.test_days, settings=load_settings())


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stream.eval_job import EvalConfig, run_evaluation
    from stream.import_job import load_events_file
    from topics.loaders import datasets_root, load_dataset

    datasets = {}
    for name in args.dataset or []:
        datasets[name], _ = load_dataset(name, datasets_root(args.datasets_root))
    for path in args.data or []:
        events, report = load_events_file(Path(path))
        if report.bad_rows:
            print(f"{path}: {report.summary()}")
        datasets[Path(path).name.split(".")[0]] = events
    if not datasets:
        print("give --dataset NAME and/or --data FILE (canonical JSONL, see docs/evaluation.md)")
        return 2
    model_dir = load_settings().model_dir
    bundles = tuple(str(Path(m) if Path(m).is_dir() else model_dir / m) for m in (args.model or []))
    cfg = EvalConfig(
        test_days=args.test_days,
        valid_days=args.valid_days,
        seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()),
        epochs=args.epochs,
        bundles=bundles,
    )
    summary = run_evaluation(datasets, cfg, Path(args.report))
    print(f"report written to {args.report}/report.md ({summary['seconds']:.0f} s)")
    return 0


def _cmd_evaluate_search(args: argparse.Namespace) -> int:
    try:
        from stream.search_eval_job import run_search_eval
    except ImportError as err:  # scipy: the dev (or eval) extra
        print(f"evaluate-search needs {err.name}: pip install -e '.[dev]'")
        return 2
    run_search_eval(args.data, Path(args.report), limit_queries=args.limit_queries)
    print(f"report written to {args.report}/report.md")
    return 0


def _cmd_evaluate_online(args: argparse.Namespace) -> int:
    import orjson

    from models.training import TrainConfig
    from stream.import_job import load_events_file
    from stream.online_eval import compare_online_frozen, plot
    from topics.loaders import load_dataset

    dataset = None if args.data else (args.dataset or "diginetica")
    events, _ = load_dataset(dataset) if dataset else load_events_file(Path(args.data))
    result = compare_online_frozen(
        events,
        train_share=args.train_share,
        chunk_events=args.chunk,
        train_cfg=TrainConfig(seed=args.seed, epochs=args.epochs or TrainConfig().epochs),
    )
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "online.json").write_bytes(orjson.dumps(
        {"online": result.online, "frozen": result.frozen, "chunks": result.chunks,
         "train_events": result.train_events, "stream_events": result.stream_events},
        option=orjson.OPT_INDENT_2,
    ))  # fmt: skip
    name = dataset or Path(args.data).name
    plot(result, out / "online-vs-frozen.png", f"{name}: prequential HR@20, online vs frozen")
    for label, m in (("online", result.online), ("frozen", result.frozen)):
        print(f"{label:7s} HR@20 {m['hr@20']:.4f}  MRR@20 {m['mrr@20']:.4f}  "
              f"over {m['examples']:.0f} stream examples")  # fmt: skip
    print(f"report written to {out}/online.json and online-vs-frozen.png")
    return 0


def _cmd_ab_report(args: argparse.Namespace) -> int:
    from models.ab import ABSplit
    from stream.ab_report import arm_rows, fetch, render

    settings = load_settings()
    spec = args.arms or settings.ab_arms
    if not spec:
        print("no A/B split: give --arms A=VERSION:WEIGHT,... or set STREAMREC_AB_ARMS")
        return 2
    try:
        rows = arm_rows(fetch(args.metrics), ABSplit.parse(spec, settings.ab_salt))
    except (OSError, ValueError) as err:
        print(f"ab report: {err}")
        return 2
    print(render(rows))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from stream.import_job import load_events_file
    from stream.replay import check_range, parse_bound
    from stream.replay_job import run_replay, run_topic_replay
    from topics.loaders import load_dataset

    report = Path(args.report) if args.report else None
    if sum(bool(x) for x in (args.data, args.dataset, args.topic)) != 1:
        print("give one of --data FILE, --dataset NAME or --topic TOPIC --from A --to B")
        return 2
    if args.topic:
        if args.from_ is None or args.to is None:
            print("--topic needs --from and --to (earliest, latest, offset:N, epoch ms, ISO time)")
            return 2
        try:
            start, stop = parse_bound(args.from_), parse_bound(args.to)
            check_range(start, stop)
        except ValueError as err:
            print(err)
            return 2
        return run_topic_replay(
            args.topic,
            start,
            stop,
            out=Path(args.out),
            rate=args.rate,
            settings=load_settings(),
            report=report,
        )
    if args.from_ is not None or args.to is not None:
        print("--from/--to select a range of --topic; a file is replayed whole")
        return 2
    dataset = None if args.data else (args.dataset or "diginetica")
    events, _ = load_dataset(dataset) if dataset else load_events_file(Path(args.data))
    return run_replay(
        events, out=Path(args.out), rate=args.rate, settings=load_settings(), report=report
    )


def _cmd_import(args: argparse.Namespace) -> int:
    from stream.import_job import run_import

    return run_import(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from stream.registry import COMMANDS

    return COMMANDS[args.models_command](args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run the serving worker (faust app)")
    w.set_defaults(func=_cmd_worker)

    ta = sub.add_parser(
        "train-agent",
        help="fine-tune the serving model from the live event stream and promote gated versions",
    )
    ta.add_argument("--model-dir", help="bundle root (default: STREAMREC_MODEL_DIR)")
    ta.add_argument("--max-seconds", type=float, default=None, help="stop after N seconds")
    ta.set_defaults(func=_cmd_train_agent)

    fu = sub.add_parser(
        "forget-user",
        help="erase a user's state, cached data and pending training examples everywhere",
    )
    fu.add_argument("user_id", metavar="ID", help="the user id as producers send it")
    fu.add_argument(
        "--pseudonymised", action="store_true",
        help="ID is already the pseudonym (STREAMREC_PSEUDONYMISE_KEY): do not hash it again",
    )  # fmt: skip
    fu.set_defaults(func=_cmd_forget_user)

    t = sub.add_parser("topics", help="topic administration")
    tsub = t.add_subparsers(dest="topics_command", required=True)
    tc = tsub.add_parser("create", help="create every topic the pipeline uses")
    tc.set_defaults(func=_cmd_topics)

    tr = sub.add_parser("train", help="train a model and write a versioned bundle")
    tr.add_argument(
        "--data", help="DIGINETICA views or canonical JSONL events file (default: the sample)"
    )
    tr.add_argument("--dataset", help="a ready-made dataset instead (see `streamrec import`)")
    tr.add_argument("--out", help="bundle root (default: STREAMREC_MODEL_DIR)")
    tr.add_argument(
        "--test-days",
        type=float,
        default=14.0,
        help="hold out sessions starting in the last N days (default 14)",
    )
    tr.add_argument("--epochs", type=int, default=None)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--no-promote", action="store_true", help="do not make it the current one")
    tr.set_defaults(func=_cmd_train)

    d = sub.add_parser("demo", help="run the whole pipeline on sample data and print a report")
    d.add_argument("--rate", type=float, default=300.0, help="replay rate, events/s")
    d.add_argument(
        "--test-days",
        type=float,
        default=14.0,
        help="replay the sessions of the last N days (trained on the rest)",
    )
    d.set_defaults(func=_cmd_demo)

    ev = sub.add_parser("evaluate", help="offline evaluation: every method, one protocol, report")
    ev.add_argument("--dataset", action="append", help="a ready-made dataset (repeatable)")
    ev.add_argument("--data", action="append", help="a canonical JSONL events file (repeatable)")
    ev.add_argument("--datasets-root", help="folder of the ready-made datasets")
    ev.add_argument("--report", default="reports/evaluation", help="output folder")
    ev.add_argument("--test-days", type=float, default=14.0)
    ev.add_argument("--valid-days", type=float, default=7.0)
    ev.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ev.add_argument("--epochs", type=int, default=None, help="ranker epochs (default: train's)")
    ev.add_argument(
        "--model",
        action="append",
        help="an existing bundle (version under STREAMREC_MODEL_DIR, or a path) to evaluate "
        "side by side with the trained ones; repeatable. --seeds '' trains none.",
    )
    ev.set_defaults(func=_cmd_evaluate)

    es = sub.add_parser(
        "evaluate-search",
        help="search quality on Home Depot queries: BM25 vs text encoder vs hybrid, report",
    )
    es.add_argument("--data", help="train.csv(.gz) or its folder (default: the shared dataset)")
    es.add_argument("--limit-queries", type=int, help="a seeded sample of N queries (default all)")
    es.add_argument("--report", default="reports/search", help="output folder")
    es.set_defaults(func=_cmd_evaluate_search)

    eo = sub.add_parser(
        "evaluate-online",
        help="replay a dataset in time order: online fine-tuning vs the frozen model "
        "(prequential HR/MRR@20 per chunk), report + plot",
    )
    eo_src = eo.add_mutually_exclusive_group()
    eo_src.add_argument("--dataset", help="a ready-made dataset (default: diginetica)")
    eo_src.add_argument("--data", help="an events file (canonical JSONL or DIGINETICA views)")
    eo.add_argument("--train-share", type=float, default=0.5, help="first share that trains")
    eo.add_argument("--chunk", type=int, default=500, help="stream events per chunk")
    eo.add_argument("--epochs", type=int, help="epochs of the initial training")
    eo.add_argument("--seed", type=int, default=0)
    eo.add_argument("--report", default="reports/online", help="output folder")
    eo.set_defaults(func=_cmd_evaluate_online)

    ab = sub.add_parser("ab", help="A/B between model versions")
    absub = ab.add_subparsers(dest="ab_command", required=True)
    abr = absub.add_parser("report", help="live HR@K per arm with 95%% intervals, from workers")
    abr.add_argument(
        "--metrics",
        action="append",
        required=True,
        help="a worker's metrics URL (http://host:9108/metrics); repeatable",
    )
    abr.add_argument("--arms", help="the split (default STREAMREC_AB_ARMS)")
    abr.set_defaults(func=_cmd_ab_report)

    rp = sub.add_parser(
        "replay", help="replay events (a file or a topic range) through Kafka and a worker"
    )
    rp.add_argument("--data", help="DIGINETICA views or canonical JSONL events file")
    rp.add_argument("--dataset", help="a ready-made dataset instead")
    rp.add_argument(
        "--topic", help="re-read a range of this existing topic instead (name as given)"
    )
    rp.add_argument(
        "--from",
        dest="from_",
        metavar="FROM",
        help="range start, inclusive: earliest, offset:N, epoch ms or ISO-8601 record time",
    )
    rp.add_argument(
        "--to", help="range end, exclusive: latest, offset:N, epoch ms or ISO-8601 record time"
    )
    rp.add_argument("--out", default="recs.jsonl", help="JSON lines of every recommendation")
    rp.add_argument("--report", help="also write the counts and HR/MRR/NDCG as JSON here")
    rp.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    rp.set_defaults(func=_cmd_replay)

    from stream.import_job import add_import_arguments

    im = sub.add_parser(
        "import",
        help="import event files or a dataset as canonical events, or a catalogue (--items)",
    )
    add_import_arguments(im)
    im.set_defaults(func=_cmd_import)

    # `--model-dir` works before or after the models subcommand: the subcommands' copy
    # defaults to SUPPRESS so that it does not hide the value given before.
    mo = sub.add_parser("models", help="model registry: list, show, promote, rollback, diff")
    mo.add_argument("--model-dir", help="bundle root (default: STREAMREC_MODEL_DIR)")
    mo.set_defaults(func=_cmd_models)
    mo_dir = argparse.ArgumentParser(add_help=False)
    mo_dir.add_argument("--model-dir", default=argparse.SUPPRESS, help="bundle root")
    mo_announce = argparse.ArgumentParser(add_help=False)
    mo_announce.add_argument(
        "--no-announce", action="store_true", help="do not publish on the model-updates topic"
    )
    msub = mo.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", parents=[mo_dir], help="every bundle, verified; * marks CURRENT")
    ms = msub.add_parser("show", parents=[mo_dir], help="metadata, files and verification")
    ms.add_argument("version")
    mp = msub.add_parser(
        "promote", parents=[mo_dir, mo_announce], help="verify, make CURRENT, record, announce"
    )
    mp.add_argument("version")
    mp.add_argument(
        "--gate-events",
        type=Path,
        help="recent events (a file): promote only if the candidate passes the quality and "
        "consistency gates against the current version on them (stream/gates.py)",
    )
    mp.add_argument("--force", action="store_true", help="promote even if a gate fails")
    msub.add_parser(
        "rollback", parents=[mo_dir, mo_announce], help="promote the version that served before"
    )
    md = msub.add_parser("diff", parents=[mo_dir], help="metadata, files, item overlap of A, B")
    md.add_argument("a", metavar="A")
    md.add_argument("b", metavar="B")
    mc = msub.add_parser(
        "compress", parents=[mo_dir], help="write an fp16/int8/student variant as a new version"
    )
    mc.add_argument("version")
    mc.add_argument(
        "--variant",
        required=True,
        choices=("fp16", "int8-dynamic", "int8-static", "student"),
        help="the new model.onnx: fp16 / int8 weights, or a distilled smaller GRU (torch)",
    )
    mc.add_argument(
        "--data", type=Path, help="training events for int8-static/student (default: the "
        "bundle's training data source)",
    )  # fmt: skip
    mc.add_argument("--test-days", type=float, default=14.0, help="held out when training")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
