"""Which figures got worse between two records, beyond what their own spread explains.

A figure is *worse* when its mean moved the wrong way by more than both ``sigmas`` standard
errors of the difference (from each side's spread over its samples) and the ``tolerance``
fraction of the old mean; *better* by the same rule the other way; *same* otherwise. With a
single sample on a side its noise is unknown, so only the tolerance applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stoker.bench.records import Record


@dataclass(frozen=True)
class Change:
    suite: str
    figure: str
    unit: str
    old: dict[str, Any]
    new: dict[str, Any]
    change: float  # (new - old) / |old|; signed as measured, not by direction
    verdict: str  # worse | better | same


def noise(old: dict[str, Any], new: dict[str, Any]) -> float:
    """The standard error of the difference of the two means."""
    return math.sqrt(old["stdev"] ** 2 / old["n"] + new["stdev"] ** 2 / new["n"])


def judge(old: dict[str, Any], new: dict[str, Any], sigmas: float, tolerance: float) -> str:
    delta = new["mean"] - old["mean"]
    if old["better"] == "higher":
        delta = -delta  # positive: worse
    bound = max(sigmas * noise(old, new), tolerance * abs(old["mean"]))
    if delta > bound:
        return "worse"
    if -delta > bound:
        return "better"
    return "same"


def compare(old: Record, new: Record, sigmas: float = 3.0,
            tolerance: float = 0.05) -> tuple[list[Change], list[str]]:
    """Every figure both records have, judged; and what only one of them has."""
    changes, unmatched = [], []
    for suite in sorted(set(old["suites"]) | set(new["suites"])):
        before = old["suites"].get(suite, {}).get("figures", {})
        after = new["suites"].get(suite, {}).get("figures", {})
        for name in sorted(set(before) | set(after)):
            if name not in before or name not in after:
                unmatched.append(f"{suite}: {name} only in the "
                                 f"{'new' if name in after else 'old'} record")
                continue
            a, b = before[name], after[name]
            if (a["unit"], a["better"]) != (b["unit"], b["better"]):
                unmatched.append(f"{suite}: {name} changed unit or direction")
                continue
            rel = (b["mean"] - a["mean"]) / abs(a["mean"]) if a["mean"] else math.inf
            changes.append(Change(suite, name, a["unit"], a, b, rel,
                                  judge(a, b, sigmas, tolerance)))
    return changes, unmatched
