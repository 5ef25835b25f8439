"""Convolution and batch-norm layers shared by every jaxad network.

The reference implementations are PyTorch models trained from PyTorch's default initialisation, so
these layers reproduce it: a conv kernel and its bias are both drawn from U(-b, b) with
b = 1/sqrt(fan_in), which is what `kaiming_uniform_(a=sqrt(5))` gives for the kernel (bound
sqrt(6 / ((1 + a^2) fan_in))). Flax's own defaults (lecun-normal kernels, zero biases) would change
the training dynamics.

Every model builds its convolutions from this module, so the convolution primitives themselves
(`conv2d`, `conv_transpose2d`) are chosen in one place. `conv2d` goes through
`jaxad.ops.conv.conv2d`, whose `fast_kernel_grad` computes the kernel gradient as matrix
products, several times faster than XLA's own lowering on CPU (see that module); the `Conv`
attribute `fast_conv_grad` selects it (True, False, or `conv_ops.BY_SHAPE`: only on the layer
shapes where it measured faster), and the models pass it down from the method's config
(`config.model.fast_conv_grad`, resolved by `conv_ops.resolve_fast_kernel_grad`). The forward
pass is the same either way.

Layout is NHWC. Kernels are HWIO as in `flax.linen` (I = input, O = output channels), for the
transposed convolution too.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.typing import DTypeLike

from jaxad.ops import conv as conv_ops

Padding = int | str | Sequence[tuple[int, int]]
Initializer = jax.nn.initializers.Initializer


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (first, second)


def torch_fan_in(kernel_shape: Sequence[int], *, transpose: bool = False) -> int:
    """PyTorch's fan-in of an HWIO kernel, which sets the default init bounds.

    For a convolution it is kh * kw * in_channels. For a transposed convolution PyTorch stores the
    weight as (in, out, kh, kw) and reads the fan-in from dimension 1: kh * kw * out_channels.
    """
    *spatial, in_channels, out_channels = kernel_shape
    return math.prod(spatial) * (out_channels if transpose else in_channels)


def _uniform(key: jax.Array, shape: Sequence[int], dtype: DTypeLike, bound: float) -> jax.Array:
    # Drawn flat and reshaped: with the default (partitionable) threefry, XLA on CPU takes about
    # 0.5 s to compile each 4-D draw against 0.05 s for a 1-D one; a U-Net init took 15 s.
    size = math.prod(shape)
    return jax.random.uniform(key, (size,), dtype, minval=-bound, maxval=bound).reshape(shape)


def torch_conv_kernel_init(*, transpose: bool = False) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for an HWIO kernel, fan-in as in `torch_fan_in`."""

    def init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, torch_fan_in(shape, transpose=transpose) ** -0.5)

    return init


def torch_conv_bias_init(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bound comes from the kernel, not the bias shape."""

    def init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, fan_in**-0.5)

    return init


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int],
    padding: str | Sequence[tuple[int, int]],
    dilation: tuple[int, int] = (1, 1),
    *,
    groups: int = 1,
    fast_grad: bool | str = False,
    matmul_1x1: bool = False,
) -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO kernel; every `Conv` goes through here.

    `fast_grad` computes the kernel gradient by matrix products (`jaxad.ops.conv`) instead of
    XLA's lowering; the forward pass and the input gradient are XLA's either way, except for
    1x1 convolutions with `matmul_1x1` (`jaxad.ops.conv.pointwise`).
    """
    return conv_ops.conv2d(
        x,
        kernel,
        strides,
        padding,
        dilation,
        groups=groups,
        fast_kernel_grad=fast_grad,
        matmul_1x1=matmul_1x1,
    )


def conv_transpose2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int],
    padding: Sequence[tuple[int, int]],
    *,
    fast_grad: bool | str = False,
) -> jax.Array:
    """Transposed conv of NHWC `x` with an HWIO kernel; `padding` as in `lax.conv_transpose`.

    When the kernel equals the stride and nothing is cropped (the U-Net's 2x2 / stride 2), the
    output blocks do not overlap and each is a matrix product of one input pixel. That form is
    computed directly, as one [N H W, I] x [I, kh kw O] product and a transpose of its result:
    its gradients are plain matrix products too (on CPU the einsum form's backward pass took 1.6x
    as long). Otherwise it is `jaxad.ops.conv.conv_transpose2d`, whose `fast_kernel_grad`
    (`fast_grad` here) replaces XLA's CPU kernel gradient of the general transposed conv, about
    100x slower than its forward pass (2-3 GFLOP/s at U-Net and PICARD sizes), by matrix
    products (150-350 GFLOP/s; bench/README.md).
    """
    kh, kw = kernel.shape[:2]
    uncropped = tuple(map(tuple, padding)) == ((kh - 1, kh - 1), (kw - 1, kw - 1))
    if (kh, kw) == tuple(strides) and uncropped:
        n, h, w, ci = x.shape
        co = kernel.shape[-1]
        # As in lax.conv_transpose, offset a within an output block uses kernel row kh - 1 - a.
        weights = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(ci, kh * kw * co)
        blocks = jnp.dot(x.reshape(n * h * w, ci), weights).reshape(n, h, w, kh, kw, co)
        return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * kh, w * kw, co)
    return conv_ops.conv_transpose2d(x, kernel, strides, padding, fast_kernel_grad=fast_grad)


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 of NHWC `x` (odd sizes floored), as `nn.max_pool`.

    The derivative follows the first maximum of each window in row-major order, as PyTorch's
    `max_pool2d` and `nn.max_pool` (XLA's select-and-scatter) do, but is computed elementwise
    from the four window positions: on CPU, XLA lowers select-and-scatter to a reduce-window
    that tracks four index arrays, which took about 4% of a Lesion2Void training step at 224 px.
    """
    return _windows(x).max(axis=(2, 4))


def _windows(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@max_pool_2x2.defjvp
def _max_pool_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    xw = _windows(x)
    out = xw.max(axis=(2, 4))
    hit = xw == out[:, :, None, :, None]
    # Keep only the first hit of each window, in the order (0, 0), (0, 1), (1, 0), (1, 1).
    a, b, c, d = hit[:, :, 0, :, 0], hit[:, :, 0, :, 1], hit[:, :, 1, :, 0], hit[:, :, 1, :, 1]
    b = b & ~a
    c = c & ~(a | b)
    d = d & ~(a | b | c)
    first = jnp.stack([jnp.stack([a, b], axis=3), jnp.stack([c, d], axis=3)], axis=2)
    t_out = jnp.where(first, _windows(t), jnp.zeros((), t.dtype)).sum(axis=(2, 4))
    return out, t_out


@jax.custom_jvp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 max-pool with stride 2 and padding 1 of NHWC `x`: the ResNet stem's, as
    `nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))` (padding never wins a window).

    As `max_pool_2x2`, the derivative follows the first maximum of each window in row-major
    order and is computed elementwise from the nine window positions: XLA's CPU backend
    lowers the select-and-scatter to a reduce-window over four index arrays of the padded
    input; this form made lesion-based CL's ResNet-50 step at 128 px 4 % faster in an A/B
    under load (bench/README.md).
    """
    return functools.reduce(jnp.maximum, _taps_3x3_s2(x, -jnp.inf))


def _taps_3x3_s2(x: jax.Array, fill: float) -> list[jax.Array]:
    """The nine window positions of every output pixel, row-major, `x` padded with `fill`."""
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
    return [
        xp[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2] for i in range(3) for j in range(3)
    ]


@max_pool_3x3_s2.defjvp
def _max_pool_3x3_s2_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    taps = _taps_3x3_s2(x, -jnp.inf)
    out = functools.reduce(jnp.maximum, taps)
    zero = jnp.zeros((), t.dtype)
    t_out, taken = jnp.zeros(out.shape, t.dtype), jnp.zeros(out.shape, bool)
    for x_tap, t_tap in zip(taps, _taps_3x3_s2(t, 0.0), strict=True):
        first = (x_tap == out) & ~taken
        t_out = t_out + jnp.where(first, t_tap, zero)
        taken = taken | first
    return out, t_out


class Conv(nn.Module):
    """2-D convolution with PyTorch's default initialisation.

    `padding` follows PyTorch when it is an int p (p zeros on every side, i.e. ((p, p), (p, p)))
    and `lax.conv_general_dilated` otherwise ("VALID", "SAME" or explicit (low, high) pairs). The
    default 0 is PyTorch's default, not Flax's "SAME". `kernel_dilation` and
    `feature_group_count` are PyTorch's `dilation` and `groups`. `fast_conv_grad` computes the
    kernel gradient by matrix products (see `conv2d`); it changes neither the parameters nor the
    forward pass. `kernel_init` / `bias_init` replace PyTorch's default initialisers (e.g. a
    model that re-initialises its convs, as the MOOD autoencoder does).
    """

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: Padding = 0
    kernel_dilation: int | tuple[int, int] = 1
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    fast_conv_grad: bool | str = False
    # With fast_conv_grad: a 1x1 kernel as one matrix product (`jaxad.ops.conv.pointwise`).
    matmul_1x1: bool = False
    # None: PyTorch's defaults (`torch_conv_kernel_init`, `torch_conv_bias_init`).
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = self.feature_group_count
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(
                f"feature_group_count={groups} must divide the input ({x.shape[-1]}) and output "
                f"({self.features}) channels."
            )
        kernel_shape = (*_pair(self.kernel_size), x.shape[-1] // groups, self.features)
        kernel_init = self.kernel_init or torch_conv_kernel_init()
        kernel = self.param("kernel", kernel_init, kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = self.bias_init or torch_conv_bias_init(torch_fan_in(kernel_shape))
            bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        y = conv2d(
            x,
            kernel,
            _pair(self.strides),
            padding,
            _pair(self.kernel_dilation),
            groups=groups,
            fast_grad=self.fast_conv_grad,
            matmul_1x1=self.matmul_1x1,
        )
        return y if bias is None else y + bias


class ConvTranspose(nn.Module):
    """2-D transposed convolution with PyTorch's default initialisation and output size.

    `padding` is PyTorch's: the output is (n - 1) * stride - 2 * padding + kernel per spatial axis.
    The kernel is stored HWIO and applied unflipped (as `flax.linen.ConvTranspose` does); a PyTorch
    weight W of shape (in, out, kh, kw) corresponds to `W.transpose(2, 3, 0, 1)[::-1, ::-1]`.
    `fast_conv_grad` computes the kernel gradient by matrix products (see `conv_transpose2d`).
    """

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: int = 0
    use_bias: bool = True
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = _pair(self.kernel_size)
        kernel_shape = (kh, kw, x.shape[-1], self.features)
        kernel_init = torch_conv_kernel_init(transpose=True)
        kernel = self.param("kernel", kernel_init, kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = torch_conv_bias_init(torch_fan_in(kernel_shape, transpose=True))
            bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        # Padding the stride-dilated input by k - 1 - p on each side gives PyTorch's output size and
        # alignment for a flipped kernel.
        p = self.padding
        padding = ((kh - 1 - p, kh - 1 - p), (kw - 1 - p, kw - 1 - p))
        y = conv_transpose2d(x, kernel, _pair(self.strides), padding, fast_grad=self.fast_conv_grad)
        return y if bias is None else y + bias


class BatchNorm(nn.BatchNorm):
    """`flax.linen.BatchNorm` with PyTorch's defaults.

    PyTorch's momentum 0.1 weights the new batch statistic, Flax's weights the old running value, so
    they agree at momentum 0.9. The two-pass variance (`use_fast_variance=False`) matches PyTorch's
    numerics. One difference remains: PyTorch updates the running variance with the unbiased batch
    variance (factor n / (n - 1)), Flax with the biased one; n is batch * height * width, so the gap
    is negligible for the image sizes used here.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_fast_variance: bool = False


class FoldedBatchNorm(BatchNorm):
    """`BatchNorm` that applies its statistics as one multiply-add per value, y = x * a + b
    with a = scale / sqrt(var + eps) and b = bias - mean * a (PyTorch's CPU kernel's form).

    Same parameters, statistics and results (to float rounding) as `BatchNorm`, but Flax's
    (x - mean) * a + bias forms the output from the centred x, which XLA's CPU backend then
    writes out in full and reads back; folded, the output is formed from x itself. ResNet-50
    training steps 4-5 % faster in an A/B under load (bench/README.md). The ResNets use it; the
    other models keep `BatchNorm`, with which their demos were measured. Channels last only;
    no `axis_name` (a sharded batch under `jax.jit` gives global statistics).
    """

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        if self.axis != -1 or self.axis_name is not None or not (self.use_scale and self.use_bias):
            raise ValueError("FoldedBatchNorm: channels last, scale and bias, no axis_name")
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:  # statistics in float32 (as Flax's), the variance in two passes (as PyTorch's)
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            axes = tuple(range(x.ndim - 1))
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        a = scale * jax.lax.rsqrt(var + self.epsilon)
        b = bias - mean * a
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        return (x * a + b).astype(dtype)


class BatchStatNorm(nn.Module):
    """[N, D] -> [N, D] normalised by the batch's own mean and variance, then a learnt scale and
    shift: training-mode BatchNorm without running averages, for heads that only ever see whole
    batches (a contrastive projection head). `weights` [N] (1 keep, 0 ignore) leaves padding rows
    out of the statistics. Under `jax.jit` with a sharded batch the statistics are global.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        w = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
        w = (w / jnp.maximum(w.sum(), 1.0))[:, None]
        mean = (w * xf).sum(0)
        var = (w * jnp.square(xf - mean)).sum(0)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)
