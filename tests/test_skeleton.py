"""The stage skeleton with two planted stages: the second reads the first's store and writes arrays and
PNG files; provenance follows what decides the bytes only; reuse, recompute and the summary line
follow from that; a stage refuses only bad params of the sections it reads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.artifacts import Artifact
from pipeline.params import Params, ParamsError, parse_params
from pipeline.skeleton import StageContext, StageSpec, run_stage
from pipeline.store.image_store import ArraySpec, FileSpec, ImageStore

FIRST = Artifact("first", "unused/first.zarr", "first store", layouts=("IMAGE_STORE",))
SECOND = Artifact("second", "unused/second.zarr", "second store", layouts=("IMAGE_STORE",))
IDS = [f"im{i}" for i in range(6)]
S1 = StageSpec("first", "stages.prepare", "prepare", params=("prepare.shard_images",), outputs=(FIRST,))
S2 = StageSpec("second", "stages.prepare", "prepare", params=("prepare",), inputs=(FIRST,), outputs=(SECOND,))


def _digest(image_id: str, salt: str = "") -> bytes:
    return hashlib.sha256((image_id + salt).encode()).digest()


@dataclass(frozen=True)
class Scale:
    """First stage: x = digest-derived values times `factor`."""

    factor: int

    def build(self):
        return lambda i: {"x": np.frombuffer(_digest(i)[:4], np.uint8).astype(np.int32) * self.factor}

    def input_digest(self, image_id: str) -> bytes:
        return _digest(image_id)


@dataclass(frozen=True)
class Label:
    """Second stage: a 3x5 label map from the first stage's row; `log` records what was computed."""

    first: str
    log: str

    def build(self):
        store = ImageStore.open(self.first)
        rows = {image_id: i for i, image_id in enumerate(store.ids())}

        def fn(image_id):
            with open(self.log, "a") as f:
                f.write(image_id + "\n")
            x = store.read("x", rows[image_id])
            return {"total": np.int64(x.sum()), "label": np.full((3, 5), x[0] % 7, np.uint8)}

        return fn

    def input_digest(self, image_id: str) -> bytes:
        return _digest(image_id)


def first_body(factor: int):
    def body(ctx: StageContext):
        stamp = ctx.stamp(factor=factor)
        ctx.images(Scale(factor), ctx.path(FIRST), ids=IDS, specs=[ArraySpec("x", (4,), "int32")], key=stamp["fingerprint"],
                   attrs=stamp, shard_images=ctx.params.prepare.shard_images, desc="first")
    return body


def second_body(log, labels_dir):
    def body(ctx: StageContext):
        first = ImageStore.open(ctx.path(FIRST))
        stamp = ctx.stamp(inputs={"first": first.fingerprint})
        store, _ = ctx.images(Label(str(ctx.path(FIRST)), str(log)), ctx.path(SECOND), ids=IDS, specs=[ArraySpec("total", (), "int64")],
                              files=[FileSpec("label", str(labels_dir))], key=stamp["fingerprint"], attrs=stamp,
                              shard_images=4, desc="second")
        return store
    return body


def params(**prepare) -> Params:
    return parse_params({"prepare": {"shard_images": 4, **prepare}, "runner": {"in_process": True}})


def test_two_stages_chain_reuse_and_recompute_by_their_inputs(tmp_path, capsys):
    paths = {"first": tmp_path / "first.zarr", "second": tmp_path / "second.zarr"}
    log, labels = tmp_path / "log.txt", tmp_path / "labels"
    run_stage(S1, first_body(2), params=params(), paths=paths)
    store, summary = run_stage(S2, second_body(log, labels), params=params(), paths=paths)
    assert (summary.images, summary.computed, summary.reused, summary.failed) == (6, 6, 0, 0)
    assert "second: done in" in capsys.readouterr().out
    first = ImageStore.open(paths["first"])
    assert store.attrs["inputs"] == {"first": first.fingerprint} and store.fingerprint
    for i, image_id in enumerate(IDS):
        x = first.read("x", i)
        assert store.read("total", i) == x.sum()
        assert (labels / f"{image_id}.png").is_file()

    _, again = run_stage(S2, second_body(log, labels), params=params(), paths=paths)  # nothing changed
    assert (again.computed, again.reused) == (0, 6) and len(log.read_text().split()) == 6
    _, other = run_stage(S2, second_body(log, labels), params=params(on_error="skip"), paths=paths)  # its own params
    assert other.computed == 6
    run_stage(S1, first_body(3), params=params(), paths=paths)  # the input artifact changes
    _, after = run_stage(S2, second_body(log, labels), params=params(on_error="skip"), paths=paths)
    assert after.computed == 6
    assert ImageStore.open(paths["second"]).read("total").tolist() == [ImageStore.open(paths["first"]).read("x", i).sum() for i in range(6)]


def test_provenance_holds_inputs_only_and_is_stable(tmp_path):
    a = StageContext(S1, params(), {}).stamp(factor=2)
    b = StageContext(S1, params(on_error="skip"), {}).stamp(factor=2)  # a param S1 does not read
    c = StageContext(S1, params(shard_images=5), {}).stamp(factor=2)
    assert a == b and a != c
    assert set(a) == {"stage", "params_hash", "code_digest", "layouts", "inputs", "fingerprint"}
    from pipeline.store import layouts

    assert a["layouts"] == {"IMAGE_STORE": layouts.IMAGE_STORE}


def test_a_stage_refuses_bad_params_only_in_the_sections_it_reads(tmp_path, caplog):
    """Every section is validated, but a bad value in a section a stage does not read is a warning there:
    `shapes_world` never fails because of `evaluate` or `train`."""
    import logging

    from pipeline.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  shard_images: 4\ntrain:\n  lr: -1\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.params"):
        loaded = load_params(path, sections=S1.sections)
    assert loaded.prepare.shard_images == 4 and loaded.train.lr > 0  # the bad section is left at its defaults
    assert any("train.lr must be > 0" in r.getMessage() for r in caplog.records)
    with pytest.raises(ParamsError, match=r"params.yaml: train.lr must be > 0"):
        load_params(path, sections=("train",))
    with pytest.raises(ParamsError, match=r"params.yaml: train.lr must be > 0"):
        load_params(path)  # `diclip params check`: every section
    path.write_text("prepare:\n  shard_images: 0\ntrain:\n  lr: -1\n")
    with pytest.raises(ParamsError, match=r"prepare.shard_images must be >= 1, got 0"):
        load_params(path, sections=S1.sections)


def test_undeclared_params_cannot_be_read():
    ctx = StageContext(S1, params(), {})
    assert ctx.params.prepare.shard_images == 4
    with pytest.raises(ParamsError, match="stage 'first' reads params 'prepare.on_error' but does not declare it"):
        ctx.params.prepare.on_error
