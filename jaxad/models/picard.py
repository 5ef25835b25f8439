"""PICARD's networks: a DeepFill-v1 inpainter and its local and global WGAN-GP critics.

Generator (Yu et al. 2018 as PICARD uses it): convs with bias, "same" zero padding (k // 2 times
the dilation), ELU, no normalisation, PyTorch's default init, nearest 2x upsampling. Its input is
[image, ones, mask] (`channels` + 2), the image already zeroed in the hole by the caller.

- Coarse network: 5x5 conv (w = width), 3x3 stride-2 to 2w, 3x3, stride-2 to 4w, two 3x3, four 3x3
  convs dilated 2, 4, 8, 16, two 3x3, up, 2w twice, up, w, w/2, then a linear conv to `channels`
  clamped to [-1, 1]: `x_stage1`.
- Fine network, on [x_stage1 in the hole and the image outside, ones, mask]: a hallucination
  branch (5x5 to w, stride-2 to w, 2w, stride-2 to 2w, 4w, 4w, the four dilated 4w convs) and an
  attention branch (5x5 to w, stride-2 to w, 2w, stride-2 to 4w, 4w, 4w with ReLU, contextual
  attention (`jaxad.ops.contextual_attention`), two 4w convs), concatenated and decoded as in the
  coarse network: `x_stage2`.
- Critics: four 5x5 stride-2 convs (w, 2w, 4w, 4w) with LeakyReLU(0.2), then one linear unit on
  the trunk output flattened in PyTorch's C-H-W order. The local critic sees the 128 x 128 hole
  box, the global one the 256 x 256 window; the local trunk output (128 x 8 x 8 at width 32) is
  the feature space of PICARD's feature-space minimum completion distance.

Parameters for grayscale at width 32: generator 3,596,162 (coarse 1,446,337, fine 2,149,825),
local critic 674,945, global critic 699,521. For RGB: generator 3,601,542 (coarse 1,448,227,
fine 2,153,315), local critic 676,545, global critic 701,121.

Pluralistic sampling: at inference PICARD switches on channel dropout (PyTorch's Dropout2d,
p = 0.5: whole channels zeroed per sample, the rest scaled by 2) after the activation of chosen
layers of a generator trained without dropout. Calling `Generator` with `sample=True` does so with
`ChannelDropout`, drawing from the 'dropout' rng collection; `sample=False` (training, plain
inpainting) has no dropout at all. Layers are named "coarse/<layer>" or "fine/<layer>";
`dropout_layers` selects them:

- "faithful" (default): the nine coarse layers conv2_downsample ... conv10_atrous, which is what
  the original runs: its configuration also lists 23 fine-network layers, but written as
  "self.<name>", which never matches a module name, so no fine-network dropout is active;
- "intended": those nine and the 23 listed fine layers (every fine layer but conv1, allconv17);
- "all": every layer that has a dropout module in the original: coarse conv2_downsample ...
  conv16 and the 23 fine layers (not the first and last convs of either network);
- a tuple of names from `DROPOUT_LAYERS["all"]`, e.g. ("coarse/conv3", "fine/pmconv1"), or ().

Importing PyTorch weights: conv weights (O, I, kh, kw) -> HWIO, `w.transpose(2, 3, 1, 0)`; the
critics' linear weight (1, n) -> its transpose, which is correct because the trunk output is
flattened channel-major. Parameter names follow the original's layer names.

`fast_conv_grad` is passed to every `Conv` (see `jaxad.models.layers`); it changes neither the
parameters nor the outputs.
"""

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxad.models.layers import Conv, torch_conv_bias_init, torch_conv_kernel_init
from jaxad.ops.contextual_attention import contextual_attention

_COARSE_FAITHFUL = (
    "conv2_downsample",
    "conv3",
    "conv4_downsample",
    "conv5",
    "conv6",
    "conv7_atrous",
    "conv8_atrous",
    "conv9_atrous",
    "conv10_atrous",
)
# Layers that have a dropout module in the original when a drop rate is set.
_COARSE_WITH_DROPOUT = (*_COARSE_FAITHFUL, *(f"conv{i}" for i in range(11, 17)))
_FINE_WITH_DROPOUT = (
    *_COARSE_FAITHFUL,
    "pmconv1",
    "pmconv2_downsample",
    "pmconv3",
    "pmconv4_downsample",
    "pmconv5",
    "pmconv6",
    "pmconv9",
    "pmconv10",
    "allconv11",
    "allconv12",
    "allconv13",
    "allconv14",
    "allconv15",
    "allconv16",
)


def _named(network: str, layers: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{network}/{layer}" for layer in layers)


DROPOUT_LAYERS: dict[str, tuple[str, ...]] = {
    "faithful": _named("coarse", _COARSE_FAITHFUL),
    "intended": _named("coarse", _COARSE_FAITHFUL) + _named("fine", _FINE_WITH_DROPOUT),
    "all": _named("coarse", _COARSE_WITH_DROPOUT) + _named("fine", _FINE_WITH_DROPOUT),
}


def resolve_dropout_layers(selection: str | Sequence[str]) -> frozenset[str]:
    """The "network/layer" names a `dropout_layers` value selects (a preset or a list)."""
    if isinstance(selection, str):
        if selection not in DROPOUT_LAYERS:
            raise ValueError(
                f"dropout_layers={selection!r}: use one of {sorted(DROPOUT_LAYERS)} or a tuple of "
                "layer names."
            )
        return frozenset(DROPOUT_LAYERS[selection])
    unknown = sorted(set(selection) - set(DROPOUT_LAYERS["all"]))
    if unknown:
        raise ValueError(
            f"no dropout in layers {unknown}; layers with dropout: {DROPOUT_LAYERS['all']}."
        )
    return frozenset(selection)


class ChannelDropout(nn.Module):
    """PyTorch's Dropout2d on NHWC: zeroes whole channels per sample, scales the rest by 1/(1-p).

    The keep mask has shape [N, 1, 1, C] and is drawn from the 'dropout' rng collection.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        shape = (x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1])
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype))


def upsample(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of NHWC `x`."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class _Network(nn.Module):
    """Shared attributes and the conv block of the two generator networks."""

    channels: int = 1
    width: int = 32
    drop_rate: float = 0.5
    dropped: frozenset[str] = frozenset()  # layer names in this network with active dropout
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    def block(
        self,
        x: jax.Array,
        name: str,
        features: int,
        *,
        sample: bool,
        kernel: int = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: Callable[[jax.Array], jax.Array] | None = nn.elu,
    ) -> jax.Array:
        """Conv (zero padding dilation * (kernel // 2)), activation, channel dropout if selected."""
        x = Conv(
            features,
            kernel,
            strides=stride,
            padding=dilation * (kernel // 2),
            kernel_dilation=dilation,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            name=name,
        )(x)
        if activation is not None:
            x = activation(x)
        if name in self.dropped:
            x = ChannelDropout(self.drop_rate, name=f"{name}_dropout")(x, deterministic=not sample)
        return x

    def dilated_stack(self, x: jax.Array, *, sample: bool) -> jax.Array:
        """The four 3x3 convs dilated 2, 4, 8 and 16 at 4 * width channels."""
        for i, rate in enumerate((2, 4, 8, 16)):
            x = self.block(x, f"conv{7 + i}_atrous", 4 * self.width, dilation=rate, sample=sample)
        return x

    def decoder(self, x: jax.Array, prefix: str, *, sample: bool) -> jax.Array:
        """Layers 11-17 (4w, 4w, up, 2w, 2w, up, w, w/2, `channels`), clamped to [-1, 1]."""
        w = self.width
        block = partial(self.block, sample=sample)
        x = block(x, f"{prefix}conv11", 4 * w)
        x = block(x, f"{prefix}conv12", 4 * w)
        x = block(upsample(x), f"{prefix}conv13", 2 * w)
        x = block(x, f"{prefix}conv14", 2 * w)
        x = block(upsample(x), f"{prefix}conv15", w)
        x = block(x, f"{prefix}conv16", w // 2)
        x = block(x, f"{prefix}conv17", self.channels, activation=None)
        return jnp.clip(x, -1.0, 1.0)


class CoarseGenerator(_Network):
    """[image, ones, mask] -> coarse completion in [-1, 1] (dilated-conv encoder-decoder)."""

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, sample: bool) -> jax.Array:
        w = self.width
        block = partial(self.block, sample=sample)
        h = jnp.concatenate([x, jnp.ones_like(mask), mask], axis=-1)
        h = block(h, "conv1", w, kernel=5)
        h = block(h, "conv2_downsample", 2 * w, stride=2)
        h = block(h, "conv3", 2 * w)
        h = block(h, "conv4_downsample", 4 * w, stride=2)
        h = block(h, "conv5", 4 * w)
        h = block(h, "conv6", 4 * w)
        h = self.dilated_stack(h, sample=sample)
        return self.decoder(h, "", sample=sample)


class FineGenerator(_Network):
    """Refines the coarse completion with a dilated-conv branch and a contextual-attention branch.

    `per_sample_mask` is `contextual_attention`'s: False (the original) matches every sample
    against the known region of the batch's first mask.
    """

    per_sample_mask: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, x_stage1: jax.Array, mask: jax.Array, *, sample: bool
    ) -> jax.Array:
        w = self.width
        block = partial(self.block, sample=sample)
        x1_inpaint = x_stage1 * mask + x * (1.0 - mask)
        inputs = jnp.concatenate([x1_inpaint, jnp.ones_like(mask), mask], axis=-1)

        h = block(inputs, "conv1", w, kernel=5)
        h = block(h, "conv2_downsample", w, stride=2)
        h = block(h, "conv3", 2 * w)
        h = block(h, "conv4_downsample", 2 * w, stride=2)
        h = block(h, "conv5", 4 * w)
        h = block(h, "conv6", 4 * w)
        hallucination = self.dilated_stack(h, sample=sample)

        a = block(inputs, "pmconv1", w, kernel=5)
        a = block(a, "pmconv2_downsample", w, stride=2)
        a = block(a, "pmconv3", 2 * w)
        a = block(a, "pmconv4_downsample", 4 * w, stride=2)
        a = block(a, "pmconv5", 4 * w)
        a = block(a, "pmconv6", 4 * w, activation=nn.relu)
        # In float32 whatever `dtype`: the patch scores are scaled by 10 before a softmax over
        # every background patch, and bfloat16 scores would blur the attention weights.
        f32 = a.astype(jnp.float32)
        attended = contextual_attention(
            f32, f32, mask.astype(jnp.float32), per_sample_mask=self.per_sample_mask
        )
        a = attended.astype(a.dtype)
        a = block(a, "pmconv9", 4 * w)
        a = block(a, "pmconv10", 4 * w)

        return self.decoder(jnp.concatenate([hallucination, a], axis=-1), "all", sample=sample)


class Generator(nn.Module):
    """(masked image, mask) -> (x_stage1, x_stage2), both [N, H, W, channels] in [-1, 1].

    `x` is [N, H, W, channels] in [-1, 1] with the hole already zeroed (x * (1 - mask)), `mask`
    is [N, H, W, 1], 1 in the hole; H and W must be multiples of 8 (PICARD uses 256). The
    completions are raw network outputs: `compose` pastes one into the known image.
    `sample=True` activates channel dropout in `dropout_layers` (see the module docstring) and
    needs a 'dropout' rng; vmap `apply` over keys to draw several completions.
    `per_sample_mask` selects the contextual attention's mask (False: the first sample's, as
    the original).
    """

    channels: int = 1
    width: int = 32
    drop_rate: float = 0.5
    dropout_layers: str | tuple[str, ...] = "faithful"
    per_sample_mask: bool = False
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, *, sample: bool
    ) -> tuple[jax.Array, jax.Array]:
        n, height, width, channels = x.shape
        if channels != self.channels or mask.shape != (n, height, width, 1):
            raise ValueError(
                f"expected x [N, H, W, {self.channels}] and mask [N, H, W, 1], got {x.shape} and "
                f"{mask.shape}."
            )
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}.")
        dropped = resolve_dropout_layers(self.dropout_layers)
        shared = dict(
            channels=self.channels,
            width=self.width,
            drop_rate=self.drop_rate,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
        )
        mask = mask.astype(x.dtype)
        x_stage1 = CoarseGenerator(dropped=_layers_of("coarse", dropped), name="coarse", **shared)(
            x, mask, sample=sample
        )
        x_stage2 = FineGenerator(
            dropped=_layers_of("fine", dropped),
            per_sample_mask=self.per_sample_mask,
            name="fine",
            **shared,
        )(x, x_stage1, mask, sample=sample)
        return x_stage1, x_stage2


def _layers_of(network: str, names: frozenset[str]) -> frozenset[str]:
    return frozenset(name.split("/", 1)[1] for name in names if name.startswith(f"{network}/"))


def compose(x: jax.Array, completion: jax.Array, mask: jax.Array) -> jax.Array:
    """The inpainted image: `completion` inside the hole (mask 1), `x` outside."""
    return x * (1.0 - mask) + completion * mask


class Critic(nn.Module):
    """WGAN critic: [N, S, S, channels] -> [N, 1] unbounded scores, S = `input_size`.

    `features` returns the trunk output (after the last LeakyReLU), [N, S/16, S/16, 4 * width].
    The linear layer reads it flattened channel-major (PyTorch's C-H-W order), so its kernel is
    the transpose of the original's weight; the input size is fixed by that layer.
    """

    input_size: int
    channels: int = 1
    width: int = 32
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    def setup(self) -> None:
        conv = partial(
            Conv,
            kernel_size=5,
            strides=2,
            padding=2,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
        )
        w = self.width
        self.conv1 = conv(w)
        self.conv2 = conv(2 * w)
        self.conv3 = conv(4 * w)
        self.conv4 = conv(4 * w)
        fan_in = 4 * w * (self.input_size // 16) ** 2
        self.linear = nn.Dense(
            1,
            dtype=self.dtype,
            kernel_init=torch_conv_kernel_init(),
            bias_init=torch_conv_bias_init(fan_in),
        )

    def features(self, x: jax.Array) -> jax.Array:
        """The trunk output, the feature space of PICARD's feature-space distance."""
        if x.shape[1:] != (self.input_size, self.input_size, self.channels):
            raise ValueError(
                f"{type(self).__name__} expects [N, {self.input_size}, {self.input_size}, "
                f"{self.channels}] inputs, got {x.shape}."
            )
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = nn.leaky_relu(conv(x), 0.2)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.features(x)
        return self.linear(h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1))


class LocalCritic(Critic):
    """The critic of the 128 x 128 hole box (the original's LocalDis)."""

    input_size: int = 128


class GlobalCritic(Critic):
    """The critic of the whole 256 x 256 window (the original's GlobalDis)."""

    input_size: int = 256
