"""Training the Stage D segmenter (method.md Stage D): the decoder on a frozen CLIP, one step at a time.

`SegmenterTrainer` owns the decoder, AdamW and its warmup + poly schedule, and the step count. A step
draws its global batch by (seed, step, slot) (`augment.sample_plan`), so its state (weights, optimiser,
schedule, step, dropout RNG) is everything a resumed run needs to end with the same weights. Under
torch DDP (`torch.distributed` initialised, e.g. by `torchrun`) each rank takes the slots rank, rank +
world, ... of the global batch and the loss is normalised over the whole batch (`losses`), so a step's
gradients are those of one process on the same global batch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from torch import nn

from pipeline.segment.augment import augment, sample_plan
from pipeline.segment.config import TrainConfig
from pipeline.segment.decoder import clip_block_tokens, feature_affinity
from pipeline.segment.losses import segmenter_loss
from pipeline.tsa.adapter import warmup_poly  # the same warmup + poly schedule as the adapter (DiCLIP's)

#: index -> (normalised image (3, H, W) float32, labels (H, W) uint8 with 255 ignored)
Sample = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t


class SegmenterTrainer:
    """The decoder's training loop state; `visual` is the frozen CLIP tower whose block tokens it reads."""

    def __init__(self, decoder: nn.Module, visual: nn.Module, config: TrainConfig, n_images: int) -> None:
        self.config, self.n_images = config, n_images
        self.rank, self.world = _world()
        self.decoder, self.visual = decoder, visual.eval().requires_grad_(False)
        self.model = decoder
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(decoder)
        self.opt = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_poly(s, config.iterations, config.warmup))
        self.step = 0
        torch.manual_seed(config.seed * 1000 + self.rank)  # dropout; saved and restored with the state

    def slots(self) -> range:
        """This rank's slots of the global batch."""
        return range(self.rank, self.config.batch, self.world)

    def batch(self, sample: Sample, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of the global batch of `step` (default: the next step), augmented."""
        cfg, step = self.config, self.step if step is None else step
        pairs = []
        for slot in self.slots():
            plan = sample_plan(cfg.seed, step, slot, cfg.batch, self.n_images, cfg.rescale, cfg.flip)
            pairs.append(augment(*sample(plan.index), plan, cfg.crop))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """This rank's share of the global batch's loss (see `losses`), differentiable in the decoder."""
        tokens, grid = clip_block_tokens(self.visual, x)
        logits, features = self.model(tokens, grid)
        return segmenter_loss(logits, feature_affinity(features), y, grid,
                              affinity_weight=self.config.affinity_weight, radius=self.config.affinity_radius,
                              total=_all_sum if self.world > 1 else None, world=self.world)

    def train_step(self, sample: Sample) -> dict[str, float]:
        """One optimiser step on the next global batch; returns its loss (whole batch) and learning rate."""
        self.decoder.train()
        x, y = self.batch(sample)
        loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        value = loss.detach()
        if self.world > 1:
            value = _all_sum(value)
        return {"loss": float(value) / self.world, "lr": float(lr)}

    def state_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step, "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"])


def patch_size(visual: nn.Module) -> int:
    k = visual.conv1.kernel_size
    return int(k[0] if isinstance(k, tuple) else k)



