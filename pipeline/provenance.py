"""Provenance stamps: what decides an artifact's bytes, and nothing else.

A stamp is a pure function of the stage's inputs: its name, the params it declares as resolved values
(defaults included), the digest of its algorithm code (`pipeline.codegraph.algorithm_closure`: its own
module and the algorithm modules it reaches, never plumbing), the layout version of each stored
format it writes (`pipeline.store.layouts`), and the fingerprints of the artifacts it reads. It never
holds the git commit or a clock, so an unchanged stage gives byte-identical outputs on any commit, a
refactor of the runner, skeleton, CLI or stores recomputes nothing, teammates' pulled outputs match,
and DVC's run-cache can be shared. A reader refuses a store whose stamp differs from what it
expects, and a resumed run never mixes two configurations.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Iterable, Mapping

from pipeline import codegraph


def digest(data: Any, n: int = 16) -> str:
    """A stable hex digest of plain data (mappings, lists, strings, numbers)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def params_hash(section: Any) -> str:
    """A stable hex digest of params already turned into plain data."""
    return digest(section)


@functools.lru_cache(maxsize=None)
def code_digest(module_file: str) -> str:
    """sha256 over the source of a stage module's algorithm closure (paths relative to the repo)."""
    h = hashlib.sha256()
    for path in codegraph.algorithm_closure(module_file):
        h.update(path.relative_to(codegraph.REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def layout_versions(names: Iterable[str]) -> dict[str, int]:
    """{format: version} of the stored formats named (pipeline.store.layouts)."""
    from pipeline.store import layouts

    return {name: int(getattr(layouts, name)) for name in sorted(set(names))}


def stamp(stage: str, params: Mapping[str, Any], *, code: str, layouts: Mapping[str, int] | None = None,
          inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The attributes every artifact carries; `fingerprint` identifies the artifact's content for readers.

    `params` maps dotted params keys to their resolved values, `code` is the stage's code digest,
    `layouts` the versions of the formats it writes and `inputs` maps each input artifact to its fingerprint.
    """
    body = {"stage": stage, "params_hash": params_hash(params), "code_digest": code,
            "layouts": dict(sorted((layouts or {}).items())), "inputs": dict(sorted((inputs or {}).items()))}
    return {**body, "fingerprint": digest(body)}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the checkout's git commit ('.dirty' with local edits): for logs and the
    tiny models' manifests only, never for pipeline artifacts (see the module docstring)."""
    import subprocess

    from pipeline import __version__

    try:
        git = ["git", "-C", str(codegraph.REPO_ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
