"""Tests for jaxad.ops.lattice against the Lesion2Void masking facts (224 px, grid 48, patch 16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.ops import lattice

SIZE, GRID, PATCH = 224, 48, 16


def reference_mask(height, width, offset_row, offset_col, grid=GRID, patch=PATCH):
    """The rule written out square by square."""
    mask = np.zeros((height, width), np.float32)
    for i in range(height - patch):
        for j in range(width - patch):
            if i % grid == offset_row and j % grid == offset_col:
                mask[i : i + patch, j : j + patch] = 1
    return mask


def phase_mask(k):
    return lattice.lattice_mask(SIZE, SIZE, *lattice.phase_to_offsets(k, GRID))


@pytest.fixture(scope="module")
def summaries():
    """Per-phase summaries of all 2304 masks (the masks themselves would take 460 MB)."""

    @jax.jit
    def summarise(k):
        mask = phase_mask(k)
        return {
            "pixels": mask.sum(),
            "row_223": mask[223, :].max(),
            "col_223": mask[:, 223].max(),
            "row_222": mask[222, :].max(),
            "rows_216_222": mask[216:223, :].max(),
        }

    return jax.tree.map(np.asarray, jax.lax.map(summarise, jnp.arange(GRID * GRID)))


@pytest.mark.parametrize(
    "height, width, offset_row, offset_col, grid, patch",
    [
        (224, 224, 0, 0, 48, 16),
        (224, 224, 15, 16, 48, 16),
        (224, 224, 47, 31, 48, 16),
        (100, 77, 3, 40, 48, 16),
        (64, 64, 2, 5, 6, 8),  # squares wider than the grid overlap
    ],
)
def test_matches_square_by_square_rule(height, width, offset_row, offset_col, grid, patch):
    got = lattice.lattice_mask(height, width, offset_row, offset_col, grid=grid, patch=patch)
    assert got.dtype == jnp.float32
    want = reference_mask(height, width, offset_row, offset_col, grid, patch)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_squares_per_image(summaries):
    # Offsets 0-15 fit 5 top-lefts below 208 per axis, offsets 16-47 fit 4.
    per_axis = np.where(np.arange(GRID) < PATCH, 5, 4)
    rows, cols = np.asarray(lattice.phase_to_offsets(np.arange(GRID * GRID), GRID))
    want = per_axis[rows] * per_axis[cols]
    squares = summaries["pixels"] / PATCH**2  # squares never overlap when patch < grid
    np.testing.assert_array_equal(squares, want)
    assert sorted(set(want.tolist())) == [16, 20, 25]
    assert (squares[:PATCH] == 25).all()  # offsets (0-15, 0)
    assert (squares[PATCH:GRID] == 20).all()  # offsets (16-47, 0)


def test_mean_masked_fraction(summaries):
    # Per axis (16 * 5 + 32 * 4) * 16 / (48 * 224) = 13 / 42 of the positions are covered on
    # average, and row and column offsets are independent over the 2304 phases.
    fraction = summaries["pixels"].astype(np.int64).sum() / (GRID * GRID * SIZE * SIZE)
    assert fraction == pytest.approx(169 / 1764, abs=1e-12)  # (13 / 42) ** 2 = 9.58 %


def test_last_row_and_column_never_masked(summaries):
    # The last valid top-left is 207 (< 224 - 16), whose square ends at 222. So rows 216-222 are
    # reached, by offsets 9-15 only (top-lefts 201-207), and row 223 never. The fact sheet's
    # "squares never reach rows/columns 216-223" holds for the test phases only (coverage test).
    assert summaries["row_223"].max() == 0
    assert summaries["col_223"].max() == 0
    assert summaries["row_222"].max() == 1
    rows, _ = np.asarray(lattice.phase_to_offsets(np.arange(GRID * GRID), GRID))
    np.testing.assert_array_equal(summaries["rows_216_222"] == 1, (rows >= 9) & (rows <= 15))


def test_row_offset_applies_to_rows():
    mask = np.asarray(lattice.lattice_mask(SIZE, SIZE, *lattice.phase_to_offsets(5, GRID)))
    assert np.nonzero(mask.any(axis=1))[0][0] == 5
    assert np.nonzero(mask.any(axis=0))[0][0] == 0


def test_phase_to_offsets():
    for k, want in [(0, (0, 0)), (47, (47, 0)), (48, (0, 1)), (49, (1, 1)), (2303, (47, 47))]:
        assert tuple(int(v) for v in lattice.phase_to_offsets(k, GRID)) == want


def test_test_phases():
    phases = np.asarray(lattice.test_phases(GRID, PATCH // 2))
    assert phases.shape == (36,)
    assert phases.dtype == np.int32
    assert (np.diff(phases) > 0).all()
    # The reference selection: k % 8 == 0 and (k // 48) % 8 == 0.
    k = np.arange(GRID * GRID)
    np.testing.assert_array_equal(phases, k[(k % 8 == 0) & ((k // GRID) % 8 == 0)])
    rows, cols = np.asarray(lattice.phase_to_offsets(phases, GRID))
    assert set(rows.tolist()) == set(cols.tolist()) == set(range(0, 48, 8))
    assert lattice.test_phases(12, 4).shape == (9,)


def test_test_masks_coverage():
    """How often the 36 test masks cover each pixel at 224.

    Row and column counts multiply: rows 0-7 and 208-215 lie in one test lattice, rows 8-207 in two,
    rows 216-223 in none. So 40,000 pixels (rows and columns 8-207) are covered 4 times, 6,400
    (edge bands 0-7 / 208-215 against 8-207) twice, 256 (the four 8x8 corner blocks) once and 3,520
    (rows or columns 216-223) never. The fact sheet's pixel counts agree; it places the 4x block at
    rows/cols 0-199, which is off by 8.
    """
    masks = jax.jit(jax.vmap(phase_mask))(lattice.test_phases(GRID, PATCH // 2))
    coverage = np.asarray(masks.sum(axis=0))
    counts = {int(v): int((coverage == v).sum()) for v in np.unique(coverage)}
    assert counts == {0: 3520, 1: 256, 2: 6400, 4: 40000}
    per_row = np.r_[np.ones(8), 2 * np.ones(200), np.ones(8), np.zeros(8)]
    np.testing.assert_array_equal(coverage, np.outer(per_row, per_row))


def test_jittable_with_traced_offsets():
    masks_for = jax.jit(phase_mask)
    for k in [0, 17, 1000, 2303]:
        rows, cols = (int(v) for v in lattice.phase_to_offsets(k, GRID))
        np.testing.assert_array_equal(
            np.asarray(masks_for(jnp.int32(k))), reference_mask(SIZE, SIZE, rows, cols)
        )


def test_random_phase():
    phases = jax.vmap(lambda key: lattice.random_phase(key, GRID))(
        jax.random.split(jax.random.key(0), 20_000)
    )
    phases = np.asarray(phases)
    assert phases.min() >= 0 and phases.max() < GRID * GRID
    assert len(np.unique(phases)) > 2000
    assert phases.mean() == pytest.approx((GRID * GRID - 1) / 2, rel=0.02)


def test_fill_masked():
    key_images, key_noise = jax.random.split(jax.random.key(1))
    images = jax.random.normal(key_images, (2, 32, 32, 3))
    noise = jax.random.uniform(key_noise, (32, 32), minval=-1.0, maxval=1.0)
    mask = lattice.lattice_mask(32, 32, 2, 5, grid=12, patch=4)
    filled = np.asarray(jax.jit(lattice.fill_masked)(images, mask, noise))
    on = np.asarray(mask) == 1
    # The same noise in every image and channel inside the mask, the input untouched outside.
    np.testing.assert_array_equal(
        filled[:, on, :], np.broadcast_to(np.asarray(noise)[on][:, None], (2, on.sum(), 3))
    )
    np.testing.assert_array_equal(filled[:, ~on, :], np.asarray(images)[:, ~on, :])
