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
import socket
from pathlib import Path
from urllib.parse import urlparse

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
    xdg_cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    default = os.path.join(xdg_cache, "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HOME", default))))


def hf_hub_cache_dir() -> Path:
    """The hub cache directory, same precedence as ``huggingface_hub.constants.HF_HUB_CACHE``.

    ``HF_HUB_CACHE`` > ``HUGGINGFACE_HUB_CACHE`` (legacy) > ``$HF_HOME/hub``.
    """
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE", str(hf_home() / "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HUB_CACHE", legacy))))


#: seconds allowed for the reachability probe before any download.
PROBE_TIMEOUT_S = 5.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unreachable_reason(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the host of ``url`` (default: the HF endpoint) cannot be reached, or None if it can.

    One TCP connection with a short timeout, so a machine without network fails in seconds instead
    of sitting through the libraries' retry back-off (about 25 s per file for huggingface_hub).
    Skipped (None) when a proxy is configured, since a direct connection proves nothing then.
    """
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return None
    parsed = urlparse(url or os.environ.get("HF_ENDPOINT", hf_constants.ENDPOINT))
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot connect to {host}:{port} ({type(err).__name__}: {err})"


def offline_remedy() -> str:
    """The 'unset offline mode' hint, only meaningful when offline mode is on."""
    return (
        "If this machine has internet access, unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE so the "
        "weights can be downloaded on first use."
    )
