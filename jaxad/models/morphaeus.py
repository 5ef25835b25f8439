"""MorphAEus (Bercea, Rueckert, Schnabel, MICCAI 2023): a deformable convolutional autoencoder.

A plain convolutional autoencoder produces a pseudo-healthy prior x_hat; a light deformer reads its
feature maps and predicts a stationary velocity field v, whose exponential phi = exp(v) (scaling
and squaring, 7 steps) warps the prior towards the input's morphometry: x_tilde = x_hat o phi.
The anomaly map is |x - x_tilde|.

- `Encoder`: 7 blocks of conv 3x3 stride 2 (padding 1 on each side, bias) -> batch norm -> Swish
  (SiLU), widths 16, 32, 64, 128, 256, 256, 256: a 128 x 128 image becomes 1 x 1 x 256.
- `Decoder`: 7 blocks of bilinear x2 upsampling (align_corners=True) -> conv 3x3 (padding 1) ->
  batch norm -> Swish, widths 256, 256, 256, 128, 64, 32, 16, then a 1x1 conv to the output
  channels and a sigmoid.
- Both return their "taps": the raw outputs of their 3x3 convs (before batch norm), which the
  deformer reads, as in the original.
- `Deformer`: 3 refine blocks, each a transposed conv 3x3 stride 2 (PyTorch padding 1,
  output_padding 1: the size doubles) to 32 channels -> batch norm -> Swish, then a flow head
  conv 3x3 (padding 1) to 2 channels, initialised N(0, 1e-5) with a zero bias so that v starts at
  about 0. Inputs, with E_k / D_k the encoder / decoder taps at the same resolution:

      R1: [E3 (1/8 of the image), D4]       -> 32 ch at 1/4
      R2: [E2 (1/4), D5, R1]                 -> 32 ch at 1/2
      R3: [E1 (1/2), D6, R2]                 -> 32 ch at full size -> flow head -> v

  (channels concatenated in that order: 64 + 128, 32 + 64 + 32, 16 + 32 + 32 at the defaults).
- `MorphAEus` combines them; with `deform=False` it is the plain autoencoder ("MorphAEus-woPLM").
  The velocity v is in pixels, channel 0 along H (rows), channel 1 along W (columns); the warps
  and the integration are `jaxad.ops.deform`'s (voxelmorph's conventions), bidirectional: the
  prior is warped by exp(v) and the input by exp(-v).

Batch norm (`bn_mode`): the original trains with every BN layer in eval mode (its trainer leaves
the model in eval mode), so BN uses its running statistics, which keep their initial values
(mean 0, variance 1): BN is a learned per-channel affine y = gamma x / sqrt(1 + eps) + beta.
'frozen' (the default) reproduces that, in training and at test time; 'train' is ordinary batch
norm (batch statistics when `train=True`, updating the running averages, which must then be
mutable; running averages when `train=False`). Both keep a `batch_stats` collection. Batch norm
uses PyTorch's eps 1e-5 and momentum 0.1 (`jaxad.models.layers.BatchNorm`).

Parameters at the defaults (weights, biases and BN scale/bias; running statistics excluded):
encoder 1,574,496, decoder 2,164,193 (one output channel), deformer 116,066, total 3,854,755;
the autoencoder alone 3,738,689. Initialisation is PyTorch's default for every conv and transposed
conv (`jaxad.models.layers`), except the flow head.

Sizes: the original works at 128 x 128 only (7 levels down to 1 x 1). Here an image of any height
and width divisible by 2^len(widths) works (the bottleneck is then larger than 1 x 1), and fewer
levels give a smaller model for small images (e.g. `widths=(16, 32, 64, 128, 256)` at 32 x 32);
the deformer needs at least 4 levels. `fast_conv_grad` is passed to every conv (see
`jaxad.models.layers`); it changes neither the parameters nor the outputs, but on CPU leave it
on for training (True, or `jaxad.ops.conv.BY_SHAPE`, what `fast_conv_grad="auto"` resolves to):
XLA's own kernel gradient of the deformer's transposed convs made a 128 px training step at batch
16 take 15 s instead of 2.4 s.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.typing import DTypeLike

from jaxad.models import layers
from jaxad.models.layers import BatchNorm, Conv, Initializer
from jaxad.ops import deform

WIDTHS = (16, 32, 64, 128, 256, 256, 256)
DEFORMER_WIDTH = 32
DEFORMER_LEVELS = 3  # refine blocks, reading the taps at 1/8, 1/4 and 1/2 of the image size
INT_STEPS = 7
FLOW_INIT_STD = 1e-5
BN_MODES = ("frozen", "train")


def _batch_norm(bn_mode: str, train: bool, dtype: DTypeLike | None, name: str) -> BatchNorm:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    use_running_average = bn_mode == "frozen" or not train
    return BatchNorm(use_running_average=use_running_average, dtype=dtype, name=name)


def normal_init(std: float) -> Initializer:
    """N(0, std^2), drawn flat and reshaped (XLA on CPU compiles 4-D random draws slowly)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return (std * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)

    return init


class ConvTranspose(nn.Module):
    """PyTorch's `ConvTranspose2d(kernel, stride, padding, output_padding)`, default init.

    The output size is (n - 1) stride - 2 padding + kernel + output_padding; in `lax.conv_transpose`
    terms (a conv of the stride-dilated input, kernel unflipped) the padding is
    (kernel - 1 - padding, kernel - 1 - padding + output_padding) per axis. Kernels are HWIO as in
    `jaxad.models.layers.ConvTranspose` (a PyTorch weight W (in, out, kh, kw) is
    `W.transpose(2, 3, 0, 1)[::-1, ::-1]`), which has no `output_padding`.
    """

    features: int
    kernel_size: int = 3
    strides: int = 2
    padding: int = 1
    output_padding: int = 1
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.padding
        kernel_shape = (k, k, x.shape[-1], self.features)
        fan_in = layers.torch_fan_in(kernel_shape, transpose=True)
        kernel = self.param(
            "kernel", layers.torch_conv_kernel_init(transpose=True), kernel_shape, self.param_dtype
        )
        bias = self.param(
            "bias", layers.torch_conv_bias_init(fan_in), (self.features,), self.param_dtype
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        pads = ((k - 1 - p, k - 1 - p + self.output_padding),) * 2
        y = layers.conv_transpose2d(
            x, kernel, (self.strides, self.strides), pads, fast_grad=self.fast_conv_grad
        )
        return y + bias


class Encoder(nn.Module):
    """[B, H, W, C] images -> ([B, H / 2^n, W / 2^n, widths[-1]] code, n taps), n = len(widths).

    Block k (k = 1..n) is conv 3x3 stride 2 -> BN -> Swish; tap k is its conv output before BN,
    at 1 / 2^k of the image size. The taps are in block order (finest first).
    """

    widths: Sequence[int] = WIDTHS
    bn_mode: str = "frozen"
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        taps = []
        for k, width in enumerate(self.widths, start=1):
            x = Conv(
                width,
                3,
                strides=2,
                padding=1,
                dtype=self.dtype,
                fast_conv_grad=self.fast_conv_grad,
                name=f"conv{k}",
            )(x)
            taps.append(x)
            x = _batch_norm(self.bn_mode, train, self.dtype, f"bn{k}")(x)
            x = nn.silu(x)
        return x, tuple(taps)


class Decoder(nn.Module):
    """Code -> ([B, H, W, out_channels] image in (0, 1), n taps), n = len(widths).

    `widths` are the encoder's; the decoder's blocks have them in reverse order. Block k
    (k = 1..n) is align-corners bilinear x2 -> conv 3x3 -> BN -> Swish; tap k is its conv output
    before BN, at 1 / 2^(n - k) of the image size. The taps are in block order (coarsest first).
    """

    widths: Sequence[int] = WIDTHS
    out_channels: int = 1
    bn_mode: str = "frozen"
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        kw = dict(dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        taps = []
        x = z
        for k, width in enumerate(reversed(self.widths), start=1):
            x = deform.upsample_bilinear_align_corners(x, 2)
            x = Conv(width, 3, padding=1, name=f"conv{k}", **kw)(x)
            taps.append(x)
            x = _batch_norm(self.bn_mode, train, self.dtype, f"bn{k}")(x)
            x = nn.silu(x)
        x = Conv(self.out_channels, 1, name="final", **kw)(x)
        # The sigmoid in float32: the prior goes into the losses and the warp as it is.
        return nn.sigmoid(x.astype(jnp.float32)), tuple(taps)


class Deformer(nn.Module):
    """Encoder and decoder taps -> velocity field [B, H, W, 2] (pixels; rows, columns).

    `encoder_taps` and `decoder_taps` are the `DEFORMER_LEVELS` maps at 1/8, 1/4 and 1/2 of the
    image size, coarsest first, pairwise of one resolution. Refine block k concatenates
    [encoder tap, decoder tap, previous block's output (from the second block)], upsamples by a
    transposed conv (3x3, stride 2) to `width` channels, then BN and Swish; the flow head maps
    the last block's output to the 2-channel velocity.
    """

    width: int = DEFORMER_WIDTH
    bn_mode: str = "frozen"
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(
        self, encoder_taps: Sequence[jax.Array], decoder_taps: Sequence[jax.Array], train: bool
    ) -> jax.Array:
        if len(encoder_taps) != len(decoder_taps):
            raise ValueError("need one decoder tap per encoder tap")
        kw = dict(dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        y = None
        for k, (e, d) in enumerate(zip(encoder_taps, decoder_taps, strict=True), start=1):
            if e.shape[:3] != d.shape[:3]:
                raise ValueError(f"taps of level {k} differ in size: {e.shape} and {d.shape}")
            inputs = [e, d] if y is None else [e, d, y]
            y = ConvTranspose(self.width, name=f"refine{k}", **kw)(jnp.concatenate(inputs, -1))
            y = _batch_norm(self.bn_mode, train, self.dtype, f"bn{k}")(y)
            y = nn.silu(y)
        return Conv(
            2,
            3,
            padding=1,
            kernel_init=normal_init(FLOW_INIT_STD),
            bias_init=nn.initializers.zeros_init(),
            name="flow",
            **kw,
        )(y)


class MorphAEus(nn.Module):
    """The MorphAEus autoencoder with its deformer (`deform=True`) or without ("woPLM").

    `__call__(x, train)` maps [B, H, W, C] images in [0, 1] (H and W divisible by
    2^len(widths)) to a dict:

    - "prior": x_hat [B, H, W, out_channels], the autoencoder's sigmoid output, float32;

    and, with `deform=True`:

    - "velocity": v [B, H, W, 2], the deformer's stationary velocity field before integration
      (what the smoothness loss regularises), float32;
    - "displacement": exp(v) [B, H, W, 2], the integrated displacement (`int_steps` squarings);
    - "warped": x_hat o exp(v) (the original's y_source, the deformed reconstruction x_tilde);
    - "reversed": x o exp(-v) (y_target, the input pulled back towards the prior).

    The warps are always computed (the original has no switch; its warm-up only drops the morph
    loss). The integration and the warps run in float32 whatever `dtype` (the velocity is cast
    to float32 before the scaling and squaring, whose seven compositions would compound bfloat16
    rounding, and the prior leaves its sigmoid in float32); "warped" and "reversed" take the
    dtype of the image they warp, float32 for the prior and for float32 inputs. Parameters are
    stored under "encoder", "decoder" and "deformer" (absent with `deform=False`).
    """

    widths: Sequence[int] = WIDTHS
    out_channels: int = 1
    deform: bool = True
    bn_mode: str = "frozen"
    int_steps: int = INT_STEPS
    deformer_width: int = DEFORMER_WIDTH
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False
    # True: the deformer reads, and the warp moves, the autoencoder's outputs under a stop
    # gradient, so that losses on the warped images train the deformer alone (the outputs are
    # the same; the original lets those gradients into the autoencoder: False).
    detach_autoencoder: bool = False

    def setup(self) -> None:
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.deform and len(self.widths) < DEFORMER_LEVELS + 1:
            raise ValueError(
                f"the deformer needs at least {DEFORMER_LEVELS + 1} levels, got widths "
                f"{tuple(self.widths)}"
            )
        kw = dict(bn_mode=self.bn_mode, dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        self.encoder = Encoder(widths=self.widths, **kw)
        self.decoder = Decoder(widths=self.widths, out_channels=self.out_channels, **kw)
        if self.deform:
            self.deformer = Deformer(width=self.deformer_width, **kw)

    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        levels = len(self.widths)
        factor = 2**levels
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"expected [B, H, W, C] images with H and W divisible by 2^{levels} = {factor} "
                f"(the original: 128 x 128), got {x.shape}"
            )
        z, encoder_taps = self.encoder(x, train)
        prior, decoder_taps = self.decoder(z, train)
        out = {"prior": prior}
        if not self.deform:
            return out
        # Encoder tap k is at 1/2^k, decoder tap k at 1/2^(levels - k): the pairs at 1/8, 1/4, 1/2.
        scales = range(DEFORMER_LEVELS, 0, -1)
        enc = [encoder_taps[s - 1] for s in scales]
        dec = [decoder_taps[levels - s - 1] for s in scales]
        source = prior
        if self.detach_autoencoder:
            enc, dec, source = jax.lax.stop_gradient((enc, dec, prior))
        v = self.deformer(enc, dec, train)
        v = v.astype(jnp.float32)
        # exp(v) and exp(-v) in one integration loop (one loop to compile and differentiate).
        both = deform.integrate_velocity(jnp.concatenate([v, -v]), self.int_steps)
        phi, phi_inverse = jnp.split(both, 2)
        out.update(
            velocity=v,
            displacement=phi,
            warped=deform.warp(source, phi),
            reversed=deform.warp(x, phi_inverse),
        )
        return out
