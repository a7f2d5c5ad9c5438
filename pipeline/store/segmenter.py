"""A saved segmenter: a folder with `model.safetensors` (the decoder's weights) and `config.json`
(everything needed to rebuild it on its frozen CLIP: architecture and options, the CLIP and its input
normalisation, crop, patch, class names, the training run's key). Written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.store.errors import StoreError

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_segmenter(folder: Path, state: dict, config: dict[str, Any]) -> None:
    """Write the decoder's `state` (name -> tensor) and its `config` into `folder` atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")

    atomic.write_with(folder, write)


def segmenter_config(folder: str | Path) -> dict[str, Any]:
    """The saved config; StoreError naming the folder when it is not a saved segmenter (no torch needed)."""
    path = Path(folder) / CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: not a saved segmenter (run `diclip train` first): {err}") from None


def segmenter_weights(folder: str | Path) -> dict:
    """The decoder's weights (name -> tensor) on the CPU."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / WEIGHTS))
