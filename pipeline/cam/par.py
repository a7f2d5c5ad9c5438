"""PAR: pixel-adaptive refinement of full-size CAMs by the image's local colour affinity (ToCo, ExCEL).

Each pixel's scores become an affinity-weighted mean of its 48 neighbours' (8 directions at each of
the dilations 1, 2, 4, 8, 12, 24, replicate padding, the centre excluded), repeated `iterations`
times. The affinity is a softmax over the 48 of -(|neighbour - pixel| / (std + 1e-8) / 0.3)^2
averaged over the guide's channels (std: unbiased, over the 48), plus 0.01 times a softmax of the
same form over the neighbours' distances. Written on torch shifts rather than OpenCV or a CUDA
kernel because the formula is ExCEL's own (utils/PAR.py) and must match its numbers on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAR_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
#: the 8 directions in ExCEL's kernel order (row-major over the 3x3 neighbourhood, centre skipped)
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbours(x: torch.Tensor, dilations: tuple[int, ...] = PAR_DILATIONS) -> torch.Tensor:
    """(C, H, W) -> (C, 8 * len(dilations), H, W): each pixel's neighbours at every dilation,
    directions in ExCEL's order, borders replicated."""
    _, H, W = x.shape
    out = []
    for d in dilations:
        padded = F.pad(x[None], [d] * 4, mode="replicate")[0]
        out.extend(padded[:, d + dy * d: d + dy * d + H, d + dx * d: d + dx * d + W] for dy, dx in _DIRECTIONS)
    return torch.stack(out, dim=1)


def par_affinity(guide: torch.Tensor, dilations: tuple[int, ...] = PAR_DILATIONS, *, colour_scale: float = 0.3,
                 position_weight: float = 0.01) -> torch.Tensor:
    """(C, H, W) guide image -> (M, H, W) weights of each pixel's M = 8 len(dilations) neighbours."""
    guide = guide.float()
    near = neighbours(guide, dilations)  # (C, M, H, W)
    std = near.std(dim=1, keepdim=True)
    colour = -((near - guide[:, None]).abs() / (std + 1e-8) / colour_scale) ** 2
    aff = F.softmax(colour.mean(0), dim=0)
    dist = torch.tensor([d * (math.sqrt(2) if dy and dx else 1.0) for d in dilations for dy, dx in _DIRECTIONS])
    pos = -(dist / (dist.std() + 1e-8) / colour_scale) ** 2
    return aff + position_weight * F.softmax(pos, dim=0)[:, None, None]


def par(guide: torch.Tensor, scores: torch.Tensor, *, iterations: int,
        dilations: tuple[int, ...] = PAR_DILATIONS) -> torch.Tensor:
    """(C, H, W) guide and (K, H, W) score maps at the same size -> (K, H, W) refined scores:
    `iterations` rounds of scores <- sum over neighbours of affinity * neighbour scores."""
    aff = par_affinity(guide, dilations)
    scores = scores.float()
    for _ in range(iterations):
        scores = (neighbours(scores, dilations) * aff[None]).sum(1)
    return scores
