"""Wall time of each per-image stage with 1 and 2 runner workers on the shapes world, in one run.

    python bench/bench_workers.py --train 400 --val 100

Needs the demo's artifacts (`dvc repro`): it takes a subset of the demo world, and the demo's TSA
cache and segmenter as the fixed inputs of `cams` and `evaluate`. Each stage runs as its command
(`diclip prepare`, ...), with a params file that differs from params.yaml only in `dataset.root` and
`runner.n_workers`, into temporary outputs; a stage's outputs are removed before each timed run, so
every run computes every image. The time includes what a stage pays besides images (starting the
LocalCluster, loading models on each worker). Prints each time and the ratio 2 workers / 1 worker.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "artifacts"


def subset_world(dest: Path, train: int, val: int) -> Path:
    """The first `train` / `val` scenes of the demo world, as a folder dataset (images linked, not copied)."""
    source = DEMO / "shapes"
    dest.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (dest / name).symlink_to(source / name)
    for name in ("class_names.txt", "shapes_world.json"):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    lists = dest / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, n in (("train", train), ("val", val)):
        ids = (source / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return dest


def stage_commands(tmp: Path) -> list[tuple[str, list[str], list[Path]]]:
    """(stage, command arguments after `diclip ... --params FILE`, outputs to remove before a timed run)."""
    index, diffusion, cams, labels = tmp / "index", tmp / "diffusion.zarr", tmp / "cams.zarr", tmp / "pseudo_labels"
    adapter, cams2, labels2 = tmp / "tsa_adapter.pt", tmp / "cams_round2.zarr", tmp / "pseudo_labels_round2"
    evaluation, predictions = tmp / "evaluation.zarr", tmp / "predictions"
    metric = lambda name: tmp / f"{name}.json"  # noqa: E731
    return [
        ("prepare", ["prepare", "--index", str(index)], [index]),
        ("diffusion_attention", ["diffusion-attention", "--index", str(index), "--diffusion", str(diffusion),
                                 "--diffusion-metric", str(metric("diffusion"))], [diffusion, metric("diffusion")]),
        ("cams", ["cams", "--index", str(index), "--diffusion", str(diffusion), "--tsa-cache", str(DEMO / "tsa_cache.h5"),
                  "--cams", str(cams), "--pseudo-labels", str(labels)], [cams, labels]),
        ("tsa_adapt", ["tsa-adapt", "--index", str(index), "--diffusion", str(diffusion), "--tsa-cache",
                       str(DEMO / "tsa_cache.h5"), "--cams", str(cams), "--pseudo-labels", str(labels),
                       "--tsa-adapter", str(adapter), "--cams-round2", str(cams2), "--pseudo-labels-round2", str(labels2),
                       "--tsa-adapt-metric", str(metric("tsa_adapt"))], [adapter, cams2, labels2, metric("tsa_adapt")]),
        ("evaluate", ["evaluate", "--index", str(index), "--segmenter", str(DEMO / "segmenter"), "--pseudo-labels",
                      str(labels), "--evaluation", str(evaluation), "--predictions", str(predictions),
                      "--seg-metric", str(metric("seg"))], [evaluation, predictions, metric("seg")]),
    ]


def params_file(tmp: Path, world: Path, workers: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"]["root"] = str(world)
    params["runner"]["n_workers"] = workers
    path = tmp / f"params_{workers}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def timed(args: list[str], params: Path) -> float:
    diclip = Path(sys.executable).parent / "diclip"
    start = time.perf_counter()
    proc = subprocess.run([str(diclip), "-q", args[0], "--params", str(params), *args[1:]], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"diclip {args[0]} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400, help="train scenes of the demo world to use")
    parser.add_argument("--val", type=int, default=100, help="val scenes (evaluate's split)")
    parser.add_argument("--stages", default="prepare,diffusion_attention,cams,tsa_adapt,evaluate",
                        help="comma-separated stages to time (each needs the ones before it, which run untimed once)")
    args = parser.parse_args()
    for needed in (DEMO / "shapes", DEMO / "tsa_cache.h5", DEMO / "segmenter"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run `dvc repro` first (the bench reuses the demo's artifacts)")
    wanted = set(args.stages.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as name:
        tmp = Path(name)
        world = subset_world(tmp / "world", args.train, args.val)
        params = {w: params_file(tmp, world, w) for w in (1, 2)}
        print(f"{args.train} train + {args.val} val scenes of the demo world; each stage as its command")
        ratios = []
        for stage, command, outputs in stage_commands(tmp):
            if stage not in wanted:
                timed(command, params[2])  # an input of a later stage
                continue
            seconds = {}
            for workers in (1, 2):
                remove(outputs)
                seconds[workers] = timed(command, params[workers])
            ratios.append(seconds[2] / seconds[1])
            print(f"{stage:20s} 1 worker {seconds[1]:6.1f} s   2 workers {seconds[2]:6.1f} s   "
                  f"ratio {seconds[2] / seconds[1]:.2f}", flush=True)
        print(f"ratio 2 workers / 1 worker: {', '.join(f'{r:.2f}' for r in ratios)}; largest {max(ratios):.2f}")


if __name__ == "__main__":
    main()
