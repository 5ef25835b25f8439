"""Sliding-window grid, extraction and the three placements against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.ops import heatmap

# PyTorch's bicubic kernel (a = -0.75) at the distances 0.25, 0.75, 1.25, 1.75, worked by hand:
# (a + 2) t^3 - (a + 3) t^2 + 1 for t <= 1 and a t^3 - 5 a t^2 + 8 a t - 4 a for 1 < t < 2.
K025, K075, K125, K175 = 0.87890625, 0.26171875, -0.10546875, -0.03515625


def test_cubic_kernel_values():
    np.testing.assert_allclose(
        heatmap.cubic_weights([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5]),
        [1.0, K025, K075, 0.0, K125, K175, 0.0, 0.0],
    )


@pytest.mark.parametrize(
    "length, expected, expected_cover",
    [
        (64, [0], [0]),  # one window
        (96, [0, 16, 32], [0, 16, 32]),  # (96 - 64) % 16 == 0: the last window is flush
        (100, [0, 16, 32], [0, 16, 32, 36]),  # 4 rows uncovered unless cover_border
    ],
)
def test_window_grid(length, expected, expected_cover):
    rows, cols = heatmap.window_grid(length, 64, 64, 16)
    assert rows.tolist() == expected and cols.tolist() == [0]
    rows, _ = heatmap.window_grid(length, 64, 64, 16, cover_border=True)
    assert rows.tolist() == expected_cover


def test_window_grid_counts_match_the_original_formula():
    for height in range(256, 600, 7):
        rows, _ = heatmap.window_grid(height, 256, 256, 32)
        assert rows.size == (height - 256) // 32 + 1
        assert rows[-1] + 256 <= height


def test_window_grid_rejects_small_images():
    with pytest.raises(ValueError, match="smaller than the 64x64 window"):
        heatmap.window_grid(63, 80, 64, 16)


@pytest.mark.parametrize("as_jax", [False, True])
def test_extract_is_row_major(as_jax):
    image = np.arange(6 * 5 * 2, dtype=np.float32).reshape(6, 5, 2)
    corners = heatmap.window_grid(6, 5, 3, 2)  # rows [0, 2], cols [0, 2]
    windows = heatmap.extract(jnp.asarray(image) if as_jax else image, corners, 3)
    assert windows.shape == (4, 3, 3, 2)
    for k, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        np.testing.assert_array_equal(windows[k], image[r : r + 3, c : c + 3])


def test_torch_bicubic_known_example():
    # interpolate([[0, 1]], size=(1, 4), mode='bicubic', align_corners=False): the sources are
    # -0.25, 0.25, 0.75, 1.25, so out[0] = K125 * 1 (its taps are clamped to cell 0 but one),
    # out[1] = (K075 + K175) * 1, and the rest by symmetry.
    out = heatmap.resize_bicubic(np.array([[0.0, 1.0]]), 1, 4)
    expected = [K125, K075 + K175, 1 - K075 - K175, 1 - K125]
    np.testing.assert_allclose(out, [expected], rtol=1e-6)
    np.testing.assert_allclose(expected, [-0.10546875, 0.2265625, 0.7734375, 1.10546875])


def _torch_bicubic_direct(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """PyTorch's upsample_bicubic2d written pixel by pixel (4 x 4 taps, clamped indices)."""
    n_r, n_c = grid.shape
    out = np.zeros((height, width))
    for y in range(height):
        sy = (y + 0.5) * n_r / height - 0.5
        y0 = int(np.floor(sy))
        wy = [heatmap.cubic_weights(sy - (y0 + k)) for k in range(-1, 3)]
        for x in range(width):
            sx = (x + 0.5) * n_c / width - 0.5
            x0 = int(np.floor(sx))
            wx = [heatmap.cubic_weights(sx - (x0 + k)) for k in range(-1, 3)]
            for i in range(4):
                for j in range(4):
                    r = min(max(y0 - 1 + i, 0), n_r - 1)
                    c = min(max(x0 - 1 + j, 0), n_c - 1)
                    out[y, x] += wy[i] * wx[j] * grid[r, c]
    return out


@pytest.mark.parametrize("shape, size", [((3, 4), (7, 9)), ((5, 2), (3, 6)), ((1, 1), (4, 3))])
def test_torch_bicubic_against_direct_formula(shape, size):
    grid = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_allclose(
        heatmap.resize_bicubic(grid, *size), _torch_bicubic_direct(grid, *size), atol=1e-6
    )


def test_place_centred_hand_checked():
    # Window 4, stride 2 on a 6-wide image: windows [0, 4) and [2, 6), centres 1.5 and 3.5.
    # Pixels 0-1 and 4-5 are beyond the centres (held), pixel 2 is a quarter of the way:
    # taps (0, 0, 1, 1) with weights K125 + K025 and K075 + K175.
    out = heatmap.place(np.array([[0.0, 1.0]]), 4, 6, 4, 2, "centred")
    row = [0.0, 0.0, K075 + K175, K025 + K125, 1.0, 1.0]
    np.testing.assert_allclose(out, np.tile(row, (4, 1)), atol=1e-7)


def test_place_centred_interpolates_through_centres():
    scores = np.random.default_rng(1).normal(size=(3, 4))
    # Window 5 (centres at whole pixels 2, 5, 8, ...), stride 3: the map hits every score.
    out = heatmap.place(scores, 11, 14, 5, 3, "centred")
    np.testing.assert_allclose(out[2::3, 2::3], scores, atol=1e-6)


def test_place_stretch_is_the_bicubic_resize():
    scores = np.random.default_rng(2).normal(size=(3, 2))
    out = heatmap.place(scores, 96, 80, 64, 16, "stretch")
    np.testing.assert_allclose(out, heatmap.resize_bicubic(scores, 96, 80), atol=1e-6)


def test_place_averaged_hand_checked():
    # Window 4, stride 2: windows [0, 4) and [2, 6); pixel 6 of a 7-wide image is in none.
    scores = np.array([[0.0, 1.0]])
    out = heatmap.place(scores, 4, 7, 4, 2, "averaged")
    np.testing.assert_allclose(out, np.tile([0, 0, 0.5, 0.5, 1, 1, 1], (4, 1)))
    out = heatmap.place(scores, 4, 7, 4, 2, "averaged", uncovered="zero")
    np.testing.assert_allclose(out, np.tile([0, 0, 0.5, 0.5, 1, 1, 0], (4, 1)))


def test_place_averaged_2d_is_the_mean_of_covering_windows():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3, 2))
    out = heatmap.place(scores, 10, 8, 6, 2, "averaged")  # rows 0, 2, 4; cols 0, 2
    total, count = np.zeros((10, 8)), np.zeros((10, 8))
    for i, r in enumerate([0, 2, 4]):
        for j, c in enumerate([0, 2]):
            total[r : r + 6, c : c + 6] += scores[i, j]
            count[r : r + 6, c : c + 6] += 1
    np.testing.assert_allclose(out, total / count, atol=1e-6)


@pytest.mark.parametrize("mode", heatmap.MODES)
def test_place_constant_scores_and_one_window(mode):
    np.testing.assert_allclose(heatmap.place(np.full((3, 2), 2.5), 100, 80, 64, 16, mode), 2.5)
    one = heatmap.place(np.array([[4.0]]), 64, 64, 64, 16, mode)
    assert one.shape == (64, 64)
    np.testing.assert_allclose(one, 4.0, rtol=1e-6)


@pytest.mark.parametrize("mode", heatmap.MODES)
def test_place_in_jit_matches_numpy_with_batch_dims(mode):
    scores = np.random.default_rng(4).normal(size=(2, 3, 4)).astype(np.float32)
    expected = heatmap.place(scores, 40, 50, 20, 10, mode, cover_border=True)
    out = jax.jit(lambda s: heatmap.place(s, 40, 50, 20, 10, mode, cover_border=True))(scores)
    assert out.shape == (2, 40, 50) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_place_checks_the_grid_shape():
    with pytest.raises(ValueError, match="3x2 window grid"):
        heatmap.place(np.zeros((2, 2)), 96, 80, 64, 16)
    with pytest.raises(ValueError, match="placement mode"):
        heatmap.place(np.zeros((3, 2)), 96, 80, 64, 16, "nearest")
