"""The steps of examples/mapping/pipeline.toml (each takes a `StepContext`, writes its
declared outputs, and returns what the run record keeps)."""

from __future__ import annotations

import json
from typing import Any

import baseline
import numpy as np
from curate import candidates, coverage, select
from data import frame_inputs, load, make_frames, save
from evaluate import Predict, evaluate, model_predictor
from label import Annotator, annotate

from stoker.pipeline import StepContext


def frames(ctx: StepContext) -> dict[str, Any]:
    """Shard i: the drives through town ``first_town + i`` (map version ``version``)."""
    import torch

    torch.set_num_threads(1)  # the camera's blur is tiny; shards in parallel share the cores
    p = ctx.params
    town = int(p["first_town"]) + ctx.shard
    shard = make_frames(town, drives=int(p["drives"]), frames=int(p["frames"]),
                        version=int(p.get("version", 1)))
    save(shard, ctx.outputs["frames"])
    ctx.count(len(shard["inputs"]), "frames")
    return {"town": town, "frames": len(shard["inputs"])}


def curate(ctx: StepContext) -> dict[str, Any]:
    """The frames to label: `curate.select` over every shard, within ``budget`` frames."""
    shards = [load(f) for f in ctx.paths("frames")]
    pool = candidates(shards)
    ctx.count(len(pool), "frames")
    chosen = select(pool, budget=int(ctx.params["budget"]), rarity=float(ctx.params["rarity"]))
    picked = sorted(c.key for c in chosen)
    conditions = {str(c.condition): sum(1 for x in chosen if x.condition == c.condition)
                  for c in chosen}
    report = {"pool": len(pool), "chosen": len(picked), "tile_coverage": coverage(chosen, pool),
              "conditions": conditions}
    ctx.outputs["selection"].write_text(json.dumps({"frames": picked, **report}) + "\n")
    return report


def label(ctx: StepContext) -> dict[str, Any]:
    """The chosen frames labelled by the simulated annotator (`label.annotate`): inputs and
    the annotator's masks, as one shard the training step reads."""
    shards = [load(f) for f in ctx.paths("frames")]
    picked = json.loads(ctx.inputs["selection"].read_text())["frames"]  # type: ignore[union-attr]
    p = ctx.params
    who = Annotator(jitter=float(p["jitter"]), miss=float(p["miss"]))
    truth = np.stack([shards[s]["masks"][i] for s, i in picked])
    masks, report = annotate(truth, float(p["budget"]), np.random.default_rng(int(p["seed"])),
                             who)
    save(labelled(shards, picked[:len(masks)], masks), ctx.outputs["labelled"])
    ctx.count(len(masks), "frames")
    return report


def labelled(shards: list[dict[str, np.ndarray]], rows: list[list[int]],
             masks: np.ndarray) -> dict[str, np.ndarray]:
    """The training shard of frames ``rows`` (shard, frame) with the annotator's masks; the
    direction target only where the annotator drew a line."""
    directions = [np.where(masks[j].any(axis=0), shards[s]["directions"][i], -1)
                  for j, (s, i) in enumerate(rows)]
    return {"inputs": np.stack([shards[s]["inputs"][i] for s, i in rows]), "masks": masks,
            "directions": np.stack(directions).astype(np.int8)}


def trained_predictor(ctx: StepContext) -> Predict:
    """The BEV model of input ``model`` (a safetensors file), as a frame predictor."""
    import torch
    from safetensors.torch import load_file
    from task import BevNet

    torch.set_num_threads(1)
    model = BevNet(int(ctx.params["width"]))
    model.load_state_dict(load_file(ctx.inputs["model"]))
    return model_predictor(model)


def score(ctx: StepContext) -> dict[str, Any]:
    """The trained model and the non-learned baseline on the held-out towns' frames."""
    shards = [load(f) for f in ctx.paths("heldout")]
    report = {"model": evaluate(trained_predictor(ctx), shards),
              "baseline": evaluate(baseline.predict, shards)}
    ctx.count(sum(len(s["inputs"]) for s in shards), "frames")
    ctx.outputs["report"].write_text(json.dumps(report, indent=1) + "\n")
    return {who: {"mAP": round(r["overall"]["mAP"], 4),
                  "iou": {c: round(v, 4) for c, v in r["overall"]["iou"].items()}}
            for who, r in report.items()}


def survey(ctx: StepContext) -> dict[str, Any]:
    """The map built from the model's predictions on drives through the surveyed town, before
    (map version 1) and after its construction works (version 2): the fused version-2 map
    against the truth, and the version-1 map's elements the new drives no longer support
    against the ids the works really changed."""
    from evaluate import town_elements
    from mapbuild import FusedGrid, changed_elements
    from metrics import THRESHOLDS, ap_from_matches, match
    from sensors import Pose
    from world import CLASSES, make_town, with_construction

    predict = trained_predictor(ctx)
    shard = load(ctx.inputs["after"])  # type: ignore[arg-type]
    seed = int(shard["town"])
    before, after = make_town(seed), with_construction(make_town(seed), seed=seed + 1000)
    grid = FusedGrid.around(after)
    for i in range(len(shard["inputs"])):
        grid.add(predict(frame_inputs(shard, i)), Pose(*map(float, shard["believed"][i])))
    ctx.count(len(shard["inputs"]), "frames")
    mean = grid.mean()
    observed = {e.id for e in before.elements if grid.along(e, mean)[0] >= 0.8}
    found = changed_elements(before.elements, grid)
    truly = after.changed & observed
    fused = grid.elements()
    truth = [e for e in town_elements(seed, 2) if grid.along(e, mean)[0] >= 0.8]
    ap = {c: {str(t): ap_from_matches(match([(f.points, 1.0) for f in fused if f.kind == c],
                                            [e.points for e in truth if e.kind == c], t),
                                      sum(1 for e in truth if e.kind == c))
              for t in THRESHOLDS} for c in CLASSES}
    report = {"changes": {"found": sorted(found), "true": sorted(truly),
                          "precision": len(found & truly) / len(found) if found else None,
                          "recall": len(found & truly) / len(truly) if truly else None},
              "fused_ap": ap, "elements": len(fused)}
    ctx.outputs["survey"].write_text(json.dumps(report, indent=1) + "\n")
    np.savez_compressed(ctx.outputs["map"].open("wb"),
                        **{f"{e.kind}/{e.id}": e.points for e in fused})
    return {k: report["changes"][k] for k in ("precision", "recall")}


def release(ctx: StepContext) -> dict[str, Any]:
    """A release of the model and the fused map in ``releases`` (relative to the pipeline
    file), promoted when it passes the gates against the current release."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from release import Gates, current, gate, html_report, publish
    from world import Element

    root = Path(__file__).resolve().parent / str(ctx.params["releases"])  # beside this file
    report = json.loads(ctx.inputs["report"].read_text())  # type: ignore[union-attr]
    model, base = report["model"]["overall"], report["baseline"]["overall"]
    now = current(root)
    previous = (json.loads((root / f"v{now}" / "metrics.json").read_text())["model"]
                if now is not None else None)
    verdict = gate(model, previous, Gates(min_map=float(ctx.params["min_map"]),
                                          min_iou=float(ctx.params["min_iou"])))
    with np.load(ctx.inputs["map"]) as saved:  # type: ignore[arg-type]
        elements = [Element(k.split("/", 1)[1], k.split("/", 1)[0], saved[k])
                    for k in saved.files]
    fig, ax = plt.subplots(figsize=(6, 6))
    for e in elements:
        ax.plot(*e.points.T, {"divider": "y", "crossing": "b", "boundary": "k"}[e.kind], lw=0.8)
    ax.set_aspect("equal")
    ax.set_title("fused map of the surveyed town (version 2)")
    page = html_report("mapping release", model, base, verdict, {"map": fig})
    plt.close(fig)
    version = publish(root, ctx.inputs["model"], elements,  # type: ignore[arg-type]
                      {"model": model, "baseline": base}, verdict, page)
    record = {"version": version, "promoted": verdict[0], "gate_failures": verdict[1]}
    ctx.outputs["release"].write_text(json.dumps(record) + "\n")
    return record


def doubt(ctx: StepContext) -> dict[str, Any]:
    """The first model's view of the unlabelled pool: each frame's uncertainty (the mean
    binary entropy of its class probabilities over the pixels it is unsure of, scaled to 0..1)
    and its predicted masks, the second round's pre-labels."""
    predict = trained_predictor(ctx)
    shards = [load(f) for f in ctx.paths("frames")]
    done = {tuple(k) for k in json.loads(ctx.inputs["selection"].read_text())["frames"]}  # type: ignore[union-attr]
    keys, uncertainty, prelabels = [], [], []
    for s, shard in enumerate(shards):
        for i in range(len(shard["inputs"])):
            if (s, i) in done:
                continue
            prob = predict(frame_inputs(shard, i)).clip(1e-6, 1 - 1e-6)
            entropy = -(prob * np.log2(prob) + (1 - prob) * np.log2(1 - prob))
            unsure = entropy > 0.1
            keys.append((s, i))
            uncertainty.append(float(entropy[unsure].mean()) if unsure.any() else 0.0)
            prelabels.append(prob >= 0.5)
    ctx.count(len(keys), "frames")
    np.savez_compressed(ctx.outputs["doubt"].open("wb"), keys=np.array(keys),
                        uncertainty=np.array(uncertainty), prelabels=np.array(prelabels))
    return {"frames": len(keys), "mean_uncertainty": float(np.mean(uncertainty))}


def curate_again(ctx: StepContext) -> dict[str, Any]:
    """The second round's frames: the pool less what was labelled, picked with the model's
    doubt (`curate.select` with ``uncertainty``)."""
    shards = [load(f) for f in ctx.paths("frames")]
    with np.load(ctx.inputs["doubt"]) as d:  # type: ignore[arg-type]
        doubts = {tuple(map(int, k)): float(u) for k, u in zip(d["keys"], d["uncertainty"],
                                                               strict=True)}
    pool = [c for c in candidates(shards) if c.key in doubts]
    ctx.count(len(pool), "frames")
    chosen = select(pool, budget=int(ctx.params["budget"]), rarity=float(ctx.params["rarity"]),
                    uncertainty=doubts)
    picked = sorted(c.key for c in chosen)
    report = {"pool": len(pool), "chosen": len(picked),
              "mean_doubt_chosen": float(np.mean([doubts[k] for k in picked])),
              "mean_doubt_pool": float(np.mean(list(doubts.values())))}
    ctx.outputs["selection"].write_text(json.dumps({"frames": picked, **report}) + "\n")
    return report


def label_again(ctx: StepContext) -> dict[str, Any]:
    """The second round labelled by correcting the first model's pre-labels (cheaper: the
    same budget labels more frames), merged with the first round's labels."""
    shards = [load(f) for f in ctx.paths("frames")]
    picked = json.loads(ctx.inputs["selection"].read_text())["frames"]  # type: ignore[union-attr]
    with np.load(ctx.inputs["doubt"]) as d:  # type: ignore[arg-type]
        where = {tuple(map(int, k)): n for n, k in enumerate(d["keys"])}
        prelabels = np.stack([d["prelabels"][where[tuple(k)]] for k in picked])
    p = ctx.params
    who = Annotator(jitter=float(p["jitter"]), miss=float(p["miss"]), lapse=float(p["lapse"]))
    truth = np.stack([shards[s]["masks"][i] for s, i in picked])
    masks, report = annotate(truth, float(p["budget"]), np.random.default_rng(int(p["seed"])),
                             who, prelabels=prelabels)
    first, more = load(ctx.inputs["first"]), labelled(shards, picked[:len(masks)], masks)  # type: ignore[arg-type]
    save({k: np.concatenate([first[k], more[k]]) for k in more}, ctx.outputs["labelled"])
    ctx.count(len(masks), "frames")
    return report
