"""The results file: one JSON line per `stoker bench` run (commit, machine, versions, figures).

A record holds, per suite (a script in benchmarks/), the arguments it ran with, how long it
took, its exit status and every figure it reported, summarised over all its samples (mean,
standard deviation, min, median, max, n) with the samples themselves kept.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from stoker.spec.errors import StokerError

Record = dict[str, Any]


def summarise(unit: str, better: str, samples: list[float]) -> dict[str, Any]:
    return {"unit": unit, "better": better, "n": len(samples),
            "mean": statistics.fmean(samples),
            "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "min": min(samples), "median": statistics.median(samples), "max": max(samples),
            "samples": samples}


def read_figures(path: Path, source: str) -> dict[str, dict[str, Any]]:
    """The figures a script appended to ``path`` (`stoker.bench.figures`), pooled by name."""
    pooled: dict[str, tuple[str, str, list[float]]] = {}
    if not path.exists():
        return {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            item = json.loads(line)
            name, unit, better = item["name"], item["unit"], item["better"]
            samples = [float(s) for s in item["samples"]]
        except (ValueError, KeyError, TypeError) as e:
            raise StokerError(f"{source}: figure line {n} is not a figure ({e})") from None
        known = pooled.setdefault(name, (unit, better, []))
        if known[:2] != (unit, better):
            raise StokerError(f"{source}: figure {name!r} reported as {known[0]}/{known[1]} and "
                              f"as {unit}/{better}")
        known[2].extend(samples)
    return {name: summarise(unit, better, samples)
            for name, (unit, better, samples) in pooled.items()}


def load(path: Path) -> list[Record]:
    """Every record in the results file, oldest first; none when it does not exist."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise StokerError(f"{path}:{n}: not a JSON record ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("suites"), dict) \
                or "id" not in record:
            raise StokerError(f"{path}:{n}: not a stoker bench record (no id or suites)")
        records.append(record)
    return records


def append(path: Path, record: Record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def resolve(records: list[Record], ref: str, path: Path) -> Record:
    """A record by id, by a commit prefix (its newest record), or by position (-1 = newest)."""
    if not records:
        raise StokerError(f"{path}: no records yet (run `stoker bench` first)")
    if ref.lstrip("-").isdigit() and ref.startswith("-"):
        at = int(ref)
        if -len(records) <= at:
            return records[at]
        raise StokerError(f"{path}: record {ref}: there are only {len(records)}")
    for record in reversed(records):
        if record["id"] == ref:
            return record
    by_commit = [r for r in records if str(r.get("commit", "")).startswith(ref)]
    if len(ref) >= 4 and by_commit:
        return by_commit[-1]
    raise StokerError(f"{path}: no record {ref!r} (give an id, a commit prefix of 4+ characters, "
                      f"or -1 for the newest)")
