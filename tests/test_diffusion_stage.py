"""The diffusion_attention stage on a small shapes world with the untrained tiny SD: store layout and
metric, reuse and recompute by params, resume after kill -9 (on a 2-worker LocalCluster), and DVC
rerunning only this stage when one of its params changes.

Also a script (`python -m tests.test_diffusion_stage OUT INDEX MODEL SLEEP`): runs the stage in
process with a slowed ACR, for the kill test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.diffusion.config import DiffusionAttentionParams
from tests.kill_run import kill_when_part_way
from pipeline.params import RunnerParams
from pipeline.params.sections import ModelsParams, SDModelParams

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_VAL = 10, 6


def stage_params(**overrides) -> DiffusionAttentionParams:
    return DiffusionAttentionParams(**{"shard_images": 4, "eval_images": 4, **overrides})


def models_params(model: str | Path) -> ModelsParams:
    return ModelsParams(sd=SDModelParams(model=str(model)), device="cpu")


def run_stage(cfg, world, out: Path, runner=RunnerParams(in_process=True), metrics=True):
    from pipeline.diffusion.stage import run_diffusion_attention

    return run_diffusion_attention(
        cfg, models=models_params(world["model"]), index_dir=world["index"], out=out,
        metrics_path=out.with_suffix(".json") if metrics else None, runner=runner,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 10+6-image shapes world, its index, and the untrained tiny SD saved as a pipeline directory."""
    import torch

    from pipeline.data.prepare import prepare_index
    from pipeline.data.shapes import ShapesConfig, generate_dataset
    from pipeline.models import build_tiny_stable_diffusion, load_tiny_sd_config
    from pipeline.params import parse_params

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    generate_dataset(root / "shapes", splits={"train": N_TRAIN, "val": N_VAL}, seed=3, config=ShapesConfig(),
                     workers=1, progress=False)
    prepare_index(parse_params({"dataset": {"root": str(root / "shapes")}, "runner": {"in_process": True}}), root / "index")
    build_tiny_stable_diffusion(load_tiny_sd_config(), root / "tok", seed=0).save_pretrained(root / "sd")
    return {"root": root, "index": root / "index", "model": root / "sd"}


@pytest.fixture(scope="module")
def finished(world):
    """One uninterrupted in-process run: (params, store path, summary)."""
    cfg = stage_params()
    out = world["root"] / "ref" / "diffusion.zarr"
    return cfg, out, run_stage(cfg, world, out)


def test_store_layout_attributes_and_metric(world, finished):
    from pipeline.diffusion.stage import DiffusionMaps
    from pipeline.store.dataset_index import DatasetIndex

    cfg, out, summary = finished
    n = N_TRAIN + N_VAL
    assert summary["computed"] == n and summary["already_done"] == 0
    maps = DiffusionMaps.open(out)
    index = DatasetIndex.load(world["index"])
    assert maps.ids == index.ids("train") + index.ids("val")
    attrs = maps.attrs
    assert attrs["complete"] and attrs["stage"] == "diffusion_attention" and len(attrs["params_hash"]) == 16
    assert attrs["model"] == str(world["model"]) and attrs["timestep"] == cfg.timestep
    assert (attrs["image_size"], attrs["latent_size"], attrs["cluster_grid"], attrs["attention_grid"]) == (64, 16, 16, 8)
    assert attrs["splits"] == {"train": N_TRAIN, "val": N_VAL}
    store = maps.store
    specs = {s.name: (s.shape, s.dtype) for s in store.specs}
    assert specs == {"soft": ((16, 16, 16), "float16"), "hard": ((16, 16), "uint8"), "k": ((), "int32"),
                     "attention": ((64, 64), "float16")}
    # one shard file per block of 4 images, not one file per image
    assert len(list((out / "soft" / "c").iterdir())) == 4
    for image_id in (maps.ids[0], maps.ids[-1]):
        soft, hard = maps.clusters(image_id)
        k = len(soft)
        assert 1 <= k <= 16 and soft.shape == (k, 16, 16) and hard.max() < k
        np.testing.assert_allclose(soft.sum(0), 1.0, atol=2e-2)  # fp16 storage
        attention = maps.attention(image_id)
        assert attention.shape == (64, 64) and np.allclose(attention.sum(1), 1.0, atol=1e-5)
        corr = maps.correlation(image_id, 8)
        assert corr.shape == (64, 64) and np.array_equal(corr, corr.T)
    metric = json.loads(out.with_suffix(".json").read_text())
    assert metric["split"] == "val" and metric["images"] == 4
    for key in ("acr_best_match_iou", "untrained_unet_best_match_iou", "colour_kmeans_best_match_iou"):
        assert 0.0 <= metric[key] <= 1.0, key
    assert metric == summary["metric"]


def test_finished_store_is_kept_and_params_change_recomputes(world, finished, tmp_path):
    import shutil

    cfg, ref, _ = finished
    out = tmp_path / "diffusion.zarr"
    shutil.copytree(ref, out)
    again = run_stage(stage_params(eval_images=2, eval_baselines=False), world, out)
    assert again["computed"] == 0 and again["metric"]["images"] == 2  # eval-only params: metric only
    assert "untrained_unet_best_match_iou" not in again["metric"]
    changed = run_stage(stage_params(merge_kl=0.5, store_attention=False), world, out, metrics=False)
    assert changed["computed"] == N_TRAIN + N_VAL and "metric" not in changed
    from pipeline.diffusion.stage import DiffusionMaps
    from pipeline.store.image_store import StoreError

    with pytest.raises(StoreError, match="store_attention"):
        DiffusionMaps.open(out).attention(DiffusionMaps.open(out).ids[0])


def test_metric_split_must_be_computed(world, tmp_path):
    from pipeline.params import ParamsError

    with pytest.raises(ParamsError, match="diffusion_attention.eval_split 'val' is not among the computed splits"):
        run_stage(stage_params(splits=("train",)), world, tmp_path / "d.zarr")
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.timeout(300)
def test_resume_after_kill_computes_only_missing_images(world, finished, tmp_path):
    from pipeline.store.image_store import ImageStore

    cfg, ref, _ = finished
    out = tmp_path / "diffusion.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.test_diffusion_stage", str(out), str(world["index"]), str(world["model"]), "0.3"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    staging = out.with_name(out.name + ".staging")
    kill_when_part_way(proc, out, min_done=4, min_staged=1, timeout=180)
    store = ImageStore.open(out, require_complete=False)
    assert not store.attrs["complete"]
    done = store.done()
    staged = {int(p.stem) for p in staging.glob("*.npz") if store.load_staged(int(p.stem)) is not None}
    kept = int(done.sum()) + len(staged - set(np.flatnonzero(done)))
    assert 0 < kept < N_TRAIN + N_VAL

    resumed = run_stage(cfg, world, out, runner=RunnerParams(n_workers=2), metrics=False)
    assert resumed["computed"] == N_TRAIN + N_VAL - kept, "the rerun recomputed work that was already durable"
    assert resumed["already_done"] == int(done.sum())
    a, b = ImageStore.open(out), ImageStore.open(ref)
    assert a.attrs["params_hash"] == b.attrs["params_hash"]
    for name in ("k", "hard", "soft", "attention"):  # same bytes as the uninterrupted in-process run
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)
    assert not staging.exists()


# ------------------------------------------------------------------------------ DVC
def _dvc_wired() -> bool:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text()).get("stages", {})
    return "diffusion_attention" in stages


@pytest.mark.skipif(not _dvc_wired(), reason="diffusion_attention is not in dvc.yaml yet")
def test_dvc_reruns_only_this_stage_when_its_params_change(world, tmp_path):
    import shutil

    from tests.test_dvc_pipeline import CODE, edit_params, ran, run

    repo = tmp_path / "repo"
    for name in CODE:
        src = ROOT / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "diclip-tiny-sd"))
        else:
            shutil.copy2(src, repo / name)
    (repo / "artifacts").mkdir()
    # the untrained tiny SD stands in for the shipped one, at the path params and dvc.yaml name
    shutil.copytree(world["model"], repo / "pipeline/models/weights/diclip-tiny-sd")

    def small(p):
        p["shapes"]["splits"] = {"train": 8, "val": 4}
        p["models"]["sd"]["model"] = "pipeline/models/weights/diclip-tiny-sd"
        p.setdefault("diffusion_attention", {}).update(eval_images=2, shard_images=4, image_size=64)  # native size: fast

    edit_params(repo, small)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo)
    run([*git, "add", "-A"], repo)
    run([*git, "commit", "-qm", "init"], repo)

    first = run(["dvc", "repro", "diffusion_attention"], repo)
    assert ran(first) == {"shapes_world", "prepare", "diffusion_attention"}
    metric = json.loads((repo / "artifacts/metrics/diffusion_attention.json").read_text())
    assert metric["images"] == 2
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == set()

    edit_params(repo, lambda p: p["diffusion_attention"].update(merge_kl=0.5))
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == {"diffusion_attention"}

    edit_params(repo, lambda p: p["runner"].update(n_workers=1))  # results never depend on the runner
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == set()


# ------------------------------------------------------------------------------ kill-test script
if __name__ == "__main__":
    import pipeline.diffusion.stage as stage

    out, index, model, sleep = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    real_acr = stage.acr

    def slow_acr(*args, **kwargs):
        time.sleep(sleep)
        return real_acr(*args, **kwargs)

    stage.acr = slow_acr  # in process, so the patch reaches every image
    stage.run_diffusion_attention(
        stage_params(), models=models_params(model), index_dir=index, out=out, metrics_path=None,
        runner=RunnerParams(in_process=True),
    )
