"""The losses of the MOOD Deep Perceptual Autoencoder and of the SimCLR pre-training of its VGG19.

Relative perceptual L1 (one VGG19 layer f, e.g. "r32" or "r42"; features NHWC):

    L(x, x_rec) = mean_{h,w,c} |f(x) - f(x_rec)| / sg(mean_{h,w,c} |f(x)|)

The denominator comes from the real image only and carries no gradient. Training uses one
denominator per slice (`per="sample"`); the 3-D inference mode of the solution uses one per volume,
the mean over all its slices, channels and positions (`per="volume"`, slices on the leading axis
of the trailing four). The pixel map is the same quotient averaged over channels only, then resized
to the input size by bilinear interpolation with PyTorch's `align_corners=False` (half-pixel
centres, edge values clamped), which is what `jax.image.resize(method="linear", antialias=False)`
computes.

Unlike the DPA paper, the MOOD version neither standardises the features with ImageNet statistics
nor, by default, the VGG input (`vgg_input`): external data was not allowed.

MorphAEus's perceptual loss (`vgg_layers_mse`) is different: torchvision's ImageNet VGG19
(`jaxad.models.vgg_weights`), grey [0, 1] images repeated to three channels with no normalisation,
and the sum over relu1_1, relu2_1, relu3_1 and relu4_1 (`r11`, `r21`, `r31`, `r41`; torchvision's
`features` indices 1, 6, 11, 20) of the mean squared feature difference.

NT-Xent (SimCLR, temperature 0.5, cosine similarity): each of the 2N views is classified among the
2N - 1 others (itself excluded), the positive being its partner; cross-entropies are summed and
divided by 2N.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxad.models.vgg import VGG19Features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# MorphAEus's perceptual layers: relu1_1, relu2_1, relu3_1, relu4_1 (after torchvision's
# `features` modules 1, 6, 11, 20).
MORPHAEUS_VGG_LAYERS = ("r11", "r21", "r31", "r41")

# Axes reduced for one denominator: (h, w, c) per sample, (slices, h, w, c) per volume.
_TRAILING = {"sample": 3, "volume": 4}


def vgg_input(x: jax.Array, *, imagenet_normalize: bool = False) -> jax.Array:
    """NHWC images normalised to [-1, 1] (mean 0.5, std 0.5) -> the VGG input.

    One channel is repeated to three; x * 0.5 + 0.5 undoes the normalisation. A reconstruction is
    not clamped to [0, 1]. `imagenet_normalize` applies ImageNet's mean/std (off in MOOD, matching
    the SimCLR pre-training on unnormalised [0, 1] images).
    """
    if x.shape[-1] == 1:
        x = jnp.broadcast_to(x, (*x.shape[:-1], 3))
    elif x.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[-1]}.")
    x = x * 0.5 + 0.5
    if imagenet_normalize:
        mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
        std = jnp.asarray(IMAGENET_STD, x.dtype)
        x = (x - mean) / std
    return x


def _axes(per: str, ndim: int) -> tuple[int, ...]:
    if per not in _TRAILING:
        raise ValueError(f"per must be 'sample' or 'volume', got {per!r}.")
    n = _TRAILING[per]
    if ndim < n:
        raise ValueError(f"per={per!r} needs at least {n} dimensions, got {ndim}.")
    return tuple(range(ndim - n, ndim))


def relative_perceptual_l1(
    feat_real: jax.Array, feat_rec: jax.Array, *, per: str = "sample"
) -> jax.Array:
    """Relative L1 between features of real images and of their reconstructions.

    `per="sample"`: features [..., h, w, c], one value per sample ([...]); the training loss is
    their mean over the batch. `per="volume"`: features [..., slices, h, w, c], one value per
    volume, with one denominator per volume (the solution's 3-D mode).
    """
    axes = _axes(per, feat_real.ndim)
    denominator = jax.lax.stop_gradient(jnp.abs(feat_real).mean(axis=axes))
    return jnp.abs(feat_real - feat_rec).mean(axis=axes) / denominator


def resize_bilinear(maps: jax.Array, size: Sequence[int]) -> jax.Array:
    """[..., h, w] -> [..., H, W] as PyTorch's bilinear `interpolate(align_corners=False)`.

    Output pixel i samples the input at (i + 0.5) * h / H - 0.5, clamped to the edge pixels; with
    `antialias=False` jax's linear resize is this in both directions.
    """
    shape = (*maps.shape[:-2], *size)
    return jax.image.resize(maps, shape, method="linear", antialias=False)


def perceptual_map(
    feat_real: jax.Array,
    feat_rec: jax.Array,
    size: Sequence[int],
    *,
    per: str = "sample",
) -> jax.Array:
    """Pixelwise relative perceptual L1, [..., h, w, c] features -> [..., H, W] maps.

    mean_c |f(x) - f(x_rec)| divided by the denominator of `relative_perceptual_l1` (per sample
    or per volume), resized to `size` = (H, W) by `resize_bilinear`. Before the resize, its mean
    over positions (and slices, per volume) is `relative_perceptual_l1`.
    """
    axes = _axes(per, feat_real.ndim)
    denominator = jax.lax.stop_gradient(jnp.abs(feat_real).mean(axis=axes, keepdims=True))
    error = (jnp.abs(feat_real - feat_rec) / denominator).mean(axis=-1)
    return resize_bilinear(error, size)


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float = 0.5) -> jax.Array:
    """SimCLR's normalised-temperature cross-entropy of two views' projections [N, D] -> scalar.

    Projections are L2-normalised (cosine similarity); row k of z1 and row k of z2 are positives.
    """
    z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
    # PyTorch's cosine similarity guards the norms with eps = 1e-8.
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    n2 = z.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, logits)
    partner = (jnp.arange(n2) + n2 // 2) % n2
    positive = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
    return (jax.nn.logsumexp(logits, axis=1) - positive).sum() / n2


def vgg_layers_mse(
    vgg_params: Any,
    x: jax.Array,
    y: jax.Array,
    layers: Sequence[str] = MORPHAEUS_VGG_LAYERS,
    *,
    dtype: DTypeLike | None = None,
) -> jax.Array:
    """MorphAEus's perceptual loss of [B, H, W, 1] (or 3-channel) images in [0, 1] -> scalar.

    sum over `layers` of mean((f(x) - f(y))^2), the mean over batch, positions and channels, with
    f the `VGG19Features` activations (names as in `jaxad.models.vgg`) of `vgg_params`, e.g. from
    `jaxad.models.vgg_weights.vgg19_params_or_random`; their width is read from the params. One
    channel is repeated to three and nothing is normalised, as in MorphAEus. The network stops
    at the deepest requested layer; `dtype` is its computation dtype (features are compared in
    float32).

    Gradients flow to x and y. x and y go through the network separately, not as one batch:
    when y is data (a training target), autodiff then leaves its branch out of the backward
    pass, 15-25 % of a MorphAEus training step. The VGG is frozen: its params pass through
    `stop_gradient` here, and the caller keeps them out of the optimised parameters.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} and {y.shape}.")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected [B, H, W, 1] or [B, H, W, 3] images, got {x.shape}.")
    layers = tuple(layers)
    params = jax.lax.stop_gradient(vgg_params)
    net = VGG19Features(dtype=dtype, width=params["conv1_1"]["kernel"].shape[-1])

    def features(images: jax.Array) -> dict[str, jax.Array]:
        rgb = jnp.broadcast_to(images, (*images.shape[:-1], 3))
        return net.apply({"params": params}, rgb, layers)

    fx, fy = features(x), features(y)
    total = jnp.zeros((), jnp.float32)
    for name in layers:
        diff = fx[name].astype(jnp.float32) - fy[name].astype(jnp.float32)
        total = total + jnp.mean(jnp.square(diff))
    return total
