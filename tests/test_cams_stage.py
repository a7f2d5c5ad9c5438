"""Stage C on a small shapes world (shipped tiny CLIP, untrained tiny SD's stage A): the per-image path's
invariants (R = 0 equals VCE off, stored CAMs give the stored labels, planted inputs), the store and
pseudo-label layout, eval_cams's metric recomputed independently, and resume after kill -9.

Also a script (`python -m tests.test_cams_stage OUT INDEX DIFFUSION`): runs the cams stage in process,
for the kill test.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.params import parse_params
from pipeline.skeleton import run_stage
from stages import cams as stage
from stages import eval_cams
from tests.kill_run import run_killed_after

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_VAL = 8, 6
NORM = ((128.0,) * 3, (64.0,) * 3)  # a planted CLIP input normalisation (mean, std on the 0-255 scale)
CAMS = {"clip_size": 64, "normalise": "model", "template": "a photo of a {}.", "prompt_names_file": None,
        "background_words_file": "pipeline/data/words/shapes_background.txt", "shard_images": 4, "cache_weight": 0.0}


def params(runner=None, **cams):
    return parse_params({"cams": {**CAMS, **cams}, "models": {"device": "cpu"}, "runner": runner or {"in_process": True}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shapes world, its index, and stage A on it with the untrained tiny SD."""
    from pipeline.data.shapes import generate_dataset
    from pipeline.data.config import ShapesConfig
    from pipeline.models import build_tiny_stable_diffusion, load_tiny_sd_config
    from stages import diffusion_attention, prepare
    from tests.test_diffusion_stage import TINY

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    generate_dataset(root / "shapes", splits={"train": N_TRAIN, "val": N_VAL}, seed=5, config=ShapesConfig())
    run_stage(prepare.SPEC, prepare.body, paths={"index": root / "index"},
              params=parse_params({"dataset": {"root": str(root / "shapes")}, "runner": {"in_process": True}}))
    build_tiny_stable_diffusion(load_tiny_sd_config(), root / "tok", seed=0).save_pretrained(root / "sd")
    run_stage(diffusion_attention.SPEC, diffusion_attention.body,
              params=parse_params({"diffusion_attention": {**TINY, "eval_images": 0}, "runner": {"in_process": True},
                                   "models": {"sd": {"model": str(root / "sd")}, "device": "cpu"}}),
              paths={"index": root / "index", "diffusion": root / "diffusion.zarr", "diffusion_metric": root / "d.json",
                     "diffusion_detail": root / "d_detail.json"})
    return {"root": root, "index": root / "index", "diffusion": root / "diffusion.zarr"}


@pytest.fixture(scope="module")
def tiny(world):
    """The shipped tiny CLIP, the world's index and the class prompts' text features."""
    from pipeline.cam.text import encode_prompts
    from pipeline.models.clip import load_shipped_clip
    from pipeline.store.dataset_index import DatasetIndex

    clip = load_shipped_clip()
    index = DatasetIndex.load(world["index"])
    text = encode_prompts(clip.model, clip.tokenizer, [f"a photo of a {n}." for n in index.class_names])
    return clip, index, text


def run(world, out: Path, runner=None, **cams):
    return run_stage(stage.SPEC, stage.body, params=params(runner, **cams),
                     paths={"index": world["index"], "diffusion": world["diffusion"], "cams": out / "cams.zarr",
                            "pseudo_labels": out / "pseudo_labels"})


@pytest.fixture(scope="module")
def finished(world):
    out = world["root"] / "ref"
    _, summary = run(world, out, bg_threshold=0.6)
    return out, summary


def test_store_labels_and_metric(world, finished):
    from pipeline.cam.labels import label_from_cams
    from tests.numpy_scores import numpy_confusion, numpy_miou
    from pipeline.store.dataset_index import DatasetIndex
    from pipeline.store.image_store import ImageStore

    out, summary = finished
    assert (summary.computed, summary.failed) == (N_TRAIN + N_VAL, 0)
    index = DatasetIndex.load(world["index"])
    store = ImageStore.open(out / "cams.zarr", stage="cams")
    C = len(index.class_names)
    assert store.ids() == index.ids("train") + index.ids("val")
    assert {s.name: (s.shape, s.dtype) for s in store.specs} == {"cams": ((C, 16, 16), "float16")}  # P's 16x16 grid
    assert store.attrs["prompts"][:C] == [f"a photo of a {n}." for n in index.class_names]
    images = index.images(["train", "val"])
    [labels] = store.files
    K = C + 1
    conf = np.zeros((K, K), dtype=np.int64)
    present_of = {i: row.astype(bool) for s in ("train", "val") for i, row in zip(index.ids(s), index.labels(s))}
    for row, image_id in enumerate(store.ids()):
        cams = store.read("cams", row)
        present = present_of[image_id]
        absent = ~present
        assert (cams[absent] == 0).all() and cams.min() >= 0 and cams.max() <= 1
        # min-max per present class (eps 1e-6); a class whose CAM found no box is all zero (ExCEL)
        assert all(cams[c].max() > 0.99 or not cams[c].any() for c in np.flatnonzero(present))
        label = labels.read(image_id)
        mask = images.load_mask(image_id)
        assert label.shape == mask.shape
        np.testing.assert_array_equal(label, label_from_cams(cams, present, mask.shape, 0.6))
        assert set(np.unique(label)) <= {0, *(np.flatnonzero(present) + 1)}
        if image_id.startswith("train"):
            conf += numpy_confusion(label, mask, K)
    (metric, detail), _ = run_stage(eval_cams.SPEC, eval_cams.body, params=params(bg_threshold=0.6),
                                    paths={"index": world["index"], "cams": out / "cams.zarr",
                                           "pseudo_labels": out / "pseudo_labels", "cams_metric": out / "cams.json",
                                           "cams_detail": out / "cams_detail.json"})
    assert detail["split"] == "train" and detail["images"] == N_TRAIN
    assert metric["miou"] == pytest.approx(numpy_miou(conf))  # an independent confusion, not torchmetrics
    assert detail["background"]["score"] == 0.6 and detail["background"]["chosen_on"] == "val"
    assert set(detail["background"]["sweep_miou_on_chosen_split"]) == {"1 - max", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"}
    assert json.loads((out / "cams.json").read_text()) == metric == {"miou": metric["miou"],
                                                                      "pixel_accuracy": metric["pixel_accuracy"]}
    assert json.loads((out / "cams_detail.json").read_text()) == detail


def test_zero_correlation_equals_vce_off_and_the_stored_r_changes_the_cams(world, tiny):
    from pipeline.cam.config import CamConfig
    from pipeline.cam.pseudo_labels import ImageCams
    from pipeline.store.diffusion_maps import DiffusionMaps

    clip, index, text = tiny
    image_id = index.ids("train")[0]
    image = index.images(["train"]).load_image(image_id)
    present = index.labels("train")[0].astype(bool)
    cfg = dict(clip_size=64, refine=False, rar=False)
    r = DiffusionMaps.open(world["diffusion"]).correlation(image_id)
    on = ImageCams(clip.model.visual, text, len(index.class_names), CamConfig(**cfg, vce=True), NORM)
    off = ImageCams(clip.model.visual, text, len(index.class_names), CamConfig(**cfg, vce=False), NORM)
    np.testing.assert_array_equal(on(image, present, np.zeros_like(r), None)["cams"], off(image, present, r, None)["cams"])
    assert not np.array_equal(on(image, present, r, None)["cams"], off(image, present, r, None)["cams"])


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 1.5)])
def test_flip_averaged_cams_of_a_mirrored_image_are_the_mirrored_cams(world, tiny, scales):
    from pipeline.cam.config import CamConfig
    from pipeline.cam.pseudo_labels import ImageCams
    from pipeline.store.diffusion_maps import DiffusionMaps

    clip, index, text = tiny
    image_id = index.ids("train")[1]
    image = index.images(["train"]).load_image(image_id)
    present = index.labels("train")[1].astype(bool)
    r = DiffusionMaps.open(world["diffusion"]).correlation(image_id)
    perm = np.arange(64).reshape(8, 8)[:, ::-1].reshape(-1)
    fn = ImageCams(clip.model.visual, text, len(index.class_names),
                   CamConfig(clip_size=64, refine=False, rar=False, scales=scales, flip=True), NORM)
    cams = fn(image, present, r, None)["cams"].astype(np.float32)
    mirrored = fn(np.ascontiguousarray(image[:, ::-1]), present, r[perm][:, perm], None)["cams"].astype(np.float32)
    np.testing.assert_allclose(mirrored, cams[:, :, ::-1], atol=2e-3)  # fp16 storage
    plain = ImageCams(clip.model.visual, text, len(index.class_names), CamConfig(clip_size=64, refine=False, rar=False),
                      NORM)
    assert not np.allclose(plain(image, present, r, None)["cams"].astype(np.float32), cams, atol=2e-3)


def test_an_image_without_classes_gets_zero_cams_on_the_output_grid(world, tiny):
    from pipeline.cam.config import CamConfig
    from pipeline.cam.pseudo_labels import ImageCams
    from pipeline.store.diffusion_maps import DiffusionMaps

    clip, index, text = tiny
    image_id = index.ids("train")[0]
    maps = DiffusionMaps.open(world["diffusion"])
    fn = ImageCams(clip.model.visual, text, 7, CamConfig(clip_size=64), NORM)
    out = fn(index.images(["train"]).load_image(image_id), np.zeros(7, bool), maps.correlation(image_id),
             maps.transition(image_id))
    assert out["cams"].shape == (7, 16, 16) and not out["cams"].any() and not out["label"].any()


def test_labels_from_planted_cams():
    from pipeline.cam.labels import label_from_cams

    cams = np.zeros((3, 4, 4), dtype=np.float16)
    cams[1, :2, :2] = 1.0  # class 1 in the top-left quarter
    cams[2, 2:, 2:] = 1.0  # class 2 (absent) bottom-right
    present = np.array([False, True, False])
    label = label_from_cams(cams, present, (8, 8), bg_threshold=0.5)
    assert set(np.unique(label)) == {0, 2}  # class 1 -> label 2; absent class 2 never appears
    assert (label[:3, :3] == 2).all() and (label[5:, :] == 0).all()
    assert (label_from_cams(cams, np.zeros(3, bool), (8, 8)) == 0).all()


def test_random_walk_keeps_mass_inside_planted_blocks():
    from pipeline.cam.rar import random_walk

    side = 4
    block = (torch.arange(side * side) % side) < side // 2  # left / right halves of a 4x4 grid
    p = (block[:, None] == block[None, :]).float()
    p = p / p.sum(1, keepdim=True)  # P walks uniformly inside each half
    cam = torch.zeros(1, side * side)
    cam[0, 0] = 1.0  # one lit patch in the left half
    out = random_walk(cam, side, p, iterations=3)
    torch.testing.assert_close(out.sum(1), torch.ones(1))
    assert out[0, ~block].abs().max() < 1e-6 and out[0, block].min() > 0  # spread over its half only
    torch.testing.assert_close(random_walk(cam, side, torch.eye(side * side), iterations=5), cam)


def test_resume_after_kill_computes_only_missing_images(world, finished, tmp_path):
    from pipeline.store.image_store import ImageStore

    ref, _ = finished
    run_killed_after(["-m", "tests.test_cams_stage", str(tmp_path), str(world["index"]), str(world["diffusion"])], images=5)
    store = ImageStore.open(tmp_path / "cams.zarr", require_complete=False)
    assert not store.attrs["complete"] and int(store.done().sum()) + sum(store.load_staged(i) is not None for i in range(store.n_images)) == 5
    _, resumed = run(world, tmp_path, runner={"n_workers": 2}, bg_threshold=0.6)
    assert (resumed.computed, resumed.reused) == (N_TRAIN + N_VAL - 5, 5)
    a, b = ImageStore.open(tmp_path / "cams.zarr"), ImageStore.open(ref / "cams.zarr")
    np.testing.assert_array_equal(a.read("cams"), b.read("cams"))
    for image_id in b.ids():
        assert (tmp_path / "pseudo_labels" / f"{image_id}.png").read_bytes() == (ref / "pseudo_labels" / f"{image_id}.png").read_bytes()


def test_a_prompt_names_file_of_the_wrong_length_is_refused(world, tmp_path):
    from pipeline.params import ParamsError

    names = tmp_path / "names.txt"
    names.write_text("disk\nbar\n")
    with pytest.raises(ParamsError, match=r"cams.prompt_names_file .*names.txt: 2 names for the dataset's 7 classes"):
        run(world, tmp_path / "out", prompt_names_file=str(names))
    assert not (tmp_path / "out").exists()


def test_a_wrong_input_is_refused_before_a_cluster_starts_or_torch_loads(world, tmp_path):
    """The stage starts its workers only once its inputs have opened: a wrong store is one quick message."""
    import subprocess

    code = (
        "import sys\nfrom pipeline.errors import UserError\nfrom pipeline.params import parse_params\n"
        "from pipeline.skeleton import run_stage\nfrom stages import cams as stage\n"
        f"params = parse_params({{'cams': {CAMS!r}, 'models': {{'device': 'cpu'}}, 'runner': {{'n_workers': 1}}}})\n"
        f"paths = {{'index': {str(world['index'])!r}, 'diffusion': {str(world['index'])!r}, "
        f"'cams': {str(tmp_path / 'c.zarr')!r}, 'pseudo_labels': {str(tmp_path / 'pl')!r}}}\n"
        "try:\n    run_stage(stage.SPEC, stage.body, params=params, paths=paths)\n"
        "except UserError as err:\n    print('REFUSED', err)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'open_clip', 'distributed') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert f"REFUSED {world['index']}: no store here" in proc.stdout, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert not (tmp_path / "c.zarr").exists()


if __name__ == "__main__":
    out, index, diffusion = (Path(a) for a in sys.argv[1:4])
    run_stage(stage.SPEC, stage.body, params=params(bg_threshold=0.6),
              paths={"index": index, "diffusion": diffusion, "cams": out / "cams.zarr", "pseudo_labels": out / "pseudo_labels"})


def test_cache_weight_zero_is_the_text_cam_and_a_planted_cache_is_fused_by_minmax(world, tiny):
    from pipeline.cam.config import CamConfig
    from pipeline.cam.pseudo_labels import ImageCams
    from pipeline.cam.text_cam import fuse_cache

    clip, index, text = tiny
    image = index.images(["train"]).load_image(index.ids("train")[0])
    present = np.ones(len(index.class_names), bool)
    cfg = CamConfig(clip_size=64, refine=False, rar=False, vce=False)
    weighted = lambda w: dataclasses.replace(cfg, cache_weight=w)  # noqa: E731
    C, g = len(index.class_names), 8
    planted = torch.zeros(1, C, g * g)
    planted[0, :, 5] = 1.0  # the cache votes for patch 5 for every class
    seen = []

    def cache(tokens):
        seen.append(tokens.shape)
        return planted.expand(tokens.shape[0], -1, -1)

    base = ImageCams(clip.model.visual, text, C, weighted(0.0), NORM)(image, present, None, None)["cams"]
    zero = ImageCams(clip.model.visual, text, C, weighted(0.0), NORM, cache=cache)(image, present, None, None)["cams"]
    np.testing.assert_array_equal(zero, base)
    assert not seen  # weight 0 never asks the cache
    half = ImageCams(clip.model.visual, text, C, weighted(0.5), NORM, cache=cache)(image, present, None, None)["cams"]
    assert seen == [(1, 1 + g * g, text.shape[1])]  # (flips, class token + patches, features)
    rank = (half.reshape(C, -1) > half.reshape(C, -1)[:, 5:6]).sum(1)
    assert (rank <= (base.reshape(C, -1) > base.reshape(C, -1)[:, 5:6]).sum(1)).all() and not np.array_equal(half, base)
    strong = ImageCams(clip.model.visual, text, C, weighted(1e4), NORM, cache=cache)(image, present, None, None)["cams"]
    np.testing.assert_allclose(strong.astype(np.float32).reshape(C, -1), planted[0].numpy(), atol=2e-3)  # minmax(w cache + text)
    torch.testing.assert_close(fuse_cache(torch.ones(2, 3), torch.rand(2, 3), 0.0), torch.ones(2, 3))


def test_a_batch_of_images_gives_each_images_own_result(world, tiny):
    from pipeline.cam.config import CamConfig
    from pipeline.cam.pseudo_labels import ImageCams
    from pipeline.store.diffusion_maps import DiffusionMaps

    clip, index, text = tiny
    ids = index.ids("train")[:3]
    images = [index.images(["train"]).load_image(i) for i in ids]
    presents = [row.astype(bool) for row in index.labels("train")[:3]]
    maps = DiffusionMaps.open(world["diffusion"])
    rs, ps = [maps.correlation(i) for i in ids], [maps.transition(i) for i in ids]
    fn = ImageCams(clip.model.visual, text, len(index.class_names), CamConfig(clip_size=64, flip=True, box_threshold=0.7),
                   NORM)
    together = fn.batch(images, presents, rs, ps)
    for n in range(3):
        alone = fn(images[n], presents[n], rs[n], ps[n])
        np.testing.assert_allclose(together[n]["cams"].astype(np.float32), alone["cams"].astype(np.float32), atol=2e-3)
        assert (together[n]["label"] == alone["label"]).mean() > 0.99


def test_par_snaps_a_blurred_cam_to_the_colour_edge_and_the_ignore_band_leaves_pixels_out():
    from pipeline.cam.labels import LabelRule

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, :16] = (220, 30, 30)  # red left half, blue right half
    image[:, 16:] = (30, 30, 220)
    cams = np.zeros((2, 32, 32), dtype=np.float16)
    cams[0, :, :20] = 1.0  # the object's CAM spills 4 columns past the colour edge
    present = np.array([True, False])
    plain = LabelRule(32, *NORM, bg_threshold=0.5, par_iterations=0, ignore_band=None)(cams, present, image)
    assert (plain[:, :19] == 1).all() and (plain[:, 21:] == 0).all()  # the spill is labelled object
    snapped = LabelRule(32, *NORM, bg_threshold=0.5, par_iterations=20, ignore_band=None)(cams, present, image)
    assert (snapped[:, :16] == 1).all() and (snapped[:, 16:] == 0).all()
    band = LabelRule(32, *NORM, bg_threshold=0.5, par_iterations=0, ignore_band=(0.2, 0.8))(cams, present, image)
    ramp = np.linspace(0, 1, 32, dtype=np.float32)
    ramped = LabelRule(32, *NORM, bg_threshold=0.1, par_iterations=0, ignore_band=(0.2, 0.8))(
        np.broadcast_to(ramp, (2, 32, 32)).astype(np.float16), present, image)
    assert (band != 255).all()  # a step CAM has no pixel inside the band
    assert ((ramped == 255) == ((ramp > 0.2) & (ramp <= 0.8))[None].repeat(32, 0)).mean() > 0.9
    assert set(np.unique(ramped)) == {0, 1, 255}


def test_batched_groups_are_fixed_by_position_and_reproduce_the_store(world, finished, tmp_path):
    from pipeline.store.image_store import ImageStore

    out, _ = finished
    run(world, tmp_path / "b3", bg_threshold=0.6, batch_images=3)
    run(world, tmp_path / "b3w", runner={"n_workers": 2, "threads_per_worker": 1}, bg_threshold=0.6, batch_images=3)
    a, b = ImageStore.open(tmp_path / "b3" / "cams.zarr"), ImageStore.open(tmp_path / "b3w" / "cams.zarr")
    ref = ImageStore.open(out / "cams.zarr")
    np.testing.assert_array_equal(a.read("cams"), b.read("cams"))  # same groups -> same bits on 1 or 2 workers
    np.testing.assert_allclose(a.read("cams").astype(np.float32), ref.read("cams").astype(np.float32), atol=2e-3)


def test_the_cams_stage_never_reads_a_mask(world, finished, tmp_path):
    """The masks are the ablation's oracle rows' and the metric's only: with every mask file gone, the
    stage (VCE and RAR on, stage A's R and P) writes the same CAMs and labels."""
    masks = world["root"] / "shapes" / "SegmentationClass"
    hidden = world["root"] / "shapes" / "masks_hidden"
    masks.rename(hidden)
    try:
        _, summary = run(world, tmp_path, bg_threshold=0.6)
    finally:
        hidden.rename(masks)
    from pipeline.store.image_store import ImageStore

    ref, _ = finished
    assert summary.computed == N_TRAIN + N_VAL
    np.testing.assert_array_equal(ImageStore.open(tmp_path / "cams.zarr").read("cams"), ImageStore.open(ref / "cams.zarr").read("cams"))
    for image_id in ImageStore.open(ref / "cams.zarr").ids():
        assert (tmp_path / "pseudo_labels" / f"{image_id}.png").read_bytes() == (ref / "pseudo_labels" / f"{image_id}.png").read_bytes()


def test_cams_without_vce_or_rar_read_nothing_of_stage_a_and_with_them_refuse_a_val_only_store(world, tmp_path):
    """The demo computes stage A on val only (`diffusion_attention.splits`): its CAMs read neither R nor P.
    With VCE and RAR off the CAMs do not depend on stage A, so the store made against the full stage A is
    reused whole against the val-only one; with VCE on, the val-only store is refused by name, before
    anything is written."""
    from pipeline.errors import UserError
    from stages import diffusion_attention
    from tests.test_diffusion_stage import TINY

    val_only = tmp_path / "val_only.zarr"
    run_stage(diffusion_attention.SPEC, diffusion_attention.body,
              params=parse_params({"diffusion_attention": {**TINY, "eval_images": 0, "splits": ["val"]},
                                   "runner": {"in_process": True},
                                   "models": {"sd": {"model": str(world["root"] / "sd")}, "device": "cpu"}}),
              paths={"index": world["index"], "diffusion": val_only, "diffusion_metric": tmp_path / "d.json",
                     "diffusion_detail": tmp_path / "d_detail.json"})

    def cams_from(diffusion: Path, out: Path, **cams):
        return run_stage(stage.SPEC, stage.body, params=params(**cams),
                         paths={"index": world["index"], "diffusion": diffusion, "cams": out / "cams.zarr",
                                "pseudo_labels": out / "pseudo_labels"})

    off = {"bg_threshold": 0.6, "vce": False, "rar": False}
    _, first = cams_from(world["diffusion"], tmp_path / "off", **off)
    _, again = cams_from(val_only, tmp_path / "off", **off)
    assert (first.computed, again.computed, again.reused) == (N_TRAIN + N_VAL, 0, N_TRAIN + N_VAL)
    for reader, cams in (("cams.vce", {"vce": True}), ("cams.rar", {"vce": False, "rar": True})):
        with pytest.raises(UserError, match=rf"{reader} reads stage A's maps of split\(s\) \['train'\], but stage A was "
                                            r"computed for \{'val': 6\} only; set diffusion_attention.splits to \[\]"):
            cams_from(val_only, tmp_path / reader, bg_threshold=0.6, **cams)
        assert not (tmp_path / reader).exists()
