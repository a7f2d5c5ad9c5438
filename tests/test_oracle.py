"""The ablation's upper bounds (pipeline/diffusion/oracle.py): R and P built from a mask, and the mass
P keeps on an object's own label, on planted masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.diffusion.correlation import dense_correlation
from pipeline.diffusion.oracle import grid_share, oracle_clusters, oracle_transition, own_label_mass


def planted_mask() -> np.ndarray:
    """A 32 x 32 mask: background, an object (1) in the top-left 16 x 16, an object (2) in the bottom-right 8 x 8."""
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:16, :16] = 1
    mask[24:, 24:] = 2
    return mask


def test_oracle_r_spreads_each_patch_evenly_over_its_label():
    clusters, rows = oracle_clusters(planted_mask(), 4)  # cells of 8 x 8 pixels
    assert clusters.shape == (4, 4) and rows.shape == (3, 16)
    np.testing.assert_array_equal(clusters, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]])
    r = dense_correlation(clusters, rows)  # as the cams stage reads it back
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-6)
    assert r[0, 1] == pytest.approx(1 / 4) and r[0, 2] == 0 and r[15, 15] == 1.0 and r[2, 3] == pytest.approx(1 / 11)


def test_own_label_mass_is_one_for_the_oracle_and_the_object_share_for_a_uniform_p():
    mask = planted_mask()
    assert own_label_mass(oracle_transition(mask, 8), mask) == pytest.approx(1.0)
    uniform = np.full((64, 64), 1 / 64)
    # object 1 holds 16 of 64 cells, object 2 holds 4: a uniform row keeps each object's share
    assert own_label_mass(uniform, mask) == pytest.approx((16 / 64 + 4 / 64) / 2) == grid_share(mask, 8)
    leaky = 0.5 * oracle_transition(mask, 8) + 0.5 * uniform  # half the mass leaks evenly
    assert own_label_mass(leaky, mask) == pytest.approx(0.5 + 0.5 * (16 / 64 + 4 / 64) / 2)
    assert np.isnan(own_label_mass(uniform, np.zeros((32, 32), dtype=np.uint8)))
    assert np.isnan(grid_share(np.zeros((32, 32), dtype=np.uint8), 8))


def test_the_object_patch_is_inside_the_largest_object_nearest_its_centre():
    from pipeline.diffusion.oracle import object_patch

    mask = planted_mask()  # object 1 covers cells (0..3, 0..3) at grid 8, centroid (1.5, 1.5)
    assert object_patch(mask, 8) == 1 * 8 + 1
    assert object_patch(np.zeros((32, 32), dtype=np.uint8), 8) is None
