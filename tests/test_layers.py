"""The structure cannot rot: the import graph has no cycles between packages, algorithms import no I/O
or pipeline plumbing, only the store and the runner touch zarr, HDF5 and dask, and every dvc.yaml stage
lists exactly the code files its command imports, the params it reads and the artifacts it writes.

Each rule is a function over a source tree, run here on the repo and on a tree with a planted
violation (so the rule is shown to fail when it should)."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import codegraph

ROOT = codegraph.REPO_ROOT
ALGORITHMS = ("pipeline.diffusion", "pipeline.cam", "pipeline.tsa", "pipeline.segment")
PLUMBING = ("pipeline.params", "pipeline.runner", "pipeline.store", "pipeline.skeleton", "pipeline.provenance",
            "pipeline.artifacts", "pipeline.codegraph", "pipeline.atomic", "stages")
# model loading knows nothing of what uses the models
LOADING_ONLY = {"pipeline.models": ("pipeline.tiny", "pipeline.diffusion", "pipeline.cam", "pipeline.data", "pipeline.metrics")}
# algorithms take tensors, not models or datasets (class names are passed in)
TENSORS_ONLY = {
    "pipeline.cam": ("pipeline.models", "pipeline.tiny", "pipeline.data"),
    "pipeline.diffusion.capture": ("pipeline.models", "pipeline.tiny"),
    "pipeline.diffusion.acr": ("pipeline.models", "pipeline.tiny"),
    "pipeline.diffusion.correlation": ("pipeline.models", "pipeline.tiny"),
}
IO_LIBRARIES = {"zarr": ("pipeline.store",), "h5py": ("pipeline.store",), "dask": ("pipeline.runner",),
                "distributed": ("pipeline.runner",), "dvc": ()}


def source_files(root: Path) -> list[Path]:
    return sorted(p for pkg in codegraph.PACKAGES for p in (root / pkg).rglob("*.py"))


def node(path: Path, root: Path) -> str:
    """The package a file belongs to: pipeline.<subpackage>, a top-level pipeline module, or stages."""
    parts = codegraph.module_name(path, root).split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else parts[0]


def package_edges(root: Path) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in source_files(root):
        a = node(path, root)
        for dep in codegraph.imports_of(path, root).files:
            b = node(dep, root)
            if a != b and b != "pipeline":
                edges.setdefault(a, set()).add(b)
    return edges


def package_cycles(root: Path) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (deduplicated by its set of packages)."""
    edges, found, seen = package_edges(root), [], set()

    def visit(start: str, here: str, trail: list[str]) -> None:
        for nxt in sorted(edges.get(here, ())):
            if nxt == start:
                key = frozenset(trail)
                if key not in seen:
                    seen.add(key)
                    found.append(trail + [start])
            elif nxt not in trail and nxt > start:
                visit(start, nxt, trail + [nxt])

    for start in sorted(edges):
        visit(start, start, [start])
    return found


def layer_violations(root: Path) -> list[str]:
    out = []
    for path in source_files(root):
        rel, mod = path.relative_to(root).as_posix(), codegraph.module_name(path, root)
        imports = codegraph.imports_of(path, root)
        named = {codegraph.module_name(f, root) for f in imports.files}
        deps = {d for d in named if not any(o.startswith(d + ".") for o in named)}  # not the parents run on the way
        if mod.startswith(ALGORITHMS):
            bad = sorted(d for d in deps if d.startswith(PLUMBING))
            out += [f"{rel}: an algorithm module imports {d}" for d in bad]
        for rules, what in ((LOADING_ONLY, "model loading"), (TENSORS_ONLY, "a tensors-only algorithm")):
            for owner, forbidden in rules.items():
                if mod == owner or mod.startswith(owner + "."):
                    out += [f"{rel}: {what} module imports {d}" for d in sorted(deps) if d.startswith(forbidden)]
        for lib, allowed in IO_LIBRARIES.items():
            if lib in imports.external and not mod.startswith(allowed):
                out.append(f"{rel}: imports {lib} (only {', '.join(allowed) or 'no module'} may)")
        out += [f"{rel}:{line}: a dynamic import the code graph cannot follow" for line in imports.dynamic]
    return out


def test_no_import_cycles_between_packages():
    assert package_cycles(ROOT) == []


def test_algorithms_import_no_plumbing_and_only_the_store_and_runner_touch_io():
    assert layer_violations(ROOT) == []


def _planted_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for pkg in codegraph.PACKAGES:
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    return tree


def test_the_rules_fail_on_planted_violations(tmp_path):
    tree = _planted_tree(tmp_path)
    acr = tree / "pipeline/diffusion/acr.py"
    acr.write_text(acr.read_text() + "\n\ndef _leak():\n    from pipeline.store.image_store import ImageStore\n"
                   "    from pipeline.models.diffusion import untrained_unet\n")
    hub = tree / "pipeline/models/hub.py"
    hub.write_text(hub.read_text() + "\n\ndef _leak():\n    from pipeline import metrics\n")
    metrics = tree / "pipeline/metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _loop():\n    from pipeline.tiny import eval_sd\n")
    found = layer_violations(tree)
    assert "pipeline/diffusion/acr.py: an algorithm module imports pipeline.store.image_store" in found
    assert "pipeline/diffusion/acr.py: a tensors-only algorithm module imports pipeline.models.diffusion" in found
    assert "pipeline/models/hub.py: model loading module imports pipeline.metrics" in found
    assert any(set(c) >= {"pipeline.metrics", "pipeline.tiny"} for c in package_cycles(tree))


# ------------------------------------------------------------------------------ dvc.yaml deps
def stage_problems(root: Path) -> list[str]:
    """What each dvc.yaml stage misses or lists in excess, against what its command imports and declares."""
    from stages.cli import main

    problems = []
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        words = stage["cmd"].split()
        assert words[0] == "diclip", f"{name}: the command must be a diclip command"
        command = main
        for word in words[1:]:
            command = command.commands[word]
        module = importlib.import_module(command.callback.__module__)
        spec = module.SPEC
        problems += [f"{name}: dvc.yaml's stage runs {spec.name!r}"] if spec.name != name else []
        listed = [d for d in stage.get("deps", [])]
        code = set(codegraph.relative(codegraph.closure(spec.module_file, root=root), root))
        # a listed folder counts as code when it holds Python files (weights and word lists are data)
        listed_code = {d for d in listed if d.endswith(".py") or (root / d).is_dir() and d.split("/")[0] in codegraph.PACKAGES
                       and any((root / d).rglob("*.py"))}
        problems += [f"{name}: deps miss {f}" for f in sorted(code - listed_code)]
        problems += [f"{name}: deps list {f}, which the stage does not import" for f in sorted(listed_code - code)]
        params = set(stage.get("params", []))
        problems += [f"{name}: params miss {p}" for p in sorted(set(spec.params) - params)]
        problems += [f"{name}: params list {p}, which the stage does not declare" for p in sorted(params - set(spec.params))]
        declared = [next(iter(o)) if isinstance(o, dict) else o
                    for o in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])]
        # an artifact folder may be declared by what DVC needs to see inside it (DVCLive's metrics.json and
        # plots folder), so a declared path counts as the artifact it lies in
        within = lambda path, artifact: path == artifact or path.startswith(artifact + "/")  # noqa: E731
        tracked = [a for a in spec.outputs if a.tracked]
        outs = {next((a.path for a in tracked if within(o, a.path)), o) for o in declared}
        problems += [f"{name}: outs should be {sorted(a.path for a in tracked)}, not {sorted(outs)}"] \
            if outs != {a.path for a in tracked} else []
        problems += [f"{name}: deps miss the input artifact {a.path}" for a in spec.inputs
                     if not any(within(d.split("#")[0].strip(), a.path) for d in listed)]
        problems += [f"{name}: the command names a path ({w}); paths come from pipeline/artifacts.py"
                     for w in words if "/" in w]
    return problems


def test_dvc_yaml_lists_exactly_what_each_stage_imports_declares_and_writes():
    assert stage_problems(ROOT) == []


def test_the_deps_check_fails_on_a_planted_drift(tmp_path):
    tree = _planted_tree(tmp_path)
    shutil.copy2(ROOT / "dvc.yaml", tree / "dvc.yaml")
    prepare = tree / "stages/prepare.py"
    prepare.write_text(prepare.read_text() + "\n\ndef _new_dep():\n    from pipeline import metrics\n")
    dvc = yaml.safe_load((tree / "dvc.yaml").read_text())
    dvc["stages"]["prepare"]["params"].remove("prepare")
    (tree / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    problems = stage_problems(tree)
    assert "prepare: deps miss pipeline/metrics.py" in problems
    assert "prepare: params miss prepare" in problems
