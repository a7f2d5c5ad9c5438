"""Provenance stamps: which code and which params produced an artifact.

Every artifact records these so a reader can refuse a store written by other params (a resumed run
must never mix outputs of two configurations) and a person can tell what made a file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from pipeline import __version__

_REPO_ROOT = Path(__file__).resolve().parent.parent


def params_hash(section: Any) -> str:
    """A stable hex digest of a params section (a mapping or dataclass already turned into plain data)."""
    blob = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the checkout (with '+dirty' when it has local edits)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def stamp(stage: str, section: Any) -> dict[str, str]:
    """The attributes every artifact carries: stage name, params hash, code version."""
    return {"stage": stage, "params_hash": params_hash(section), "code_version": code_version()}
