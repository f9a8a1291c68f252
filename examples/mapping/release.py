"""Releases: a model and its map tiles, promoted only through gates, with rollback and a report.

    verdict = gate(candidate, current, Gates(min_map=0.2, min_iou=0.2))
    version = publish(releases, model_file, tiles, candidate, verdict)   # releases/vN/
    rollback(releases)                                                   # CURRENT <- previous

A release directory holds ``model.safetensors``, ``tiles/<i>_<j>.geojson`` (the fused map, one
file a tile), ``metrics.json`` and ``report.html``. ``CURRENT`` names the promoted release; a
candidate that fails a gate is kept (``vN`` with ``"promoted": false`` in its metrics) but not
promoted. Gates: the candidate's mAP and every class's IoU at least the thresholds, and no class
worse than the current release's by more than ``tolerance`` (IoU, and AP at 1.0 m).
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from world import CLASSES, Element, cut_into_tiles, to_geojson


@dataclass(frozen=True)
class Gates:
    min_map: float = 0.2
    min_iou: float = 0.2
    tolerance: float = 0.02


def gate(candidate: dict[str, Any], current: dict[str, Any] | None,
         gates: Gates) -> tuple[bool, list[str]]:
    """(passed, the reasons it failed) for a candidate's ``overall`` scores."""
    why = []
    if candidate["mAP"] < gates.min_map:
        why.append(f"mAP {candidate['mAP']:.3f} < {gates.min_map}")
    for c in CLASSES:
        iou = candidate["iou"][c]
        if iou < gates.min_iou:
            why.append(f"{c} IoU {iou:.3f} < {gates.min_iou}")
        if current is not None:
            for name, new, old in (("IoU", iou, current["iou"][c]),
                                   ("AP@1.0", candidate["ap"][c]["1.0"],
                                    current["ap"][c]["1.0"])):
                if new < old - gates.tolerance:
                    why.append(f"{c} {name} {new:.3f} regressed from {old:.3f}")
    return not why, why


def releases_of(root: Path) -> list[int]:
    return sorted(int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit())


def current(root: Path) -> int | None:
    pointer = root / "CURRENT"
    return int(pointer.read_text().strip()[1:]) if pointer.exists() else None


def publish(root: Path, model: Path, elements: list[Element], scores: dict[str, Any],
            verdict: tuple[bool, list[str]], report_html: str) -> int:
    """Write release v(N+1); point CURRENT at it only when it passed its gates."""
    root.mkdir(parents=True, exist_ok=True)
    version = (releases_of(root) or [0])[-1] + 1
    staging = root / f".v{version}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tiles").mkdir(parents=True)
    shutil.copyfile(model, staging / "model.safetensors")
    for (i, j), pieces in cut_into_tiles(elements).items():
        (staging / "tiles" / f"{i}_{j}.geojson").write_text(json.dumps(to_geojson(pieces)))
    passed, why = verdict
    (staging / "metrics.json").write_text(json.dumps(
        {"version": version, "promoted": passed, "gate_failures": why, **scores}, indent=1))
    (staging / "report.html").write_text(report_html)
    staging.rename(root / f"v{version}")
    if passed:
        _point(root, version)
    return version


def rollback(root: Path) -> int:
    """CURRENT back to the promoted release before it; the release it left is kept."""
    now = current(root)
    promoted = [v for v in releases_of(root)
                if json.loads((root / f"v{v}" / "metrics.json").read_text())["promoted"]]
    earlier = [v for v in promoted if now is None or v < now]
    if not earlier:
        raise ValueError(f"no promoted release before v{now} in {root}")
    _point(root, earlier[-1])
    return earlier[-1]


def _point(root: Path, version: int) -> None:
    tmp = root / ".CURRENT.tmp"
    tmp.write_text(f"v{version}\n")
    tmp.replace(root / "CURRENT")


def html_report(title: str, scores: dict[str, Any], baseline: dict[str, Any],
                verdict: tuple[bool, list[str]], figures: dict[str, Any]) -> str:
    """One self-contained page: the verdict, model vs baseline per class (IoU, AP at each
    threshold), per condition, and the figures (matplotlib) inline as PNG."""
    rows = []
    for c in CLASSES:
        cells = [f"{scores['iou'][c]:.3f}", f"{baseline['iou'][c]:.3f}"]
        for t in scores["ap"][c]:
            cells += [f"{scores['ap'][c][t]:.3f}", f"{baseline['ap'][c][t]:.3f}"]
        rows.append(f"<tr><th>{c}</th>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    thresholds = list(scores["ap"][CLASSES[0]])
    head = "<tr><th>class</th><th>IoU model</th><th>IoU baseline</th>" + "".join(
        f"<th>AP@{t} model</th><th>AP@{t} baseline</th>" for t in thresholds) + "</tr>"
    images = []
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        data = base64.b64encode(buffer.getvalue()).decode()
        images.append(f"<h3>{html.escape(name)}</h3><img src='data:image/png;base64,{data}'>")
    passed, why = verdict
    status = "promoted" if passed else "not promoted: " + "; ".join(why)
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(status)}</p>"
            f"<p>mAP {scores['mAP']:.3f} (baseline {baseline['mAP']:.3f})</p>"
            f"<table border=1 cellpadding=4>{head}{''.join(rows)}</table>" + "".join(images))
