"""``streamrec ab report``: the arms of an A/B split side by side, from the workers' metrics.

Each worker exports, per served version, how many recommendation lists were judged by the
user's next item event and how many of those held it in the top K
(``streamrec_online_judged_total`` / ``streamrec_online_hits_total``). The report sums them
over the given workers' ``/metrics`` endpoints, maps versions to arms with the split, and
prints each arm's live HR@K with its 95% Wilson interval, and the difference to the first arm.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from models.ab import ABSplit, wilson

_SAMPLE = re.compile(r"^(streamrec_online_(?:judged|hits)_total)\{([^}]*)\}\s+(\S+)$")
_VERSION = re.compile(r'version="([^"]*)"')


def parse_online_counters(text: str) -> dict[str, list[float]]:
    """``version -> [judged, hits]`` from one Prometheus text exposition."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        v = _VERSION.search(m.group(2))
        if v is None:
            continue
        slot = 0 if m.group(1).endswith("judged_total") else 1
        out.setdefault(v.group(1), [0.0, 0.0])[slot] += float(m.group(3))
    return out


@dataclass(frozen=True, slots=True)
class ArmRow:
    arm: str
    version: str
    weight: float
    judged: int
    hits: int

    @property
    def hr(self) -> float:
        return self.hits / self.judged if self.judged else 0.0


def arm_rows(counters: dict[str, list[float]], split: ABSplit) -> list[ArmRow]:
    """Per arm of ``split``: its version's judged lists and hits."""
    rows = []
    for arm in split.arms:
        judged, hits = counters.get(arm.version, [0.0, 0.0])
        rows.append(ArmRow(arm.name, arm.version, arm.weight, int(judged), int(hits)))
    return rows


def render(rows: Sequence[ArmRow]) -> str:
    """A table: each arm's HR@K with its 95% Wilson interval, the difference to the first."""
    lines = ["arm  version                     weight   judged     hits    HR@K   95% CI"]
    for r in rows:
        lo, hi = wilson(r.hits, r.judged)
        diff = f"   {r.hr - rows[0].hr:+.4f} vs {rows[0].arm}" if r is not rows[0] else ""
        lines.append(
            f"{r.arm:<4} {r.version:<27} {r.weight:>6g} {r.judged:>8} {r.hits:>8}  "
            f"{r.hr:.4f}  [{lo:.4f}, {hi:.4f}]{diff}"
        )
    return "\n".join(lines)


def fetch(urls: Sequence[str]) -> dict[str, list[float]]:
    """Counters summed over every worker's metrics endpoint."""
    total: dict[str, list[float]] = {}
    for url in urls:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for version, (judged, hits) in parse_online_counters(text).items():
            slot = total.setdefault(version, [0.0, 0.0])
            slot[0] += judged
            slot[1] += hits
    return total


__all__ = ["ArmRow", "arm_rows", "fetch", "parse_online_counters", "render"]
