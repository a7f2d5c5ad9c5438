"""The stage skeleton: what every DVC stage does the same way, written once.

A stage declares a `StageSpec`: its name and command, the dotted params keys it reads, the artifacts
it reads and writes (`pipeline.artifacts`). The skeleton then
- loads params.yaml, validating every section but refusing only for the sections the stage reads,
  and hands the stage only the keys it declared (reading another raises, so the declaration, from
  which `dvc.yaml` is generated, cannot drift from the code);
- stamps provenance from what decides the stage's bytes (`pipeline.provenance`): the declared params'
  resolved values, its algorithm code, the layout versions of the formats it writes, the fingerprints
  of its inputs;
- opens the dataset index and the dataset's splits;
- maps a per-image task over images into a resumable store (`images`): the store decides what is
  reused, the runner schedules the rest;
- writes metric files atomically (headline numbers, and the detail beside them);
- ends with one summary line, or one message when the disk is full.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline import provenance
from pipeline.artifacts import Artifact
from pipeline.errors import DiskFull, ParamsError, disk_full

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration; `module` is the stage module (its algorithm closure is its code).

    `command`: the `diclip` subcommand that runs it (dvc.yaml's `cmd`). `extra_deps`: what `dvc.yaml`
    lists beyond the input artifacts (the dataset folder, a document the report copies).
    `worker_imports`: the modules a stage's tasks load on the runner's workers (a model library, say),
    imported there while the driver still prepares once the stage calls `StageContext.start_workers`."""

    name: str
    module: str
    command: str
    params: tuple[str, ...]
    inputs: tuple[Artifact, ...] = ()
    outputs: tuple[Artifact, ...] = ()
    extra_deps: tuple[str, ...] = ()
    worker_imports: tuple[str, ...] | None = None

    @property
    def module_file(self) -> str:
        from pipeline import codegraph

        path = codegraph.module_file(self.module)
        if path is None:
            raise ValueError(f"stage {self.name!r}: module {self.module!r} is not a file of this repo")
        return path.relative_to(codegraph.REPO_ROOT).as_posix()

    @property
    def sections(self) -> frozenset[str]:
        """The params sections the stage reads (those of its declared keys, and the runner's)."""
        return frozenset({key.split(".")[0] for key in self.params} | {"runner"})

    @property
    def layouts(self) -> tuple[str, ...]:
        """The stored formats the stage writes (pipeline.store.layouts)."""
        return tuple(sorted({name for a in self.outputs for name in a.layouts}))


class DeclaredParams:
    """Attribute access to the params keys a stage declared; any other key raises ParamsError.

    A fully declared section (or sub-section) is returned as its frozen dataclass, so it pickles to
    workers as is; a partly declared one as another DeclaredParams.
    """

    def __init__(self, stage: str, obj: Any, declared: tuple[str, ...], prefix: str = "") -> None:
        self._stage, self._obj, self._declared, self._prefix = stage, obj, declared, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = f"{self._prefix}{name}"
        value = getattr(self._obj, name)
        if any(key == d or key.startswith(d + ".") for d in self._declared):
            return value
        if any(d.startswith(key + ".") for d in self._declared):
            return DeclaredParams(self._stage, value, self._declared, key + ".")
        raise ParamsError(
            f"stage {self._stage!r} reads params {key!r} but does not declare it: add it to the stage's "
            "StageSpec.params (then `diclip dvcfile --write` updates dvc.yaml)"
        )


def declared_values(params: Any, keys: Sequence[str]) -> dict[str, Any]:
    """{dotted key: plain value} of the declared keys (what the params hash covers)."""
    from pipeline.params import to_plain

    out = {}
    for key in keys:
        value: Any = params
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = to_plain(value)
    return out


@dataclass
class Summary:
    """What a stage did, for its one summary line."""

    images: int = 0
    computed: int = 0
    reused: int = 0
    failed: int = 0

    def add(self, report: Any) -> None:
        self.computed += report.computed
        self.reused += report.reused
        self.failed += len(report.failures)
        self.images += report.computed + report.reused + len(report.failures)


class StageContext:
    """What a running stage gets from the skeleton: its params, paths, provenance, index, runner."""

    def __init__(self, spec: StageSpec, params: Any, paths: Mapping[str, Path]) -> None:
        self.spec = spec
        self._params = params
        self.params = DeclaredParams(spec.name, params, spec.params)
        self.runner_params = params.runner  # never part of provenance: results do not depend on it
        self.paths = dict(paths)
        self.summary = Summary()
        self._runner = None

    # ------------------------------------------------------------------ paths and provenance
    def path(self, artifact: Artifact) -> Path:
        return self.paths[artifact.name]

    def stamp(self, *, inputs: Mapping[str, str] | None = None, exclude: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
        """Provenance of an output: declared params (less `exclude`d keys), algorithm code digest, the
        written formats' layout versions, input fingerprints. `extra` holds values that decide the
        output but are not params (e.g. resolved model sizes)."""
        values = _without(declared_values(self._params, self.spec.params), exclude)
        return provenance.stamp(self.spec.name, {**values, **extra}, code=provenance.code_digest(self.spec.module_file),
                                layouts=provenance.layout_versions(self.spec.layouts), inputs=inputs)

    # ------------------------------------------------------------------ inputs
    def index(self):
        """The dataset index this stage reads (`artifacts.INDEX`)."""
        from pipeline.artifacts import INDEX
        from pipeline.store.dataset_index import DatasetIndex

        return DatasetIndex.load(self.path(INDEX))

    # ------------------------------------------------------------------ per-image work
    @property
    def runner(self):
        if self._runner is None:
            from pipeline.runner import Runner

            self._runner = Runner(self.runner_params).__enter__()
        return self._runner

    def start_workers(self) -> None:
        """Bring the runner's cluster up in the background now and have its workers import the spec's
        `worker_imports`, so that cost overlaps the driver's own preparation. A stage calls this once its
        inputs have opened (a missing or wrong input is then reported at once, with no cluster to stop)."""
        self.runner.start(self.spec.worker_imports or ())

    def images(self, task: Any, out: Path, *, ids: Sequence[str], specs: Sequence[Any], key: str,
               attrs: Mapping[str, Any], shard_images: int, desc: str, allow_failures: bool = False,
               files: Sequence[Any] = ()):
        """Compute `task` for every image of `ids` into the per-image store `out` (resuming it when its
        `key` matches), mark it complete and return (store, report). `files` are per-image PNG outputs
        (pipeline.store.image_store.FileSpec). With `allow_failures` failed images are left out
        (`report.failures`) instead of failing the stage."""
        from pipeline.runner import ImageFailures
        from pipeline.store.image_store import ImageStore

        store = ImageStore.create_or_resume(out, ids=ids, specs=specs, key=key, attrs=attrs, shard_images=shard_images,
                                            files=files)
        try:
            report = self.runner.run(task, store, desc=desc)
        except ImageFailures as err:
            if not allow_failures or err.report is None:
                raise
            report = err.report
        self.summary.add(report)
        store.mark_complete({"fingerprint": attrs.get("fingerprint", key)}, allow_missing=allow_failures)
        return store, report

    # ------------------------------------------------------------------ outputs
    def write_metric(self, artifact: Artifact, data: Mapping[str, Any]) -> Path:
        """Write a JSON file atomically (sorted keys: same data, same bytes)."""
        from pipeline import atomic

        return atomic.write_json(self.path(artifact), dict(data))

    def write_metrics(self, metric: Artifact, detail: Artifact, headline: Mapping[str, Any],
                      details: Mapping[str, Any]) -> tuple[dict, dict]:
        """Write a stage's headline numbers (`dvc metrics show` reads them) and its detail beside them;
        returns both."""
        self.write_metric(detail, details)
        self.write_metric(metric, headline)
        return dict(headline), dict(details)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.__exit__(None, None, None)
            self._runner = None


def run_stage(spec: StageSpec, body: Callable[[StageContext], Any], *, params_path: Path | None = None,
              paths: Mapping[str, Path] | None = None, params: Any = None) -> tuple[Any, Summary]:
    """Load params, run `body` with a StageContext, log one summary line; returns (body's result, summary).

    A full disk anywhere in the stage (here or on a worker) becomes one DiskFull naming the path and
    the stage, and saying that a rerun resumes."""
    from pipeline.params import load_params

    params = load_params(params_path or "params.yaml", sections=spec.sections) if params is None else params
    given = {k: Path(v) for k, v in (paths or {}).items() if v is not None}
    all_paths = {a.name: given.get(a.name, Path(a.path)) for a in (*spec.inputs, *spec.outputs)}
    ctx = StageContext(spec, params, all_paths)
    start = time.perf_counter()
    try:
        result = body(ctx)
    except OSError as err:
        full = disk_full(err)
        if full is None:
            raise
        raise DiskFull(f"{spec.name}: no space left on the device while writing {full or 'its outputs'}; free some space and rerun "
                       f"(`dvc repro` or `diclip {spec.command}`): everything already computed is kept and the rerun "
                       "resumes") from None
    finally:
        ctx.close()
    s = ctx.summary
    line = f"{spec.name}: done in {time.perf_counter() - start:.1f} s"
    if s.images:
        line += f"; {s.images} images ({s.computed} computed, {s.reused} reused, {s.failed} failed)"
    print(line, flush=True)
    return result, s


def _without(values: dict[str, Any], exclude: Sequence[str]) -> dict[str, Any]:
    """`values` ({declared key: plain value}) less the `exclude`d dotted keys, at any depth."""
    out = {k: v for k, v in values.items() if k not in exclude}
    for key in exclude:
        for declared, value in out.items():
            if key.startswith(declared + "."):
                *path, leaf = key[len(declared) + 1:].split(".")
                out[declared] = value = _copy(value)
                for part in path:
                    value = value[part]
                value.pop(leaf, None)
    return out


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value
