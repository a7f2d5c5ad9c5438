"""Benchmark what MALLOC_TRIM_THRESHOLD_=65536 (dask's nanny default) costs Stage A's per-image work on the CPU.

    python bench/bench_malloc_trim.py --recipe acr                 # tiny SD, 256 px, 12 images, 2 pairs
    python bench/bench_malloc_trim.py --recipe diclip --images 12 --repeats 3 --out bench/malloc.json

Setting M_TRIM_THRESHOLD (the env var does) turns off glibc's adaptive mmap threshold: every large
tensor is then mmapped, returned to the kernel when freed, and faulted in (zero-filled) again on
the next allocation, so a torch worker spends much of its time in the kernel. The project's
LocalCluster no longer sets it (pipeline/runner.py, dask_client); this bench shows the ratio.

Workload (each run a fresh process, torch/OMP/MKL threads 1): the shipped tiny SD
(pipeline/models/weights/diclip-tiny-sd, fp32, CPU) and the stage's per-image function
(pipeline.diffusion.plan.plan(...).maps(pipe, recipe=...), params from params.yaml's
diffusion_attention section) on --images synthetic 64x64 uint8 images (seeded numpy), after one
warm-up image. --recipe diclip runs at params.yaml's image_size, acr at 256 (latent 64: the
aggregation allocates large attention blocks; where the effect was measured); --image-size overrides.
Each run's JSON records the image size, layers and grid it used.
The two environments (with the variable set to 65536 / with it removed) alternate for --repeats pairs.

Prints per run: wall seconds, user and system CPU seconds and minor page faults, both for the image
loop alone (measured in the child) and for the whole process (the parent's RUSAGE_CHILDREN deltas:
import, model load, loop); then per side the loop's median per-image wall, user and system time,
kernel share of CPU and minor faults, and the ratios with / without (of the medians, and per pair)
of wall, system time and minor faults ("> x" where the side without is below 10 ms / 1 fault).
--out writes everything as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "pipeline/models/weights/diclip-tiny-sd"
SIZES = {"diclip": None, "acr": 256}  # None: params.yaml's image_size
TRIM = "65536"  # distributed's nanny default (distributed.nanny.pre-spawn-environ)


def _usage(who: int) -> dict:
    u = resource.getrusage(who)
    return {"user_s": u.ru_utime, "sys_s": u.ru_stime, "minor_faults": u.ru_minflt, "major_faults": u.ru_majflt}


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def worker(recipe: str, image_size: int | None, images: int, seed: int) -> dict:
    """Run the stage's per-image function on `images` synthetic images; the loop's own usage."""
    import numpy as np
    import torch

    from pipeline.models import load_stable_diffusion
    from pipeline.params import load_params
    from pipeline.diffusion.plan import plan

    torch.set_num_threads(1)
    cfg = load_params(ROOT / "params.yaml", sections=("diffusion_attention",)).diffusion_attention
    if image_size is not None:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    p = plan(cfg, MODEL)
    maps = p.maps(load_stable_diffusion(MODEL, device="cpu", precision="fp32"), recipe=recipe)
    rng = np.random.default_rng(seed)
    batch = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(images + 1)]
    maps(batch[0], "warmup")
    before, start = _usage(resource.RUSAGE_SELF), time.perf_counter()
    for i, image in enumerate(batch[1:]):
        maps(image, f"img{i}")
    loop = {"wall_s": time.perf_counter() - start, **_delta(_usage(resource.RUSAGE_SELF), before)}
    used = {"image_size": p.config.image_size, "timestep": p.config.timestep, "grid": p.grid,
            "diclip_layer": p.config.diclip.layer, "transition_layer": p.config.transition.layer if p.transition_k else None}
    return {"recipe": recipe, **used, "images": images,
            "trim_env": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "loop": loop}


def run_once(trim: bool, args: argparse.Namespace) -> dict:
    """One fresh child with MALLOC_TRIM_THRESHOLD_=65536 set (trim) or removed; its loop and whole-process usage."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if trim:
        env["MALLOC_TRIM_THRESHOLD_"] = TRIM
    cmd = [sys.executable, __file__, "--worker", "--recipe", args.recipe, "--images", str(args.images),
           "--seed", str(args.seed)] + (["--image-size", str(args.image_size)] if args.image_size else [])
    before, start = _usage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"run with trim={trim} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process"] = {"wall_s": wall, **_delta(_usage(resource.RUSAGE_CHILDREN), before)}
    return out


FLOOR = {"wall_s": 0.01, "sys_s": 0.01, "minor_faults": 1}  # below this the "without" side is noise (rusage ticks)


def _ratio(on: float, off: float, key: str) -> float | None:
    """on / off, or None when off is below the measurable floor (printed as "> on / floor")."""
    return on / off if off >= FLOOR[key] else None


def _ratios(runs: list[dict], part: str) -> dict:
    """with / without for wall, system time and minor faults: of the medians of each side, and per pair."""
    on = [r[part] for r in runs if r["trim_env"] == TRIM]
    off = [r[part] for r in runs if r["trim_env"] is None]
    out = {}
    for key in FLOOR:
        med_on, med_off = statistics.median(x[key] for x in on), statistics.median(x[key] for x in off)
        out[key] = {"ratio": _ratio(med_on, med_off, key), "median_with": med_on, "median_without": med_off,
                    "per_pair": [_ratio(a[key], b[key], key) for a, b in zip(on, off)]}
    return out


def _show(value: float | None, on: float, key: str) -> str:
    return f"{value:.2f}" if value is not None else f">{on / FLOOR[key]:.0f}"


def summary(results: dict) -> list[str]:
    """The printed summary: per-image loop figures of each side, then the with / without ratios."""
    n = results["images"]
    lines = [f"{results['recipe']} at {results['image_size']} px, {n} images per run, {results['repeats']} pair(s)"]
    for label, env in ((f"with MALLOC_TRIM_THRESHOLD_={TRIM}", TRIM), ("without", None)):
        loops = [r["loop"] for r in results["runs"] if r["trim_env"] == env]
        med = {k: statistics.median(x[k] for x in loops) for k in ("wall_s", "user_s", "sys_s", "minor_faults")}
        share = med["sys_s"] / max(med["user_s"] + med["sys_s"], 1e-9)
        lines.append(f"  {label:32s} per image: wall {1e3 * med['wall_s'] / n:.0f} ms, user {1e3 * med['user_s'] / n:.0f} ms, "
                     f"sys {1e3 * med['sys_s'] / n:.0f} ms ({100 * share:.0f}% of CPU in the kernel), "
                     f"{med['minor_faults'] / n:.0f} minor faults")
    lines.append("  with / without (ratio of medians; per pair):")
    for part, ratios in results["ratios"].items():
        lines.append(f"    {part:7s} " + "   ".join(
            f"{k} {_show(v['ratio'], v['median_with'], k)} ("
            + ", ".join(_show(x, v["median_with"], k) for x in v["per_pair"]) + ")" for k, v in ratios.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", choices=sorted(SIZES), default="acr")
    ap.add_argument("--image-size", type=int, default=None, help="px fed to the VAE (default: diclip params.yaml's image_size, acr 256)")
    ap.add_argument("--images", type=int, default=12, help="images per run (after one warm-up image)")
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (with, without), alternating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.image_size is None:
        args.image_size = SIZES[args.recipe]
    if args.worker:
        print(json.dumps(worker(args.recipe, args.image_size, args.images, args.seed)))
        return
    runs, start = [], time.perf_counter()
    for pair in range(args.repeats):
        for trim in (True, False):
            r = run_once(trim, args)
            runs.append(r)
            label = f"MALLOC_TRIM_THRESHOLD_={TRIM}" if trim else "unset"
            print(f"pair {pair} {label:28s} " + "  ".join(
                f"{part}: wall {r[part]['wall_s']:.2f} s user {r[part]['user_s']:.2f} s sys {r[part]['sys_s']:.2f} s "
                f"minflt {r[part]['minor_faults']}" for part in ("loop", "process")), flush=True)
    results = {"recipe": args.recipe, "image_size": runs[0]["image_size"], "images": args.images,
               "repeats": args.repeats, "runs": runs,
               "ratios": {part: _ratios(runs, part) for part in ("loop", "process")},
               "wall_s": time.perf_counter() - start}
    print("\n" + "\n".join(summary(results)))
    print(f"wall time {results['wall_s']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
