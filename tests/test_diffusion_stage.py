"""The diffusion_attention stage on a small shapes world with the untrained tiny SD: store layout and
metric, reuse and recompute by params and by changed images, resume after kill -9 (on a 2-worker
LocalCluster), and DVC rerunning only this stage when one of its params changes.

Also a script (`python -m tests.test_diffusion_stage OUT INDEX MODEL`): runs the stage in process, for
the kill test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import parse_params
from pipeline.skeleton import run_stage
from stages import diffusion_attention as stage
from tests.kill_run import run_killed_after

N_TRAIN, N_VAL = 10, 6


# the untrained tiny SD at its native 64 px: correlation layer 8x8 tokens (16 heads), RAR layer 16x16 (8 heads)
TINY = {"image_size": 64, "timestep": 100, "grid": 8,
        "diclip": {"layer": "up_blocks.1.attentions.1.transformer_blocks.0.attn1", "heads": [1, 2]},
        "transition": {"layer": "up_blocks.2.attentions.0.transformer_blocks.0.attn1", "heads": [1, 2], "topk": 32}}


def params(model, runner=None, **overrides):
    return parse_params({
        "diffusion_attention": {**TINY, "shard_images": 4, "eval_images": 4, **overrides},
        "models": {"sd": {"model": str(model)}, "device": "cpu"},
        "runner": runner or {"in_process": True},
    })


def stage_paths(index, out: Path) -> dict:
    return {"index": index, "diffusion": out, "diffusion_metric": out.with_suffix(".json"),
            "diffusion_detail": out.with_suffix(".detail.json")}


def run(world, out: Path, runner=None, **overrides):
    """(the metric's detail, summary): the detail holds every figure, the headline a few of them."""
    (_, detail), summary = run_stage(stage.SPEC, stage.body, params=params(world["model"], runner, **overrides),
                                     paths=stage_paths(world["index"], out))
    return detail, summary


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 10+6-image shapes world, its index, and the untrained tiny SD saved as a pipeline directory."""
    import torch

    from pipeline.data.shapes import generate_dataset
    from pipeline.data.config import ShapesConfig
    from pipeline.models import build_tiny_stable_diffusion, load_tiny_sd_config
    from stages import prepare

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    generate_dataset(root / "shapes", splits={"train": N_TRAIN, "val": N_VAL}, seed=3, config=ShapesConfig())
    run_stage(prepare.SPEC, prepare.body, paths={"index": root / "index"},
              params=parse_params({"dataset": {"root": str(root / "shapes")}, "runner": {"in_process": True}}))
    build_tiny_stable_diffusion(load_tiny_sd_config(), root / "tok", seed=0).save_pretrained(root / "sd")
    return {"root": root, "index": root / "index", "model": root / "sd"}


@pytest.fixture(scope="module")
def finished(world):
    """One uninterrupted in-process run: (store path, metric, summary)."""
    out = world["root"] / "ref" / "diffusion.zarr"
    metric, summary = run(world, out)
    return out, metric, summary


def test_store_layout_attributes_and_metric(world, finished):
    import torch

    from pipeline.diffusion.baselines import colour_kmeans
    from pipeline.diffusion.oracle import own_label_mass
    from pipeline.metrics import best_match_iou, cluster_map_iou
    from pipeline.store.dataset_index import DatasetIndex
    from pipeline.store.diffusion_maps import DiffusionMaps

    out, metric, summary = finished
    n = N_TRAIN + N_VAL
    assert (summary.computed, summary.reused, summary.failed) == (n, 0, 0)
    index = DatasetIndex.load(world["index"])
    maps = DiffusionMaps.open(out, index_fingerprint=index.fingerprint)
    assert maps.ids == index.ids("train") + index.ids("val")
    attrs = maps.attrs
    assert attrs["complete"] and attrs["stage"] == "diffusion_attention" and len(attrs["params_hash"]) == 16
    assert "code_version" not in attrs and len(attrs["code_digest"]) == 16 and attrs["inputs"] == {"index": index.fingerprint}
    assert attrs["model"] == str(world["model"]) and attrs["timestep"] == 100 and attrs["recipe"] == "diclip"
    assert (attrs["image_size"], attrs["latent_size"], attrs["grid"], attrs["max_clusters"]) == (64, 16, 8, 16)
    assert attrs["transition"] == {"layer": TINY["transition"]["layer"], "heads": [1, 2], "sharpen": 0.02,
                                   "store_dtype": "float16", "grid": 16, "k": 32}
    assert attrs["splits"] == {"train": N_TRAIN, "val": N_VAL}
    specs = {s.name: (s.shape, s.dtype) for s in maps.store.specs}
    assert specs == {"clusters": ((8, 8), "uint8"), "k": ((), "int32"), "rows": ((16, 64), "float32"),
                     "transition_values": ((256, 32), "float16"), "transition_index": ((256, 32), "int16"),
                     "transition_kept": ((), "float32"), "transition_truncated": ((), "float32")}
    assert len(list((out / "rows" / "c").iterdir())) == 4  # one shard file per block of 4 images
    for image_id in (maps.ids[0], maps.ids[-1]):
        clusters, k = maps.clusters(image_id)
        assert 1 <= k <= 16 and clusters.shape == (8, 8) and set(np.unique(clusters)) == set(range(k))
        r = maps.correlation(image_id)
        # rows are cluster means of A's rows, which sum to 1 or, where the threshold emptied them, to less
        assert r.shape == (64, 64) and (r >= 0).all() and (r.sum(1) <= 1 + 2e-3).all() and r.sum(1).max() > 0.9
        same = clusters.reshape(-1)[:, None] == clusters.reshape(-1)[None, :]
        assert all(np.array_equal(r[i], r[j]) for i, j in zip(*np.nonzero(same)))  # constant within a cluster
        p = maps.transition(image_id)
        assert p.shape == (256, 256) and np.allclose(p.sum(1), 1.0, atol=2e-3) and (np.count_nonzero(p, 1) <= 32).all()
    # the metric is the stored maps scored against the first 4 val masks (recomputed here independently)
    images = index.images(["val"])
    ids = index.ids("val")[:4]
    ours = [cluster_map_iou(maps.clusters(i)[0], images.load_mask(i)) for i in ids]
    colour = [best_match_iou(colour_kmeans(images.load_image(i), max(2, maps.clusters(i)[1])), images.load_mask(i)) for i in ids]
    assert metric["split"] == "val" and metric["images"] == 4 and metric["recipe"] == "diclip"
    assert metric["diclip_best_match_iou"] == pytest.approx(np.nanmean(ours))
    assert metric["colour_kmeans_best_match_iou"] == pytest.approx(np.nanmean(colour))
    assert {"acr_best_match_iou", "untrained_unet_best_match_iou"} <= set(metric)
    kept = maps.store.read("transition_kept")
    assert metric["transition_kept_mass"] == pytest.approx(float(kept.mean())) and 0 < metric["transition_kept_mass"] <= 1
    # P's own-label mass, recomputed from the stored P and the masks; a uniform P keeps each object's share
    mass = [own_label_mass(maps.transition(i), images.load_mask(i)) for i in ids]
    assert metric["own_label_mass"] == pytest.approx(np.nanmean(mass))
    share = [own_label_mass(np.full((256, 256), 1 / 256), images.load_mask(i)) for i in ids]
    assert metric["own_label_mass_uniform"] == pytest.approx(np.nanmean(share))
    assert json.loads(out.with_suffix(".detail.json").read_text()) == metric
    assert json.loads(out.with_suffix(".json").read_text()) == {  # the headline numbers
        "best_match_iou": metric["diclip_best_match_iou"], "best_match_ceiling": metric["mask_at_grid_best_match_iou"],
        "own_label_mass": metric["own_label_mass"], "kept_mass": metric["transition_kept_mass"]}


def test_finished_store_is_kept_and_params_change_recomputes(world, finished, tmp_path):
    import shutil

    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.image_store import StoreError

    ref, _, _ = finished
    out = tmp_path / "diffusion.zarr"
    shutil.copytree(ref, out)
    metric, again = run(world, out, eval_images=2, eval_baselines=False, compare_recipes=False)
    assert again.computed == 0 and again.reused == N_TRAIN + N_VAL and metric["images"] == 2  # eval-only params
    assert "untrained_unet_best_match_iou" not in metric and "acr_best_match_iou" not in metric
    metric, changed = run(world, out, recipe="acr", transition={**TINY["transition"], "topk": 0}, eval_images=2,
                          eval_baselines=False)
    assert changed.computed == N_TRAIN + N_VAL and metric["recipe"] == "acr" and "diclip_best_match_iou" in metric
    maps = DiffusionMaps.open(out)
    assert maps.attrs["max_clusters"] == 16 and maps.transition_grid is None
    with pytest.raises(StoreError, match="transition.topk was 0"):
        maps.transition(maps.ids[0])


@pytest.mark.parametrize("key, value, message", [
    ("diclip", {"layer": "up_blocks.9.attn1", "heads": [0]},
     r"diffusion_attention.diclip.layer 'up_blocks.9.attn1' is not a self-attention layer of this UNet; valid layers:\n"
     r"  down_blocks.0.attentions.0.transformer_blocks.0.attn1 \(8 heads\)"),
    ("transition", {"layer": "up_blocks[2].attentions[0].transformer_blocks[0].attn1", "heads": [8]},
     r"diffusion_attention.transition.layer 'up_blocks.2.attentions.0.transformer_blocks.0.attn1' has heads 0..7; got heads \[8\]"),
])
def test_unknown_layers_and_heads_are_refused_before_anything_is_written(world, tmp_path, key, value, message):
    from pipeline.params import ParamsError

    with pytest.raises(ParamsError, match=message):
        run(world, tmp_path / "d.zarr", **{key: value})
    assert not (tmp_path / "d.zarr").exists()


def test_metric_split_must_be_computed(world, tmp_path):
    from pipeline.params import ParamsError

    with pytest.raises(ParamsError, match="diffusion_attention.eval_split 'val' is not among the computed splits"):
        run(world, tmp_path / "d.zarr", splits=["train"])
    assert not (tmp_path / "d.zarr").exists()


def test_a_stage_may_read_only_the_params_it_declares(world):
    from pipeline.params import ParamsError
    from pipeline.skeleton import StageContext

    ctx = StageContext(stage.SPEC, params(world["model"]), {})
    assert ctx.params.models.sd.model == str(world["model"])
    with pytest.raises(ParamsError, match="reads params 'models.clip' but does not declare it"):
        ctx.params.models.clip
    with pytest.raises(ParamsError, match="reads params 'dataset' but does not declare it"):
        ctx.params.dataset


def test_resume_after_kill_computes_only_missing_images(world, finished, tmp_path):
    from pipeline.store.image_store import ImageStore

    ref, _, _ = finished
    out = tmp_path / "diffusion.zarr"
    run_killed_after(["-m", "tests.test_diffusion_stage", str(out), str(world["index"]), str(world["model"])], images=5)
    store = ImageStore.open(out, require_complete=False)
    assert not store.attrs["complete"]
    durable = int(store.done().sum()) + sum(store.load_staged(i) is not None for i in range(store.n_images))
    assert durable == 5  # in process: exactly the images staged before the kill

    _, resumed = run(world, out, runner={"n_workers": 2}, eval_images=0)
    assert resumed.computed == N_TRAIN + N_VAL - 5, "the rerun recomputed work that was already durable"
    assert resumed.reused == 5
    a, b = ImageStore.open(out), ImageStore.open(ref)
    assert a.attrs["key"] == b.attrs["key"]
    for spec in b.specs:  # same bytes as the uninterrupted in-process run
        np.testing.assert_array_equal(a.read(spec.name), b.read(spec.name), err_msg=spec.name)
    assert not out.with_name(out.name + ".staging").exists()


def test_one_and_two_workers_write_identical_stores(world, finished, tmp_path):
    from pipeline.store.image_store import ImageStore

    ref, _, _ = finished
    out = tmp_path / "diffusion.zarr"
    run(world, out, runner={"n_workers": 1}, eval_images=0)  # a LocalCluster of one worker; the reference ran in process
    a, b = ImageStore.open(out), ImageStore.open(ref)
    for spec in b.specs:
        np.testing.assert_array_equal(a.read(spec.name), b.read(spec.name), err_msg=spec.name)



def test_batched_groups_are_fixed_by_position_and_agree_with_one_image_per_forward(world, finished, tmp_path):
    """`batch_images` (one VAE encode and one UNet forward per group; what a GPU wants): groups are fixed
    by position in the store, so 1 and 2 workers write the same bits; against one image per forward only
    the float arithmetic of a batch differs."""
    from pipeline.store.image_store import ImageStore

    ref, _, _ = finished
    run(world, tmp_path / "b3.zarr", batch_images=3, eval_images=0)
    run(world, tmp_path / "b3w.zarr", runner={"n_workers": 2, "threads_per_worker": 1}, batch_images=3, eval_images=0)
    a, b, one = (ImageStore.open(p) for p in (tmp_path / "b3.zarr", tmp_path / "b3w.zarr", ref))
    for spec in one.specs:
        np.testing.assert_array_equal(a.read(spec.name), b.read(spec.name), err_msg=spec.name)
    assert (a.read("clusters") == one.read("clusters")).mean() > 0.98
    np.testing.assert_allclose(a.read("transition_values").astype(np.float32),
                               one.read("transition_values").astype(np.float32), atol=2e-3)
    assert (a.read("transition_index") == one.read("transition_index")).mean() > 0.98


# ------------------------------------------------------------------------------ kill-test script
if __name__ == "__main__":
    out, index, model = sys.argv[1], sys.argv[2], sys.argv[3]
    run_stage(stage.SPEC, stage.body, params=params(model, eval_images=0), paths=stage_paths(index, Path(out)))
