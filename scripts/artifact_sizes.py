"""Files and bytes of every artifact in the workspace, and per 1,000 images for the per-image ones: what a
DVC remote stores and how many objects a push or pull moves (its time grows with the object count).

    python scripts/artifact_sizes.py            # a markdown table of ./artifacts

A per-image zarr store counts per 1,000 of its own images (a store over the eval split holds only
those); a folder of per-image PNGs likewise. Other artifacts are listed per 1,000 images of the index.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import artifacts  # noqa: E402


def files_of(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


def images_in(path: Path, files: list[Path], index_images: int) -> tuple[int, str]:
    """(images the artifact covers, kind)."""
    stores = [p.parent for p in files if p.name == "zarr.json" and "n_images" in json.loads(p.read_text()).get("attributes", {})]
    if stores:
        return sum(json.loads((s / "zarr.json").read_text())["attributes"]["n_images"] for s in stores), "per-image store"
    pngs = [p for p in files if p.suffix == ".png"]
    if len(pngs) > 100:
        return len(pngs), "per-image PNGs"
    return index_images, "whole-run"


def main() -> None:
    base = ROOT
    index = json.loads((base / artifacts.INDEX.path / "index.json").read_text())
    index_images = sum(index["splits"].values())
    print(f"index: {index_images} images\n")
    print("| artifact | kind | files | bytes | images | files per 1,000 images | bytes per image |")
    print("|---|---|---|---|---|---|---|")
    for artifact in artifacts.ALL:
        path = base / artifact.path
        if not path.exists():
            continue
        files = files_of(path)
        size = sum(p.stat().st_size for p in files)
        images, kind = images_in(path, files, index_images)
        if not artifact.tracked:
            kind += ", not pushed"
        per = f"{1000 * len(files) / images:.1f}" if images else "-"
        each = f"{size / images / 1024:.1f} KiB" if images else "-"
        print(f"| `{artifact.path}` | {kind} | {len(files)} | {size / 2**20:.2f} MiB | {images} | {per} | {each} |")


if __name__ == "__main__":
    main()
