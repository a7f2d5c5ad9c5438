"""Attention Clustering Refinement (ACR): cluster a row-stochastic self-attention map into regions.

Input: A (N, N) with N = h*w tokens of an (h, w) grid, row i the attention distribution of token
i. Steps (DiffSeg's merging, then DiCLIP's k-means refinement):

1. anchors: the rows of tokens on a regular anchor lattice; each anchor is a proposal covering
   itself;
2. merging, `rounds` times: every proposal gathers the proposals within symmetric KL `threshold`
   of it; a merged proposal covers the union of their anchors and is the mean of those anchors'
   rows; duplicates (same anchors) collapse. Beyond `max_clusters`, the closest pair is merged
   until it fits;
3. refinement: k-means over all N rows (scikit-learn, Lloyd), initialised from the proposals;
4. outputs: the hard map (k-means labels, clusters numbered by first appearance in raster order)
   and soft maps: cluster k's mean attention row as a spatial map, normalised over clusters at
   every pixel (so the K soft maps sum to 1 per pixel).

Its knobs are one :class:`pipeline.diffusion.config.AcrConfig` (the params' `diffusion_attention.acr`).
Pure numpy (and scikit-learn); no files, no models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.diffusion.config import AcrConfig

EPS = 1e-8


@dataclass(frozen=True)
class ACRResult:
    """One image's clusters on the (h, w) token grid."""

    soft: np.ndarray  # (K, h, w) float32, sums to 1 over K at every pixel
    hard: np.ndarray  # (h, w) int64 cluster ids in [0, K)
    n_proposals: int  # proposals left after merging (before the max_clusters cap)

    @property
    def k(self) -> int:
        return int(self.soft.shape[0])


def anchor_indices(grid_hw: tuple[int, int], anchor_grid: int) -> np.ndarray:
    """Flat token indices of an anchor_grid x anchor_grid lattice (cell centres) on an (h, w) grid."""
    h, w = grid_hw
    ys = np.unique(((np.arange(min(anchor_grid, h)) + 0.5) * h / min(anchor_grid, h)).astype(int))
    xs = np.unique(((np.arange(min(anchor_grid, w)) + 0.5) * w / min(anchor_grid, w)).astype(int))
    return (ys[:, None] * w + xs[None, :]).ravel()


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(M, M') mean of KL(p_i || q_j) and KL(q_j || p_i) between rows of p (M, N) and q (M', N)."""
    return _symmetric_kl_of(*_with_logs(_as_distributions(p)), *_with_logs(_as_distributions(q)))


def _with_logs(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, log p, sum_j p log p) of strictly positive distributions p (M, N)."""
    logp = np.log(p)
    return p, logp, (p * logp).sum(1)


def _symmetric_kl_of(p, logp, plogp, q, logq, qlogq) -> np.ndarray:
    """symmetric_kl from `_with_logs` of both sides (so the cap loop can update one row per merge)."""
    # KL(p||q) + KL(q||p) = sum p log p + sum q log q - sum p log q - sum q log p
    cross = p @ logq.T + logp @ q.T
    return np.maximum(0.5 * (plogp[:, None] + qlogq[None, :] - cross), 0.0)


def merge_proposals(
    rows: np.ndarray, *, threshold: float, rounds: int, max_clusters: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Iteratively merge anchor rows (M, N) whose symmetric KL is below `threshold`.

    Returns (proposals (K, N) float64 distributions, membership (K, M) bool over the anchors,
    number of proposals before capping at `max_clusters`). Deterministic and order-independent
    up to the order of the returned proposals (sorted by their first anchor).
    """
    anchors = _as_distributions(rows)
    members = np.eye(len(anchors), dtype=bool)  # proposal x anchor
    proposals = anchors
    for _ in range(rounds):
        close = symmetric_kl(proposals, proposals) < threshold  # (K, K), diagonal True
        merged = (close.astype(np.int64) @ members.astype(np.int64)) > 0  # union of the close proposals' anchors
        merged = _unique_rows(merged)
        if merged.shape == members.shape and np.array_equal(merged, members):
            break
        members = merged
        proposals = _member_means(members, anchors)
    n_proposals = len(members)
    if len(members) > max_clusters:  # merge the closest pair until it fits (distances updated per merge)
        # proposals are already distributions (means of the normalised anchors): keep their logs
        # and update one distance row per merge instead of re-normalising all of them every merge
        proposals, logp, plogp = _with_logs(proposals)
        d = _symmetric_kl_of(proposals, logp, plogp, proposals, logp, plogp)
        np.fill_diagonal(d, np.inf)
        while len(members) > max_clusters:
            i, j = sorted(np.unravel_index(np.argmin(d), d.shape))
            members[i] |= members[j]
            keep = np.arange(len(members)) != j
            members, d = members[keep], d[keep][:, keep]
            proposals, logp, plogp = proposals[keep], logp[keep], plogp[keep]
            proposals[i] = _member_means(members[i:i + 1], anchors)[0]
            _, logp[i:i + 1], plogp[i:i + 1] = _with_logs(proposals[i:i + 1])
            d[i] = d[:, i] = _symmetric_kl_of(proposals[i:i + 1], logp[i:i + 1], plogp[i:i + 1], proposals, logp, plogp)[0]
            d[i, i] = np.inf
    return proposals, members, n_proposals


def kmeans_refine(features: np.ndarray, init: np.ndarray, *, iters: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Lloyd) over rows of `features` (N, D) from `init` (K, D); returns (labels (N,), centres (K, D)).

    iters=0 assigns every row to its nearest initial centre. Empty clusters are dropped.
    """
    X = np.asarray(features, dtype=np.float32)
    C = np.asarray(init, dtype=np.float32)
    if iters > 0 and len(C) > 1:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            km = KMeans(n_clusters=len(C), init=C, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd", random_state=0)
            labels = km.fit_predict(X)
    else:
        d = (X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :]
        labels = np.argmin(d, axis=1)
    # renumber by first appearance in raster order, dropping empty clusters
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    remap = np.full(len(C), -1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    labels = remap[labels]
    centres = np.stack([X[labels == k].mean(0) for k in range(len(order))])
    return labels, centres


def acr(
    attention: np.ndarray,
    grid_hw: tuple[int, int] | int,
    config: AcrConfig,
    *,
    threads: int = 1,
) -> ACRResult:
    """Cluster the (N, N) row-stochastic attention of an (h, w) token grid; see the module docstring.

    ``threads``: scikit-learn's k-means threads (threadpoolctl limit).
    """
    if not isinstance(config, AcrConfig):
        raise TypeError(f"config must be an AcrConfig, got {type(config).__name__}")
    h, w = (grid_hw, grid_hw) if isinstance(grid_hw, (int, np.integer)) else grid_hw
    if np.shape(attention) != (h * w, h * w):
        raise ValueError(f"attention has shape {np.shape(attention)}, expected ({h * w}, {h * w}) for a {h}x{w} grid")
    # float32 for the full matrix (k-means runs in float32; a float64 copy of a 4096^2 map is 134 MB),
    # float64 for the anchor rows, whose KLs decide the merges
    A = _as_distributions(attention, np.float32)
    anchors = anchor_indices((h, w), config.anchor_grid)
    proposals, _, n_proposals = merge_proposals(A[anchors].astype(np.float64), threshold=config.merge_kl,
                                                rounds=config.merge_rounds, max_clusters=config.max_clusters)
    labels, centres = kmeans_refine(A, proposals, iters=config.kmeans_iters, threads=threads)
    soft = centres.astype(np.float64).reshape(-1, h, w)  # cluster k's mean attention as a map
    soft = soft / np.maximum(soft.sum(0, keepdims=True), EPS)
    return ACRResult(soft=soft.astype(np.float32), hard=labels.reshape(h, w), n_proposals=n_proposals)


def _as_distributions(x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Rows of x clipped at 0, plus EPS (so logs are finite), normalised to sum to 1, as a new `dtype` array."""
    x = np.maximum(np.asarray(x, dtype=dtype), 0.0) + np.asarray(EPS, dtype=dtype)
    x /= x.sum(-1, keepdims=True)
    return x


def _member_means(members: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    m = members.astype(np.float64)
    return (m @ anchors) / m.sum(1, keepdims=True)


def _unique_rows(members: np.ndarray) -> np.ndarray:
    """Distinct membership rows, ordered by their first anchor (then lexicographically)."""
    uniq = np.unique(members, axis=0)  # lexicographically sorted
    first = np.argmax(uniq, axis=1)
    return uniq[np.lexsort((np.arange(len(uniq)), -uniq.sum(1), first))]
