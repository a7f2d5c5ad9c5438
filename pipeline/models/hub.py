"""Hugging Face hub state read at call time: offline mode and the cache directory.

``huggingface_hub.constants`` freezes ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` when the module is
first imported, and diffusers/transformers keep their own frozen copies. A process (or a test)
that sets the variables later would be half-offline. The loaders therefore resolve both here,
from the current environment with huggingface_hub's own precedence rules, and pass them
explicitly (``local_files_only=``, ``cache_dir=``) to every library call, so the libraries and
our error messages agree on where weights live.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants as hf_constants

_TRUE = {"1", "on", "yes", "true"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """True when the hub must not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``).

    Reads the environment now and also honours huggingface_hub's import-time value.
    """
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(hf_constants.HF_HUB_OFFLINE)


def hf_home() -> Path:
    """``HF_HOME`` as huggingface_hub resolves it (``$XDG_CACHE_HOME/huggingface`` by default)."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HOME", default))))


def hf_hub_cache_dir() -> Path:
    """The hub cache directory, same precedence as ``huggingface_hub.constants.HF_HUB_CACHE``.

    ``HF_HUB_CACHE`` > ``HUGGINGFACE_HUB_CACHE`` (legacy) > ``$HF_HOME/hub``.
    """
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE", str(hf_home() / "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HUB_CACHE", legacy))))


def offline_remedy() -> str:
    """The 'unset offline mode' hint, only meaningful when offline mode is on."""
    return (
        "If this machine has internet access, unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE so the "
        "weights can be downloaded on first use."
    )
