"""The dataset presets at full size, through bench/fullsize.py (and bench/gpu_check.sh, which runs it).

A VOC- or COCO-layout folder of real photos (scikit-learn's sample photographs cropped and resized to
VOC's image sizes, masks of three classes drawn over them), SD 2.1-base built from its configs with seeded
random weights, ViT-B/16 from open_clip's config with random weights, and the preset's values: stage A at
320 px (g = 20, R's cluster rows over 400 patches, P on 40 x 40 with 64 entries per row), the TSA cache
drawn at 384 px with guidance 10, CLIP's 512-d keys, cams at 320 px with VCE, RAR and the cache, the
adapter, the segmenter at crop 320, evaluation at 4 scales with flips. Only counts are reduced, each named
in bench/fullsize.py and bench/gpu_check.sh (photos, images per class, generation steps, KMeans centres,
iterations). Each run is compared with a second run of its first val images in a fresh folder and fresh
processes, which must agree exactly.

- slow (CI's second step, about 4 minutes): `bash bench/gpu_check.sh --device cpu`, the GPU check's CPU
  mode, on 2 of VOC's classes (the cost is one 384 px generation per class) and 3 photos;
- fullsize (on demand: `bash scripts/test.sh -m fullsize`): every stage with VOC's 20 classes (13
  minutes on 2 cores) and COCO's 80 classes (41 minutes; one key per class, as one image is drawn per
  class), which CI's 45 minutes cannot hold beside the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ALL_STAGES = "prepare,diffusion_attention,tsa_cache,cams,eval_cams,tsa_adapt,train,evaluate,report"
GPU_CHECK_STAGES = "prepare,diffusion_attention,tsa_cache,cams,train,evaluate"


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=6000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(proc.stdout)  # the per-stage table (shown with -rP, and on failure)
    return proc.stdout


def check_run(folder: Path, stages: str, n_classes: int, background_keys: int, drawn: tuple[int, ...]) -> dict:
    """Every stage's outputs at the preset's sizes (one key per class: one image drawn per class); returns the
    run's fullsize.json."""
    import h5py
    from PIL import Image

    from pipeline.store.dataset_index import DatasetIndex
    from pipeline.store.image_store import ImageStore

    result = json.loads((folder / "fullsize.json").read_text())
    assert [r["stage"] for r in result["stages"]] == stages.split(",")
    assert all(r["seconds"] > 0 and r["peak_mib"] > 50 for r in result["stages"])
    # the same images computed again in a fresh folder and processes: identical R, P and CAMs
    assert result["max_abs_difference"] == {"rows": 0.0, "transition_values": 0.0, "cams": 0.0}

    art = folder / "artifacts"
    index = DatasetIndex.load(art / "index")
    assert len(index.class_names) == n_classes
    val = index.ids(index.splits[-1])
    # stage A at the preset's geometry: clusters on g = 20, 16 cluster rows over 400 patches, P on 40 x 40
    stage_a = ImageStore.open(art / "diffusion.zarr", stage="diffusion_attention")
    shapes = {s.name: s.shape for s in stage_a.specs}
    assert (shapes["clusters"], shapes["rows"], shapes["transition_values"]) == ((20, 20), (16, 400), (1600, 64))
    for row in range(len(stage_a.ids())):
        k = int(stage_a.read("k", row))
        assert 1 <= k <= 16 and stage_a.read("clusters", row).max() < k
        rows = stage_a.read("rows", row).astype(np.float64)[:k]
        assert np.isfinite(rows).all() and rows.min() >= 0 and rows.sum(1).max() <= 1 + 1e-3
        # P's kept top-64 entries per row, renormalised (the kept mass is stored beside them)
        np.testing.assert_allclose(stage_a.read("transition_values", row).astype(np.float64).sum(1), 1, atol=2e-3)
        index_p = stage_a.read("transition_index", row)
        assert index_p.min() >= 0 and index_p.max() < 1600
    # the TSA cache: CLIP ViT-B/16's 512-d keys, one per class (one image drawn), the background's KMeans centres
    with h5py.File(art / "tsa_cache.h5") as cache:
        keys, values, key_class = cache["keys"][:], cache["values"][:], cache["key_class"][:]
    assert keys.shape[1] == 512 and values.shape == (len(keys), n_classes + 1) and np.isfinite(keys).all()
    assert (np.bincount(key_class[key_class >= 0], minlength=n_classes) == 1).all()
    assert (key_class == -1).sum() == background_keys
    np.testing.assert_array_equal(values.argmax(1), key_class + 1)
    # CAMs on P's 40 x 40 grid, zero for absent classes; labels at each image's size
    cams = ImageStore.open(art / "cams.zarr", stage="cams")
    assert {s.name: (s.shape, s.dtype) for s in cams.specs} == {"cams": ((n_classes, 40, 40), "float16")}
    images = index.images(list(index.splits))
    for row, image_id in enumerate(cams.ids()):
        split = next(s for s in index.splits if image_id in index.ids(s))
        present = index.labels(split)[index.ids(split).index(image_id)].astype(bool)
        assert set(np.flatnonzero(present) + 1) <= set(drawn) | {0}
        stored = cams.read("cams", row)
        assert (stored[~present] == 0).all() and 0 <= stored.min() and stored.max() <= 1
        label = np.asarray(Image.open(art / "pseudo_labels" / f"{image_id}.png"))
        assert label.shape == images.load_mask(image_id).shape
        assert set(np.unique(label)) <= {0, 255, *(np.flatnonzero(present) + 1)}
    # the segmenter: its classes, and an evaluation that counted every labelled val pixel once
    config = json.loads((art / "segmenter" / "config.json").read_text())
    assert (config["num_classes"], len(config["class_names"]), config["crop"]) == (n_classes, n_classes, 320)
    assert (config["clip_model"], config["in_dim"], config["patch"]) == ("ViT-B-16-quickgelu", 768, 16)
    evaluation = ImageStore.open(art / "evaluation.zarr", stage="evaluate")
    assert sorted(evaluation.ids()) == sorted(val)
    for row, image_id in enumerate(evaluation.ids()):
        mask = images.load_mask(image_id)
        confusion = evaluation.read("confusion", row)
        assert confusion.shape == (n_classes + 1, n_classes + 1)
        assert confusion.sum() == (mask != 255).sum()
        np.testing.assert_array_equal(confusion.sum(1), np.bincount(mask[mask != 255], minlength=n_classes + 1))
    assert 0 <= json.loads((art / "metrics" / "seg.json").read_text())["miou"] <= 1
    if "report" in stages:
        assert (art / "report" / "index.html").stat().st_size > 0
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_gpu_check_on_the_cpu_runs_the_voc_preset_at_full_size_and_agrees_with_a_second_run(tmp_path):
    out = run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--out", str(tmp_path)])
    result = check_run(tmp_path / "voc", GPU_CHECK_STAGES, n_classes=2, background_keys=1, drawn=(1, 2))
    assert result["device"] == "cpu" and "cpu vs cpu: largest |difference| of cams: 0\n" in out


@pytest.mark.fullsize
@pytest.mark.timeout(6000)
@pytest.mark.parametrize("preset, n_classes, drawn", [("voc", 20, (4, 15, 16)), ("coco", 80, (1, 9, 59))])
def test_the_preset_runs_every_stage_at_full_size_with_all_its_classes(tmp_path, preset, n_classes, drawn):
    run([sys.executable, str(ROOT / "bench" / "fullsize.py"), "--preset", preset, "--out", str(tmp_path), "--stages",
         ALL_STAGES, "--background-keys", "8", "--tsa-steps", "1", "--compare-device", "cpu", "--compare-images", "2"])
    check_run(tmp_path / preset, ALL_STAGES, n_classes=n_classes, background_keys=8, drawn=drawn)
