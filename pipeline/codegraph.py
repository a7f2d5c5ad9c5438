"""The in-repo import graph, read from the source with `ast` (nothing is imported or run).

One reading of the code serves three needs that used to be three hand-kept lists: the code a stage's
key names (`provenance.code_digest`), the code `deps` of each `dvc.yaml` stage (pipeline.dvcfile), and
the layering rules between packages (checked by a test). Imports inside functions count like
top-level ones: lazy imports are still code the stage runs.

A stage's code is its *algorithm closure*: its own module and every algorithm module it reaches.
Plumbing (the runner, skeleton, stores, CLI helpers, provenance, errors, paths) is walked through but
left out: it moves files and schedules work, and where a store does decide stored bytes its layout
version (pipeline.store.layouts) says so. The params schema (pipeline.params and each package's
`config.py` of declarations) is neither walked nor kept: the resolved values it yields are in the key.

`python -m pipeline.codegraph stages/prepare.py` prints a stage's algorithm closure.
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")  # the top-level packages that belong to this repo
#: modules that move bytes or schedule work without deciding results: walked through, never in a key
PLUMBING = ("pipeline", "pipeline.runner", "pipeline.skeleton", "pipeline.store", "pipeline.provenance",
            "pipeline.codegraph", "pipeline.atomic", "pipeline.errors", "pipeline.artifacts", "pipeline.command",
            "pipeline.dvcfile", "pipeline.interrupt", "stages", "stages.cli")
#: the params schema: declarations whose resolved values enter a key as params, not as code
SCHEMA = ("pipeline.params",)


@dataclass(frozen=True)
class Imports:
    """What one source file imports: repo modules (as files) and other top-level packages by name."""

    files: frozenset[Path]
    external: frozenset[str]
    dynamic: tuple[int, ...]  # line numbers of import_module / __import__ calls naming repo modules (unfollowable)


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The file of a dotted module name in this repo (a module or a package's __init__), or None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    rel = path.resolve().relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _with_parents(module: str, root: Path) -> set[Path]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py too."""
    parts = module.split(".")
    found = set()
    for i in range(1, len(parts) + 1):
        f = module_file(".".join(parts[:i]), root)
        if f is not None:
            found.add(f)
    return found


@functools.lru_cache(maxsize=None)
def imports_of(path: Path, root: Path = REPO_ROOT) -> Imports:
    """Parse `path` and resolve each import (absolute or relative) to repo files or external names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    files: set[Path] = set()
    external: set[str] = set()
    dynamic: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _add(alias.name, files, external, root)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            _add(base, files, external, root)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = module_file(f"{base}.{alias.name}", root)
                if sub is not None:
                    files |= _with_parents(f"{base}.{alias.name}", root)
        elif isinstance(node, ast.Call) and _is_dynamic_repo_import(node):
            dynamic.append(node.lineno)
    files.discard(path)
    return Imports(frozenset(files), frozenset(external), tuple(dynamic))


def _add(module: str, files: set[Path], external: set[str], root: Path) -> None:
    top = module.split(".")[0]
    if top in PACKAGES:
        files |= _with_parents(module, root)
    elif top:
        external.add(top)


def _is_dynamic_repo_import(call: ast.Call) -> bool:
    """importlib.import_module / __import__ of a repo module named by a string or f-string (unfollowable)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not call.args:
        return False
    arg = call.args[0]
    first = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else arg
    text = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
    return text.startswith(tuple(p + "." for p in PACKAGES) + PACKAGES + (".",))


def closure(*paths: str | Path, root: Path = REPO_ROOT) -> list[Path]:
    """Every repo source file the given files import, transitively (the files themselves included), sorted."""
    todo = [Path(root, p).resolve() for p in paths]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imports_of(path, root).files)
    return sorted(seen)


def is_schema(module: str) -> bool:
    """pipeline.params and every package's `config` module (declarations only; tests/test_layers.py)."""
    return module.startswith(tuple(m + "." for m in SCHEMA)) or module in SCHEMA or \
        (module.startswith("pipeline.") and module.endswith(".config"))


def is_plumbing(module: str) -> bool:
    """A module of PLUMBING: the package names there stand for themselves and their submodules, except
    the top-level packages `pipeline` and `stages`, which stand for their __init__ alone."""
    return module in PLUMBING or any(module.startswith(p + ".") for p in PLUMBING if p not in PACKAGES)


def algorithm_closure(path: str | Path, root: Path = REPO_ROOT) -> list[Path]:
    """The stage module `path` and every algorithm module it reaches (walking through plumbing,
    stopping at the schema), sorted: the code a stage's results depend on."""
    start = Path(root, path).resolve()
    todo, seen, kept = [start], set(), {start}
    while todo:
        here = todo.pop()
        if here in seen:
            continue
        seen.add(here)
        for dep in imports_of(here, root).files:
            module = module_name(dep, root)
            if is_schema(module):
                continue
            if not is_plumbing(module):
                kept.add(dep)
            todo.append(dep)
    return sorted(kept)


def relative(paths: list[Path], root: Path = REPO_ROOT) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


if __name__ == "__main__":
    for name in relative(sorted({p for arg in sys.argv[1:] for p in algorithm_closure(arg)})):
        print(name)
