"""DiCLIP's stage A algorithms on planted inputs: KL assignment recovers planted groups, R is the
cluster-mean refinement (row-stochastic, constant within clusters, idempotent), the correlation's
normalisations and head product, R resampling, and P's sharpening and top-k storage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.diffusion.correlation import (
    cluster_rows,
    head_product,
    head_scores,
    layer_correlation,
    normalise_scores,
    refine,
    resample_correlation,
    resize_tokens,
)
from pipeline.diffusion.kl_assign import anchor_positions, default_anchor_stride, kl_assign, symmetric_kl
from pipeline.diffusion.transition import head_probabilities, sharpen_transition, top_k_rows
from tests.test_acr import planted_attention, planted_partition, same_partition


def planted(grid: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    labels = planted_partition(grid, grid)
    return torch.from_numpy(planted_attention(labels, seed=seed)).float(), labels


# ------------------------------------------------------------------------------ KL assignment
def test_anchors_are_dicilps_lattice():
    assert default_anchor_stride(20) == 6
    pos = anchor_positions(20, 6)
    assert len(pos) == 16 and sorted(set((pos // 20).tolist())) == sorted(set((pos % 20).tolist())) == [0, 6, 12, 18]
    assert len(anchor_positions(8, default_anchor_stride(8))) == 16  # stride 2 on the tiny CLIP's 8x8 grid


def test_symmetric_kl_is_dicilps_formula():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.dirichlet(np.ones(12), size=4)).float()
    b = torch.from_numpy(rng.dirichlet(np.ones(12), size=3)).float()
    ap, bp = a[:, None] + 1e-5, b[None] + 1e-5
    quotient = ap.log() - bp.log()
    expected = 0.5 * (ap * quotient).sum(-1) - 0.5 * (bp * quotient).sum(-1)  # as DiCLIP writes it
    torch.testing.assert_close(symmetric_kl(a, b), expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(symmetric_kl(a, a).diagonal(), torch.zeros(4), atol=1e-6)


def test_kl_assignment_recovers_planted_groups_exactly_and_drops_empty_anchors():
    # identical columns within a group: every anchor of a group ties with the group's first anchor,
    # which wins every patch; the group's other anchors win nothing and drop out
    a, labels = planted(16, 0)
    a = torch.from_numpy(planted_attention(labels, seed=0, jitter=0.0)).float()
    ids, k = kl_assign(a, 16, anchor_stride=None, rounds=5, precision="float16")
    assert len(anchor_positions(16, default_anchor_stride(16))) == 16
    assert k == len(np.unique(labels)) == 5
    assert same_partition(ids.reshape(16, 16).numpy(), labels)
    assert ids.dtype == torch.int64 and set(ids.tolist()) == set(range(k))


@pytest.mark.parametrize("seed", range(3))
def test_kl_assignment_on_jittered_groups_never_mixes_groups(seed):
    # no merging step (DiCLIP): a group holding several anchors may stay split, but no cluster
    # straddles two planted groups and every group is covered
    a, labels = planted(16, seed)
    ids, k = kl_assign(a, 16, anchor_stride=None, rounds=5, precision="float16")
    flat = labels.ravel()
    ids = ids.numpy()
    assert 5 <= k <= 16
    assert all(len(np.unique(flat[ids == c])) == 1 for c in range(k))


def test_kl_assignment_reads_columns_not_rows():
    # rows all alike, columns carry the groups: A = u v^T with v uniform on the group of the column
    labels = np.repeat(np.arange(4), 16)  # 4 groups of 16 patches on an 8x8 grid
    rng = np.random.default_rng(1)
    col_profiles = rng.dirichlet(np.ones(64) * 0.3, size=4)  # each group's columns share one profile over queries
    a = torch.from_numpy(col_profiles[labels].T.copy()).float()  # column j = profile of j's group
    ids, k = kl_assign(a, 8, anchor_stride=2, rounds=5, precision="float16")
    assert k == 4 and same_partition(ids.numpy(), labels)
    ids_t, _ = kl_assign(a.T.contiguous(), 8, anchor_stride=2, rounds=5, precision="float16")  # the transpose puts the groups in the rows
    assert not same_partition(ids_t.numpy(), labels)  # ...which the descriptors (columns) no longer show


def test_kl_assignment_validates_shapes_and_rounds():
    with pytest.raises(ValueError, match=r"A must be \(64, 64\) for grid 8"):
        kl_assign(torch.ones(60, 60), 8, anchor_stride=None, rounds=5, precision="float16")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        kl_assign(torch.ones(64, 64), 8, anchor_stride=None, rounds=0, precision="float16")


# ------------------------------------------------------------------------------ refinement R
def test_refinement_is_row_stochastic_constant_within_clusters_and_idempotent():
    a, labels = planted(16, 3)
    ids, k = kl_assign(a, 16, anchor_stride=None, rounds=5, precision="float16")
    r = refine(a, ids)
    torch.testing.assert_close(r.sum(-1), torch.ones(256), atol=1e-5, rtol=0)
    same = ids[:, None] == ids[None, :]
    for i, j in zip(*torch.nonzero(same, as_tuple=True)):
        if i < j:
            assert torch.equal(r[i], r[j])
    torch.testing.assert_close(refine(r, ids), r, atol=1e-6, rtol=0)  # idempotent
    rows = cluster_rows(a, ids, k)
    assert torch.equal(rows[ids], r)  # the stored form (ids + one row per cluster) gives R back exactly
    # R = diag(sizes)^-1 C A, written out
    c = same.float()
    torch.testing.assert_close(r, (c @ a) / c.sum(1, keepdim=True), atol=1e-6, rtol=0)


def test_column_max_threshold_and_row_normalisation_by_hand():
    s = torch.tensor([[4.0, 1.0, -2.0], [2.0, 2.0, 1.0], [1.0, 0.1, 1.0]])
    # columns over their max: [[1, .5, -2], [.5, 1, 1], [.25, .05, 1]] (+1e-5 in the divisors)
    # below 0.2 -> 0: [[1, .5, 0], [.5, 1, 1], [.25, 0, 1]]; rows renormalised
    expected = torch.tensor([[1, 0.5, 0], [0.5, 1, 1], [0.25, 0, 1]]) / torch.tensor([[1.5], [2.5], [1.25]])
    torch.testing.assert_close(normalise_scores(s, 0.2), expected, atol=1e-4, rtol=0)


def test_heads_are_multiplied_in_order_and_tokens_resampled_bilinearly():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, 4, generator=g), torch.randn(2, 16, 4, generator=g)  # 2 heads on a 4x4 grid
    a = layer_correlation(q, k, (4, 4), 8, 0.2)
    s = normalise_scores(head_scores(q, k, (4, 4), 8), 0.2)
    torch.testing.assert_close(a, s[0] @ s[1])
    assert not torch.allclose(a, s[1] @ s[0])
    torch.testing.assert_close(head_product(s[:1]), s[0])
    maps = q[0].T.reshape(1, 4, 4, 4)  # (1, d, h, w)
    expected = F.interpolate(maps, size=(8, 8), mode="bilinear", align_corners=False).reshape(4, 64).T
    torch.testing.assert_close(resize_tokens(q[0], (4, 4), 8), expected)
    torch.testing.assert_close(head_scores(q, k, (4, 4), 4)[1], q[1] @ k[1].T)  # same grid: plain, unscaled q k^T


# ------------------------------------------------------------------------------ R at other grids
def test_resampled_correlation_rows_sum_to_one_and_flip_mirrors():
    a, _ = planted(8, 0)
    r = refine(a, kl_assign(a, 8, anchor_stride=None, rounds=5, precision="float16")[0])
    r[5] = 0  # a row DiCLIP's threshold emptied
    # at the stored grid R comes back as stored (no renormalising: the empty row stays empty), mirrored exactly
    assert resample_correlation(r, 8, 8) is r
    perm = torch.arange(64).reshape(8, 8).flip(-1).reshape(-1)
    assert torch.equal(resample_correlation(r, 8, 8, flip=True), r[perm][:, perm])
    r = refine(a, kl_assign(a, 8, anchor_stride=None, rounds=5, precision="float16")[0])
    for size in (5, 12, 16):
        big = resample_correlation(r, 8, size)
        assert big.shape == (size * size, size * size) and (big >= 0).all()
        torch.testing.assert_close(big.sum(-1), torch.ones(size * size), atol=1e-5, rtol=0)
    # flipping = resampling R of the mirrored image (patch (y, x) -> (y, g-1-x) on both axes)
    torch.testing.assert_close(resample_correlation(r, 8, 12, flip=True), resample_correlation(r[perm][:, perm], 8, 12))
    with pytest.raises(ValueError, match=r"R must be \(64, 64\) for grid 8"):
        resample_correlation(r[:10], 8, 12)


# ------------------------------------------------------------------------------ transition P
def test_sharpening_by_hand():
    p0 = torch.tensor([[0.5, 0.01, 0.49], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]])
    p1 = p0 / p0.amax(0, keepdim=True)
    p2 = (p1 + 0.02 * torch.log10(math.e * p1)).clamp_min(0)
    torch.testing.assert_close(sharpen_transition(p0, 0.02), p2 / p2.sum(-1, keepdim=True))
    assert sharpen_transition(p0, 0.02)[0, 1] == 0  # 0.01 / 0.5 = 0.02 of its column's max: below ~0.024, dropped
    torch.testing.assert_close(sharpen_transition(p0, 0.0), p1 / p1.sum(-1, keepdim=True))


def test_head_probabilities_are_the_head_mean_of_softmax():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 10, 4, generator=g), torch.randn(3, 10, 4, generator=g)
    expected = torch.stack([F.softmax(q[h] @ k[h].T * 0.5, -1) for h in range(3)]).mean(0)
    torch.testing.assert_close(head_probabilities(q, k, 0.5), expected)


def test_top_k_rows_renormalise_report_kept_mass_and_are_exact_when_sparse():
    g = torch.Generator().manual_seed(2)
    p = sharpen_transition(torch.rand(64, 64, generator=g) ** 8, 0.02)
    sparse = top_k_rows(p, 16)
    assert sparse.values.shape == sparse.index.shape == (64, 16)
    torch.testing.assert_close(sparse.values.sum(-1), torch.ones(64), atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.kept, p.topk(16, -1).values.sum(-1) / p.sum(-1))
    assert torch.equal(sparse.truncated, (p != 0).sum(-1) > 16)
    sparse_p = torch.where(p >= p.topk(5, -1).values[:, -1:], p, torch.zeros_like(p))  # 5 non-zeros per row
    exact = top_k_rows(sparse_p, 16)
    assert not exact.truncated.any() and torch.allclose(exact.kept, torch.ones(64))
    dense = torch.zeros(64, 64).scatter_(1, exact.index, exact.values)
    torch.testing.assert_close(dense, sparse_p / sparse_p.sum(-1, keepdim=True))
    assert top_k_rows(p, 1000).values.shape == (64, 64)  # k is capped at the row length
