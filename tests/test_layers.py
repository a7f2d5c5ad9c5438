"""The structure cannot rot: the import graph has no cycles between packages, algorithms import no I/O
or pipeline plumbing, tasks no scheduling, only the store and the runner touch zarr, HDF5 and dask, no
stage imports another, config modules hold declarations only, and dvc.yaml and the defaults file are
what the code generates (pipeline.dvcfile).

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
ALGORITHMS = ("pipeline.diffusion", "pipeline.cam", "pipeline.tsa", "pipeline.segment", "pipeline.report")
PLUMBING = ("pipeline.params", "pipeline.runner", "pipeline.store", "pipeline.skeleton", "pipeline.provenance",
            "pipeline.artifacts", "pipeline.codegraph", "pipeline.atomic", "pipeline.command", "pipeline.dvcfile",
            "pipeline.tasks", "stages")
# tasks read stores and run algorithms; they never schedule, stamp or parse params
TASKS_ONLY = {"pipeline.tasks": ("pipeline.params", "pipeline.runner", "pipeline.skeleton", "pipeline.provenance",
                                 "pipeline.codegraph", "pipeline.command", "pipeline.dvcfile", "stages")}
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
        for rules, what in ((LOADING_ONLY, "model loading"), (TENSORS_ONLY, "a tensors-only algorithm"),
                            (TASKS_ONLY, "a task")):
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


# ------------------------------------------------------------------------------ stages, configs, dvc.yaml
def stage_imports(root: Path) -> list[str]:
    """Imports of a stage module by another module of stages/ (but the command table, stages/cli.py),
    scripts/ or bench/: stages are thin and share code only through pipeline/."""
    out = []
    for folder in ("stages", "scripts", "bench"):
        for path in sorted((root / folder).glob("*.py")):
            if path == root / "stages" / "cli.py":
                continue
            for dep in codegraph.imports_of(path, root).files:
                rel = dep.relative_to(root).as_posix()
                if rel.startswith("stages/") and rel != "stages/__init__.py":
                    out.append(f"{path.relative_to(root).as_posix()} imports {rel}")
    return out


def config_violations(root: Path) -> list[str]:
    """Config modules (pipeline/<package>/config.py) hold declarations only: dataclasses whose only method
    is `__post_init__`, private check helpers, constants; they import no repo module but other configs
    and pipeline.errors. Their values enter a stage's key as resolved params, so no logic may hide there."""
    import ast

    out = []
    for path in sorted(root.glob("pipeline/*/config.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                out.append(f"{rel}: function {node.name} (only private check helpers)")
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name != "__post_init__":
                        out.append(f"{rel}: {node.name}.{item.name} (only __post_init__)")
        for dep in codegraph.imports_of(path, root).files:
            module = codegraph.module_name(dep, root)
            if not (codegraph.is_schema(module) or module in ("pipeline", "pipeline.errors") or dep.name == "__init__.py"):
                out.append(f"{rel}: imports {module}")
    return out


def test_no_stage_imports_another_stage_and_scripts_and_bench_import_only_pipeline():
    assert stage_imports(ROOT) == []


def test_config_modules_hold_declarations_only():
    assert config_violations(ROOT) == []


def test_stage_rules_fail_on_planted_violations(tmp_path):
    tree = _planted_tree(tmp_path)
    for folder in ("scripts", "bench"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    cams = tree / "stages/cams.py"
    cams.write_text(cams.read_text() + "\n\ndef _leak():\n    from stages.eval_cams import SPEC\n")
    (tree / "bench/bench_leak.py").write_text("from stages import prepare\n")
    config = tree / "pipeline/cam/config.py"
    config.write_text(config.read_text() + "\n\ndef derived(cfg):\n    from pipeline.cam import text_cam\n    return 1\n")
    assert set(stage_imports(tree)) == {"stages/cams.py imports stages/eval_cams.py", "bench/bench_leak.py imports stages/prepare.py"}
    assert set(config_violations(tree)) == {"pipeline/cam/config.py: function derived (only private check helpers)",
                                            "pipeline/cam/config.py: imports pipeline.cam.text_cam"}


def test_dvc_yaml_and_the_defaults_file_are_what_the_code_generates():
    """dvc.yaml lists exactly each stage's inputs, algorithm code, params (overrides and code defaults) and
    written layouts; pipeline/params/defaults.yaml holds the code's defaults. Regenerate with
    `diclip dvcfile --write`."""
    from pipeline import dvcfile
    from stages.cli import STAGES

    for path, text in dvcfile.generated([m.SPEC for m in STAGES]).items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `diclip dvcfile --write`"


def test_dvc_yaml_names_every_input_and_output_of_each_stage_and_runs_its_command():
    from stages.cli import STAGES, main

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    specs = [module.SPEC for module in STAGES]
    assert list(stages) == [spec.name for spec in specs]
    for spec in specs:
        stage = stages[spec.name]
        command = main
        for word in stage["cmd"].split()[1:]:
            command = command.commands[word]
        assert importlib.import_module(command.callback.__module__).SPEC == spec
        paths = set(stage["deps"]) | {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])} | \
            set(stage.get("metrics", [])) | {next(iter(o)) for o in stage.get("plots", [])}
        for artifact in (*spec.inputs, *spec.outputs):
            if artifact.tracked:
                assert any(p == artifact.path or p.startswith(artifact.path + "/") for p in paths), (spec.name, artifact.path)


def test_a_stages_code_is_its_algorithm_closure_without_plumbing_or_schema():
    """Stage A's code: its module and the algorithm modules it reaches; the runner, skeleton, stores,
    CLI helpers and the params schema (sections, config modules) are out, and so is any other stage."""
    closure = set(codegraph.relative(codegraph.algorithm_closure("stages/diffusion_attention.py")))
    assert {"stages/diffusion_attention.py", "pipeline/diffusion/correlation.py", "pipeline/diffusion/recipes.py",
            "pipeline/tasks/stage_a.py", "pipeline/data/decode.py"} <= closure
    assert not closure & {"pipeline/runner.py", "pipeline/skeleton.py", "pipeline/params/sections.py",
                          "pipeline/diffusion/config.py", "pipeline/store/image_store.py", "pipeline/command.py",
                          "pipeline/provenance.py", "pipeline/errors.py", "stages/cli.py"}
    assert not any(p.startswith(("pipeline/cam/", "pipeline/segment/", "pipeline/params/")) for p in closure)
