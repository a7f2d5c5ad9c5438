"""DiCLIP's random-walk refinement (RAR, method.md C6) of patch CAMs with stage A's transition P.

The refined CAMs are brought to P's token grid (bilinear), shifted to a zero minimum and divided by
their sum per class; then `iterations` times X <- P X, minus its min, over its sum. The walk spreads
each class's mass along the diffusion model's attention, which follows object boundaries more
closely than CLIP's 16-pixel patches. Pure torch.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from pipeline.grids import square_side


def walk_steps(cams: torch.Tensor, grid: int, transition: torch.Tensor, *, iterations: int) -> Iterator[torch.Tensor]:
    """(K, g*g) CAMs on a g x g grid and P (t*t, t*t) -> the walk's input on P's grid, then each of the
    `iterations` steps: (t*t, K) each, every class summing to 1 (classes of zero mass stay zero)."""
    k = cams.shape[0]
    t = square_side(transition.shape[0], "transition rows")
    x = cams.float().reshape(k, 1, grid, grid)
    if t != grid:
        x = F.interpolate(x, size=(t, t), mode="bilinear", align_corners=False)
    x = _normalise(x.reshape(k, t * t).T)  # (t*t, K): columns are classes
    yield x
    p = transition.float()
    for _ in range(iterations):
        x = _normalise(p @ x)
        yield x


def random_walk(cams: torch.Tensor, grid: int, transition: torch.Tensor, *, iterations: int) -> torch.Tensor:
    """(K, g*g) CAMs on a g x g grid and P (t*t, t*t) -> (K, t*t) walked CAMs on P's t x t grid
    (the last of :func:`walk_steps`)."""
    for x in walk_steps(cams, grid, transition, iterations=iterations):
        pass
    return x.T.contiguous()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.amin(0, keepdim=True)
    return x / x.sum(0, keepdim=True).clamp_min(1e-30)
