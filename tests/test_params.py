"""params.yaml validation: every bad key or value is named; presets switch datasets in place."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, Params, load_params, parse_params, to_plain
from pipeline.params.presets import apply_preset, list_presets

ROOT = Path(__file__).resolve().parent.parent


def file_error(tmp_path: Path, text: str, read=load_params) -> tuple[Path, str]:
    """(the params file, the message `read` refuses it with)."""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as info:
        read(path)
    return path, str(info.value)


def test_the_shipped_params_file_is_valid_and_overrides_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.dataset.root == "artifacts/shapes"
    assert params.shapes.splits == {"train": 2000, "val": 500}
    assert params.runner.torch_threads == 1
    # round trip: plain data back through the schema gives the same params
    assert parse_params(to_plain(params)) == params


@pytest.mark.parametrize("data, message", [
    ({"datset": {}}, "unknown key datset; valid keys: cams, dataset, diffusion_attention, evaluate, models, prepare, report, runner, shapes, train, tsa_adapt, tsa_cache"),
    ({"dataset": {"rooot": "x"}}, "unknown key dataset.rooot"),
    ({"dataset": {"kind": "pascal"}}, "dataset.kind must be one of 'folder', 'voc', 'coco', got 'pascal'"),
    ({"runner": {"n_workers": "two"}}, "runner.n_workers must be an integer, got 'two'"),
    ({"runner": {"n_workers": 0}}, "runner.n_workers must be >= 1, got 0"),
    ({"runner": {"in_process": 1}}, "runner.in_process must be true or false, got 1"),
    ({"runner": {"scheduler_address": "localhost"}}, "scheduler_address must look like tcp://host:port"),
    ({"shapes": {"splits": {"train": -5}}}, "splits.train must be a positive image count, got -5"),
    ({"shapes": {"splits": {"train": 1.5}}}, "shapes.splits.train must be an integer, got 1.5"),
    ({"shapes": {"world": {"image_size": 8}}}, "image_size"),
    ({"shapes": {"world": {"colour": 1}}}, "unknown key shapes.world.colour"),
    ({"prepare": {"on_error": "ignore"}}, "prepare.on_error must be one of 'fail', 'skip', got 'ignore'"),
    ({"prepare": {"shard_images": 0}}, "shard_images must be >= 1"),
    ({"train": {"dim": 100}}, "train.dim 100 must be a multiple of heads 8"),
    ({"train": {"rescale": [2.0, 1.0]}}, "train.rescale must be [low, high] with 0 < low <= high, got [2.0, 1.0]"),
    ({"train": {"architecture": "unet"}}, "train.architecture must be one of diclip, got 'unet'"),
    ({"train": {"iterations": 0}}, "train.iterations must be >= 1, got 0"),
    ({"evaluate": {"scales": []}}, "evaluate.scales must be a non-empty list of positive factors, got []"),
    ({"evaluate": {"fraction": 1.5}}, "evaluate.fraction must be in (0, 1], got 1.5"),
    ({"dataset": "voc"}, "dataset must be a mapping"),
    ({"models": {"precision": "fp16", "device": "cpu"}}, "models.precision fp16 needs a GPU, and device is cpu"),
    ({"models": {"device": "gpu0"}}, "models.device must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
])
def test_bad_params_are_rejected_by_name(data, message):
    with pytest.raises(ParamsError) as info:
        parse_params(data, "params.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("params.yaml: ")


def test_device_names_are_read_as_the_model_loader_reads_them():
    """Case and spaces do not matter to resolve_device, so not to the up-front check either."""
    assert parse_params({"models": {"device": " CUDA:0 ", "precision": "fp16"}}).models.device == " CUDA:0 "
    with pytest.raises(ParamsError, match="models.precision fp16 needs a GPU, and device is cpu"):
        parse_params({"models": {"device": "CPU", "precision": "fp16"}}, "params.yaml")


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_bad_yaml_is_one_line_with_the_position(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError) as info:
        load_params(bad)
    assert str(info.value) == (
        f"{bad}: not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"
        " (while parsing a flow sequence at line 1, column 10)"
    )


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
    da = params.diffusion_attention  # DiCLIP on SD 2.1-base, not the demo's tiny-SD values
    assert (da.image_size, da.timestep, da.grid, da.diclip.heads) == (320, None, 20, (1, 2))
    assert da.diclip.layer == "up_blocks.1.attentions.2.transformer_blocks.0.attn1"
    apply_preset(path, "shapes")
    assert load_params(path).dataset == Params().dataset
    assert load_params(path).models == Params().models
    # every key the voc preset changed is set back: the file is the repository's params.yaml again, byte for byte
    assert path.read_text() == (ROOT / "params.yaml").read_text()
    with pytest.raises(ParamsError, match="unknown preset 'pascal'; available: coco, excel-coco, excel-voc, shapes, voc"):
        apply_preset(path, "pascal")
    assert yaml.safe_load(path.read_text())["dataset"]["kind"] == "folder"
    for name in list_presets():  # every preset is undone by the shapes preset: no key is left behind
        apply_preset(path, name)
        apply_preset(path, "shapes")
        assert path.read_text() == (ROOT / "params.yaml").read_text(), name


def test_excel_presets_are_the_dataset_presets_with_excels_cam_path(tmp_path, monkeypatch):
    from pipeline.params import parse_params
    from pipeline.params.presets import load_preset

    for dataset in ("voc", "coco"):
        diclip, excel = (parse_params(load_preset(n), n) for n in (dataset, f"excel-{dataset}"))
        assert excel.dataset == diclip.dataset and excel.models == diclip.models
        assert excel.diffusion_attention == diclip.diffusion_attention and excel.train == diclip.train
        c = excel.cams
        assert (c.surgery, c.vce, c.rar, c.cache_weight, c.par, c.box_threshold, c.label_upsample) == \
            ("excel", False, False, 0.0, True, 0.79, None)
        assert c.attributes_file.startswith("data/excel/descriptors_") and c.attribute_clusters == {"voc": 112, "coco": 224}[dataset]
        assert (diclip.cams.surgery, diclip.cams.vce, diclip.cams.rar, diclip.cams.cache_weight) == ("diclip", True, True, 0.5)
    monkeypatch.setattr("pipeline.params.presets.PRESET_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ParamsError, match=r"presets extend each other in a circle \(a -> b -> a\)"):
        load_preset("a")


# --- reading the file: encodings, top-level shape, duplicate keys, non-string keys ---

SHARD_3 = "# a comment\nprepare:\n  shard_images: 3\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_params_files_are_read_as_utf8_or_by_their_bom(tmp_path, encoding):
    path = tmp_path / "params.yaml"
    bom = "\ufeff" if encoding in ("utf-16-le", "utf-16-be") else ""  # 'utf-16' and 'utf-32' write their own BOM
    path.write_bytes((bom + SHARD_3 + "dataset:\n  root: données\n").encode(encoding))
    params = load_params(path)
    assert (params.prepare.shard_images, params.dataset.root) == (3, "données")


def test_an_undecodable_params_file_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("dataset:\n  root: données\n".encode("latin-1"))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: expected UTF-8 (or UTF-16 with a BOM) text")
    assert "byte 21 is not valid UTF-8" in message and "\n" not in message  # the é of données
    truncated = tmp_path / "truncated.yaml"
    truncated.write_bytes("prepare: {}\n".encode("utf-16")[:-1])  # a UTF-16 BOM, then an odd byte count
    with pytest.raises(ParamsError, match=r"truncated\.yaml: expected UTF-8 \(or UTF-16 with a BOM\) text, but "
                                          r"byte 24 is not valid UTF-16 \(truncated data"):
        load_params(truncated)


def test_a_preset_applies_to_a_utf16_params_file_and_writes_utf8(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_text(encoding="utf-8").encode("utf-16"))
    apply_preset(path, "voc", root="/data/VOC2012")
    params = load_params(path)
    assert (params.dataset.kind, params.dataset.root) == ("voc", "/data/VOC2012")
    path.read_bytes().decode("utf-8")  # written back as plain UTF-8 (no BOM)
    assert not path.read_bytes().startswith(b"\xef\xbb\xbf")
    apply_preset(path, "shapes")
    assert path.read_text(encoding="utf-8") == (ROOT / "params.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("text, found", [
    ("false\n", "false"),
    ("0\n", "an integer: 0"),
    ("[]\n", "a list: []"),
    ("voc\n", "a string: 'voc'"),
    ("1.5\n", "a number: 1.5"),
    ("- dataset\n- runner\n", "a list: ['dataset', 'runner']"),
])
def test_only_an_empty_file_means_all_defaults(tmp_path, text, found):
    path, message = file_error(tmp_path, text)
    assert message == (
        f"{path}: expected a mapping of params sections (dataset:, runner:, ...) or an empty file, got {found}"
    )
    with pytest.raises(ParamsError, match="expected a mapping of params sections"):
        parse_params(yaml.safe_load(text), "params.yaml")


@pytest.mark.parametrize("data, message", [
    ({"prepare": {1: "a", "foo": "b"}}, "key 1 (an integer) in prepare: keys must be strings; valid keys in prepare: on_error, shard_images"),
    ({True: 1, "dataset": {}}, "key True (true or false) at the top level: keys must be strings (YAML reads unquoted "
                               "yes/no/on/off as true/false: quote the key); valid keys: cams, dataset,"),
    ({"shapes": {"world": {None: 1, "image_size": 64}}}, "key None (null) in shapes.world: keys must be strings"),
    ({"shapes": {"splits": {1: 5, "val": 3}}}, "key 1 (an integer) in shapes.splits: keys must be strings"),
])
def test_non_string_keys_are_rejected_by_name(data, message):
    with pytest.raises(ParamsError) as info:
        parse_params(data, "params.yaml")
    assert str(info.value).startswith("params.yaml: " + message)


def test_non_string_keys_in_a_file_are_rejected_by_name(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("prepare:\n  1: a\n  foo: b\n")
    with pytest.raises(ParamsError, match=r"p\.yaml: key 1 \(an integer\) in prepare: keys must be strings"):
        load_params(path)


@pytest.mark.parametrize("text, message", [
    ("runner:\n  n_workers: 2\nprepare: {}\nrunner:\n  n_workers: 3\n", "duplicate key runner on lines 1 and 4"),
    (SHARD_3 + "  on_error: skip\n  shard_images: 4\n", "duplicate key prepare.shard_images on lines 3 and 5"),
    ("shapes:\n  splits:\n    train: 1\n    val: 2\n    train: 3\n", "duplicate key shapes.splits.train on lines 3 and 5"),
    ("shapes: {world: {image_size: 64, image_size: 32}}\n", "duplicate key shapes.world.image_size on lines 1 and 1"),
])
def test_duplicate_keys_are_rejected_with_both_lines(tmp_path, text, message):
    path, loaded = file_error(tmp_path, text)
    assert loaded.startswith(f"{path}: {message}")
    _, preset = file_error(tmp_path, text, read=lambda p: apply_preset(p, "voc"))
    assert preset.startswith(f"{path}: {message}")


def test_yaml_merge_keys_may_override_what_they_merge(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "x-base: &base {n_workers: 3, threads_per_worker: 2}\n"
        "x-mid: &mid {<<: *base, n_workers: 4}\n"
        "runner: {<<: *mid, threads_per_worker: 5}\n"
    )
    with pytest.raises(ParamsError, match="unknown key x-base"):  # merged, not reported as duplicates
        load_params(path)


@pytest.mark.parametrize("data, message", [
    ({"prepare": {"shard_images": -3}}, "params.yaml: prepare.shard_images must be >= 1, got -3"),
    ({"runner": {"n_workers": 0}}, "params.yaml: runner.n_workers must be >= 1, got 0"),
    ({"shapes": {"world": {"image_size": 16}}}, "params.yaml: shapes.world.image_size must be an int >= 32, got 16"),
    ({"shapes": {"world": {"min_scale": 0.3, "max_scale": 0.2}}},
     "params.yaml: shapes.world.max_scale must be a number in [min_scale (0.3), 0.5], got 0.2"),
    ({"shapes": {"splits": {"train": -5}}}, "params.yaml: shapes.splits.train must be a positive image count, got -5"),
    ({"shapes": {"splits": {"a b": 5}}},
     "params.yaml: shapes.splits: split name 'a b' must be letters, digits and '_'"),
])
def test_post_init_errors_name_the_dotted_key(data, message):
    with pytest.raises(ParamsError) as info:
        parse_params(data, "params.yaml")
    assert str(info.value) == message


def test_a_section_error_not_about_a_field_keeps_the_section_name():
    from pipeline.params.schema import build

    @dataclasses.dataclass(frozen=True)
    class Section:
        size: int = 1

        def __post_init__(self) -> None:
            if self.size > 9:
                raise ValueError(f"too big: size {self.size} > 9")

    with pytest.raises(ParamsError) as info:
        build(Section, {"size": 10}, "section")
    assert str(info.value) == "section: too big: size 10 > 9"


def test_loading_params_does_not_import_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  shard_images: -3\n")
    code = (
        "import sys\n"
        "from pipeline.params import ParamsError, load_params\n"
        "try:\n"
        "    load_params(sys.argv[1])\n"
        "except ParamsError as err:\n"
        "    print(err)\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'open_clip', 'transformers') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{bad}: prepare.shard_images must be >= 1, got -3" in run.stdout
    assert "heavy: []" in run.stdout  # validating params stays cheap: no torch, diffusers or open_clip


# ------------------------------------------------------------------------------ one source for every default
def config_pairs():
    """(params section, the algorithm config it is): one pattern for all, the section is the config or a
    subclass that adds only the stage's storage and evaluation keys."""
    from pipeline.cam.config import CamConfig
    from pipeline.data.config import ShapesConfig
    from pipeline.diffusion.config import AcrConfig, DiclipConfig, StageAConfig, TransitionConfig
    from pipeline.params import sections
    from pipeline.segment.config import InferenceConfig, TrainConfig
    from pipeline.tsa.config import AdapterConfig

    hints = lambda cls: {f.name: f.type for f in dataclasses.fields(cls)}  # noqa: E731
    return [
        (sections.DiffusionAttentionParams, StageAConfig), (sections.CamsParams, CamConfig),
        (sections.TrainParams, TrainConfig), (sections.EvaluateParams, InferenceConfig),
        (sections.TsaAdaptParams, AdapterConfig),
        (eval(hints(sections.ShapesParams)["world"], vars(sections)), ShapesConfig),
        (eval(hints(StageAConfig)["diclip"], vars(sys.modules[StageAConfig.__module__])), DiclipConfig),
        (eval(hints(StageAConfig)["acr"], vars(sys.modules[StageAConfig.__module__])), AcrConfig),
        (eval(hints(StageAConfig)["transition"], vars(sys.modules[StageAConfig.__module__])), TransitionConfig),
    ]


def twins(section: type, classes) -> list[str]:
    """Dataclasses outside `section`'s class tree that give three or more of its fields a default again (a
    default written twice), with the names they share."""
    own = {f.name for f in dataclasses.fields(section)}
    out = []
    for cls in classes:
        if not dataclasses.is_dataclass(cls) or issubclass(section, cls) or issubclass(cls, section):
            continue
        defaulted = {f.name for f in dataclasses.fields(cls)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        shared = sorted(own & defaulted)
        if len(shared) >= 3:
            out.append(f"{cls.__module__}.{cls.__qualname__}: {', '.join(shared)}")
    return out


def algorithm_dataclasses():
    import importlib
    import inspect

    root = Path(__file__).resolve().parent.parent
    found = []
    for package in ("cam", "diffusion", "segment", "tsa", "tasks", "report", "models", "data"):
        for path in sorted((root / "pipeline" / package).glob("*.py")):
            module = importlib.import_module(f"pipeline.{package}.{path.stem}".removesuffix(".__init__"))
            found += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return found


def test_each_params_section_is_its_algorithms_config_and_no_default_is_written_twice():
    configs = {config for _, config in config_pairs()}  # each one the source of its own section's defaults
    classes = [c for c in algorithm_dataclasses() if c not in configs]
    for section, config in config_pairs():
        assert section is config or issubclass(section, config), f"{section.__name__} is not {config.__name__}"
        redeclared = set(section.__dict__.get("__annotations__", {})) & {f.name for f in dataclasses.fields(config)} \
            if section is not config else set()
        assert not redeclared, f"{section.__name__} declares {sorted(redeclared)} again"
        for f in dataclasses.fields(config):  # the same names, the same defaults
            assert getattr(section(), f.name) == getattr(config(), f.name), f"{section.__name__}.{f.name}"
        assert twins(section, classes) == [], f"a twin of {section.__name__}'s fields"


def test_the_twin_check_finds_a_planted_twin():
    from pipeline.params.sections import CamsParams

    @dataclasses.dataclass(frozen=True)
    class PlantedCamConfig:  # what CamsParams and the old CamConfig were: the same fields, written twice
        clip_size: int = 320
        surgery: str = "diclip"
        refine: bool = True
        rar_iterations: int = 10

    assert twins(CamsParams, [PlantedCamConfig]) == [
        f"{__name__}.test_the_twin_check_finds_a_planted_twin.<locals>.PlantedCamConfig: "
        "clip_size, rar_iterations, refine, surgery"]
