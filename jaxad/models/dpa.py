"""The Deep Perceptual Autoencoder of the MOOD 2020 solution ("residual9", latent resolution 1).

A pre-activation ResNet encoder maps a 128x128x1 slice to a 1x1 latent and a mirrored decoder maps
it back; the loss is perceptual (`jaxad.ops.perceptual`), so the output is linear and unbounded.
Every conv has `nf` channels and a bias; there is no normalisation; every activation is
LeakyReLU(0.2).

- Encoder: 3x3 stem conv (linear), a residual block at 128, five residual blocks that
  average-pool by 2 (128 -> 4), then LeakyReLU and a 4x4 valid conv to the 1x1 latent (linear).
- Decoder: LeakyReLU on the latent (as in the original), a 4x4 conv with zero padding 3 (1x1 ->
  4x4), five residual blocks that upsample by 2 (nearest, 4 -> 128), then LeakyReLU and a 3x3
  conv to the output channels (linear).

Module names sort in the original's order (`jaxad.convert.dpa` maps them onto its state dicts):
the encoder's `from_image`, `res0`, `res1`... `to_latent`, the decoder's `from_latent`, `res1`...
`to_image`; inside a block `conv1`, `conv2` and `skip`.

Residual blocks are pre-activation: main = LReLU -> [resample] -> conv3x3 -> LReLU -> conv3x3,
skip = [resample] (+ 1x1 conv when the widths differ), output = skip + main.

Initialisation: the original re-initialises every conv weight with
`kaiming_normal_(mode='fan_out', nonlinearity='leaky_relu', a=0.2)`, i.e. N(0, 2 / (1.04 fan_out))
untruncated with fan_out = kh kw out, and leaves PyTorch's default biases U(+-1/sqrt(fan_in)).

At `nf = latent_dim = 128` the encoder has 2,034,560 and the decoder 1,739,265 parameters
(3,773,825); at 64, 509,376 + 435,457 = 944,833. `image_size` (a power of two, at least 4) sets
the number of resampling blocks, log2(image_size) - 2; only 128 is used in MOOD (the progressive
growing of the original code is not used there and is not reproduced). `fast_conv_grad` is passed
to every `Conv` (see `jaxad.models.layers`).
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxad.models.layers import Conv, Initializer

NEGATIVE_SLOPE = 0.2


def kaiming_normal_fan_out(scale: float) -> Initializer:
    """N(0, scale / fan_out) for an HWIO kernel (fan_out = kh kw out), untruncated.

    The law of `variance_scaling(scale, "fan_out", "normal")` and of PyTorch's
    `kaiming_normal_(mode='fan_out')` with gain^2 = scale. Drawn flat and reshaped, as in
    `jaxad.models.layers`, because XLA on CPU compiles 4-D random draws slowly.
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan_out = math.prod(shape[:-2]) * shape[-1]
        std = math.sqrt(scale / fan_out)
        return (std * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)

    return init


# kaiming_normal_(a=0.2, nonlinearity='leaky_relu'): gain^2 = 2 / (1 + a^2).
dpa_kernel_init = kaiming_normal_fan_out(2.0 / (1.0 + NEGATIVE_SLOPE**2))


def lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, NEGATIVE_SLOPE)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pool with stride 2 of NHWC `x` (even sizes)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of NHWC `x`."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return x.reshape(n, 2 * h, 2 * w, c)


def _resample(x: jax.Array, resample: str | None) -> jax.Array:
    if resample == "down":
        return avg_pool_2x2(x)
    if resample == "up":
        return upsample_nearest_2x(x)
    return x


class PreActBlock(nn.Module):
    """Pre-activation residual block; `resample` is None, "down" (avg-pool) or "up" (nearest).

    The resampling sits after the first activation on the main path and alone (or before the 1x1
    conv) on the skip path, as in the original.
    """

    features: int
    resample: str | None = None
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, fast_conv_grad=self.fast_conv_grad, kernel_init=dpa_kernel_init)
        skip = _resample(x, self.resample)
        if x.shape[-1] != self.features:
            skip = Conv(self.features, 1, name="skip", **kw)(skip)
        y = _resample(lrelu(x), self.resample)
        y = Conv(self.features, 3, padding=1, name="conv1", **kw)(y)
        y = Conv(self.features, 3, padding=1, name="conv2", **kw)(lrelu(y))
        return skip + y


def _num_stages(image_size: int) -> int:
    stages = int(math.log2(image_size)) - 2
    if image_size < 4 or 2 ** (stages + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 4, got {image_size}.")
    return stages


class Encoder(nn.Module):
    """[B, S, S, C] images (S = `image_size`) -> [B, 1, 1, latent_dim] latent codes.

    Modules, in the original's order: `from_image` (stem conv), `res0` (residual block at S),
    `res1`... (downsampling blocks, S -> 4), `to_latent`.
    """

    nf: int = 128
    latent_dim: int = 128
    image_size: int = 128
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        stages = _num_stages(self.image_size)
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} inputs, got {x.shape}.")
        kw = dict(dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        x = Conv(self.nf, 3, padding=1, kernel_init=dpa_kernel_init, name="from_image", **kw)(x)
        x = PreActBlock(self.nf, name="res0", **kw)(x)
        for i in range(1, stages + 1):
            x = PreActBlock(self.nf, resample="down", name=f"res{i}", **kw)(x)
        return Conv(self.latent_dim, 4, kernel_init=dpa_kernel_init, name="to_latent", **kw)(
            lrelu(x)
        )


class Decoder(nn.Module):
    """[B, 1, 1, latent_dim] latent codes -> [B, S, S, channels] images (linear output).

    Modules, in the original's order: `from_latent`, `res1`... (upsampling blocks, 4 -> S),
    `to_image`.
    """

    nf: int = 128
    channels: int = 1
    image_size: int = 128
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        stages = _num_stages(self.image_size)
        kw = dict(dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        # A 4x4 conv with padding 3 on the 1x1 code: output (i, j) is kernel tap (3 - i, 3 - j)
        # applied to the code, i.e. a dense map to 4x4xnf.
        x = Conv(self.nf, 4, padding=3, kernel_init=dpa_kernel_init, name="from_latent", **kw)(
            lrelu(z)
        )
        for i in range(1, stages + 1):
            x = PreActBlock(self.nf, resample="up", name=f"res{i}", **kw)(x)
        return Conv(
            self.channels, 3, padding=1, kernel_init=dpa_kernel_init, name="to_image", **kw
        )(lrelu(x))


class Autoencoder(nn.Module):
    """Encoder + decoder; `encode` / `decode` (via `apply(..., method=...)`) expose the latent.

    Parameters are stored under "encoder" and "decoder".
    """

    nf: int = 128
    latent_dim: int = 128
    channels: int = 1
    image_size: int = 128
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    def setup(self) -> None:
        kw = dict(
            nf=self.nf,
            image_size=self.image_size,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
        )
        self.encoder = Encoder(latent_dim=self.latent_dim, **kw)
        self.decoder = Decoder(channels=self.channels, **kw)

    def encode(self, x: jax.Array) -> jax.Array:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decoder(self.encoder(x))
