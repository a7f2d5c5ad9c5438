"""Scale: the demo pipeline on shapes worlds of growing size; each stage's peak memory and time per image.

    python bench/bench_scale.py [--sizes 2500,10000,20000] [--out /tmp/diclip-scale] [--stages cams,tsa_adapt]

Per size N (80% train, 20% val; the demo's params.yaml otherwise, with the tiny models): every stage of
the pipeline, tsa_adapt included, run as its `diclip` command in a fresh process, the way `dvc repro`
runs it. Per stage it records the wall time and the peak resident memory: the largest of the stage's
driver and its runner's worker processes (getrusage(RUSAGE_CHILDREN) of a wrapper that waits for the
stage, which covers every descendant reaped below it). Each size runs in its own folder OUT/N with the
artifacts at their default paths there and the params' file paths made absolute. It prints, per stage, the seconds, the seconds
per image it processes (the images that grow with N: all for prepare, cams, eval_cams and tsa_adapt,
the computed splits for stage A, val for evaluate; none for tsa_cache, train and report, whose work is
fixed), the peak memory and the ratios of the largest size to the smallest; and each artifact's bytes on
disk per size (OUT/disk.json). Issue 25's goals: peak memory within 1.2x and time per image within 1.2x from the smallest size to the largest. By default a
size's largest stores are deleted once it is measured (`--keep` leaves them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORDER = ("shapes_world", "prepare", "diffusion_attention", "tsa_cache", "cams", "eval_cams", "tsa_adapt", "train",
         "evaluate", "report")
def images_of(name: str, sizes: dict[str, int], stage_a_splits: list[str]) -> int:
    """How many images of the world the stage's work grows with (0: fixed work)."""
    total = sum(sizes.values())
    return {"shapes_world": total, "prepare": total, "diffusion_attention": sum(sizes[s] for s in stage_a_splits),
            "cams": total, "eval_cams": total, "tsa_adapt": total, "evaluate": sizes["val"]}.get(name, 0)


def run_size(n: int, out: Path, stages: tuple[str, ...], seed: int) -> list[dict]:
    import yaml

    folder = out / str(n)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n * 4 // 5, "val": n - n * 4 // 5}
    from pipeline.measure import portable_params, run_stage_measured

    params = portable_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["dataset"]["root"] = "artifacts/shapes"
    params["shapes"]["splits"] = sizes
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (folder / "docs").exists():
        (folder / "docs").symlink_to(ROOT / "docs")  # the report's ablation table
    stage_a_splits = list(params["diffusion_attention"]["splits"] or ["train", "val"])
    rows = []
    for name in ORDER:
        if name not in stages:
            continue
        run = run_stage_measured(name, folder, args=["--seed", str(seed)] if name == "shapes_world" else [])
        if run.rc != 0:
            raise SystemExit(f"{name} at N = {n} failed:\n{run.stderr[-3000:]}")
        wall = run.seconds
        images = images_of(name, sizes, stage_a_splits)
        rows.append({"n": n, "stage": name, "seconds": round(wall, 1), "images": images,
                     "s_per_image": wall / images if images else None, "peak_mib": run.peak_mib})
        print(f"N={n:6d} {name:20s} {wall:8.1f} s  peak {rows[-1]['peak_mib']:8.0f} MiB", flush=True)
    return rows


def table(rows: list[dict], sizes: list[int]) -> str:
    lo, hi = min(sizes), max(sizes)
    head = " | ".join(f"N={n}: s (s/img), peak MiB" for n in sizes)
    lines = [f"| stage | {head} | time per image {hi}/{lo} | peak {hi}/{lo} |", "|---" * (len(sizes) + 3) + "|"]
    for stage in ORDER:
        by_n = {r["n"]: r for r in rows if r["stage"] == stage}
        if not by_n:
            continue
        cells = []
        for n in sizes:
            r = by_n.get(n)
            cells.append("" if r is None else f"{r['seconds']:.1f}" + (f" ({r['s_per_image'] * 1000:.1f} ms)" if r["s_per_image"] else "")
                         + f", {r['peak_mib']:.0f}")
        a, b = by_n.get(lo), by_n.get(hi)
        time_ratio = (f"{b['s_per_image'] / a['s_per_image']:.2f}" if a and b and a["s_per_image"] else
                      f"{b['seconds'] / a['seconds']:.2f} (fixed work)" if a and b else "")
        peak_ratio = f"{b['peak_mib'] / a['peak_mib']:.2f}" if a and b else ""
        lines.append(f"| {stage} | {' | '.join(cells)} | {time_ratio} | {peak_ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2500,10000,20000", help="world sizes, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("/tmp/diclip-scale"))
    ap.add_argument("--stages", default=",".join(ORDER), help="the stages to run (their inputs must be there)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep every size's artifacts")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = [s for s in stages if s not in ORDER]
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {unknown}; stages: {', '.join(ORDER)}")
    from pipeline.measure import artifact_bytes

    rows: list[dict] = []
    disk: dict[int, dict[str, int]] = {}
    for n in sizes:
        rows += run_size(n, args.out, stages, args.seed)
        disk[n] = artifact_bytes(args.out / str(n))
        (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
        (args.out / "disk.json").write_text(json.dumps(disk, indent=1))
        print(f"N={n:6d} disk: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in disk[n].items()), flush=True)
        if not args.keep:
            for big in ("shapes", "diffusion.zarr", "cams.zarr", "cams_round2.zarr", "tsa_features.zarr"):
                subprocess.run(["rm", "-rf", str(args.out / str(n) / "artifacts" / big)], check=False)
    print(table(rows, sizes))


if __name__ == "__main__":
    main()
