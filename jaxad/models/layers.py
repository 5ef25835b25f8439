"""Convolution and batch-norm layers shared by every jaxad network.

The reference implementations are PyTorch models trained from PyTorch's default initialisation, so
these layers reproduce it: a conv kernel and its bias are both drawn from U(-b, b) with
b = 1/sqrt(fan_in), which is what `kaiming_uniform_(a=sqrt(5))` gives for the kernel (bound
sqrt(6 / ((1 + a^2) fan_in))). Flax's own defaults (lecun-normal kernels, zero biases) would change
the training dynamics.

Every model builds its convolutions from this module, so the convolution primitives themselves
(`conv2d`, `conv_transpose2d`) can be replaced in one place, e.g. by a faster CPU kernel with a
custom VJP.

Layout is NHWC. Kernels are HWIO as in `flax.linen` (I = input, O = output channels), for the
transposed convolution too.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax
from jax.typing import DTypeLike

Padding = int | str | Sequence[tuple[int, int]]
Initializer = jax.nn.initializers.Initializer

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


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
) -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO kernel; every `Conv` goes through here."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=padding, dimension_numbers=_DIMENSION_NUMBERS
    )


def conv_transpose2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int],
    padding: Sequence[tuple[int, int]],
) -> jax.Array:
    """Transposed conv of NHWC `x` with an HWIO kernel; `padding` as in `lax.conv_transpose`.

    When the kernel equals the stride and nothing is cropped (the U-Net's 2x2 / stride 2), the
    output blocks do not overlap and each is a matrix product of one input pixel. That form is
    computed directly: on CPU, XLA's kernel gradient of the general transposed conv is about 40x
    slower than its forward pass at U-Net sizes (0.74 s against 0.02 s for 112 -> 224 px, 128 -> 64
    channels, batch 2); the matrix product's gradient takes 0.01 s.
    """
    kh, kw = kernel.shape[:2]
    uncropped = tuple(map(tuple, padding)) == ((kh - 1, kh - 1), (kw - 1, kw - 1))
    if (kh, kw) == tuple(strides) and uncropped:
        n, h, w, _ = x.shape
        # As in lax.conv_transpose, offset a within an output block uses kernel row kh - 1 - a.
        blocks = jnp.einsum("nhwi,abio->nhawbo", x, kernel[::-1, ::-1])
        return blocks.reshape(n, h * kh, w * kw, kernel.shape[-1])
    return lax.conv_transpose(
        x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS, transpose_kernel=False
    )


class Conv(nn.Module):
    """2-D convolution with PyTorch's default initialisation.

    `padding` follows PyTorch when it is an int p (p zeros on every side, i.e. ((p, p), (p, p)))
    and `lax.conv_general_dilated` otherwise ("VALID", "SAME" or explicit (low, high) pairs). The
    default 0 is PyTorch's default, not Flax's "SAME".
    """

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: Padding = 0
    use_bias: bool = True
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = (*_pair(self.kernel_size), x.shape[-1], self.features)
        kernel = self.param("kernel", torch_conv_kernel_init(), kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = torch_conv_bias_init(torch_fan_in(kernel_shape))
            bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        y = conv2d(x, kernel, _pair(self.strides), padding)
        return y if bias is None else y + bias


class ConvTranspose(nn.Module):
    """2-D transposed convolution with PyTorch's default initialisation and output size.

    `padding` is PyTorch's: the output is (n - 1) * stride - 2 * padding + kernel per spatial axis.
    The kernel is stored HWIO and applied unflipped (as `flax.linen.ConvTranspose` does); a PyTorch
    weight W of shape (in, out, kh, kw) corresponds to `W.transpose(2, 3, 0, 1)[::-1, ::-1]`.
    """

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: int = 0
    use_bias: bool = True
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

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
        y = conv_transpose2d(x, kernel, _pair(self.strides), padding)
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
