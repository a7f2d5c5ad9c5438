"""Time shapes-world generation (rendering and writing files) with 1 and 2 runner workers, in one run.

    python bench/bench_shapes.py --n 10000 --size 64

Prints each wall time (the LocalCluster start included, as a stage pays it) and the ratio 2 workers /
1 worker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.data.shapes import generate_dataset
from pipeline.data.config import ShapesConfig
from pipeline.params import RunnerParams
from pipeline.runner import Runner


def timed(n: int, config: ShapesConfig, seed: int, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="bench_shapes_") as tmp:
        root = Path(tmp) / "world"
        start = time.perf_counter()
        with Runner(RunnerParams(n_workers=workers)) as runner:
            generate_dataset(root, splits={"train": n}, seed=seed, config=config, map_chunks=runner.map)
        seconds = time.perf_counter() - start
        megabytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    return seconds, megabytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images to generate")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = ShapesConfig(image_size=args.size)
    times = {}
    for workers in (1, 2):
        seconds, megabytes = timed(args.n, config, args.seed, workers)
        times[workers] = seconds
        print(f"{args.n} images at {args.size} px, {workers} worker(s): {seconds:.1f} s, "
              f"{args.n / seconds:.0f} images/s, {megabytes:.1f} MiB written")
    print(f"ratio 2 workers / 1 worker: {times[2] / times[1]:.2f}")


if __name__ == "__main__":
    main()
