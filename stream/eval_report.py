"""Writes the evaluation report: ``report.md``, ``results.json`` and PNG plots per dataset
(HR@K and MRR@K per method, HR by session length, coverage and popularity bias)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

TABLE_METRICS = ("HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20", "coverage@20",
                 "popularity_bias@20")  # fmt: skip


def _cell(block: dict[str, Any], metric: str) -> str:
    mean = block["mean"].get(metric)
    if mean is None:
        return "–"
    std = block["std"].get(metric, 0.0)
    return f"{mean:.4f} ± {std:.4f}" if std > 0 else f"{mean:.4f}"


SERVED = "streamrec"
GOAL_METRICS = ("HR@20", "MRR@20")


def goal_check(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dataset and goal metric: the served ranking's mean, the best other method (bundles
    evaluated side by side, ``streamrec@<version>``, are not rivals) and whether it wins."""
    rows: list[dict[str, Any]] = []
    for ds in summary["datasets"]:
        methods = ds["methods"]
        if SERVED not in methods:
            continue
        rivals = {m: b for m, b in methods.items() if not m.startswith(SERVED)}
        for metric in GOAL_METRICS:
            ours = methods[SERVED]["mean"][metric]
            best = max(rivals, key=lambda m: rivals[m]["mean"][metric], default=None)
            theirs = rivals[best]["mean"][metric] if best else 0.0
            rows.append({
                "dataset": ds["dataset"], "metric": metric, "streamrec": ours,
                "std": methods[SERVED]["std"][metric], "best_other": best,
                "best_other_value": theirs, "wins": ours > theirs,
            })  # fmt: skip
    return rows


def render_markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    lines = [
        "# streamrec evaluation report",
        "",
        f"Protocol: test = sessions starting in the last {cfg['test_days']:g} days, validation ="
        f" the {cfg['valid_days']:g} days before, widened to about"
        f" {cfg.get('min_valid_events', 0)} events if it holds fewer (used for choices only),"
        " train = the rest;"
        " prefix -> next item; targets unseen in training and re-views of an item already in"
        " the session are dropped; lists exclude the session's items for every method; ranked"
        f" over the whole training catalogue. Seeds {list(cfg['seeds'])} for trained models"
        " (mean ± std); baselines are deterministic.",
        "",
        f"Total time: {summary['seconds']:.0f} s.",
    ]
    goal = goal_check(summary)
    if goal:
        lines += [
            "",
            "## Goal: the served ranking beats every other method",
            "",
            "| dataset | metric | streamrec (mean ± std) | best other method | beats it |",
            "|---|---|---:|---:|---|",
        ]
        for g in goal:
            lines.append(
                f"| {g['dataset']} | {g['metric']} | {g['streamrec']:.4f} ± {g['std']:.4f} | "
                f"{g['best_other_value']:.4f} ({g['best_other']}) | "
                f"{'yes' if g['wins'] else '**no**'} |"
            )
    for ds in summary["datasets"]:
        name = ds["dataset"]
        ev = ds["events"]
        lines += [
            "",
            f"## {name}",
            "",
            f"{ev['train']} train / {ev['valid']} validation / {ev['test']} test events; "
            f"{ds['catalogue']} items; {ds['test_pairs']} test pairs "
            f"(dropped: {ds['dropped_unseen_targets']} unseen targets, "
            f"{ds['dropped_repeat_targets']} re-views).",
            "",
            "| method | " + " | ".join(TABLE_METRICS) + " | seconds |",
            "|---|" + "---:|" * (len(TABLE_METRICS) + 1),
        ]
        ranked = sorted(ds["methods"].items(), key=lambda kv: -kv[1]["mean"]["HR@20"])
        for method, block in ranked:
            cells = " | ".join(_cell(block, m) for m in TABLE_METRICS)
            lines.append(f"| {method} | {cells} | {ds['seconds'].get(method, 0.0):.1f} |")
        if ds.get("blend_per_seed"):
            blends = "; ".join(
                ", ".join(f"{k} {v:g}" for k, v in b.items() if v) for b in ds["blend_per_seed"]
            )
            lines += ["", f"Blend weights chosen on validation, per seed: {blends}."]
        lines += ["", f"![HR and MRR]({name}-accuracy.png) ![by length]({name}-by-length.png)"
                  f" ![coverage]({name}-coverage.png)"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plots(ds: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = ds["dataset"]
    methods = list(ds["methods"])
    means = {m: ds["methods"][m]["mean"] for m in methods}
    stds = {m: ds["methods"][m]["std"] for m in methods}
    ks = sorted({int(k.split("@")[1]) for k in means[methods[0]] if k.startswith("HR@")
                 and "|" not in k})  # fmt: skip

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(methods)
    for ax, metric in zip(axes, ("HR", "MRR"), strict=True):
        for j, m in enumerate(methods):
            xs = [i + j * width for i in range(len(ks))]
            ys = [means[m][f"{metric}@{k}"] for k in ks]
            es = [stds[m][f"{metric}@{k}"] for k in ks]
            ax.bar(xs, ys, width, yerr=es, label=m, capsize=2)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ks))], [f"@{k}" for k in ks])
        ax.set_title(f"{name}: {metric}@K")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name}-accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        keys = [k for k in means[m] if k.startswith("HR@20|len=")]
        ax.plot([k.split("=")[1] for k in keys], [means[m][k] for k in keys], marker="o", label=m)
    ax.set_xlabel("session prefix length")
    ax.set_ylabel("HR@20")
    ax.set_title(f"{name}: HR@20 by session length")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name}-by-length.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(methods, [means[m]["coverage@20"] for m in methods], label="coverage@20")
    ax.plot(methods, [means[m]["popularity_bias@20"] for m in methods], "ro-",
            label="popularity bias@20")  # fmt: skip
    ax.set_title(f"{name}: catalogue coverage and popularity bias")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name}-coverage.png", dpi=110)
    plt.close(fig)


def write_report(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out / "report.md").write_text(render_markdown(summary), encoding="utf-8")
    for ds in summary["datasets"]:
        _plots(ds, out)
