"""The seeded random full-size models of the authors' reference runs (tests/reference/*/README.md), rebuilt
from their recipes and checked by their sha256: ExCEL's and DiCLIP's ViT-B/16, and DiCLIP's SD 2.1-base
UNet, VAE and scheduler. Shared by tests/test_excel_parity.py and tests/test_diclip_parity.py."""

from __future__ import annotations

import hashlib

import torch

# SD 2.1-base's component configs, as the diclip-path README lists them
from pipeline.models.sd21 import SD21_SCHEDULER, SD21_UNET, SD21_VAE

CLIP_SHA256 = "638275dbb0e051f9769db0a8cc45333a840e1fe81669d253d9d60c1fca5697eb"
UNET_INIT_SHA256 = "92dda5ffa432a8ce7f2cc339dd50fa3f18354ba81c8611a34e17a2c102b7b3f7"
UNET_SHA256 = "0377c46b23d2632b7b56e7a7d402c3ce4b05a3b41c35a17b1e52c2538b66361b"
VAE_SHA256 = "383682443f2e70b745d92616a59c039b5d69606dc7108bfb52933ea24ee24183"

def sha256_of(state: dict) -> str:
    """The references' checksum: per key in sorted order, the key's UTF-8 bytes, a NUL byte, then the
    tensor as contiguous little-endian float32 bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode("utf-8") + b"\x00")
        h.update(state[k].detach().cpu().float().contiguous().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def reference_clip() -> torch.nn.Module:
    """ViT-B-16-quickgelu, seed 0, the visual q and k rows x4; checksum verified."""
    import open_clip

    torch.manual_seed(0)
    m = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="cpu", precision="fp32")
    state = m.state_dict()
    with torch.no_grad():
        for i in range(12):
            for name in ("weight", "bias"):
                state[f"visual.transformer.resblocks.{i}.attn.in_proj_{name}"][: 2 * 768] *= 4.0
    assert sha256_of(state) == CLIP_SHA256, "the random CLIP weights differ from the references' (check torch/open_clip versions)"
    return m.eval()


def reference_unet() -> torch.nn.Module:
    """SD 2.1-base's UNet, seed 1, default init, then to_q and to_k of every self-attention x4; checksum verified."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(SD21_UNET)
    assert sha256_of(unet.state_dict()) == UNET_INIT_SHA256, "the UNet's default init differs (check torch/diffusers versions)"
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("transformer_blocks.0.attn1"):
                module.to_q.weight.mul_(4.0)
                module.to_k.weight.mul_(4.0)
    assert sha256_of(unet.state_dict()) == UNET_SHA256, "the scaled UNet differs from DiCLIP's reference run"
    return unet.eval()


def reference_vae() -> torch.nn.Module:
    """SD 2.1-base's VAE, seed 2, default init; checksum verified."""
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    vae = AutoencoderKL.from_config(SD21_VAE)
    assert sha256_of(vae.state_dict()) == VAE_SHA256, "the random VAE differs from DiCLIP's reference run"
    return vae.eval()


def reference_scheduler():
    """SD 2.1-base's PNDM scheduler from its config."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SD21_SCHEDULER)
