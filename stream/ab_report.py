"""``streamrec ab report``: the arms of an A/B split side by side, from the workers' metrics.

Each worker exports, per served version and arm, how many recommendation lists were judged by
the user's next item event and how many of those held it in the top K
(``streamrec_online_judged_total`` / ``streamrec_online_hits_total``), and, where producers
send impression events, how many impressions there were and how many were clicked
(``streamrec_online_impressions_total`` / ``streamrec_online_clicks_total``). The report sums
them over the given workers' ``/metrics`` endpoints, groups them by arm (an arm whose training
agent promotes new versions spans several), and prints each arm's live HR@K and CTR with
95% Wilson intervals, and the differences to the first arm. Counters without an arm label
(workers older than arm labels) are matched to arms by the pinned version.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from models.ab import ABSplit, wilson

_SAMPLE = re.compile(
    r"^streamrec_online_(judged|hits|impressions|clicks)_total\{([^}]*)\}\s+(\S+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
SLOTS = ("judged", "hits", "impressions", "clicks")

# (version, arm) -> [judged, hits, impressions, clicks]; arm "" when unlabelled
Counters = dict[tuple[str, str], list[float]]


def parse_online_counters(text: str) -> Counters:
    """The online counters of one Prometheus text exposition, by (version, arm)."""
    out: Counters = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if "version" not in labels:
            continue
        key = (labels["version"], labels.get("arm", ""))
        out.setdefault(key, [0.0] * len(SLOTS))[SLOTS.index(m.group(1))] += float(m.group(3))
    return out


@dataclass(frozen=True, slots=True)
class ArmRow:
    arm: str
    versions: tuple[str, ...]
    weight: float
    judged: int
    hits: int
    impressions: int = 0
    clicks: int = 0

    @property
    def hr(self) -> float:
        return self.hits / self.judged if self.judged else 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


def arm_rows(counters: Counters, split: ABSplit) -> list[ArmRow]:
    """Per arm of ``split``: the counters labelled with it (every version it served), or,
    for unlabelled counters, those of its pinned version."""
    rows = []
    for arm in split.arms:
        keys = [k for k in counters if k[1] == arm.name] or [
            k for k in counters if k == (arm.version, "")
        ]
        total = [sum(counters[k][i] for k in keys) for i in range(len(SLOTS))]
        versions = tuple(sorted({v for v, _ in keys})) or (arm.version,)
        rows.append(ArmRow(arm.name, versions, arm.weight, *(int(x) for x in total)))
    return rows


def _cell(hits: int, n: int, rate: float) -> str:
    lo, hi = wilson(hits, n)
    return f"{rate:.4f}  [{lo:.4f}, {hi:.4f}]"


def render(rows: Sequence[ArmRow]) -> str:
    """A table: each arm's HR@K (and CTR where impressions exist) with 95% Wilson
    intervals, and the differences to the first arm."""
    ctr = any(r.impressions for r in rows)
    head = "arm  versions                    weight   judged     hits    HR@K   95% CI"
    lines = [head + ("            impr   clicks     CTR   95% CI" if ctr else "")]
    first = rows[0]
    for r in rows:
        versions = r.versions[-1] + (f" +{len(r.versions) - 1}" if len(r.versions) > 1 else "")
        line = (
            f"{r.arm:<4} {versions:<27} {r.weight:>6g} {r.judged:>8} {r.hits:>8}  "
            f"{_cell(r.hits, r.judged, r.hr)}"
        )
        if ctr:
            line += f"  {r.impressions:>8} {r.clicks:>8}  {_cell(r.clicks, r.impressions, r.ctr)}"
        if r is not first:
            line += f"   HR {r.hr - first.hr:+.4f}"
            if ctr:
                line += f", CTR {r.ctr - first.ctr:+.4f}"
            line += f" vs {first.arm}"
        lines.append(line)
    return "\n".join(lines)


def fetch(urls: Sequence[str]) -> Counters:
    """Counters summed over every worker's metrics endpoint."""
    total: Counters = {}
    for url in urls:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for key, values in parse_online_counters(text).items():
            slot = total.setdefault(key, [0.0] * len(SLOTS))
            for i, v in enumerate(values):
                slot[i] += v
    return total


__all__ = ["ArmRow", "Counters", "arm_rows", "fetch", "parse_online_counters", "render"]
