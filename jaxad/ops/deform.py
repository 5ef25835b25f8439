"""Dense deformations for images: warping, diffeomorphic integration, similarity and smoothness.

Pure, jittable functions on NHWC arrays, written for MorphAEus (Bercea et al., MICCAI 2023) and
usable by any method. They follow the conventions of voxelmorph, which MorphAEus uses:

- A displacement or velocity field `disp` is [B, H, W, 2] in **pixel units**; channel 0 moves
  along H (rows), channel 1 along W (columns).
- `warp(image, disp)` samples `image` at p + disp(p) bilinearly with corner-aligned pixel
  coordinates and zeros outside the image: torch's `grid_sample(mode='bilinear',
  padding_mode='zeros', align_corners=True)` after voxelmorph's normalisation
  2 (p + u) / (size - 1) - 1, which it inverts exactly (up to float rounding). Each of the four
  neighbours of a sample counts only if it lies inside the image, so a sample half a pixel
  outside the border keeps half of the border value. (Unlike the normalised form, pixel
  coordinates also work for an axis of size 1.)
- `integrate_velocity(v)` is scaling and squaring: u = v / 2^steps, then u <- u + warp(u, u)
  `steps` times, so exp(v) is a diffeomorphism for smooth enough v.
- `local_ncc_loss` is voxelmorph's local normalised cross-correlation loss in MorphAEus's form:
  1 - mean(cc), cc the squared local correlation over 9 x 9 windows.
- `gradient_l2` is the gradient-L2 smoothness penalty of a field (TransMorph's
  `DisplacementRegularizer2D('gradient-l2')`).
- `upsample_bilinear_align_corners` is PyTorch's bilinear upsampling with `align_corners=True`
  (`jax.image.resize` uses half-pixel centres, i.e. `align_corners=False`); the MorphAEus decoder
  upsamples with it.

`warp` gathers the four neighbours of every sample (its image gradient is a scatter-add, slow on
CPU but unavoidable for data-dependent positions); the upsampling uses fixed weights on shifted
slices instead of gathers, and the NCC's box sums are banded matrix products.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def warp(image: jax.Array, disp: jax.Array) -> jax.Array:
    """Samples `image` [B, H, W, C] at p + disp(p); `disp` [B, H, W, 2] in pixels (rows, columns).

    Bilinear, corner-aligned, zero outside: `grid_sample(mode='bilinear', padding_mode='zeros',
    align_corners=True)` with voxelmorph's normalisation. The output has the image's dtype; the
    coordinates are computed in the displacement's dtype (use float32).
    """
    b, h, w, c = image.shape
    if disp.shape != (b, h, w, 2):
        raise ValueError(
            f"disp must be {(b, h, w, 2)} for an image {image.shape}, got {disp.shape}"
        )
    dtype = disp.dtype
    # Positions beyond one pixel outside have four outside neighbours either way; the clip keeps
    # huge displacements from overflowing the integer indices.
    rows = jnp.clip(jnp.arange(h, dtype=dtype)[:, None] + disp[..., 0], -2, h + 1)
    cols = jnp.clip(jnp.arange(w, dtype=dtype)[None, :] + disp[..., 1], -2, w + 1)
    r0 = jnp.floor(rows)
    c0 = jnp.floor(cols)
    fr = rows - r0  # weight of the lower-right neighbours
    fc = cols - c0
    r0 = r0.astype(jnp.int32)
    c0 = c0.astype(jnp.int32)
    # One row of C values per (image, pixel): a gather of [B, H, W] rows for each neighbour.
    flat = image.reshape(b * h * w, c)
    first = (jnp.arange(b, dtype=jnp.int32) * (h * w))[:, None, None]
    out = jnp.zeros(image.shape, jnp.result_type(image.dtype, dtype))
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            ri, ci = r0 + dr, c0 + dc
            inside = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
            index = first + jnp.clip(ri, 0, h - 1) * w + jnp.clip(ci, 0, w - 1)
            values = jnp.take(flat, index, axis=0, mode="clip")
            out = out + values * jnp.where(inside, wr * wc, 0)[..., None]
    return out.astype(image.dtype)


def integrate_velocity(v: jax.Array, steps: int = 7) -> jax.Array:
    """exp(v) by scaling and squaring: u = v / 2^steps, then u <- u + warp(u, u), `steps` times.

    `v` is a stationary velocity field [B, H, W, 2] in pixels; the result is the displacement of
    the deformation, in the same convention (`warp(x, integrate_velocity(v))` deforms x).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    # A loop, not unrolled: XLA fuses an unrolled chain of warps into its consumers by
    # recomputing each step's gathers inside the next ones, which took seconds to compile and
    # ran 10x slower.
    return jax.lax.fori_loop(0, steps, lambda _, u: u + warp(u, u), v / 2**steps)


@functools.cache
def _band(size: int, window: int) -> np.ndarray:
    """[size, size] 0/1 matrix summing each row's window // 2 neighbours on either side."""
    i = np.arange(size)
    return (np.abs(i[:, None] - i[None, :]) <= window // 2).astype(np.float32)


def local_ncc_loss(i: jax.Array, j: jax.Array, window: int = 9, eps: float = 1e-5) -> jax.Array:
    """Voxelmorph's local NCC loss as MorphAEus uses it: 1 - mean(cc), a scalar in [0, 1].

    For NHWC images `i` and `j`, the sums of I, J, I^2, J^2 and IJ are taken over window x
    window neighbourhoods with zero padding ("same" size) and over the channels (the original's
    box filter has every input channel), while the window size n = window^2 ignores the channels:
    with u_I = sum_I / n and u_J = sum_J / n,

        cross = sum_IJ - u_J sum_I - u_I sum_J + u_I u_J n
        var_I = sum_I2 - 2 u_I sum_I + u_I^2 n   (var_J likewise)
        cc = cross^2 / (max(var_I var_J, 0) + eps)

    and the mean runs over the batch and every pixel. The loss is symmetric in `i` and `j`.
    The box sums are products with banded 0/1 matrices (one per axis): exact sums of at most
    `window` terms, and on CPU about 2.5x faster, with their gradient, than summing shifted
    slices (their cost grows with the image side, fine up to a few hundred pixels).
    """
    if i.shape != j.shape or i.ndim != 4:
        raise ValueError(f"expected two NHWC images of one shape, got {i.shape} and {j.shape}")
    if window % 2 != 1:
        raise ValueError(f"window must be odd, got {window}")
    h, w = i.shape[1:3]
    i = i.astype(jnp.result_type(i.dtype, jnp.float32))
    j = j.astype(i.dtype)
    # The five channel sums as [5, B, H, W], box-summed along W, then along H.
    stats = jnp.stack([x.sum(axis=-1) for x in (i, j, i * i, j * j, i * j)])
    stats = stats @ jnp.asarray(_band(w, window), i.dtype)
    stats = jnp.asarray(_band(h, window), i.dtype) @ stats
    sum_i, sum_j, sum_i2, sum_j2, sum_ij = stats
    n = float(window * window)
    u_i = sum_i / n
    u_j = sum_j / n
    cross = sum_ij - u_j * sum_i - u_i * sum_j + u_i * u_j * n
    var_i = sum_i2 - 2 * u_i * sum_i + u_i * u_i * n
    var_j = sum_j2 - 2 * u_j * sum_j + u_j * u_j * n
    cc = cross * cross / (jnp.maximum(var_i * var_j, 0) + eps)
    return 1 - cc.mean()


def gradient_l2(v: jax.Array) -> jax.Array:
    """Gradient-L2 smoothness of a field `v` [B, H, W, K]: mean(dH^2 + dW^2) / 2.

    Central differences on the interior pixels (both axes cropped by one pixel on each side):
    dH = (v[r + 1, c] - v[r - 1, c]) / 2 and dW = (v[r, c + 1] - v[r, c - 1]) / 2; the mean runs
    over the batch, the K components and the interior.
    """
    d_h = (v[:, 2:, 1:-1] - v[:, :-2, 1:-1]) / 2
    d_w = (v[:, 1:-1, 2:] - v[:, 1:-1, :-2]) / 2
    return (d_h * d_h + d_w * d_w).mean() / 2


@functools.cache
def _align_corners_coefficients(size: int, factor: int) -> np.ndarray:
    """[3, size, factor] weights of input rows k - 1, k, k + 1 in output row factor * k + r.

    Output row o = factor k + r reads coordinate s = o (size - 1) / (size factor - 1), between
    rows floor(s) and floor(s) + 1 (clamped to the last row); floor(s) is k - 1 or k, since
    k - 1 < s < k + 1 (s <= o / factor), so three taps around row k cover every output row.
    """
    out = size * factor
    scale = (size - 1) / (out - 1) if out > 1 else 0.0
    src = np.arange(out) * scale
    lower = np.minimum(np.floor(src).astype(np.int64), size - 1)
    frac = src - lower
    upper = np.minimum(lower + 1, size - 1)
    k = np.arange(out) // factor
    coefficients = np.zeros((3, out))
    np.add.at(coefficients, (lower - k + 1, np.arange(out)), 1 - frac)
    np.add.at(coefficients, (upper - k + 1, np.arange(out)), frac)
    return coefficients.reshape(3, size, factor).astype(np.float32)


def _upsample_axis(x: jax.Array, axis: int, factor: int) -> jax.Array:
    size = x.shape[axis]
    coefficients = _align_corners_coefficients(size, factor)
    pads = [(0, 0)] * x.ndim
    pads[axis] = (1, 1)
    padded = jnp.pad(x, pads)
    # Rows k - 1, k and k + 1 of every k (zero outside, where their weight is zero).
    taps = [jax.lax.slice_in_dim(padded, tap, tap + size, axis=axis) for tap in range(3)]
    shape = [1] * x.ndim
    shape[axis] = size
    phases = []
    for r in range(factor):
        phase = 0
        for tap in range(3):
            weights = coefficients[tap, :, r]
            if weights.any():
                phase = phase + taps[tap] * jnp.asarray(weights, x.dtype).reshape(shape)
        phases.append(phase)
    # Interleave the phases: output row factor * k + r.
    out_shape = list(x.shape)
    out_shape[axis] = size * factor
    return jnp.stack(phases, axis=axis + 1).reshape(out_shape)


def upsample_bilinear_align_corners(x: jax.Array, factor: int = 2) -> jax.Array:
    """Bilinear upsampling of NHWC `x` by an integer `factor`, corner-aligned.

    PyTorch's `interpolate(mode='bilinear', align_corners=True, scale_factor=factor)`: output
    pixel o of an axis of size n reads input coordinate o (n - 1) / (n factor - 1), so the first
    and last pixels are copied; a size-1 axis is replicated. Separable, and computed without
    gathers: output row factor * k + r of an axis is a fixed combination of input rows k - 1, k
    and k + 1 (weights from `_align_corners_coefficients`), i.e. three shifted slices times
    weights, whose gradient is slices and pads too. (On CPU, gathering the two neighbours with
    static indices had a gradient, a scatter-add, 4-9x slower than its forward pass; an
    interpolation-matrix einsum costs O(size) per output value.)
    """
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    return _upsample_axis(_upsample_axis(x, 1, factor), 2, factor)
