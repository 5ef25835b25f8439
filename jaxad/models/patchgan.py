"""The PatchGAN discriminator of pix2pix (NLayerDiscriminator with batch norm).

A stack of 4x4 convs with padding 1 whose output is one unbounded score per overlapping input patch
(70x70 receptive field for `n_layers=3`); there is no sigmoid because the adversarial loss is
least-squares. A 224x224 input gives a 26x26x1 map (224 -> 112 -> 56 -> 28 -> 27 -> 26). At
`width=64` the network has 2,765,633 parameters (batch-norm scale and bias included).
Layers are named `layer0`... with a `conv` and, in the middle layers, a `norm`, so that the tree
reads in the order of the original's `model.<i>` modules (`jaxad.convert.lesion2void` maps
them). `fast_conv_grad` is passed to every `Conv` (see `jaxad.models.layers`).
"""

from functools import partial

import flax.linen as nn
import jax
from jax.typing import DTypeLike

from jaxad.models.layers import BatchNorm, Conv

_PAD = ((1, 1), (1, 1))


class PatchLayer(nn.Module):
    """A 4x4 conv with padding 1 (`conv`), followed by batch norm (`norm`) when `norm` is set.

    A conv followed by batch norm has no bias (the norm would cancel it).
    """

    features: int
    strides: int
    norm: bool
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = Conv(
            self.features,
            4,
            strides=self.strides,
            padding=_PAD,
            use_bias=not self.norm,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            name="conv",
        )(x)
        if self.norm:
            x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="norm")(x)
        return x


class PatchGAN(nn.Module):
    """NHWC images -> [B, h, w, 1] patch scores.

    Layers `layer0` ... `layer{n_layers + 1}`, in the order of the original's `model.*` modules:
    `layer0` has no norm, `layer1`-`layer{n_layers}` have one, the last maps to one channel.
    `train` selects batch statistics and updates `batch_stats`, which must then be mutable.
    """

    width: int = 64
    n_layers: int = 3
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        layer = partial(PatchLayer, dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        x = layer(self.width, 2, norm=False, name="layer0")(x, train=train)
        x = nn.leaky_relu(x, 0.2)
        for n in range(1, self.n_layers + 1):
            # Widths double up to 8x; the last of these layers keeps the resolution (stride 1).
            strides = 2 if n < self.n_layers else 1
            features = self.width * min(2**n, 8)
            x = layer(features, strides, norm=True, name=f"layer{n}")(x, train=train)
            x = nn.leaky_relu(x, 0.2)
        return layer(1, 1, norm=False, name=f"layer{self.n_layers + 1}")(x, train=train)
