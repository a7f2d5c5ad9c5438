"""The stage skeleton with two planted stages: the second reads the first's store through aligned
inputs and writes arrays and PNG files; provenance follows inputs only; reuse, recompute and the
summary line follow from that."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.artifacts import Artifact
from pipeline.params import Params, ParamsError, parse_params
from pipeline.skeleton import StageContext, StageSpec, run_stage
from pipeline.store.image_store import ArraySpec, FileSpec, ImageStore

FIRST = Artifact("first", "unused/first.zarr", "first store")
SECOND = Artifact("second", "unused/second.zarr", "second store")
IDS = [f"im{i}" for i in range(6)]
S1 = StageSpec("first", "stages.prepare", params=("prepare.shard_images",), outputs=(FIRST,))
S2 = StageSpec("second", "stages.prepare", params=("prepare",), inputs=(FIRST,), outputs=(SECOND,))


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

    inputs: object
    log: str

    def build(self):
        def fn(image_id):
            with open(self.log, "a") as f:
                f.write(image_id + "\n")
            x = self.inputs.row(image_id)["first"]["x"]
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
        inputs = ctx.aligned(FIRST)
        stamp = ctx.stamp(inputs=inputs.fingerprints)
        store, _ = ctx.images(Label(inputs, str(log)), ctx.path(SECOND), ids=IDS, specs=[ArraySpec("total", (), "int64")],
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
    assert set(a) == {"stage", "params_hash", "code_digest", "inputs", "fingerprint"}


def test_undeclared_params_cannot_be_read():
    ctx = StageContext(S1, params(), {})
    assert ctx.params.prepare.shard_images == 4
    with pytest.raises(ParamsError, match="stage 'first' reads params 'prepare.on_error' but does not declare it"):
        ctx.params.prepare.on_error
