"""Projection: VOC and COCO end to end at full size, from the per-image costs bench/fullsize.py measured.

    python bench/project.py RUN/fullsize.json ... [--scale /tmp/diclip-scale/scale.json] [--markdown]

Each fullsize.json is one run of the same preset at other counts (photos, TSA images and steps, adapter and
segmenter iterations). Per stage, a least-squares line through the runs splits its wall time into a fixed
part (process start, model loading) and what each unit of work costs:

    prepare, diffusion_attention, cams, eval_cams, evaluate   per image (evaluate: per val image)
    tsa_cache                                                 per drawn image and per drawn image-step
    tsa_adapt                                                 per image and per adapter iteration
    train                                                     per training crop (iterations x batch)

and each artifact's bytes into a fixed part and bytes per image (of the split it covers). A cost needs two
runs that differ in its count; a count that never varied is left in the fixed part, and the table says so.
The projection applies those costs to the full datasets and the presets' own counts (VOC 2012 train_aug +
val, COCO 2014 train + val; DiCLIP's images per class, steps and iterations). Peak memory is the largest any
run measured at full size; with --scale (bench/bench_scale.py's scale.json) each stage's ratio of peak memory
from the smallest world to the largest is shown beside it, the evidence that the peak does not grow with N.
The figures are the CPU's where the runs ran; GPU columns need runs with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# image counts of the datasets' splits (VOC 2012 + SBD's train_aug; COCO 2014)
DATASETS = {"voc": {"train": 10_582, "val": 1_449}, "coco": {"train": 82_783, "val": 40_504}}
CLASSES = {"voc": 20, "coco": 80}
ORDER = ("prepare", "diffusion_attention", "tsa_cache", "cams", "eval_cams", "tsa_adapt", "train", "evaluate", "report")
PER_IMAGE = ("prepare", "diffusion_attention", "cams", "eval_cams")
# what each artifact grows with: the train split, the eval split, every image, drawn TSA images; else fixed
GROWS_WITH = {"tsa_features.zarr": "train", "evaluation.zarr": "val", "predictions": "val", "tsa_cache.h5": "tsa",
              "diffusion.zarr": "all", "cams.zarr": "all", "cams_round2.zarr": "all", "pseudo_labels": "all",
              "pseudo_labels_round2": "all", "index": "all"}


def work_of(stage: str, counts: dict[str, int], work: dict[str, int], tsa_images: int) -> dict[str, float]:
    """The counts ``stage``'s time grows with, by name."""
    total = counts["train"] + counts["val"]
    if stage in PER_IMAGE:
        return {"images": total}
    if stage == "evaluate":
        return {"val images": counts["val"]}
    if stage == "tsa_cache":
        return {"drawn images": tsa_images, "drawn image-steps": tsa_images * work["tsa_steps"]}
    if stage == "tsa_adapt":
        return {"images": total, "adapter iterations": work["adapt_iterations"]}
    if stage == "train":
        return {"crops": work["train_iterations"] * work["train_batch"]}
    return {}


def fit(points: list[tuple[dict[str, float], float]]) -> tuple[float, dict[str, float], list[str]]:
    """(fixed part, cost per unit of each count, the counts that never varied) of y = fixed + sum(cost * count)."""
    names = list(points[0][0])
    varied = [n for n in names if len({p[0][n] for p in points}) > 1]
    x = np.array([[1.0] + [p[0][n] for n in varied] for p in points])
    y = np.array([p[1] for p in points])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return float(coef[0]), dict(zip(varied, map(float, coef[1:]))), [n for n in names if n not in varied]


def preset_params(preset: str) -> dict:
    """The checkout's params.yaml with the preset's sections over it (what `diclip params preset` writes)."""
    import yaml

    from pipeline.params.presets import load_preset

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in load_preset(preset).items():
        params[section].update(values or {})
    return params


def preset_work(stage: str, preset: str, params: dict) -> dict[str, float]:
    work = {"tsa_steps": params["tsa_cache"]["steps"], "adapt_iterations": params["tsa_adapt"]["iterations"],
            "train_iterations": params["train"]["iterations"], "train_batch": params["train"]["batch"]}
    return work_of(stage, DATASETS[preset], work, CLASSES[preset] * params["tsa_cache"]["images_per_class"])


def tsa_images(run: dict) -> int:
    return next((r["images"] for r in run["stages"] if r["stage"] == "tsa_cache"), 0)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def human(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="fullsize.json files of bench/fullsize.py runs")
    ap.add_argument("--scale", type=Path, default=None, help="bench/bench_scale.py's scale.json")
    args = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in args.runs]
    presets = {preset: preset_params(preset) for preset in DATASETS}
    if len({r["preset"] for r in runs}) != 1 or len({r["device"] for r in runs}) != 1:
        raise SystemExit("project: the runs must share one preset and one device "
                         f"(got {sorted({(r['preset'], r['device']) for r in runs})})")
    device = runs[0]["device"]
    scale = {}
    if args.scale:
        rows = json.loads(args.scale.read_text())
        lo, hi = min(r["n"] for r in rows), max(r["n"] for r in rows)
        by = {(r["stage"], r["n"]): r["peak_mib"] for r in rows}
        scale = {s: by[(s, hi)] / by[(s, lo)] for s, n in by if n == lo and (s, hi) in by}
        scale_label = f"peak {hi:,}/{lo:,} (shapes)"

    print(f"Per-stage costs on {device} (from {len(runs)} runs of the {runs[0]['preset']} preset):")
    head = ["stage", "fixed s", "cost per unit", "peak MiB (full size)"] + ([scale_label] if scale else []) + \
           [f"{p.upper()} projected, {device}" for p in DATASETS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    totals = dict.fromkeys(DATASETS, 0.0)
    seen = {s["stage"] for run in runs for s in run["stages"]}
    for stage in [s for s in ORDER if s in seen]:
        points = [(work_of(stage, run["counts"], run["work"], tsa_images(run)), s["seconds"])
                  for run in runs for s in run["stages"] if s["stage"] == stage]
        fixed, cost, still = fit(points)
        peak = max(s["peak_mib"] for run in runs for s in run["stages"] if s["stage"] == stage)
        costs = ", ".join(f"{c:.3g} s per {n[:-1] if n.endswith('s') else n}" for n, c in cost.items())
        if still:
            costs += f" ({', '.join(still)} not varied: in the fixed part)"
        cells = [stage, f"{fixed:.1f}", costs or "-", f"{peak:,.0f}"] + ([f"{scale[stage]:.2f}" if stage in scale else ""]
                                                                    if scale else [])
        for preset in DATASETS:
            work = preset_work(stage, preset, presets[preset])
            seconds = fixed + sum(c * work[n] for n, c in cost.items())
            totals[preset] += seconds
            cells.append(hours(seconds))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| all stages | | | | " + ("| " if scale else "") + " | ".join(hours(totals[p]) for p in DATASETS) + " |")
    print("\n".join(lines))

    print("\nDisk per artifact (bytes per image from the runs; projected on the full datasets):")
    lines = ["| artifact | grows with | fixed | per image | " + " | ".join(p.upper() for p in DATASETS) + " |",
             "|---" * (4 + len(DATASETS)) + "|"]
    names = sorted({n for run in runs for n in run.get("disk_bytes", {})})
    totals = dict.fromkeys(DATASETS, 0.0)
    for name in names:
        grows = GROWS_WITH.get(name)  # a copied-in cache (a run without tsa_cache) says nothing of its growth
        count_of = {"train": lambda c, t: c["train"], "val": lambda c, t: c["val"],
                    "all": lambda c, t: c["train"] + c["val"], "tsa": lambda c, t: t}.get(grows)
        points = [({"n": count_of(run["counts"], tsa_images(run)) if count_of else 0}, run["disk_bytes"][name])
                  for run in runs if name in run.get("disk_bytes", {}) and (grows != "tsa" or tsa_images(run))]
        fixed, cost, _ = fit(points) if count_of else (max(p[1] for p in points), {}, [])
        per = cost.get("n", 0.0)
        shrank = per < 0  # e.g. the prediction PNGs of a random-weight segmenter, which compress as they please
        per = max(per, 0.0)
        cells = [f"`{name}`", grows or "fixed", human(max(fixed, 0)),
                 "shrank between the runs: not projected" if shrank else f"{per / 2**10:,.1f} KiB" if count_of else "-"]
        for preset in DATASETS:
            drawn = CLASSES[preset] * presets[preset]["tsa_cache"]["images_per_class"]
            n = count_of(DATASETS[preset], drawn) if count_of else 0
            size = max(fixed, 0) + per * n
            totals[preset] += size
            cells.append(human(size))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| all artifacts | | | | " + " | ".join(human(totals[p]) for p in DATASETS) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
