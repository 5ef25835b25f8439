"""2-D convolutions whose kernel gradient runs fast on XLA's CPU backend.

On CPU, XLA (jax 0.10) runs a convolution's forward pass and its input gradient through fast
kernels, but lowers the kernel (weight) gradient to a convolution of the input with the output
gradient as a huge filter, which is several times slower: for a 3x3 128 -> 128 conv on an
8x112x112 batch, 75-90 GFLOP/s against about 400 for the forward pass on this project's 2-core
AVX-512 CPU (the transposed conv's kernel gradient: 2-3 GFLOP/s). `conv2d(...,
fast_kernel_grad=True)` and `conv_transpose2d(..., fast_kernel_grad=True)` keep XLA's forward
pass and input gradient and compute the kernel gradient by matrix products (`jax.custom_vjp`):

    dW[i, j, c, o] = sum_{n, h, w} xp[n, h * sh + i * dh, w * sw + j * dw, c] * dy[n, h, w, o]

with xp the padded input. One product per kernel tap (K^2 strided copies of the input, each
multiplied by dy) is already about 2x faster than XLA; `kernel_grad` uses fewer, larger products.
Its default "split" layout puts the row taps on the input and the column taps on dy:

    X[n, h, v, (i, c)] = xp[n, h * sh + i * dh, v * sw + b, c]      (Kh row windows)
    D[n, h, v, (j, o)] = dy[n, h, v - s_j, o], zero outside          (column shifts s_j)
    X^T D = dW[i, j] for every pair (i, j) at once

where the column offset j * dw splits into a stride phase b = (j * dw) % sw and a shift
s_j = (j * dw) // sw (taps of one phase share a product; stride 1 has one phase). D is Wo +
max(s_j) wide, its extra columns zero: they cost max(s_j) / Wo more multiply-adds and add
nothing. For a 3x3 conv that is one [rows, 3 Ci]^T [rows, 3 Co] product, which the CPU's matrix
kernel runs near its peak, for 3 Ci + 3 Co copied values per position instead of 9 Ci. With few
input channels (an RGB first layer) the "im2col" layout copies less: all Kh Kw windows of the
input against dy as it is.

The copies would cost more than the products if they went through memory, so the output rows are
processed in blocks of about `_BLOCK_ELEMENTS` copied values in a `fori_loop`, each block's
copies staying in cache, and the input is read unpadded (blocks at the border pad their own
rows). The loop runs over rows, not over the batch: under data parallelism the batch axis stays
sharded, each device multiplies its own images and the kernel gradients are summed across
devices.

A transposed convolution (a convolution of the stride-dilated input) has the kernel gradient of
a strided convolution whose input is dy and whose output gradient is x, with flipped taps
(`_transpose_kernel_grad`), so the same code serves it.

Supported: NHWC input and HWIO kernel; any strides, kernel dilations and padding (explicit
(low, high) pairs, asymmetric or negative, or "SAME" / "VALID"); feature groups (`groups`);
float32, bfloat16 and float16 (products accumulate in float32, the gradient is returned in the
kernel's dtype); `jit`, `vmap`, sharding and reverse-mode differentiation of the backward pass
(e.g. gradient penalties). Not supported: forward-mode differentiation (`jax.jvp`) through the
fast path, which a `custom_vjp` does not provide; use `fast_kernel_grad=False` there.

The forward pass is the same XLA convolution with or without the fast gradient, so inference is
bit-identical, except where `matmul_1x1` is asked for (the ResNets): with the fast gradient on,
a 1x1 convolution without padding or groups is then one matrix product in all three passes
(`pointwise`), which XLA's CPU backend runs 1.6-4x faster than the convolution; its outputs and
gradients agree to float rounding (another summation order), as the other gradients do. The
other models keep XLA's convolution: their demos' results were measured with it (Lesion2Void's
demo, whose U-Net ends in a 1x1 convolution, trains to another pixel AUROC when that rounding
changes). See bench/README.md for measured rates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int]]

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# Elements copied per block of output rows (both operands of its product): 1.5 M, 6 MB in float32,
# which stays in this CPU's cache (2 MB L2 per core, 32 MB L3) and measured fastest; see
# bench/README.md.
_BLOCK_ELEMENTS = 1536 * 1024
# `fast_kernel_grad` value: ours where `kernel_grad_helps`, XLA's elsewhere ('auto' on CPU).
BY_SHAPE = "by_shape"
# Input channels (per group) up to which ours wins for any kernel (`kernel_grad_helps`).
_FEW_CHANNELS = 8
# Products with fewer output columns than this put the narrow operand first (see `contract`).
_SKINNY = 64


def resolve_fast_kernel_grad(setting: bool | str, backend: str | None = None) -> bool | str:
    """How to compute kernel gradients: True (always ours), False (XLA's) or BY_SHAPE.

    `setting` is True/False or 'auto'. 'auto' is BY_SHAPE for the CPU backend, whose own
    lowering of the kernel gradient is slow on most layers, and False for TPU and GPU, where
    XLA's lowering is fast. `backend` defaults to `jax.default_backend()`. Strings 'true'/'false'
    (any case) are accepted too, as a command-line override gives them.
    """
    if isinstance(setting, bool):
        return setting
    value = str(setting).strip().lower()
    if value == "auto":
        return BY_SHAPE if (backend or jax.default_backend()) == "cpu" else False
    if value in ("true", "false"):
        return value == "true"
    raise ValueError(f"fast_conv_grad={setting!r}: use 'auto', True or False.")


def kernel_grad_helps(kernel_shape: Sequence[int], output_hw: Sequence[int]) -> bool:
    """Whether `kernel_grad` beats XLA's CPU lowering on a conv, by the shapes measured.

    bench/README.md measured ours 1.1-4.6x faster on every 1x1 and 3x3 conv (any stride or
    dilation) with outputs of 28 x 28 or more, and on any kernel with few input channels (RGB
    first layers); XLA's own lowering was 3-17% faster on 4x4 and 5x5 kernels over 64 or more
    channels and on 3x3 convs with 14 x 14 outputs.
    """
    kh, kw, cig, _ = kernel_shape
    return cig <= _FEW_CHANNELS or (kh * kw <= 9 and output_hw[0] * output_hw[1] >= 28 * 28)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
    return pair


def resolve_padding(
    padding: Padding,
    input_hw: Sequence[int],
    kernel_hw: Sequence[int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
) -> Pads:
    """Explicit ((top, bottom), (left, right)) padding, as `lax.conv_general_dilated` uses it."""
    if isinstance(padding, str):
        effective = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation, strict=True)]
        pads = lax.padtype_to_pads(input_hw, effective, strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2:
        raise ValueError(f"padding must give two (low, high) pairs, got {padding!r}.")
    return pads


def _xla_conv(x, kernel, strides, pads, dilation, groups):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=DIMENSION_NUMBERS,
        feature_group_count=groups,
    )


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilation: int | Sequence[int] = 1,
    *,
    groups: int = 1,
    fast_kernel_grad: bool | str,
    matmul_1x1: bool = False,
) -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO `kernel` (I = input channels / `groups`).

    The forward pass is `lax.conv_general_dilated(x, kernel, strides, padding,
    rhs_dilation=dilation, feature_group_count=groups)`. With `fast_kernel_grad` True,
    reverse-mode differentiation computes the kernel gradient as matrix products (see the module
    docstring); with BY_SHAPE, only where `kernel_grad_helps`. The input gradient stays XLA's own.
    With either and `matmul_1x1`, a 1x1 convolution without padding or groups is one matrix
    product in all three passes (`pointwise`). `x` and `kernel` must have the same dtype.
    """
    strides = _pair(strides, "strides")
    dilation = _pair(dilation, "dilation")
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"expected NHWC x and HWIO kernel, got shapes {x.shape}, {kernel.shape}.")
    pads = resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
    if matmul_1x1 and fast_kernel_grad and is_pointwise(kernel.shape, pads, groups):
        return pointwise(x, kernel, strides)
    if fast_kernel_grad == BY_SHAPE:
        out_hw = [
            (size + lo + hi - (k - 1) * d - 1) // s + 1
            for size, (lo, hi), k, d, s in zip(
                x.shape[1:3], pads, kernel.shape[:2], dilation, strides, strict=True
            )
        ]
        fast_kernel_grad = kernel_grad_helps(kernel.shape, out_hw)
    if not fast_kernel_grad:
        return _xla_conv(x, kernel, strides, pads, dilation, groups)
    return _conv_fast_grad(x, kernel, strides, pads, dilation, groups)


def is_pointwise(kernel_shape: Sequence[int], pads: Pads, groups: int) -> bool:
    """A 1x1 kernel over all channels without padding: one matrix product per pixel."""
    return tuple(kernel_shape[:2]) == (1, 1) and groups == 1 and pads == ((0, 0), (0, 0))


def pointwise(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """A 1x1 convolution as one [N H W, I] x [I, O] matrix product (strided pixels first).

    XLA's CPU backend runs a 1x1 convolution, forward and both gradients, 1.6-4.1x slower than
    the same product written as a matrix product (`bench/conv_grad.py --parts=pointwise`:
    ResNet-50's 1x1 layers at 128 px, 2.9x in all); two of a bottleneck's three convolutions
    are 1x1. The result is the convolution's up to float rounding (another summation order).
    """
    if strides != (1, 1):
        x = x[:, :: strides[0], :: strides[1], :]
    n, h, w, c = x.shape
    y = jnp.dot(
        x.reshape(n * h * w, c),
        kernel.reshape(c, kernel.shape[-1]),
        preferred_element_type=jnp.float32,  # bfloat16 products summed in float32
    )
    return y.astype(x.dtype).reshape(n, h, w, kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_fast_grad(x, kernel, strides, pads, dilation, groups):
    return _xla_conv(x, kernel, strides, pads, dilation, groups)


def _conv_fast_grad_fwd(x, kernel, strides, pads, dilation, groups):
    return _xla_conv(x, kernel, strides, pads, dilation, groups), (x, kernel)


def _conv_fast_grad_bwd(strides, pads, dilation, groups, residuals, dy):
    x, kernel = residuals
    # The input gradient is the transpose of the (linear in x) convolution: XLA's own lowering,
    # exactly what `jax.grad` of `lax.conv_general_dilated` runs.
    (dx,) = jax.linear_transpose(
        lambda x_: _xla_conv(x_, kernel, strides, pads, dilation, groups), x
    )(dy)
    dk = kernel_grad(x, dy, kernel.shape, strides, pads, dilation, groups)
    return dx, dk.astype(kernel.dtype)


_conv_fast_grad.defvjp(_conv_fast_grad_fwd, _conv_fast_grad_bwd)


def _xla_conv_transpose(x, kernel, strides, pads):
    return lax.conv_transpose(
        x, kernel, strides, pads, dimension_numbers=DIMENSION_NUMBERS, transpose_kernel=False
    )


def conv_transpose2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int],
    padding: Sequence[tuple[int, int]],
    *,
    fast_kernel_grad: bool | str,
) -> jax.Array:
    """`lax.conv_transpose(x, kernel, strides, padding, transpose_kernel=False)`, NHWC / HWIO.

    That is a convolution of the stride-dilated input (`lhs_dilation`). With
    `fast_kernel_grad`, its kernel gradient is computed by `kernel_grad` as that of a strided
    convolution with the roles of input and output gradient swapped (see `_transpose_kernel_grad`);
    the forward pass and the input gradient stay XLA's. `padding` is explicit (low, high) pairs.
    BY_SHAPE means True here: XLA's CPU kernel gradient of a transposed conv is about 100x
    slower than ours on every shape measured.
    """
    strides = _pair(strides, "strides")
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if not fast_kernel_grad:
        return _xla_conv_transpose(x, kernel, strides, pads)
    return _conv_transpose_fast_grad(x, kernel, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transpose_fast_grad(x, kernel, strides, pads):
    return _xla_conv_transpose(x, kernel, strides, pads)


def _conv_transpose_fast_grad_fwd(x, kernel, strides, pads):
    return _xla_conv_transpose(x, kernel, strides, pads), (x, kernel)


def _conv_transpose_fast_grad_bwd(strides, pads, residuals, dy):
    x, kernel = residuals
    (dx,) = jax.linear_transpose(lambda x_: _xla_conv_transpose(x_, kernel, strides, pads), x)(dy)
    dk = _transpose_kernel_grad(x, dy, kernel.shape, strides, pads)
    return dx, dk.astype(kernel.dtype)


_conv_transpose_fast_grad.defvjp(_conv_transpose_fast_grad_fwd, _conv_transpose_fast_grad_bwd)


def _transpose_kernel_grad(x, dy, kernel_shape, strides, pads):
    """Kernel gradient of `lax.conv_transpose` (`transpose_kernel=False`) by `kernel_grad`.

    The transposed conv correlates the kernel with xd, x dilated by the stride s and padded by
    (pl, ph): xd[pl + u * s] = x[u], zero elsewhere. So, per axis,

        dW[i, c, o] = sum_u x[u, c] * dy[pl + u * s - i, o]
                    = sum_u dyp[u * s + (T - i), o] * x[u, c],   T = k - 1,

    with dyp = dy padded by (T - pl, T - ph): the kernel gradient of a stride-s convolution
    whose input is dy and whose output gradient is x, read with flipped taps.
    """
    kh, kw, ci, co = kernel_shape
    (tl, th), (wl, wh) = pads
    back_pads = ((kh - 1 - tl, kh - 1 - th), (kw - 1 - wl, kw - 1 - wh))
    g = kernel_grad(dy, x, (kh, kw, co, ci), strides, back_pads, (1, 1))
    return g[::-1, ::-1].transpose(0, 1, 3, 2)


def _block_rows(ho: int, elements_per_row: int, budget: int) -> int:
    """Output rows per block so that a block's copied operands hold about `budget` elements."""
    return max(1, min(ho, budget // max(elements_per_row, 1)))


def kernel_grad(
    x: jax.Array,
    dy: jax.Array,
    kernel_shape: Sequence[int],
    strides: tuple[int, int],
    pads: Pads,
    dilation: tuple[int, int],
    groups: int = 1,
    *,
    layout: str | None = None,
    block_rows: int | None = None,
) -> jax.Array:
    """Gradient of sum(conv(x, W) * dy) with respect to the HWIO kernel W, by matrix products.

    `pads` is explicit. The result has the promoted dtype of x and dy, accumulated in float32
    for 16-bit inputs. `layout` ('split' or 'im2col', default: the one copying less) and
    `block_rows` (output rows per block, default: from `_BLOCK_ELEMENTS`) are for benchmarks.
    """
    kh, kw, cig, co = (int(s) for s in kernel_shape)
    n, ho, wo, _ = dy.shape
    ci = x.shape[-1]
    (sh, sw), (dh, dw) = strides, dilation
    dtype = jnp.promote_types(x.dtype, dy.dtype)
    x, dy = x.astype(dtype), dy.astype(dtype)
    acc_dtype = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    if groups < 1 or ci != cig * groups or co % groups:
        raise ValueError(
            f"input channels {ci} and output channels {co} do not split into {groups} groups "
            f"of {cig} input channels."
        )
    if n * ho * wo == 0:
        return jnp.zeros((kh, kw, cig, co), acc_dtype)

    # Column taps grouped by stride phase: tap j reads columns phase + (w + shift) * sw.
    phases: dict[int, list[int]] = {}
    for j in range(kw):
        phases.setdefault((j * dw) % sw, []).append(j)
    widths = {b: wo + max((j * dw) // sw for j in taps) for b, taps in phases.items()}
    # Elements copied per output row: the split layout copies Kh row windows of x per phase and
    # Kw shifted copies of dy; im2col copies Kh Kw windows of x and uses dy as it is.
    split_row = n * sum(w * (kh * ci + len(phases[b]) * co) for b, w in widths.items())
    im2col_row = n * wo * (kh * kw * ci + co)
    if layout is None:
        layout = "im2col" if im2col_row <= split_row else "split"
    if layout not in ("split", "im2col"):
        raise ValueError(f"layout={layout!r}: use 'split' or 'im2col'.")
    bh = block_rows or _block_rows(
        ho, im2col_row if layout == "im2col" else split_row, _BLOCK_ELEMENTS
    )

    (pt, _), (pl, pr) = pads
    height = x.shape[1]
    span = (kh - 1) * dh + 1
    zero = jnp.zeros((), dtype)

    def slab(r0, rows):
        """Padded input rows [r0 * sh, r0 * sh + (rows - 1) * sh + span) for output rows from r0.

        A traced `r0` must keep the rows inside x (no row padding); a static one may not.
        """
        top, size = r0 * sh - pt, (rows - 1) * sh + span
        if isinstance(r0, int):
            lo, hi = max(top, 0), min(top + size, height)
            if hi <= lo:
                return jnp.zeros((n, size, x.shape[2] + pl + pr, ci), dtype)
            part = lax.slice_in_dim(x, lo, hi, axis=1)
            row_pads = (lo - top, top + size - hi, 0)
        else:
            part = lax.dynamic_slice_in_dim(x, top, size, axis=1)
            row_pads = (0, 0, 0)
        return lax.pad(part, zero, ((0, 0, 0), row_pads, (pl, pr, 0), (0, 0, 0)))

    def swapped(lhs_taps, rhs_taps):
        """Whether a product is computed as [rhs cols, lhs cols]: XLA's CPU matrix product is
        several times faster on a skinny product when the narrow operand comes first (8 -> 79
        GFLOP/s for 2048 x 4 outputs). The result is transposed behind an optimization barrier:
        XLA folds a transpose of a product back into the product."""
        return groups == 1 and rhs_taps * co < min(lhs_taps * ci, _SKINNY)

    def contract(lhs, rhs, lhs_taps, rhs_taps):
        """[..., lhs_taps * ci] x [..., rhs_taps * co] over all leading axes, per feature group."""
        if groups == 1:
            a, b = lhs.reshape(-1, lhs_taps * ci), rhs.reshape(-1, rhs_taps * co)
            if swapped(lhs_taps, rhs_taps):
                a, b = b, a
            return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=acc_dtype)
        # [groups, lhs_taps, cig, rhs_taps, co / groups]
        return lax.dot_general(
            lhs.reshape(-1, lhs_taps, groups, cig),
            rhs.reshape(-1, rhs_taps, groups, co // groups),
            (((0,), (0,)), ((2,), (2,))),
            preferred_element_type=acc_dtype,
        )

    def block(r0, rows):
        """Products of output rows [r0, r0 + rows): one per phase (split) or one (im2col)."""
        xs = slab(r0, rows)
        ds = lax.dynamic_slice_in_dim(dy, r0, rows, axis=1)
        # One strided window of rows per kernel row: xp[:, (r0 + h) * sh + i * dh].
        windows = [
            lax.slice_in_dim(xs, i * dh, i * dh + (rows - 1) * sh + 1, sh, axis=1)
            for i in range(kh)
        ]
        if layout == "im2col":
            cols = [
                lax.slice_in_dim(r, j * dw, j * dw + (wo - 1) * sw + 1, sw, axis=2)
                for r in windows
                for j in range(kw)
            ]
            return (contract(jnp.concatenate(cols, axis=-1), ds, kh * kw, 1),)
        out = []
        for phase, taps in phases.items():
            wq = widths[phase]
            lhs = jnp.concatenate(
                [
                    lax.slice_in_dim(r, phase, phase + (wq - 1) * sw + 1, sw, axis=2)
                    for r in windows
                ],
                axis=-1,
            )  # [n, rows, wq, kh * ci]
            shifts = [(j * dw) // sw for j in taps]
            rhs = jnp.concatenate(
                [jnp.pad(ds, ((0, 0), (0, 0), (s, wq - wo - s), (0, 0))) for s in shifts],
                axis=-1,
            )  # [n, rows, wq, len(taps) * co]: dy shifted right by s_j columns
            out.append(contract(lhs, rhs, kh, len(taps)))
        return tuple(out)

    # Blocks of output rows in a loop, so that each block's copies stay in cache: the copies
    # cost more than the products when they go through memory. The loop covers the rows whose
    # inputs need no row padding and reads them from x directly (padding x first would copy it
    # through memory); the few rows at the top and bottom are blocks of their own. The rows are
    # not a sharded axis under data parallelism, so the loop does not gather the batch.
    first = min(-(-pt // sh) if pt > 0 else 0, ho)  # first row reading no top padding
    last = max(min((height + pt - span) // sh + 1, ho), first)  # end of rows reading no bottom
    full, rest = divmod(last - first, bh)
    static = [(r0, min(bh, first - r0)) for r0 in range(0, first, bh)]
    static += [(r0, min(bh, ho - r0)) for r0 in range(last, ho, bh)]
    if rest:
        static.append((first + full * bh, rest))
    if full == 1:
        static.append((first, bh))
    prods = None
    if full > 1:
        zeros = jax.eval_shape(lambda: block(first, bh))
        prods = lax.fori_loop(
            0,
            full,
            lambda b, acc: tuple(
                a + p for a, p in zip(acc, block(first + b * bh, bh), strict=True)
            ),
            tuple(jnp.zeros(z.shape, z.dtype) for z in zeros),
        )
    for r0, rows in static:
        p = block(r0, rows)
        prods = p if prods is None else tuple(a + b for a, b in zip(prods, p, strict=True))

    def to_hwio(prod, lhs_taps, rhs_taps):
        """[lhs_taps, rhs_taps, cig, co] from a product of `contract`."""
        if groups == 1:
            if swapped(lhs_taps, rhs_taps):
                prod = lax.optimization_barrier(prod).T
            return prod.reshape(lhs_taps, ci, rhs_taps, co).transpose(0, 2, 1, 3)
        # [groups, lhs_taps, cig, rhs_taps, cog] -> [lhs_taps, rhs_taps, cig, groups, cog]
        return prod.transpose(1, 3, 2, 0, 4).reshape(lhs_taps, rhs_taps, cig, co)

    if layout == "im2col":
        return to_hwio(prods[0], kh * kw, 1).reshape(kh, kw, cig, co)
    per_tap = {}
    for prod, taps in zip(prods, phases.values(), strict=True):
        prod = to_hwio(prod, kh, len(taps))
        for t, j in enumerate(taps):
            per_tap[j] = prod[:, t]
    return jnp.stack([per_tap[j] for j in range(kw)], axis=1)
