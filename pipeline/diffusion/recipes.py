"""One image -> what stage A stores, by either recipe (method.md Stage A; `recipe: diclip | acr`).

Both recipes share the forward (VAE latent of the resized image, noise at the timestep seeded by
(noise_seed, image id), one UNet pass with the prompt) and the outputs: the cluster id of every
patch of the CLIP grid g, K, one refined-correlation row per cluster (R[i] = rows[clusters[i]],
row-stochastic), and the RAR transition P of one layer as its rows' top-k entries.

- `diclip` (D): q and k of two heads of one low-resolution layer -> A (correlation.layer_correlation)
  -> KL assignment to 16 anchors (kl_assign) -> cluster-mean rows of A.
- `acr` (the recipe before DiCLIP's code was public): every self-attention layer aggregated at the
  cluster grid, DiffSeg merging + k-means (acr), cluster maps brought to g, cluster-mean rows of the
  aggregated attention at g.
Pure given a loaded pipeline; the stage (stages/diffusion_attention.py) stores the arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.diffusion.acr import acr
from pipeline.diffusion.capture import capture_self_attention, resample_attention, resize_grids
from pipeline.diffusion.config import StageAConfig
from pipeline.diffusion.correlation import cluster_rows, layer_correlation
from pipeline.diffusion.kl_assign import anchor_positions, default_anchor_stride, kl_assign
from pipeline.diffusion.sd_input import (
    add_noise,
    encode_latents,
    encode_prompt,
    image_noise_seed,
    sd_alphas_cumprod,
    sd_pixels,
    seeded_noise,
    vae_factor,
)
from pipeline.diffusion.selected import LayerTap, capture_layers
from pipeline.diffusion.transition import head_probabilities, sharpen_transition, top_k_rows
from pipeline.grids import square_side

def max_clusters(config: StageAConfig) -> int:
    """Length of the stored cluster-row axis of `config`'s recipe at its grid g."""
    if config.recipe == "diclip":
        return len(anchor_positions(config.grid, config.diclip.anchor_stride or default_anchor_stride(config.grid)))
    return config.acr.max_clusters


class StageAMaps:
    """`(image (H, W, 3) uint8, image id) -> {clusters, k, rows[, transition_*]}`, arrays of fixed shapes.

    `config` is resolved (pipeline.diffusion.plan: image_size and timestep set, layer paths checked).
    clusters (g, g) uint8, k () int32, rows (max_k, g^2) float32 (zero after k), and with `transition`:
    transition_values (t^2, k_t) in transition.store_dtype, transition_index (t^2, k_t) int16,
    transition_kept () float32 (mean kept mass per row), transition_truncated () float32 (fraction of
    rows with more non-zeros than k_t). `text` is the UNet's text embedding (default: the prompt's,
    encoded once); :meth:`latents` takes given noise, :meth:`maps` a given noised latent.
    """

    def __init__(self, pipe: Any, config: StageAConfig, *, latent_size: int | None = None, transition: bool = True,
                 unet: torch.nn.Module | None = None, text: torch.Tensor | None = None) -> None:
        if config.image_size is None or config.timestep is None:
            raise ValueError("StageAMaps needs a resolved config (pipeline.diffusion.plan): image_size and timestep set")
        self.pipe, self.unet = pipe, pipe.unet if unet is None else unet
        self.config, self.grid = config, int(config.grid)
        self.transition = config.transition if transition and config.transition.topk else None
        factor = vae_factor(pipe)
        if config.image_size % factor:
            raise ValueError(f"image_size {config.image_size} is not a multiple of the VAE factor {factor}")
        self.latent_size = config.image_size // factor if latent_size is None else latent_size
        self.cluster_grid = config.acr.cluster_grid or self.latent_size
        self.block_bytes = config.acr.block_mb << 20
        self.max_k = max_clusters(config)
        self.text = encode_prompt(pipe, config.prompt) if text is None else text
        alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
        self.alphas_cumprod = sd_alphas_cumprod() if alphas is None else alphas
        self.threads = torch.get_num_threads()

    def latents(self, image: np.ndarray, image_id: str, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(1, C, l, l) latent of the image at the timestep; with add_noise, noised with `noise` or else
        with noise drawn from the image's own seed (noise_seed, image id)."""
        return self.batch_latents([image], [image_id], noise)

    def batch_latents(self, images: list[np.ndarray], image_ids: list[str], noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, l, l) latents of the images, one VAE encode for the group; noise as :meth:`latents`, per image."""
        f = self.config
        latents = encode_latents(self.pipe.vae, torch.cat([sd_pixels(image, f.image_size, f.resize) for image in images]))
        if f.add_noise:
            if noise is None:
                noise = seeded_noise(latents.shape[1:], [image_noise_seed(f.noise_seed, i) for i in image_ids])
            latents = add_noise(latents, f.timestep, noise, self.alphas_cumprod)
        return latents

    def __call__(self, image: np.ndarray, image_id: str) -> dict[str, np.ndarray]:
        return self.maps(self.latents(image, image_id))

    def batch(self, images: list[np.ndarray], image_ids: list[str]) -> list[dict[str, np.ndarray]]:
        """Each image's arrays with one VAE encode and one UNet forward for the group (`batch_images`;
        more pays on a GPU). Batched float arithmetic may differ in the last bits from one image at a time,
        so groups are fixed by position in the store (pipeline.tasks.groups), never by the runner."""
        return self.batch_maps(self.batch_latents(images, image_ids))

    def maps(self, latents: torch.Tensor) -> dict[str, np.ndarray]:
        """The stored arrays from one noised latent (1, C, l, l): one UNet pass and the recipe."""
        return self.batch_maps(latents)[0]

    @torch.no_grad()
    def batch_maps(self, latents: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """The stored arrays of each of (B, C, l, l) noised latents: one UNet pass, then the recipe per image."""
        taps = [LayerTap(self.transition.layer, self.transition.heads)] if self.transition else []
        cfg = self.config
        outs = []
        if cfg.recipe == "diclip":
            corr = LayerTap(cfg.diclip.layer, cfg.diclip.heads)
            captured = capture_layers(self.unet, latents, self.text, cfg.timestep, [corr, *taps])
            c = captured[corr.path]
            side = (square_side(c.tokens, 'attention tokens'),) * 2
            for b in range(latents.shape[0]):
                a = layer_correlation(c.query[b], c.key[b], side, self.grid, cfg.diclip.threshold)
                ids, k = kl_assign(a, self.grid, anchor_stride=cfg.diclip.anchor_stride, rounds=cfg.diclip.rounds,
                                   precision=cfg.diclip.kl_precision)
                outs.append(self._cluster_outputs(a, ids, k))
        else:
            captured = {}
            attention = capture_self_attention(
                self.unet, latents, self.text, cfg.timestep, grid=self.cluster_grid, noise_seed=None,
                block_bytes=self.block_bytes, taps=taps, sink=captured)  # (B, G^2, G^2), latents already noised
            G = self.cluster_grid
            for b in range(latents.shape[0]):
                result = acr(attention[b].cpu().numpy(), G, cfg.acr, threads=self.threads)
                soft = resize_grids(torch.from_numpy(result.soft).float(), (self.grid, self.grid))  # (K, g, g)
                ids = torch.unique(soft.argmax(0).reshape(-1), return_inverse=True)[1]
                a = resample_attention(attention[b:b + 1], (G, G), self.grid)[0]
                outs.append(self._cluster_outputs(a, ids, int(ids.max()) + 1))
        if self.transition:
            for b, out in enumerate(outs):
                out.update(self._transition_outputs(captured[self.transition.layer], b))
        return outs

    def _cluster_outputs(self, a: torch.Tensor, ids: torch.Tensor, k: int) -> dict[str, np.ndarray]:
        g = self.grid
        rows = np.zeros((self.max_k, g * g), dtype=np.float32)  # R as computed: float16 would shift DiCLIP's CAMs
        rows[:k] = cluster_rows(a.float(), ids, k).cpu().numpy()
        return {"clusters": ids.reshape(g, g).cpu().numpy().astype(np.uint8), "k": np.int32(k), "rows": rows}

    def _transition_outputs(self, c, b: int) -> dict[str, np.ndarray]:
        p = sharpen_transition(head_probabilities(c.query[b], c.key[b], c.scale), self.transition.sharpen)
        sparse = top_k_rows(p.cpu(), self.transition.topk)
        return {
            "transition_values": sparse.values.numpy().astype(self.transition.store_dtype),
            "transition_index": sparse.index.numpy().astype(np.int16),
            "transition_kept": np.float32(sparse.kept.mean()),
            "transition_truncated": np.float32(sparse.truncated.float().mean()),
        }
