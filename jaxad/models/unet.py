"""The U-Net generator of Lesion2Void: milesial's Pytorch-UNet with transposed-conv upsampling.

Four 2x max-pool stages with a double 3x3 conv block each, mirrored by four 2x2 stride-2 transposed
convs whose output is concatenated with the encoder feature of the same scale. The output is linear
(no activation) because the network predicts images in normalised intensity units.

At `width=64` the channels are 64, 128, 256, 512, 1024 and, with 3 output channels, the network has
31,043,651 parameters (batch-norm scale and bias included, running statistics excluded), as in the
paper. Smaller widths keep the same shape for CPU demos.

Modules are named as the original's (`inc`, `down1`-`down4`, `up1`-`up4`, `outc`; inside them
`conv`, `up`, `conv1`/`norm1`/`conv2`/`norm2`), so that its state dict maps onto the parameter
tree by a short rename table (`jaxad.convert.lesion2void`).

`fast_conv_grad` is passed down to every `Conv` and `ConvTranspose` (see `jaxad.models.layers`):
it selects how the kernel gradients are computed and changes neither the parameters nor the
outputs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxad.models.layers import BatchNorm, Conv, ConvTranspose, max_pool_2x2


class DoubleConv(nn.Module):
    """(3x3 conv with bias -> batch norm -> ReLU) twice; the convs keep the spatial size.

    Submodules `conv1`, `norm1`, `conv2`, `norm2` (the original's `double_conv.{0,1,3,4}`).
    """

    features: int
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i in (1, 2):
            x = Conv(
                self.features,
                3,
                padding=1,
                dtype=self.dtype,
                fast_conv_grad=self.fast_conv_grad,
                name=f"conv{i}",
            )(x)
            x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"norm{i}")(x)
            x = nn.relu(x)
        return x


class Down(nn.Module):
    """2x2 max-pool (odd sizes are floored, as in PyTorch) then `DoubleConv` (`conv`)."""

    features: int
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = max_pool_2x2(x)
        return DoubleConv(
            self.features, dtype=self.dtype, fast_conv_grad=self.fast_conv_grad, name="conv"
        )(x, train=train)


def pad_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Zero-pads NHWC `x` to `height` x `width`, the extra row/column going to the bottom/right.

    After a floored max-pool the upsampled map can be one pixel smaller than the skip connection;
    the original pads it in the same way (`F.pad` with diff // 2 before and the rest after).
    """
    dh, dw = height - x.shape[1], width - x.shape[2]
    return jnp.pad(x, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))


class Up(nn.Module):
    """2x upsampling by a transposed conv halving the channels (`up`), concat [skip, up], then
    `DoubleConv` (`conv`)."""

    features: int
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array, *, train: bool) -> jax.Array:
        x = ConvTranspose(
            x.shape[-1] // 2,
            2,
            strides=2,
            padding=0,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            name="up",
        )(x)
        x = pad_to(x, skip.shape[1], skip.shape[2])
        x = jnp.concatenate([skip, x], axis=-1)
        return DoubleConv(
            self.features, dtype=self.dtype, fast_conv_grad=self.fast_conv_grad, name="conv"
        )(x, train=train)


class UNet(nn.Module):
    """U-Net mapping NHWC images to `out_channels` maps of the same height and width.

    Any input size of at least 16 works: sizes not divisible by 16 are handled by floored pooling
    and `pad_to`, as in the original. `train` selects batch statistics (and updates `batch_stats`,
    which must then be mutable) or the running averages.
    """

    out_channels: int = 3
    width: int = 64
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        w, dtype, fast = self.width, self.dtype, self.fast_conv_grad
        x1 = DoubleConv(w, dtype=dtype, fast_conv_grad=fast, name="inc")(x, train=train)
        x2 = Down(2 * w, dtype=dtype, fast_conv_grad=fast, name="down1")(x1, train=train)
        x3 = Down(4 * w, dtype=dtype, fast_conv_grad=fast, name="down2")(x2, train=train)
        x4 = Down(8 * w, dtype=dtype, fast_conv_grad=fast, name="down3")(x3, train=train)
        x5 = Down(16 * w, dtype=dtype, fast_conv_grad=fast, name="down4")(x4, train=train)
        y = Up(8 * w, dtype=dtype, fast_conv_grad=fast, name="up1")(x5, x4, train=train)
        y = Up(4 * w, dtype=dtype, fast_conv_grad=fast, name="up2")(y, x3, train=train)
        y = Up(2 * w, dtype=dtype, fast_conv_grad=fast, name="up3")(y, x2, train=train)
        y = Up(w, dtype=dtype, fast_conv_grad=fast, name="up4")(y, x1, train=train)
        return Conv(self.out_channels, 1, dtype=dtype, fast_conv_grad=fast, name="outc")(y)
