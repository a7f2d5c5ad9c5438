"""The in-repo import graph, read from the source with `ast` (nothing is imported or run).

One reading of the code serves three needs that used to be three hand-kept lists: the code digest a
stage stamps on its artifacts (`provenance.code_digest`), the `deps` each `dvc.yaml` stage must list
(checked by a test), and the layering rules between packages (checked by a test). Imports inside
functions count like top-level ones: lazy imports are still code the stage runs.

`python -m pipeline.codegraph stages/prepare.py` prints the files a module depends on.
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")  # the top-level packages that belong to this repo


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


def relative(paths: list[Path], root: Path = REPO_ROOT) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


if __name__ == "__main__":
    for name in relative(closure(*sys.argv[1:])):
        print(name)
