"""params.yaml validation: every bad key or value is named; presets switch datasets in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, Params, load_params, parse_params, to_plain
from pipeline.params.presets import apply_preset, list_presets

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_params_file_is_valid_and_overrides_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.dataset.root == "artifacts/shapes"
    assert params.shapes.splits == {"train": 2000, "val": 500}
    assert params.runner.torch_threads == 1
    # round trip: plain data back through the schema gives the same params
    assert parse_params(to_plain(params)) == params


@pytest.mark.parametrize("data, message", [
    ({"datset": {}}, "unknown key datset; valid keys: dataset, diffusion_attention, models, prepare, runner, shapes"),
    ({"dataset": {"rooot": "x"}}, "unknown key dataset.rooot"),
    ({"dataset": {"kind": "pascal"}}, "dataset.kind must be one of 'folder', 'voc', 'coco', got 'pascal'"),
    ({"runner": {"n_workers": "two"}}, "runner.n_workers must be an integer, got 'two'"),
    ({"runner": {"n_workers": 0}}, "runner: n_workers must be >= 1, got 0"),
    ({"runner": {"in_process": 1}}, "runner.in_process must be true or false, got 1"),
    ({"runner": {"scheduler_address": "localhost"}}, "scheduler_address must look like tcp://host:port"),
    ({"shapes": {"splits": {"train": -5}}}, "splits.train must be a positive image count, got -5"),
    ({"shapes": {"splits": {"train": 1.5}}}, "shapes.splits.train must be an integer, got 1.5"),
    ({"shapes": {"world": {"image_size": 8}}}, "image_size"),
    ({"shapes": {"world": {"colour": 1}}}, "unknown key shapes.world.colour"),
    ({"prepare": {"on_error": "ignore"}}, "prepare.on_error must be one of 'fail', 'skip', got 'ignore'"),
    ({"prepare": {"shard_images": 0}}, "shard_images must be >= 1"),
    ({"dataset": "voc"}, "dataset must be a mapping"),
])
def test_bad_params_are_rejected_by_name(data, message):
    with pytest.raises(ParamsError) as info:
        parse_params(data, "params.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("params.yaml: ")


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_empty_file_means_all_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("# nothing\n")
    assert load_params(tmp_path / "p.yaml") == Params()


def test_presets_switch_the_dataset_and_keep_comments(tmp_path):
    assert {"shapes", "voc", "coco"} <= set(list_presets())
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    changed = apply_preset(path, "voc", root="/data/VOC2012")
    assert changed["dataset.kind"] == "voc" and changed["dataset.root"] == "/data/VOC2012"
    params = load_params(path)
    assert (params.dataset.kind, params.dataset.root, params.dataset.train_split) == ("voc", "/data/VOC2012", "train_aug")
    assert params.shapes.splits == {"train": 2000, "val": 500}  # untouched sections stay
    assert (params.models.clip.model, params.models.clip.pretrained) == ("ViT-B-16-quickgelu", "openai")
    assert params.models.sd.model == "stabilityai/stable-diffusion-2-1-base"
    text = path.read_text()
    assert "# fail | skip" in text  # comments survive the edit
    assert params.diffusion_attention.image_size is None  # SD 2.1 at its native 512 px, not the demo's 256
    apply_preset(path, "shapes")
    assert load_params(path).dataset == Params().dataset
    assert load_params(path).models == Params().models
    # every key the voc preset changed is set back: the file is the repository's params.yaml again, byte for byte
    assert path.read_text() == (ROOT / "params.yaml").read_text()
    with pytest.raises(ParamsError, match="unknown preset 'pascal'; available: coco, shapes, voc"):
        apply_preset(path, "pascal")
    assert yaml.safe_load(path.read_text())["dataset"]["kind"] == "folder"
