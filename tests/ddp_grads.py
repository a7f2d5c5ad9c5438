"""One training step's gradients of the segmenter, on one process or under torchrun (DDP, gloo):
`python tests/ddp_grads.py OUT` or `torchrun --nproc_per_node 2 tests/ddp_grads.py OUT`. Rank 0 saves
{parameter name: gradient} after the backward pass (DDP's all-reduce has averaged them)."""

from __future__ import annotations

import os
import sys

import torch


def main(out: str) -> None:
    from pipeline.models.clip import load_shipped_clip
    from pipeline.segment.decoder import build_decoder
    from pipeline.segment.training import SegmenterTrainer, TrainConfig

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    visual = load_shipped_clip().model.visual
    torch.manual_seed(0)
    decoder = build_decoder("diclip", 128, 6, 7, dim=32, layers=1, heads=4, dropout=0.0)
    data = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 64, 64, generator=data)
    labels = torch.randint(0, 8, (6, 64, 64), generator=data).to(torch.uint8)
    labels[:, :8] = 255  # ignored rows
    labels[2] = 0  # an image of background only: its rank has no foreground pixels of its own
    config = TrainConfig(iterations=10, batch=4, crop=48, rescale=(0.75, 1.5), flip=True, lr=1e-3, weight_decay=0.01,
                         warmup=2, affinity_weight=0.1, affinity_radius=2, seed=3)
    trainer = SegmenterTrainer(decoder, visual, config, n_images=6)
    x, y = trainer.batch(lambda i: (images[i], labels[i]))
    trainer.loss(x, y).backward()
    if trainer.rank == 0:
        torch.save({n: p.grad.clone() for n, p in decoder.named_parameters()}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
