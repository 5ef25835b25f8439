"""Sliding-window heatmaps: the window grid, window extraction and placing window scores.

A sliding-window method (PICARD) scores each `window` x `window` crop of an image with one number;
the crops' top-left corners form a regular grid with spacing `stride`, and the grid of scores is
turned back into a per-pixel map by `place`.

Grid (`window_grid`): n = (H - window) // stride + 1 corners per axis at 0, stride, ...; when
(H - window) is a multiple of the stride the last window sits flush with the border, and
H == window gives one window. The original computes the same windows (its coarse map had one
cell fewer than windows in exactly that case, an indexing bug not reproduced here). When the
stride does not reach the border the last H - window - (n - 1) stride rows are in no window;
`cover_border=True` adds one more window flush with the border (off the stride grid) to cover
them. The default, as the original, adds none.

Placement (`place`, `mode`):
- "centred": each score sits at its window's centre (pixel coordinate corner + (window - 1) / 2)
  and the map is bicubic interpolation between the centres (the cubic convolution kernel with
  a = -0.75, as PyTorch's bicubic); beyond the outermost centres the edge values are held
  constant. The map is aligned with the image.
- "stretch": the original's: the grid of scores resized bicubically to (H, W) with PyTorch's
  `interpolate(mode='bicubic', align_corners=False)` (a = -0.75, half-pixel source coordinates
  (dst + 0.5) * n / H - 0.5, taps clamped to the grid). The grid is stretched over the whole
  image although the centres only span [window / 2, H - window / 2], so the map is shifted
  towards the borders by up to about window / 2 pixels.
- "averaged": the original's alternative: each window adds its score to all its pixels and the
  sum is divided by the number of windows covering the pixel. Pixels in no window take the value
  of the nearest covered pixel (`uncovered="nearest"`, default) or 0 (`uncovered="zero"`, what
  the original's 0 / 0 = NaN -> 0 gives); a strip of zeros would be a border artefact, not a
  measurement.

Every mode is separable: map = R @ scores @ C^T with an [H, n_r] row and a [W, n_c] column weight
matrix (`placement_weights`), so `place` works on NumPy arrays and, inside `jit`, on JAX arrays,
with any leading batch dimensions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("centred", "stretch", "averaged")
TORCH_BICUBIC_A = -0.75


def window_grid(
    height: int, width: int, window: int, stride: int, *, cover_border: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the windows: (rows [n_r], cols [n_c]) as int arrays."""
    if stride < 1 or window < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive.")
    if height < window or width < window:
        raise ValueError(
            f"the image ({height}x{width}) is smaller than the {window}x{window} window."
        )
    return (
        _axis_corners(height, window, stride, cover_border),
        _axis_corners(width, window, stride, cover_border),
    )


def _axis_corners(length: int, window: int, stride: int, cover_border: bool) -> np.ndarray:
    corners = np.arange((length - window) // stride + 1) * stride
    if cover_border and corners[-1] + window < length:
        corners = np.append(corners, length - window)
    return corners.astype(np.int64)


def extract(image, corners: tuple[np.ndarray, np.ndarray], window: int):
    """[H, W, C] -> [n_r * n_c, window, window, C]: the windows in row-major grid order.

    Works on NumPy and JAX arrays (static slices, usable inside `jit`).
    """
    rows, cols = corners
    xp = jnp if isinstance(image, jax.Array) else np
    return xp.stack(
        [image[r : r + window, c : c + window] for r in np.asarray(rows) for c in np.asarray(cols)]
    )


def cubic_weights(t: np.ndarray, a: float = TORCH_BICUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel at distances `t` (PyTorch's coefficients for a = -0.75)."""
    t = np.abs(np.asarray(t, np.float64))
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _cubic_matrix(positions: np.ndarray, size: int) -> np.ndarray:
    """[len(positions), size]: 4-tap cubic interpolation at fractional grid positions.

    Taps floor(p) - 1 ... floor(p) + 2 outside the grid are clamped to its ends (their weights
    added to the edge cell), as PyTorch's bicubic does.
    """
    base = np.floor(positions).astype(np.int64)
    frac = positions - base
    weights = np.zeros((positions.size, size))
    rows = np.arange(positions.size)
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, size - 1)
        np.add.at(weights, (rows, idx), cubic_weights(frac - k))
    return weights


def torch_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size]: one axis of PyTorch's bicubic resize (align_corners=False).

    Output pixel i reads source coordinate (i + 0.5) * in_size / out_size - 0.5 (not clamped,
    as PyTorch does for cubic modes).
    """
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    return _cubic_matrix(source, in_size)


def resize_bicubic(grid, height: int, width: int):
    """PyTorch's `interpolate(grid, (height, width), mode='bicubic', align_corners=False)`."""
    n_r, n_c = grid.shape[-2:]
    return _apply(grid, torch_bicubic_weights(n_r, height), torch_bicubic_weights(n_c, width))


def placement_weights(
    length: int,
    window: int,
    stride: int,
    mode: str,
    *,
    cover_border: bool = False,
    uncovered: str = "nearest",
) -> np.ndarray:
    """[length, n] float64 weights of one axis: each pixel's mix of the n window scores."""
    if mode not in MODES:
        raise ValueError(f"placement mode {mode!r} is not one of {', '.join(MODES)}.")
    if uncovered not in ("nearest", "zero"):
        raise ValueError(f"uncovered={uncovered!r}: use 'nearest' or 'zero'.")
    corners = _axis_corners(length, window, stride, cover_border)
    n = corners.size
    if mode == "stretch":
        return torch_bicubic_weights(n, length)
    pixels = np.arange(length)
    if mode == "centred":
        centres = corners + (window - 1) / 2
        # Fractional grid position of each pixel, linear between centres (uniform unless
        # cover_border moved the last one) and clamped beyond the outermost: edges held constant.
        position = np.interp(pixels, centres, np.arange(n)) if n > 1 else np.zeros(length)
        return _cubic_matrix(position, n)
    covered = (pixels[:, None] >= corners[None]) & (pixels[:, None] < corners[None] + window)
    weights = covered.astype(np.float64)
    counts = weights.sum(1, keepdims=True)
    weights = np.divide(weights, counts, out=np.zeros_like(weights), where=counts > 0)
    if uncovered == "nearest":
        last = corners[-1] + window - 1  # covered pixels are [0, last]
        weights = weights[np.minimum(pixels, last)]
    return weights


def place(
    scores,
    height: int,
    width: int,
    window: int,
    stride: int,
    mode: str = "centred",
    *,
    cover_border: bool = False,
    uncovered: str = "nearest",
):
    """[..., n_r, n_c] window scores -> [..., height, width] map (see the module docstring).

    `scores[..., i, j]` belongs to the window at (rows[i], cols[j]) of `window_grid(height,
    width, window, stride, cover_border=...)`. NumPy in, float32 NumPy out; JAX in, JAX out.
    """
    rows, cols = window_grid(height, width, window, stride, cover_border=cover_border)
    if tuple(scores.shape[-2:]) != (rows.size, cols.size):
        raise ValueError(
            f"scores {tuple(scores.shape)} do not match the {rows.size}x{cols.size} window grid "
            f"of a {height}x{width} image (window {window}, stride {stride})."
        )
    options = dict(cover_border=cover_border, uncovered=uncovered)
    return _apply(
        scores,
        placement_weights(height, window, stride, mode, **options),
        placement_weights(width, window, stride, mode, **options),
    )


def _apply(grid, row_weights: np.ndarray, col_weights: np.ndarray):
    if isinstance(grid, jax.Array):
        r = jnp.asarray(row_weights, grid.dtype)
        c = jnp.asarray(col_weights, grid.dtype)
        return jnp.einsum("hr,...rc,wc->...hw", r, grid, c, precision="highest")
    # Two matrix products (optimize=True): a plain three-operand einsum takes seconds per image.
    out = np.einsum(
        "hr,...rc,wc->...hw",
        row_weights,
        np.asarray(grid, np.float64),
        col_weights,
        optimize=True,
    )
    return out.astype(np.float32)
