"""Releases of the map-reconstruction workload (examples/mapping/release.py): gates, promotion,
rollback, the tiles and the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "mapping"))

from release import Gates, current, gate, html_report, publish, rollback
from world import CLASSES, Element


def scores(iou: float, ap: float) -> dict[str, object]:
    return {"mAP": ap, "iou": dict.fromkeys(CLASSES, iou),
            "ap": {c: {"0.5": ap, "1.0": ap, "1.5": ap} for c in CLASSES}}


def test_gates_by_threshold_and_by_regression() -> None:
    gates = Gates(min_map=0.3, min_iou=0.4, tolerance=0.02)
    assert gate(scores(0.5, 0.5), None, gates) == (True, [])
    passed, why = gate(scores(0.5, 0.2), None, gates)
    assert not passed and why == ["mAP 0.200 < 0.3"]
    regressed = scores(0.5, 0.5)
    regressed["iou"]["crossing"] = 0.45  # type: ignore[index]
    passed, why = gate(regressed, scores(0.5, 0.5), gates)
    assert not passed and why == ["crossing IoU 0.450 regressed from 0.500"]
    assert gate(scores(0.49, 0.49), scores(0.5, 0.5), gates)[0]  # within the tolerance


def test_publish_promotes_only_what_passed_and_rollback_goes_back(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    lines = [Element("a", "divider", np.array([[10.0, 10.0], [60.0, 10.0]]))]  # two tiles
    root = tmp_path / "releases"
    assert publish(root, model, lines, {"model": scores(0.5, 0.5)}, (True, []), "<p>1") == 1
    assert current(root) == 1
    assert sorted(p.name for p in (root / "v1" / "tiles").iterdir()) == ["0_0.geojson",
                                                                       "1_0.geojson"]
    assert publish(root, model, lines, {}, (False, ["mAP low"]), "<p>2") == 2
    assert current(root) == 1  # kept, not promoted
    assert json.loads((root / "v2" / "metrics.json").read_text())["gate_failures"] == ["mAP low"]
    assert publish(root, model, lines, {}, (True, []), "<p>3") == 3 and current(root) == 3
    assert rollback(root) == 1 and current(root) == 1  # v2 was never promoted
    with pytest.raises(ValueError, match="no promoted release before v1"):
        rollback(root)


def test_the_report_shows_the_verdict_and_both_scores() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    page = html_report("r", scores(0.61, 0.42), scores(0.3, 0.1), (False, ["x < y"]),
                       {"map": fig})
    plt.close(fig)
    assert "not promoted: x &lt; y" in page and "mAP 0.420 (baseline 0.100)" in page
    assert page.count("<tr>") == 1 + len(CLASSES) and "data:image/png;base64," in page
