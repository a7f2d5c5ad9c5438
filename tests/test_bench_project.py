"""bench/project.py: the per-unit costs it fits from fullsize runs, and the projection it makes of them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project():
    spec = importlib.util.spec_from_file_location("_bench_project", ROOT / "bench" / "project.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fit_recovers_a_planted_fixed_part_and_costs_and_names_what_never_varied(project):
    points = [({"a": a, "b": b, "c": 3}, 7 + 2 * a + 0.5 * b) for a, b in ((1, 1), (4, 1), (1, 9), (6, 5))]
    fixed, cost, still = project.fit(points)
    assert fixed == pytest.approx(7 + 0.0 * 3) and cost == pytest.approx({"a": 2, "b": 0.5}) and still == ["c"]


def run_json(tmp_path: Path, name: str, train: int, val: int, crops_iterations: int, per_image: float) -> Path:
    stages = [{"stage": "cams", "seconds": 10 + per_image * (train + val), "images": train + val, "peak_mib": 900},
              {"stage": "train", "seconds": 5 + 0.25 * crops_iterations * 4, "images": crops_iterations * 4,
               "peak_mib": 1200}]
    run = {"preset": "voc", "device": "cpu", "counts": {"train": train, "val": val},
           "work": {"tsa_steps": 1, "adapt_iterations": 4, "train_iterations": crops_iterations, "train_batch": 4},
           "stages": stages, "disk_bytes": {"cams.zarr": 1000 + 2048 * (train + val), "segmenter": 5 * 2**20}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(run))
    return path


def test_the_projection_applies_the_fitted_costs_to_the_full_datasets_and_the_presets_counts(project, tmp_path, capsys):
    small, large = run_json(tmp_path, "small", 4, 2, 4, 3.0), run_json(tmp_path, "large", 16, 8, 16, 3.0)
    project.main([str(small), str(large)])
    out = capsys.readouterr().out
    voc, coco = 10_582 + 1_449, 82_783 + 40_504
    cams = next(line for line in out.splitlines() if line.startswith("| cams |"))
    assert f"| {(10 + 3 * voc) / 3600:,.1f} h | {(10 + 3 * coco) / 3600:,.1f} h |" in cams
    train = next(line for line in out.splitlines() if line.startswith("| train |"))
    voc_crops, coco_crops = 20_000 * 4, 100_000 * 4  # DiCLIP's iterations x batch 4 (the presets)
    assert f"| {(5 + 0.25 * voc_crops) / 3600:,.1f} h | {(5 + 0.25 * coco_crops) / 3600:,.1f} h |" in train
    disk = next(line for line in out.splitlines() if line.startswith("| `cams.zarr`"))
    assert "2.0 KiB" in disk and f"| {(1000 + 2048 * voc) / 2**20:,.1f} MiB | {(1000 + 2048 * coco) / 2**20:,.1f} MiB |" in disk
    assert "| `segmenter` | fixed | 5.0 MiB | - | 5.0 MiB | 5.0 MiB |" in out


def test_runs_of_different_presets_are_refused(project, tmp_path):
    small = run_json(tmp_path, "small", 4, 2, 4, 3.0)
    other = json.loads(small.read_text()) | {"preset": "coco"}
    (tmp_path / "coco.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="one preset and one device"):
        project.main([str(small), str(tmp_path / "coco.json")])
