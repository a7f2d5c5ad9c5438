"""What the stages around the segmenter share (train, evaluate, report): the saved segmenter (a folder
with `model.safetensors`, the decoder's weights, and `config.json`, everything needed to rebuild it on
its frozen CLIP) and the normalisation of uint8 images into the CLIP input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def normalise(image: np.ndarray, mean_255, std_255):
    """uint8 (H, W, 3) -> (3, H, W) float32, normalised on the 0-255 scale (as the CAM path feeds CLIP)."""
    import torch

    x = (np.asarray(image, dtype=np.float32) - np.asarray(mean_255, np.float32)) / np.asarray(std_255, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def save_segmenter(folder: Path, decoder, config: dict[str, Any]) -> None:
    """Write the decoder's weights and its config into `folder` atomically (a complete folder or none)."""
    from safetensors.torch import save_file

    from pipeline import atomic

    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")

    atomic.write_with(folder, write)


@dataclass(frozen=True)
class SavedSegmenter:
    """Picklable handle of a saved segmenter; `load()` gives (decoder in eval mode, frozen CLIP tower, config)."""

    folder: str
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def config(self) -> dict[str, Any]:
        from pipeline.errors import UserError

        path = Path(self.folder) / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a saved segmenter (run `diclip train` first): {err}") from None

    def load(self):
        from safetensors.torch import load_file

        from pipeline.models import load_clip
        from pipeline.segment.decoder import build_decoder

        cfg = self.config
        clip = load_clip(cfg["clip_model"], cfg["clip_pretrained"], device=self.device, precision=self.precision)
        visual = clip.model.visual.eval().requires_grad_(False)
        decoder = build_decoder(cfg["architecture"], cfg["in_dim"], cfg["blocks"], cfg["num_classes"], **cfg["options"])
        decoder.load_state_dict(load_file(str(Path(self.folder) / "model.safetensors")))
        return decoder.to(next(visual.parameters()).device).eval(), visual, cfg


def segment_image(decoder, visual, saved: dict[str, Any], cfg: Any, image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) image -> (H, W) uint8 class indices through the evaluate section's inference:
    multi-scale (+ flip) logits around `cfg.size`, then DenseCRF on the softmax when `cfg.crf`."""
    import torch

    from pipeline.segment.crf import CrfConfig, dense_crf
    from pipeline.segment.inference import multiscale_logits
    from pipeline.segment.training import segment_logits

    x = normalise(image, saved["mean_255"], saved["std_255"]).to(next(visual.parameters()).device)
    logits = multiscale_logits(lambda xs: segment_logits(decoder, visual, xs), x[None], image.shape[:2],
                               base=cfg.size, patch=saved["patch"], scales=tuple(cfg.scales), flip=cfg.flip,
                               fraction=cfg.fraction)[0].float().cpu()
    if not cfg.crf:
        return logits.argmax(0).numpy().astype(np.uint8)
    crf = CrfConfig(cfg.crf_iterations, cfg.crf_pos_xy, cfg.crf_pos_weight, cfg.crf_bi_xy, cfg.crf_bi_rgb, cfg.crf_bi_weight)
    return dense_crf(torch.softmax(logits, 0).numpy(), image, crf).argmax(0).astype(np.uint8)
