"""Curation and simulated labelling of the map-reconstruction workload
(examples/mapping/curate.py, label.py), on hand-made cases."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "mapping"))

from curate import Candidate, coverage, select
from label import Annotator, annotate, correct


def cand(i: int, x: float, y: float = 0.0, condition: str = "clear", town: int = 0,
         yaw: float = 0.0) -> Candidate:
    return Candidate((0, i), town, x, y, yaw, condition)


def test_selection_covers_new_tiles_first_and_skips_twins() -> None:
    near = [cand(0, 10.0), cand(1, 10.5), cand(2, 13.0)]  # one view's tiles; 0 and 1 twins
    far = [cand(3, 510.0, 500.0)]
    chosen = select([*near, *far], budget=2)
    assert {c.key for c in chosen} == {(0, 0), (0, 3)} or {c.key for c in chosen} == {
        (0, 2), (0, 3)}
    assert coverage(chosen, [*near, *far]) == 1.0
    all_of = select([*near, *far], budget=10)
    assert len(all_of) == 3 and not {(0, 0), (0, 1)} <= {c.key for c in all_of}
    turned = select([cand(0, 10.0), cand(1, 10.5, yaw=math.pi / 2)], budget=10)
    assert len(turned) == 2  # same place, other heading: not a twin


def test_rare_conditions_and_doubt_come_first_at_equal_coverage() -> None:
    pool = [cand(0, 10.0), cand(1, 30.0), cand(2, 20.0, condition="rain")]
    assert select(pool, budget=1)[0].key == (0, 2)  # rain is 1 in 3
    doubt = {(0, 1): 0.9}
    same = [cand(0, 10.0), cand(1, 30.0)]
    assert select(same, budget=1, uncertainty=doubt)[0].key == (0, 1)


def frames(n: int) -> np.ndarray:
    truth = np.zeros((n, 3, 20, 20), bool)
    truth[:, 0, 10, 2:18] = True
    truth[:, 2, 3:17, 5] = True
    return truth


def test_the_budget_pays_for_frames_and_pre_labels_are_cheaper() -> None:
    truth, rng = frames(20), np.random.default_rng(0)
    perfect = Annotator(jitter=0.0, miss=0.0)
    labels, report = annotate(truth, budget=5.0, rng=rng, who=perfect)
    assert len(labels) == 5 and report["spent"] == 5.0 and report["audit_iou"] == 1.0
    assert (labels == truth[:5]).all()
    assisted, report = annotate(truth, budget=5.0, rng=rng, who=perfect,
                                prelabels=np.zeros_like(truth))
    assert len(assisted) == 12 and report["spent"] == pytest.approx(4.8)


def test_an_audit_rejects_a_careless_batch_and_pays_to_redo_it() -> None:
    truth, rng = frames(10), np.random.default_rng(0)
    careless = Annotator(jitter=1.0, miss=0.0, accept=0.6)  # every line a pixel off
    labels, report = annotate(truth, budget=15.0, rng=rng, who=careless)
    assert report["rejected"] == 1.0 and report["audit_iou"] < 0.6
    assert report["spent"] == 15.0 and len(labels) == 5  # 10 paid, 5 redone with what is left


def test_correcting_a_pre_label() -> None:
    truth, rng = frames(1)[0], np.random.default_rng(0)
    model = np.zeros_like(truth)
    assert (correct(model, truth, Annotator(lapse=0.0), rng) == truth).all()
    assert (correct(model, truth, Annotator(lapse=1.0), rng) == model).all()
    half = correct(model, truth, Annotator(lapse=0.5), rng)
    assert 0 < half.sum() < truth.sum()


def test_fused_true_masks_rebuild_the_map_and_find_what_construction_changed() -> None:
    from mapbuild import FusedGrid, changed_elements
    from metrics import chamfer
    from sensors import Pose, drive, rasterize
    from world import make_town, with_construction

    town = make_town(seed=0)
    later = with_construction(town, seed=1, zones=3)
    grid = FusedGrid.around(later)
    poses: list[Pose] = []
    for d in range(4):
        poses += drive(later, seed=d, frames=100)[::3]
    for pose in poses:  # perfect perception of the new map, true poses
        grid.add(rasterize(later.elements, pose).astype(float), pose)
    found = changed_elements(town.elements, grid)
    mean = grid.mean()
    observed = {e.id for e in town.elements if grid.along(e, mean)[0] >= 0.8}
    assert found == later.changed & observed and found  # every change seen, nothing else
    fused = [e for e in grid.elements() if e.kind == "divider"]
    near = [min(chamfer(e.points, f.points) for f in fused)
            for e in later.elements if e.kind == "divider" and e.id in observed]
    assert np.median(near) < 0.5  # the fused lines lie on the true ones


def test_a_change_is_a_long_unsupported_stretch_not_scattered_misses() -> None:
    from mapbuild import FusedGrid, changed_elements, longest_run
    from world import CLASSES, Element

    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0], dtype=bool)) == 3
    assert longest_run(np.zeros(4, dtype=bool)) == 0
    line = Element("d", "divider", np.array([[0.0, 10.0], [60.0, 10.0]]))

    def fused_without(gaps: list[tuple[float, float]]) -> FusedGrid:
        """Every cell seen; the line fused everywhere but in the gaps (x from, x to)."""
        grid = FusedGrid(np.array([-10.0, 0.0]), np.zeros((len(CLASSES), 40, 160)),
                         np.ones((40, 160)))
        xs = [x for x in np.arange(0.25, 60, 0.5) if not any(a <= x < b for a, b in gaps)]
        rows, cols, _ = grid.cells(np.array([[x, 10.0] for x in xs]))
        grid.total[CLASSES.index("divider"), rows, cols] = 1.0
        return grid

    # 16 m of 60 missing, 4 m at a time (a car's shadow, worn paint): no change.
    assert changed_elements([line], fused_without([(5, 9), (20, 24), (35, 39), (50, 54)])) \
        == set()
    assert changed_elements([line], fused_without([(20, 32)])) == {"d"}  # 12 m moved
