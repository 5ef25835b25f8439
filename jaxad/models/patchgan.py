"""The PatchGAN discriminator of pix2pix (NLayerDiscriminator with batch norm).

A stack of 4x4 convs with padding 1 whose output is one unbounded score per overlapping input patch
(70x70 receptive field for `n_layers=3`); there is no sigmoid because the adversarial loss is
least-squares. A 224x224 input gives a 26x26x1 map (224 -> 112 -> 56 -> 28 -> 27 -> 26). At
`width=64` the network has 2,765,633 parameters (batch-norm scale and bias included).
`fast_conv_grad` is passed to every `Conv` (see `jaxad.models.layers`).
"""

from functools import partial

import flax.linen as nn
import jax
from jax.typing import DTypeLike

from jaxad.models.layers import BatchNorm, Conv

_PAD = ((1, 1), (1, 1))


class PatchGAN(nn.Module):
    """NHWC images -> [B, h, w, 1] patch scores.

    Convs followed by batch norm have no bias (the norm would cancel it); the first layer has no
    norm. `train` selects batch statistics and updates `batch_stats`, which must then be mutable.
    """

    width: int = 64
    n_layers: int = 3
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = partial(Conv, padding=_PAD, dtype=self.dtype, fast_conv_grad=self.fast_conv_grad)
        x = conv(self.width, 4, strides=2)(x)
        x = nn.leaky_relu(x, 0.2)
        for n in range(1, self.n_layers + 1):
            # Widths double up to 8x; the last of these layers keeps the resolution (stride 1).
            strides = 2 if n < self.n_layers else 1
            features = self.width * min(2**n, 8)
            x = conv(features, 4, strides=strides, use_bias=False)(x)
            x = BatchNorm(use_running_average=not train, dtype=self.dtype)(x)
            x = nn.leaky_relu(x, 0.2)
        return conv(1, 4, strides=1)(x)
