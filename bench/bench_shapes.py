"""Time shapes-world generation (rendering and writing files) into a temporary directory.

    python bench/bench_shapes.py --n 10000 --workers 2 --size 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.data.shapes import ShapesConfig, generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images to generate")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    args = parser.parse_args()

    config = ShapesConfig(image_size=args.size)
    with tempfile.TemporaryDirectory(prefix="bench_shapes_") as tmp:
        root = Path(tmp) / "world"
        start = time.perf_counter()
        generate_dataset(root, splits={"train": args.n}, seed=args.seed, config=config, workers=args.workers,
                         progress=args.progress)
        seconds = time.perf_counter() - start
        megabytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    print(f"{args.n} images at {args.size} px, {args.workers} worker(s): {seconds:.1f} s total, "
          f"{args.n / seconds:.0f} images/s, {megabytes:.1f} MiB written")


if __name__ == "__main__":
    main()
