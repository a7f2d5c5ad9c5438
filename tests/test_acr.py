"""ACR (the `acr` recipe) on planted attention recovers the planted partition; symmetric KL."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest

from pipeline.diffusion.acr import acr, anchor_indices, merge_proposals, symmetric_kl
from pipeline.diffusion.config import AcrConfig

ACR = AcrConfig(anchor_grid=16, merge_kl=0.9, merge_rounds=3, max_clusters=16, kmeans_iters=10)


def planted_partition(h: int = 16, w: int = 16) -> np.ndarray:
    """(h, w) labels: background, a disk, a corner block, a thin bar and an L shape."""
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((h, w), dtype=np.int64)
    lab[(yy - 5) ** 2 + (xx - 5) ** 2 < 13] = 1
    lab[(yy > 9) & (xx > 8)] = 2
    lab[(xx < 3) & (yy > 9)] = 3
    lab[(yy < 3) & (xx > 9)] = 4
    lab[(yy < 7) & (xx > 13)] = 4
    return lab


def planted_attention(labels: np.ndarray, *, seed: int, inside: float = 0.85, jitter: float = 0.3) -> np.ndarray:
    """Row i: `inside` of its mass spread over i's own group, the rest uniform, times random jitter."""
    rng = np.random.default_rng(seed)
    flat = labels.ravel()
    same = (flat[:, None] == flat[None, :]).astype(np.float64)
    a = inside * same / same.sum(1, keepdims=True) + (1 - inside) / flat.size
    a *= rng.uniform(1 - jitter, 1 + jitter, a.shape)
    return a / a.sum(1, keepdims=True)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the label maps induce the same partition (equal up to renaming the labels)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("anchor_grid", [8, 16])
def test_acr_recovers_the_planted_partition_exactly(seed, anchor_grid):
    labels = planted_partition()
    result = acr(planted_attention(labels, seed=seed), 16, replace(ACR, anchor_grid=anchor_grid))
    assert result.k == 5 == result.n_proposals
    assert same_partition(result.hard, labels)
    assert result.hard.shape == (16, 16) and result.soft.shape == (5, 16, 16)
    np.testing.assert_allclose(result.soft.sum(0), 1.0, atol=1e-5)
    # the soft maps peak in their own cluster, and the hard map follows them
    assert (result.soft.argmax(0) == result.hard).all()
    # numbered by first appearance in raster order
    _, first = np.unique(result.hard, return_index=True)
    assert list(result.hard.ravel()[np.sort(first)]) == list(range(5))


def test_acr_recovers_on_a_rectangular_grid_without_kmeans():
    labels = planted_partition(12, 20)
    result = acr(planted_attention(labels, seed=7), (12, 20), replace(ACR, kmeans_iters=0))
    assert result.k == 5 and same_partition(result.hard, labels)


def test_merging_alone_finds_one_proposal_per_group():
    labels = planted_partition()
    attention = planted_attention(labels, seed=1)
    anchors = anchor_indices((16, 16), 8)
    proposals, members, n = merge_proposals(attention[anchors], threshold=0.9, rounds=3, max_clusters=16)
    assert n == len(proposals) == 5
    # every proposal covers exactly the anchors of one planted group
    groups = labels.ravel()[anchors]
    assert sorted(tuple(sorted(set(groups[m]))) for m in members) == [(g,) for g in range(5)]
    assert members.sum() == len(anchors)


def test_max_clusters_caps_by_merging_the_closest_groups():
    labels = planted_partition()
    result = acr(planted_attention(labels, seed=2), 16, replace(ACR, max_clusters=3))
    assert result.k == 3 and result.n_proposals == 5
    # merging never splits a planted group
    for g in range(5):
        assert len(np.unique(result.hard[labels == g])) == 1


def test_capping_merges_the_same_pairs_as_recomputing_every_distance():
    """The cap updates one distance row per merge; a from-scratch recomputation after every merge
    (symmetric_kl over all proposals) must pick the same pairs, on rows with no planted structure."""
    rng = np.random.default_rng(11)
    rows = rng.dirichlet(np.full(64, 0.5), size=40)
    proposals, members, n = merge_proposals(rows, threshold=1e-9, rounds=1, max_clusters=6)
    assert n == 40 and len(members) == 6
    ref = [np.eye(40, dtype=bool)[i] for i in range(40)]  # the reference: one closest pair at a time
    while len(ref) > 6:
        means = np.stack([rows[m].mean(0) for m in ref])
        d = symmetric_kl(means, means)
        np.fill_diagonal(d, np.inf)
        i, j = sorted(np.unravel_index(np.argmin(d), d.shape))
        ref[i] = ref[i] | ref[j]
        del ref[j]
    assert sorted(map(tuple, members.astype(int))) == sorted(map(tuple, np.stack(ref).astype(int)))
    np.testing.assert_allclose(proposals, np.stack([rows[m].mean(0) for m in members]), rtol=1e-5, atol=1e-6)  # rows get +1e-8 before use


def test_no_merging_rounds_keeps_anchors_as_proposals():
    labels = planted_partition()
    result = acr(planted_attention(labels, seed=3), 16, replace(ACR, merge_rounds=0, anchor_grid=4))
    assert result.n_proposals == 16  # 4x4 anchors, nothing merged
    assert result.k <= 16


def test_uniform_attention_collapses_to_one_cluster():
    result = acr(np.full((64, 64), 1 / 64), 8, ACR)
    assert result.k == 1 and (result.hard == 0).all()
    np.testing.assert_allclose(result.soft, 1.0)


def test_acr_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"expected \(256, 256\)"):
        acr(np.ones((100, 100)), 16, ACR)


def test_acr_config_is_the_params_section_and_validates():
    from pipeline.params.sections import DiffusionAttentionParams

    assert DiffusionAttentionParams().acr == AcrConfig()  # the params' diffusion_attention.acr is the config
    for field, bad in [("merge_kl", 0.0), ("merge_kl", -1.0), ("merge_kl", float("nan")), ("anchor_grid", 0),
                       ("merge_rounds", -1), ("max_clusters", 0), ("kmeans_iters", -1), ("max_clusters", 2.5),
                       ("anchor_grid", True)]:
        with pytest.raises(ValueError, match=rf"^{field} must (be|lie in) .*, got {bad!r}$"):
            AcrConfig(**{field: bad})
    with pytest.raises(FrozenInstanceError):
        ACR.merge_kl = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError, match="config must be an AcrConfig, got dict"):
        acr(np.full((64, 64), 1 / 64), 8, dict(anchor_grid=16, merge_kl=0.9))  # type: ignore[arg-type]


def test_anchor_lattice_is_regular_and_capped():
    idx = anchor_indices((16, 16), 4)
    assert sorted(set(idx // 16)) == sorted(set(idx % 16)) == [2, 6, 10, 14]
    assert len(anchor_indices((16, 16), 32)) == 256


def test_symmetric_kl_matches_its_definition():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=4)
    q = rng.dirichlet(np.ones(10), size=3)
    d = symmetric_kl(p, q)
    kl = lambda a, b: float((a * np.log(a / b)).sum())  # noqa: E731
    for i in range(4):
        for j in range(3):
            assert d[i, j] == pytest.approx(0.5 * (kl(p[i], q[j]) + kl(q[j], p[i])), rel=1e-4)
    dd = symmetric_kl(p, p)
    np.testing.assert_allclose(dd, dd.T)
    np.testing.assert_allclose(np.diag(dd), 0, atol=1e-9)
