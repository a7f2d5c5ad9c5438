"""Stage D on a small shapes world: the segmenter's losses split over ranks, DDP with 2 gloo processes
against one process, resume after kill -9, evaluation scores on hand-built cases and torchmetrics'
ignore index, the VOC submission layout, training without ground truth, and the report in Chromium.

The pseudo-labels the stages train on here are the world's own masks (a planted answer): the
pseudo-labels' mIoU is then exactly 1 and the segmenter has a clean signal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.params import parse_params
from pipeline.skeleton import run_stage
from tests.test_cams_stage import CAMS, world  # noqa: F401  (the module-scoped world fixture)

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"dim": 32, "layers": 1, "heads": 4, "iterations": 12, "batch": 4, "crop": 64, "rescale": [0.75, 1.5],
         "lr": 0.002, "warmup": 2, "threads": 1, "checkpoint_every": 4, "log_every": 2, "val_every": 6, "val_images": 3}
EVALUATE = {"size": 64, "scales": [1.0, 1.5], "flip": True, "crf": False}


# ---------------------------------------------------------------- pure pieces
def test_the_loss_split_over_ranks_sums_to_the_whole_batch():
    from pipeline.segment.losses import loss_sums, segmenter_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 4, 4, generator=g, requires_grad=True)
    affinity = torch.rand(4, 16, 16, generator=g)
    labels = torch.randint(0, 3, (4, 8, 8), generator=g)
    labels[0] = 0  # no foreground in the first image
    labels[1, :4] = 255
    whole = segmenter_loss(logits, affinity, labels, 4, affinity_weight=0.1, radius=2)

    parts = (slice(0, 2), slice(2, 4))
    # what all_reduce would give each rank: the counts of both halves summed
    all_counts = sum(loss_sums(logits[s].detach(), affinity[s], labels[s], 4, 2)[1] for s in parts)
    halves = [segmenter_loss(logits[s], affinity[s], labels[s], 4, affinity_weight=0.1, radius=2,
                             total=lambda _local: all_counts, world=2)
              for s in parts]
    assert float(sum(halves).detach() / 2) == pytest.approx(float(whole.detach()), rel=1e-6)
    # and not the mean of each half's own loss, which weighs the halves' pixels differently
    own = [segmenter_loss(logits[s], affinity[s], labels[s], 4, affinity_weight=0.1, radius=2) for s in parts]
    assert abs(float(sum(own).detach() / 2) - float(whole.detach())) > 1e-3


def test_scores_on_a_hand_built_confusion_and_torchmetrics_ignore_index():
    from torchmetrics.classification import MulticlassJaccardIndex

    from pipeline.metrics import confusion, scores

    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 0]], dtype=np.uint8)  # the ignored pixels are predicted as 3 and 0
    conf = confusion(pred, truth, 4)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(conf, expected)  # rows truth, columns prediction; 255 contributes nothing
    s = scores(conf, ("background", "a", "b", "c"))
    # IoU: bg 1 / (2 + 2 - 1) = 1/3, a 2 / (2 + 3 - 2) = 2/3, b 1 / (2 + 1 - 1) = 1/2, c absent from both -> None
    assert s["per_class_iou"] == pytest.approx({"background": 1 / 3, "a": 2 / 3, "b": 1 / 2, "c": None})
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6) and s["pixels"] == 6
    # torchmetrics' own IoU agrees on the classes that occur (the ignored pixels' predictions are not counted)
    jac = MulticlassJaccardIndex(4, ignore_index=255, average="none")(torch.from_numpy(pred).long(), torch.from_numpy(truth).long())
    np.testing.assert_allclose(jac[:3].numpy(), [1 / 3, 2 / 3, 1 / 2], rtol=1e-6)


def test_the_voc_submission_layout():
    from pipeline.artifacts import submission_folder

    assert submission_folder(Path("out"), "test") == Path("out/results/VOC2012/Segmentation/comp6_test_cls")


def test_ddp_with_two_gloo_processes_gives_the_first_step_gradients_of_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "tests/ddp_grads.py", str(tmp_path / "one.pt")], cwd=ROOT, env=env, check=True,
                   timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    "tests/ddp_grads.py", str(tmp_path / "two.pt")], cwd=ROOT, env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and len(one) > 10
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(float(g.abs().sum()) > 0 for g in one.values())


# ---------------------------------------------------------------- the stages
def params(**sections):
    base = {"cams": {**CAMS}, "models": {"device": "cpu"}, "runner": {"in_process": True},
            "train": dict(TRAIN), "evaluate": dict(EVALUATE), "report": {"images": 3}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def train_paths(world, out: Path) -> dict:
    return {"index": world["index"], "pseudo_labels": world["root"] / "planted_labels", "segmenter": out / "segmenter",
            "train_checkpoints": out / "checkpoints", "train_live": out / "live"}


@pytest.fixture(scope="module")
def planted(world):
    """The world's masks as pseudo-labels; the masks folder hidden while `train` runs (it must not read it)."""
    from pipeline.data.palette import palette_png
    from pipeline.store.dataset_index import DatasetIndex

    index = DatasetIndex.load(world["index"])
    images = index.images(["train", "val"])
    folder = world["root"] / "planted_labels"
    folder.mkdir(exist_ok=True)
    for s in ("train", "val"):
        for image_id in index.ids(s):
            (folder / f"{image_id}.png").write_bytes(palette_png(images.load_mask(image_id)))
    return folder


@pytest.fixture(scope="module")
def trained(world, planted):
    from stages import train

    out = world["root"] / "d"
    masks = world["root"] / "shapes" / "SegmentationClass"
    hidden = world["root"] / "hidden_masks"
    shutil.move(masks, hidden)
    masks.mkdir()  # the folder is there, every mask file is gone: train reads pseudo-labels and images only
    try:
        metric, _ = run_stage(train.SPEC, train.body, params=parse_params(params()), paths=train_paths(world, out))
    finally:
        masks.rmdir()
        shutil.move(hidden, masks)
    return out, metric


def test_train_writes_weights_config_and_dvclive_rows(trained):
    from safetensors.torch import load_file

    out, metric = trained
    assert metric["step"] == 12
    config = json.loads((out / "segmenter" / "config.json").read_text())
    assert config["architecture"] == "diclip" and config["num_classes"] == 7 and config["patch"] == 8
    assert "classify.weight" in load_file(out / "segmenter" / "model.safetensors")
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["step"] == 12 and summary["train"]["loss"] == pytest.approx(metric["train/loss"])
    rows = (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss"] and [int(r.split("\t")[0]) for r in rows[1:]] == list(range(2, 13, 2))
    val = (out / "live" / "plots" / "metrics" / "val" / "miou_vs_pseudo_labels.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in val[1:]] == [6, 12]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000008.pt", "step_000000012.pt"]


def test_resume_after_kill_ends_with_the_same_weights(world, planted, trained, tmp_path):
    from safetensors.torch import load_file

    out, _ = trained
    paths = train_paths(world, tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    args = [sys.executable, "-m", "stages.cli", "train", "--params", str(tmp_path / "params.yaml")]
    for name, value in paths.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "DICLIP_KILL_AFTER_STEPS": "7"}, timeout=300,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not (tmp_path / "segmenter").exists()  # nothing that looks complete
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000004.pt"]
    subprocess.run(args, cwd=ROOT, check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed, straight = load_file(tmp_path / "segmenter" / "model.safetensors"), load_file(out / "segmenter" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    # the resumed run's curves hold every step once, as the uninterrupted run's do
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text() == \
        (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()


@pytest.fixture(scope="module")
def evaluated(world, planted, trained):
    from stages import evaluate

    out, _ = trained
    paths = {"index": world["index"], "segmenter": out / "segmenter", "pseudo_labels": planted,
             "evaluation": out / "evaluation.zarr", "predictions": out / "predictions", "seg_metric": out / "seg.json",
             "seg_detail": out / "seg_detail.json"}
    metrics, _ = run_stage(evaluate.SPEC, evaluate.body, params=parse_params(params()), paths=paths)
    return out, metrics


def test_evaluate_scores_the_palette_predictions_in_the_server_layout(world, evaluated):
    from PIL import Image

    from pipeline.store.dataset_index import DatasetIndex
    from tests.numpy_scores import numpy_confusion, numpy_miou

    out, (metric, detail) = evaluated
    index = DatasetIndex.load(world["index"])
    images = index.images(["val"])
    folder = out / "predictions" / "results" / "VOC2012" / "Segmentation" / "comp6_val_cls"
    assert sorted(p.stem for p in folder.iterdir()) == sorted(index.ids("val"))
    conf = np.zeros((8, 8), dtype=np.int64)
    for image_id in index.ids("val"):
        with Image.open(folder / f"{image_id}.png") as im:
            assert im.mode == "P"
            pred = np.array(im)
        mask = images.load_mask(image_id)
        assert pred.shape == mask.shape
        conf += numpy_confusion(pred, mask, 8)  # an independent numpy confusion, not torchmetrics
    assert metric["miou"] == detail["segmenter"]["miou"] == pytest.approx(numpy_miou(conf))
    assert metric["pseudo_miou"] == detail["pseudo_labels"]["miou"] == 1.0  # the planted labels are the masks
    assert detail["split"] == "val" and detail["images"] == len(index.ids("val"))
    assert json.loads((out / "seg.json").read_text()) == metric
    assert set(metric) == {"miou", "pixel_accuracy", "pseudo_miou"}  # headline numbers; the rest in the detail
    assert json.loads((out / "seg_detail.json").read_text()) == detail


def test_crf_snaps_a_blurred_softmax_to_the_colour_edge():
    from pipeline.segment.config import InferenceConfig
    from pipeline.segment.crf import crf_available, dense_crf

    if not crf_available():
        pytest.skip("pydensecrf2 is not installed (pip install 'diclip[crf]')")
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, 16:] = 200  # a colour edge at column 16
    p = np.zeros((2, 32, 32), dtype=np.float32)
    ramp = np.clip((np.arange(32) - 4) / 16, 0.05, 0.95)  # the class rises smoothly, past 0.5 at column 12
    p[1], p[0] = ramp[None, :], 1 - ramp[None, :]
    before = p.argmax(0)[0]
    after = dense_crf(p, image, InferenceConfig(crf=True, crf_bi_xy=10, crf_bi_rgb=20)).argmax(0)
    assert (before[:16] == 1).any()  # the blurred map crosses the edge before the CRF ...
    assert (after[:, :16] == 0).all() and (after[:, 16:] == 1).all()  # ... and stops at it after


def test_a_missing_pseudo_label_is_refused_naming_the_image(world, tmp_path):
    from pipeline.errors import UserError
    from stages import train

    empty = tmp_path / "labels"
    empty.mkdir()
    paths = {**train_paths(world, tmp_path), "pseudo_labels": empty}
    with pytest.raises(UserError, match=r"labels: no pseudo-label for image id 'train_000000'.*run `diclip cams` first"):
        run_stage(train.SPEC, train.body, params=parse_params(params()), paths=paths)
    assert not (tmp_path / "segmenter").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(world, planted, trained, evaluated):
    from PIL import Image

    from stages import eval_cams, report
    from tests.test_cams_stage import run as run_cams

    out, _ = trained
    run_cams(world, out, bg_threshold=0.6)
    run_stage(eval_cams.SPEC, eval_cams.body, params=parse_params(params(cams={"bg_threshold": 0.6})),
              paths={"index": world["index"], "cams": out / "cams.zarr", "pseudo_labels": out / "pseudo_labels",
                     "cams_metric": out / "cams.json", "cams_detail": out / "cams_detail.json"})
    Image.new("RGB", (40, 20), (200, 30, 30)).save(out / "tsa_cache.png")  # stands for stage B's picture
    paths = {"index": world["index"], "diffusion": world["diffusion"], "cams": out / "cams.zarr",
             "pseudo_labels": out / "pseudo_labels", "tsa_picture": out / "tsa_cache.png", "train_live": out / "live",
             "predictions": out / "predictions", "seg_detail": out / "seg_detail.json",
             "cams_detail": out / "cams_detail.json", "report": out / "report"}
    run_stage(report.SPEC, report.body, params=parse_params(params(cams={"bg_threshold": 0.6})), paths=paths)
    return out / "report"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(report, evaluated):
    from playwright.sync_api import sync_playwright

    _, (metric, _) = evaluated
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto((report / "index.html").resolve().as_uri())
        loaded = page.evaluate("Array.from(document.images).map(i => [i.id, i.complete && i.naturalWidth > 0])")
        headline = page.inner_text("#headline")
        ablation_rows = page.evaluate("document.querySelectorAll('table')[1].rows.length")
        page.screenshot(path=str(report.parent / "report_screenshot.png"), full_page=True)
        browser.close()
    assert dict(loaded) == {"samples": True, "rows": True, "iou": True, "curves": True, "tsa": True}
    assert f"{metric['miou']:.3f}" in headline and "segmenter" in headline
    assert ablation_rows > 10  # the CAM ablation table from docs/cam_ablation.md
    from PIL import Image

    with Image.open(report / "samples.png") as im:  # a row per sample image, a column per figure
        assert im.size[0] > im.size[1] / 3 * 7 * 0.8


def test_predict_writes_a_maskless_split_in_the_server_layout_as_evaluate_does(world, evaluated, tmp_path):
    from stages.cli import main
    from click.testing import CliRunner
    from pipeline.store.dataset_index import DatasetIndex

    out, _ = evaluated
    index = DatasetIndex.load(world["index"])
    ids = index.ids("val")[:3]
    root = tmp_path / "voc"  # a VOC-layout folder whose test split has images and no masks
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for image_id in ids:
        shutil.copyfile(world["root"] / "shapes" / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    result = CliRunner().invoke(main, ["predict", "--params", str(tmp_path / "params.yaml"), "--segmenter",
                                       str(out / "segmenter"), "--root", str(root), "--out", str(tmp_path / "sub")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "sub" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.png" for i in ids)
    evaluated_folder = out / "predictions" / "results" / "VOC2012" / "Segmentation" / "comp6_val_cls"
    for image_id in ids:  # the same inference as evaluate's, byte for byte
        assert (folder / f"{image_id}.png").read_bytes() == (evaluated_folder / f"{image_id}.png").read_bytes()
    (root / "JPEGImages" / f"{ids[1]}.jpg").unlink()
    result = CliRunner().invoke(main, ["predict", "--params", str(tmp_path / "params.yaml"), "--segmenter",
                                       str(out / "segmenter"), "--root", str(root), "--out", str(tmp_path / "sub2")])
    assert result.exit_code == 1 and f"image id {ids[1]!r} has no image file" in result.output
    assert not (tmp_path / "sub2").exists()  # refused before any work


def test_evaluate_without_a_segmenter_is_refused_naming_it(world, planted, tmp_path):
    from pipeline.errors import UserError
    from stages import evaluate

    paths = {"index": world["index"], "segmenter": tmp_path / "nothing", "pseudo_labels": planted,
             "evaluation": tmp_path / "evaluation.zarr", "predictions": tmp_path / "predictions",
             "seg_metric": tmp_path / "seg.json", "seg_detail": tmp_path / "seg_detail.json"}
    with pytest.raises(UserError, match=r"nothing/config.json: not a saved segmenter \(run `diclip train` first\)"):
        run_stage(evaluate.SPEC, evaluate.body, params=parse_params(params()), paths=paths)
    assert not any(tmp_path.iterdir())  # nothing written
