"""Tiny-CLIP pre-training on the shapes world, and the shipped checkpoint (fast, CPU, one thread)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner

from pipeline.cam.images import presence_scores
from pipeline.cam.text import class_prompts, encode_prompts, encode_text_trimmed
from pipeline.data.shapes import CLASS_NAMES
from pipeline.metrics import presence_auc
from pipeline.models import TINY_CLIP_DIR, load_clip, load_shipped_clip
from pipeline.tiny.eval_clip import SceneSet, choose_threshold, render_scenes
from pipeline.tiny.manifest import MANIFEST_NAME
from pipeline.tiny.train_clip import (
    CHECKPOINT_NAME,
    ClipPretrainConfig,
    caption,
    class_set_keys,
    contrastive_loss,
    data_fingerprint,
    fit_clip,
    lr_at,
    multi_positive_targets,
    save_fp16_checkpoint,
    train_clip,
    verify_checkpoint,
)

TINY_CLIP = "diclip-tiny-vit-p8-64"
SHIPPED = Path(__file__).resolve().parent.parent / "pipeline" / "models" / "weights" / "diclip-tiny-clip"
SMALL = ClipPretrainConfig(num_images=8, batch_size=8, steps=40, warmup_steps=5, calibration_steps=5, lr=3e-3,
                           log_every=5, evaluate=False)


@pytest.fixture(scope="module")
def small_pool():
    """8 training scenes with 8 different class sets: a batch a tiny CLIP can learn in 40 steps."""
    pool = render_scenes(SMALL.split, 64)
    _, first = np.unique(class_set_keys(pool.labels), return_index=True)
    keep = np.sort(first)[:SMALL.num_images]
    return SceneSet(pool.images[keep], pool.masks[keep], pool.labels[keep])


def test_multi_positive_targets_for_repeated_captions():
    keys = torch.tensor([3, 5, 3, 7, 3])  # images 0, 2, 4 share a class set
    expected = torch.tensor([
        [1 / 3, 0, 1 / 3, 0, 1 / 3],
        [0, 1, 0, 0, 0],
        [1 / 3, 0, 1 / 3, 0, 1 / 3],
        [0, 0, 0, 1, 0],
        [1 / 3, 0, 1 / 3, 0, 1 / 3],
    ])
    torch.testing.assert_close(multi_positive_targets(keys), expected)


def test_class_set_keys_are_equal_exactly_for_equal_sets():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 1]], bool)
    keys = class_set_keys(labels)
    assert keys[0] == keys[2] and len(set(keys.tolist())) == 4


def test_loss_prefers_matching_pairs_and_counts_repeats_as_positives():
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    distinct = torch.tensor([0, 1, 2, 3])
    assert contrastive_loss(emb, emb, distinct, scale) < contrastive_loss(emb, emb.roll(1, 0), distinct, scale)
    # images 0 and 1 share a class set: swapping their captions changes nothing
    shared = torch.tensor([0, 0, 2, 3])
    swapped = emb[[1, 0, 2, 3]]
    torch.testing.assert_close(contrastive_loss(emb, emb[[0, 0, 2, 3]], shared, scale),
                               contrastive_loss(emb, swapped[[1, 1, 2, 3]], shared, scale))


def test_captions_name_exactly_the_present_classes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = caption([0, 5, 6], rng)
        assert all(f"a {name}" in text for name in ("disk", "star", "boat")) and "bar" not in text
    assert caption([2], np.random.default_rng(0), templates=("a photo of {}.",)) == "a photo of a ring."


def test_trimmed_text_encoding_equals_open_clip():
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(TINY_CLIP)(["a photo of a disk.", "a star, a ring and a boat.", "bar."])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = dataclasses.replace(SMALL, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1) and lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)
    assert lr_at(5, 100, cfg) == lr_at(5, 1000, cfg)  # warmup does not depend on the total


def test_short_training_is_deterministic_and_lowers_the_loss(small_pool):
    first = fit_clip(SMALL, small_pool, progress=False)
    second = fit_clip(SMALL, small_pool, progress=False)
    assert first.steps == second.steps == 40
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [loss for _, _, loss in first.history]
    assert losses == [loss for _, _, loss in second.history]
    # the logged loss is contrastive + class term, so below ln(batch) means the contrastive part beats chance
    assert losses[-1] < losses[0] - 1.0 and losses[-1] < math.log(SMALL.batch_size), losses


def test_time_budget_fixes_the_step_count_after_warmup_calibration(small_pool):
    timed = dataclasses.replace(SMALL, max_minutes=1e-4)
    assert fit_clip(timed, small_pool, progress=False).steps == SMALL.warmup_steps + 1


def test_train_clip_writes_a_loadable_fp16_checkpoint_and_manifest(tmp_path):
    cfg = dataclasses.replace(SMALL, num_images=16, steps=6, log_every=3)
    manifest = train_clip(cfg, tmp_path, progress=False, command="diclip shapes pretrain-clip --steps 6")
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == manifest
    assert manifest["training"]["steps"] == 6 and manifest["command"].endswith("--steps 6")
    assert manifest["data"] == data_fingerprint(cfg) and manifest["data"]["num_images"] == 16
    assert manifest["data"]["sha256"] != data_fingerprint(dataclasses.replace(cfg, world_seed=1))["sha256"]
    assert {"torch", "open_clip"} <= set(manifest["versions"])
    loaded = load_clip(TINY_CLIP, str(tmp_path / CHECKPOINT_NAME), device="cpu")
    verify_checkpoint(loaded.model, tmp_path / CHECKPOINT_NAME)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_fp16_save_does_not_touch_the_model_and_verify_catches_a_difference(tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_fp16_checkpoint(model, tmp_path / "m.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loaded = load_clip(TINY_CLIP, str(path), device="cpu").model
    verify_checkpoint(loaded, path)
    with torch.no_grad():
        loaded.visual.proj[0, 0] += 1.0
    with pytest.raises(RuntimeError, match="differ"):
        verify_checkpoint(loaded, path)


def test_threshold_choice_prefers_the_best_then_the_lowest():
    scenes = render_scenes("clip_test_threshold", 8)
    cams = torch.from_numpy(scenes.masks[:, None] == np.arange(1, 8)[None, :, None, None]).float()
    best, sweep = choose_threshold(cams, scenes, (0.2, 0.5, 0.9))
    assert best == 0.2 and sweep["0.20"] == pytest.approx(1.0)


# --- the shipped checkpoint ------------------------------------------------------------------------------


def test_shipped_manifest_records_how_the_weights_were_made():
    manifest = json.loads((SHIPPED / MANIFEST_NAME).read_text())
    checkpoint = SHIPPED / manifest["checkpoint"]
    assert checkpoint.is_file() and checkpoint.stat().st_size == manifest["checkpoint_bytes"] <= 18.5e6
    assert manifest["command"].startswith("diclip shapes pretrain-clip")
    assert manifest["model_name"] == TINY_CLIP and manifest["data"]["split"] == "clip_pretrain"
    metrics = manifest["metrics"]
    assert metrics["presence_auc"]["mean"] >= 0.90
    assert metrics["cam"]["miou"] >= 0.45 > metrics["baselines"]["random_init"]["miou"]


def test_shipped_checkpoint_loads_exactly_and_recognises_held_out_scenes():
    checkpoint = SHIPPED / CHECKPOINT_NAME
    loaded = load_clip(TINY_CLIP, str(checkpoint), device="cpu")
    verify_checkpoint(loaded.model, checkpoint)
    scenes = render_scenes("clip_quality_check", 150)  # a split name no training or evaluation uses
    text = encode_prompts(loaded.model, loaded.tokenizer, class_prompts(CLASS_NAMES))
    aucs = presence_auc(presence_scores(loaded.model, scenes.images, text), scenes.labels)
    assert np.nanmean(aucs) > 0.8, aucs


def test_shipped_clip_loads_from_any_working_directory(tmp_path, monkeypatch):
    assert TINY_CLIP_DIR.is_absolute() and TINY_CLIP_DIR == SHIPPED
    monkeypatch.chdir(tmp_path)  # nothing may depend on being run from the repository root
    clip = load_shipped_clip()
    assert clip.model_name == TINY_CLIP and clip.pretrained == str(SHIPPED / CHECKPOINT_NAME)
    verify_checkpoint(clip.model, SHIPPED / CHECKPOINT_NAME)


@pytest.mark.slow  # 30 s; the training loop itself is in the default suite (test_short_training_...)
def test_pretrain_clip_command_trains_and_evaluates(tmp_path):
    from stages.pretrain_clip import pretrain_clip_command

    out = tmp_path / "w"
    result = CliRunner().invoke(pretrain_clip_command, ["--out", str(out), "--steps", "3", "--num-images", "16",
                                                        "--batch-size", "8", "--n-tune", "40", "--n-test", "60",
                                                        "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "presence AUC" in result.output and "surgery-CAM mIoU" in result.output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["command"] == (f"diclip shapes pretrain-clip --out {out} --model {TINY_CLIP} --seed 0 "
                                   "--world-seed 0 --steps 3 --num-images 16 --batch-size 8 --threads 1 "
                                   "--n-tune 40 --n-test 60")
    again = CliRunner().invoke(pretrain_clip_command, ["--eval-only", str(out), "--metrics-out",
                                                       str(tmp_path / "m.json"), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "m.json").read_text())["cam"]["miou"] == pytest.approx(manifest["metrics"]["cam"]["miou"])
