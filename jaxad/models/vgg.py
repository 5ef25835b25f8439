"""VGG19's conv stack (the perceptual-loss network) and the SimCLR model that pre-trains it.

`VGG19Features` is torchvision's `vgg19().features` (configuration "E", no batch norm): 16 3x3
convs with zero padding 1, each followed by ReLU, and a 2x2 max-pool after blocks 1-5, with
20,024,384 parameters. Activations are named as in the MOOD solution: `c{b}{i}` is conv i of block
b, `r{b}{i}` the ReLU after it and `p{b}` the pool ending block b. The perceptual loss uses `r32`
(256 channels, 1/4 of the input size) or `r42` (512 channels, 1/8). The forward pass stops after
the last requested activation. The init is torchvision's: kaiming-normal (fan_out, ReLU gain)
kernels and zero biases; in MOOD the weights come from SimCLR instead of ImageNet (external data
was not allowed), see `jaxad.models.torch_import`.

`SimCLRModel` is the SimCLR fork's model with base "vgg19": the conv stack, torchvision's
`AdaptiveAvgPool2d((7, 7))`, a flatten in PyTorch's C-H-W order (so that torch weights import
unchanged), and the projection head Linear(25088, 2048) -> ReLU -> Linear(2048, 256) with
PyTorch's default Linear init (51,906,816 parameters). At the 96x96 pre-training size the conv
stack ends at 3x3, which the adaptive pool maps to 7x7 by overlapping bins.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax.typing import DTypeLike

from jaxad.models.dpa import kaiming_normal_fan_out
from jaxad.models.layers import (
    BatchStatNorm,
    Conv,
    max_pool_2x2,
    torch_conv_bias_init,
    torch_conv_kernel_init,
)

# Output channels of the convs of each block.
VGG19_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)
CONV_NAMES: tuple[str, ...] = tuple(
    f"conv{b}_{i}" for b, block in enumerate(VGG19_BLOCKS, 1) for i in range(1, len(block) + 1)
)
LAYER_NAMES: tuple[str, ...] = tuple(
    name
    for b, block in enumerate(VGG19_BLOCKS, 1)
    for names in (
        *((f"c{b}{i}", f"r{b}{i}") for i in range(1, len(block) + 1)),
        (f"p{b}",),
    )
    for name in names
)


class VGG19Features(nn.Module):
    """NHWC images -> {name: activation} for the requested `layers` (see the module docstring).

    Inputs are what the network was trained on: [0, 1] RGB for the SimCLR weights (see
    `jaxad.ops.perceptual.vgg_input`). During `init` every conv is built, whatever is requested,
    so the parameter tree is always complete.
    """

    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False
    # Channels of the first block (64 in VGG19); the others scale with it. Smaller widths are
    # for CPU demos and tests only: pretrained weights need 64.
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, layers: Sequence[str] = ("r42",)) -> dict[str, jax.Array]:
        unknown = set(layers) - set(LAYER_NAMES)
        if unknown or not layers:
            raise ValueError(f"unknown or no VGG19 layers {sorted(unknown)}; use {LAYER_NAMES}.")
        last = max(LAYER_NAMES.index(name) for name in layers)
        if self.is_initializing():
            last = len(LAYER_NAMES) - 1
        out: dict[str, jax.Array] = {}

        def keep(name: str, value: jax.Array) -> bool:
            if name in layers:
                out[name] = value
            return LAYER_NAMES.index(name) < last

        for b, block in enumerate(VGG19_BLOCKS, 1):
            for i, features in enumerate(block, 1):
                x = Conv(
                    features * self.width // 64,
                    3,
                    padding=1,
                    dtype=self.dtype,
                    fast_conv_grad=self.fast_conv_grad,
                    kernel_init=kaiming_normal_fan_out(2.0),
                    bias_init=nn.initializers.zeros,
                    name=f"conv{b}_{i}",
                )(x)
                if not keep(f"c{b}{i}", x):
                    return out
                x = nn.relu(x)
                if not keep(f"r{b}{i}", x):
                    return out
            x = max_pool_2x2(x)
            if not keep(f"p{b}", x):
                return out
        return out


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging weights of PyTorch's adaptive average pool along one axis.

    Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)); bins overlap when in < out.
    """
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool2d(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """PyTorch's `adaptive_avg_pool2d` of NHWC `x` (separable, hence two small products)."""
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], output_size[0]), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], output_size[1]), x.dtype)
    return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x)


class TorchDense(nn.Module):
    """Linear layer with PyTorch's default init: kernel [in, out] and bias both U(+-1/sqrt(in)).

    A PyTorch `Linear.weight` [out, in] is this kernel transposed.
    """

    features: int
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        # torch_conv_kernel_init reads the fan-in of an [in, out] kernel as `in`.
        kernel = self.param(
            "kernel", torch_conv_kernel_init(), (fan_in, self.features), self.param_dtype
        )
        bias = self.param("bias", torch_conv_bias_init(fan_in), (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.dot(x, kernel) + bias


class SimCLRModel(nn.Module):
    """[B, H, W, 3] views in [0, 1] -> (pooled features [B, 25088], projections [B, out_dim]).

    Parameters: "features" (a `VGG19Features`), "l1" and "l2" (the head, as the fork names it).
    The NT-Xent loss (`jaxad.ops.perceptual.nt_xent`) normalises the projections itself.
    `head_norm='batch'` (not the fork's) normalises the hidden layer by the batch's statistics,
    as the SimCLR paper's head: "l1_norm" (`BatchStatNorm`); `weights` [B] leaves padding rows out
    of those statistics.
    """

    out_dim: int = 256
    hidden: int = 2048
    pool_size: int = 7
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False
    width: int = 64  # `VGG19Features.width`
    head_norm: str = "none"  # 'none' (the fork) or 'batch'

    @nn.compact
    def __call__(
        self, x: jax.Array, weights: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        vgg = VGG19Features(
            dtype=self.dtype, fast_conv_grad=self.fast_conv_grad, width=self.width, name="features"
        )
        f = adaptive_avg_pool2d(vgg(x, ("p5",))["p5"], (self.pool_size, self.pool_size))
        h = f.transpose(0, 3, 1, 2).reshape(f.shape[0], -1)  # PyTorch's flatten of N, C, H, W
        z = TorchDense(self.hidden, dtype=self.dtype, name="l1")(h)
        if self.head_norm == "batch":
            z = BatchStatNorm(name="l1_norm")(z, weights)
        z = TorchDense(self.out_dim, dtype=self.dtype, name="l2")(nn.relu(z))
        return h, z
