"""Tests for jaxad.ops.deform against direct NumPy transcriptions of the reference operations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from jaxad.ops import deform

# --- NumPy references (NCHW-free loops, float64) ---------------------------------------------


def grid_sample_reference(image: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """voxelmorph's SpatialTransformer: normalise p + u to [-1, 1] with (size - 1), then torch's
    grid_sample(bilinear, zeros, align_corners=True) unnormalises and blends 4 corners, each
    counted only inside the image."""
    b, h, w, c = image.shape
    out = np.zeros((b, h, w, c))
    for n in range(b):
        for r in range(h):
            for q in range(w):
                gy = 2 * ((r + disp[n, r, q, 0]) / (h - 1) - 0.5)
                gx = 2 * ((q + disp[n, r, q, 1]) / (w - 1) - 0.5)
                iy = (gy + 1) / 2 * (h - 1)
                ix = (gx + 1) / 2 * (w - 1)
                y0, x0 = math.floor(iy), math.floor(ix)
                for yy, xx, weight in (
                    (y0, x0, (x0 + 1 - ix) * (y0 + 1 - iy)),
                    (y0, x0 + 1, (ix - x0) * (y0 + 1 - iy)),
                    (y0 + 1, x0, (x0 + 1 - ix) * (iy - y0)),
                    (y0 + 1, x0 + 1, (ix - x0) * (iy - y0)),
                ):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[n, r, q] += weight * image[n, yy, xx]
    return out


def ncc_reference(i: np.ndarray, j: np.ndarray, window: int, eps: float = 1e-5) -> float:
    """The original's formula with box sums from scipy (a 'same' zero-padded window x window
    correlation per channel, summed over channels as the [1, C, win, win] ones kernel does)."""
    ones = np.ones((window, window))

    def box(x):  # one image [H, W, C] -> [H, W]
        return sum(
            scipy.ndimage.correlate(x[..., ch], ones, mode="constant", cval=0.0)
            for ch in range(x.shape[-1])
        )

    size = window * window
    ccs = []
    for a, b in zip(i.astype(np.float64), j.astype(np.float64), strict=True):
        s_i, s_j, s_i2, s_j2, s_ij = box(a), box(b), box(a * a), box(b * b), box(a * b)
        u_i, u_j = s_i / size, s_j / size
        cross = s_ij - u_j * s_i - u_i * s_j + u_i * u_j * size
        var_i = s_i2 - 2 * u_i * s_i + u_i * u_i * size
        var_j = s_j2 - 2 * u_j * s_j + u_j * u_j * size
        ccs.append(cross**2 / (np.maximum(var_i * var_j, 0) + eps))
    return 1 - float(np.mean(ccs))


def gradient_l2_reference(v: np.ndarray) -> float:
    b, h, w, k = v.shape
    total, count = 0.0, 0
    for n in range(b):
        for ch in range(k):
            for r in range(1, h - 1):
                for q in range(1, w - 1):
                    dh = (v[n, r + 1, q, ch] - v[n, r - 1, q, ch]) / 2
                    dw = (v[n, r, q + 1, ch] - v[n, r, q - 1, ch]) / 2
                    total += dh * dh + dw * dw
                    count += 1
    return total / count / 2


def upsample_reference(x: np.ndarray, factor: int) -> np.ndarray:
    """PyTorch's bilinear interpolate(align_corners=True) on each output pixel."""
    b, h, w, c = x.shape
    ho, wo = h * factor, w * factor
    sh = (h - 1) / (ho - 1) if ho > 1 else 0.0
    sw = (w - 1) / (wo - 1) if wo > 1 else 0.0
    out = np.zeros((b, ho, wo, c))
    for r in range(ho):
        for q in range(wo):
            y, z = r * sh, q * sw
            y0, z0 = int(y), int(z)
            y1, z1 = min(y0 + 1, h - 1), min(z0 + 1, w - 1)
            ly, lz = y - y0, z - z0
            out[:, r, q] = (1 - ly) * ((1 - lz) * x[:, y0, z0] + lz * x[:, y0, z1]) + ly * (
                (1 - lz) * x[:, y1, z0] + lz * x[:, y1, z1]
            )
    return out


def smooth_velocity(n: int = 48) -> np.ndarray:
    """A smooth field of Gaussian bumps, up to about 2 px, [1, n, n, 2]."""
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")

    def bump(r0, c0, s, a):
        return a * np.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * s * s))

    v = np.stack(
        [
            bump(20, 25, 6, 2.0) - bump(30, 15, 5, 1.5),
            bump(25, 28, 7, -1.8) + bump(15, 30, 5, 1.0),
        ],
        axis=-1,
    )
    return v[None].astype(np.float32)


# --- warp and integration ---------------------------------------------------------------------


def test_zero_displacement_is_identity():
    x = np.random.default_rng(0).normal(size=(2, 9, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(deform.warp(x, jnp.zeros((2, 9, 7, 2))), x)
    assert not np.any(deform.integrate_velocity(jnp.zeros((2, 9, 7, 2))))


@pytest.mark.parametrize("shift", [(2, -3), (-1, 4), (0, 1)])
def test_integer_displacement_translates(shift):
    x = np.random.default_rng(1).normal(size=(1, 12, 10, 2)).astype(np.float32)
    disp = np.broadcast_to(np.array(shift, np.float32), (1, 12, 10, 2))
    expected = np.zeros_like(x)  # out[r, c] = x[r + dr, c + dc], zero where that is outside
    dr, dc = shift
    for r in range(12):
        for c in range(10):
            if 0 <= r + dr < 12 and 0 <= c + dc < 10:
                expected[0, r, c] = x[0, r + dr, c + dc]
    np.testing.assert_allclose(deform.warp(x, disp), expected, atol=1e-6)


@pytest.mark.parametrize("velocity", [(3.0, -2.0), (0.75, 1.5)])
def test_constant_velocity_integrates_to_itself(velocity):
    size, steps = 40, 7
    v = jnp.broadcast_to(jnp.asarray(velocity, jnp.float32), (1, size, size, 2))
    u = deform.integrate_velocity(v, steps=steps)
    # Zero padding shrinks the field near the border, and each squaring carries the shrinkage
    # inwards by |u| plus one pixel of interpolation support; the interior is exact.
    m = math.ceil(max(abs(a) for a in velocity)) + steps + 1
    np.testing.assert_allclose(u[:, m:-m, m:-m], v[:, m:-m, m:-m], atol=1e-5)
    if velocity == (3.0, -2.0):  # integer: exp(v) translates by v
        x = np.random.default_rng(2).normal(size=(1, size, size, 1)).astype(np.float32)
        moved = deform.warp(x, u)
        expected = x[0, m + 3 : size - m + 3, m - 2 : size - m - 2]
        np.testing.assert_allclose(moved[0, m:-m, m:-m], expected, atol=1e-4)


def test_integration_steps_zero_returns_velocity():
    v = jnp.asarray(smooth_velocity())
    np.testing.assert_array_equal(deform.integrate_velocity(v, steps=0), v)
    with pytest.raises(ValueError):
        deform.integrate_velocity(v, steps=-1)


def test_exp_v_composed_with_exp_minus_v_is_identity():
    v = jnp.asarray(smooth_velocity())
    u = deform.integrate_velocity(v)
    w = deform.integrate_velocity(-v)
    assert float(jnp.abs(u).max()) > 1.5  # a real deformation
    # (phi o psi)(p) = p + w(p) + u(p + w(p)): the residual displacement should vanish.
    for a, b in ((u, w), (w, u)):
        residual = b + deform.warp(a, b)
        assert float(jnp.abs(residual[:, 4:-4, 4:-4]).max()) < 0.05


def test_warp_matches_grid_sample_reference():
    rng = np.random.default_rng(3)
    b, h, w, c = 2, 7, 9, 3
    image = rng.normal(size=(b, h, w, c)).astype(np.float32)
    # Mostly small moves, some far outside, some half a pixel outside, some exactly on corners.
    disp = rng.normal(scale=2.0, size=(b, h, w, 2)).astype(np.float32)
    disp[0, :2] *= 10
    disp[1, 0, :, 0] = -0.5  # half a pixel above the top row
    disp[1, -1, :, 0] = 0.25  # a quarter pixel below the bottom row
    disp[1, 3, :, 1] = np.arange(w)[::-1] - np.arange(w) + 0.0  # exact integers (mirrored)
    expected = grid_sample_reference(image, disp)
    np.testing.assert_allclose(deform.warp(image, disp), expected, atol=2e-5)
    assert np.any(expected == 0) and np.any(np.abs(expected[1, 0]) > 0)


def test_warp_matches_map_coordinates():
    # The fact sheet's equivalence: map_coordinates(order=1, mode='constant') on p + u.
    rng = np.random.default_rng(4)
    image = rng.normal(size=(1, 8, 6, 1)).astype(np.float32)
    disp = rng.normal(scale=3.0, size=(1, 8, 6, 2)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(8), np.arange(6), indexing="ij")
    coords = [rows + disp[0, ..., 0], cols + disp[0, ..., 1]]
    expected = jax.scipy.ndimage.map_coordinates(image[0, ..., 0], coords, order=1, mode="constant")
    np.testing.assert_allclose(deform.warp(image, disp)[0, ..., 0], expected, atol=1e-5)


def test_warp_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    image = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    disp = jnp.asarray(rng.uniform(-1.4, 1.4, size=(1, 6, 6, 2)) + 0.05, jnp.float32)
    weights = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    loss = jax.jit(lambda im, d: jnp.sum(deform.warp(im, d) * weights))
    g_image, g_disp = jax.grad(loss, argnums=(0, 1))(image, disp)
    eps = 1e-3
    for idx in [(0, 2, 3, 0), (0, 4, 1, 1), (0, 0, 5, 0)]:
        step = jnp.zeros_like(disp).at[idx].set(eps)
        numeric = (loss(image, disp + step) - loss(image, disp - step)) / (2 * eps)
        np.testing.assert_allclose(g_disp[idx], numeric, rtol=2e-2, atol=2e-3)
    # Linear in the image: the gradient is the transpose of the sampling.
    numeric = jax.jvp(lambda im: loss(im, disp), (image,), (jnp.ones_like(image),))[1]
    np.testing.assert_allclose(jnp.sum(g_image), numeric, rtol=1e-5)


def test_warp_shape_check():
    with pytest.raises(ValueError, match="disp"):
        deform.warp(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 3)))


# --- similarity and smoothness ----------------------------------------------------------------


@pytest.mark.parametrize("channels, window, shape", [(1, 9, (2, 20, 17)), (2, 5, (1, 12, 12))])
def test_local_ncc_matches_reference(channels, window, shape):
    rng = np.random.default_rng(6)
    b, h, w = shape
    i = rng.uniform(size=(b, h, w, channels)).astype(np.float32)
    j = (0.6 * i + 0.4 * rng.uniform(size=i.shape)).astype(np.float32)
    j[0, :4] = 0.3  # a flat patch: zero variance there (cc = 0 through the clamp and eps)
    got = deform.local_ncc_loss(jnp.asarray(i), jnp.asarray(j), window=window)
    np.testing.assert_allclose(got, ncc_reference(i, j, window), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, deform.local_ncc_loss(j, i, window=window), atol=1e-6)


def test_local_ncc_limits():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.uniform(size=(1, 16, 16, 1)), jnp.float32)
    # Proportional images (zero padding keeps them proportional) correlate perfectly.
    assert float(deform.local_ncc_loss(x, 2 * x)) < 1e-3
    # A blank image has no variance anywhere: cc = 0 through the clamp and eps.
    assert float(deform.local_ncc_loss(x, jnp.zeros_like(x))) == 1.0
    with pytest.raises(ValueError, match="odd"):
        deform.local_ncc_loss(x, x, window=4)


def test_gradient_l2_matches_reference():
    v = np.random.default_rng(8).normal(size=(2, 7, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(deform.gradient_l2(v), gradient_l2_reference(v), rtol=1e-5)
    # A linear field a r + b c has dH = a, dW = b everywhere: R = (a^2 + b^2) / 2.
    r, c = np.meshgrid(np.arange(6.0), np.arange(5.0), indexing="ij")
    linear = np.stack([0.5 * r + 2 * c, 0.5 * r + 2 * c], -1)[None]
    assert float(deform.gradient_l2(linear)) == pytest.approx((0.25 + 4) / 2)


# --- upsampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, factor", [((1, 1), 2), ((3, 3), 2), ((4, 5), 2), ((5, 3), 3)])
def test_upsample_matches_align_corners_reference(shape, factor):
    x = np.random.default_rng(9).normal(size=(2, *shape, 3)).astype(np.float32)
    got = deform.upsample_bilinear_align_corners(jnp.asarray(x), factor)
    np.testing.assert_allclose(got, upsample_reference(x, factor), atol=1e-5)
    if shape == (1, 1):  # 1x1 -> 2x2 replicates
        np.testing.assert_array_equal(got, np.broadcast_to(x, (2, 2, 2, 3)))
    # The corners are copied exactly.
    np.testing.assert_array_equal(got[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]])


def test_upsample_gradient_is_the_transpose():
    x = jnp.asarray(np.random.default_rng(10).normal(size=(1, 4, 6, 2)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(11).normal(size=(1, 8, 12, 2)), jnp.float32)
    up = deform.upsample_bilinear_align_corners
    (vjp,) = jax.vjp(up, x)[1](g)
    (transpose,) = jax.linear_transpose(up, x)(g)
    np.testing.assert_allclose(vjp, transpose, atol=1e-6)


# --- transformations ----------------------------------------------------------------------------


def test_jit_and_vmap():
    rng = np.random.default_rng(12)
    image = jnp.asarray(rng.uniform(size=(3, 2, 10, 10, 1)), jnp.float32)
    v = jnp.asarray(rng.normal(scale=0.5, size=(3, 2, 10, 10, 2)), jnp.float32)

    def f(x, v):
        warped = deform.warp(x, deform.integrate_velocity(v))
        return (
            deform.local_ncc_loss(x, warped, window=5)
            + deform.gradient_l2(v)
            + deform.upsample_bilinear_align_corners(warped).mean()
        )

    jitted = jax.jit(f)
    each = jnp.stack([jitted(image[k], v[k]) for k in range(3)])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(image, v), each, rtol=1e-5)
    grads = jax.jit(jax.grad(f, argnums=1))(image[0], v[0])
    assert grads.shape == v[0].shape and bool(jnp.all(jnp.isfinite(grads)))
