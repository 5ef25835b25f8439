"""torchvision's ResNet (v1.5) and the projection head of Lesion-based Contrastive Learning.

LCL pre-trains an ImageNet-initialised torchvision ResNet-50 with an MLP projection head, then
fine-tunes the ResNet on whole fundus photos, so the network must take torchvision's ImageNet
weights unchanged and give them back (`jaxad.models.resnet_weights`). The layout is therefore
torchvision's, v1.5:

- stem: 7x7 conv stride 2 padding 3 (no bias), BatchNorm, ReLU, 3x3 max-pool stride 2 padding 1;
- four stages of `BLOCKS[depth]` blocks with `width`, 2, 4 and 8 x `width` channels (x 4 at the
  output of a bottleneck); the first block of stages 2-4 halves the resolution. In a bottleneck
  (depth >= 50) the stride is on the 3x3 conv (v1.5; v1 put it on the first 1x1 conv); a basic
  block (depth 18, 34) has it on its first 3x3 conv. A block whose stride or width changes has a
  1x1 strided conv + BatchNorm shortcut (torchvision's `downsample`);
- global average pooling, then `fc` when `num_classes > 0`; with `num_classes = 0` the pooled
  feature (2048-d for ResNet-50 at width 64) is returned, as LCL's encoder returns it.

At 128 x 128 the last stage's map is 4 x 4 (stride 32). ResNet-50 has 23,508,032 parameters
without fc (25,557,032 with the 1000-way fc); `ProjectionHead` adds 4,458,624 (27,966,656).

Initialisation is torchvision's: kaiming-normal convs (fan_out, ReLU gain), BatchNorm scale 1
and bias 0 (`zero_init_residual=False`), PyTorch's default Linear for fc. BatchNorm uses
PyTorch's eps 1e-5 and momentum 0.1 (Flax momentum 0.9, `jaxad.models.layers.FoldedBatchNorm`).

Parameter names follow torchvision's state-dict keys one to one, with "_" for the "." before a
list index: module `conv1`, `bn1`, `layer{s}_{b}` (block b of stage s) holding `conv1`, `bn1`,
`conv2`, `bn2`, [`conv3`, `bn3`,] [`downsample_0` (conv), `downsample_1` (BN)], and `fc`. So
torchvision's `layer1.0.downsample.0.weight` is params["layer1_0"]["downsample_0"]["kernel"]
(OIHW -> HWIO), `bn1.weight` / `bias` are params["bn1"]["scale"] / ["bias"], `bn1.running_mean`
/ `running_var` are batch_stats["bn1"]["mean"] / ["var"], `fc.weight` [out, in] is
params["fc"]["kernel"] transposed.

BatchNorm in training (`train=True`, with `mutable=["batch_stats"]`) normalises with the
statistics of the whole batch it is given. Under `jax.jit` with the batch sharded over devices
(a `NamedSharding` along the data axis) the mean over the batch axis is computed over the global
batch, XLA inserting the cross-device reductions, so this is already "SyncBN" with no
`axis_name`. LCL itself trained on one GPU (its DataParallel runs had no SyncBN), i.e. with the
statistics of the whole batch, which is what this gives.

`width` other than 64 is for CPU demos and tests; torchvision's weights need 64. `fast_conv_grad`
is passed to every `Conv` (see `jaxad.models.layers`); it changes neither the parameters nor the
outputs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxad.models.dpa import kaiming_normal_fan_out
from jaxad.models.layers import BatchStatNorm, Conv, FoldedBatchNorm, max_pool_3x3_s2
from jaxad.models.vgg import TorchDense

# depth -> (bottleneck, blocks per stage), as torchvision's resnet18 ... resnet152.
BLOCKS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
EXPANSION = 4  # output channels of a bottleneck / its inner width

# torchvision's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: gain^2 = 2.
resnet_kernel_init = kaiming_normal_fan_out(2.0)


def feature_dim(depth: int = 50, width: int = 64) -> int:
    """Channels of the pooled feature: 8 x width, x 4 for bottleneck ResNets (2048 for R50)."""
    bottleneck, _ = _blocks(depth)
    return 8 * width * (EXPANSION if bottleneck else 1)


def _blocks(depth: int) -> tuple[bool, tuple[int, int, int, int]]:
    if depth not in BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}.")
    return BLOCKS[depth]


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x 4) residual block."""

    planes: int
    strides: int = 1
    bottleneck: bool = True
    downsample: bool = False
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = dict(
            use_bias=False,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            matmul_1x1=True,  # two of a bottleneck's three convs (jaxad.ops.conv.pointwise)
            kernel_init=resnet_kernel_init,
        )
        norm = dict(use_running_average=not train, dtype=self.dtype)
        if self.bottleneck:
            specs = [(self.planes, 1, 1, 0), (self.planes, 3, self.strides, 1)]
            specs.append((self.planes * EXPANSION, 1, 1, 0))
        else:
            specs = [(self.planes, 3, self.strides, 1), (self.planes, 3, 1, 1)]
        y = x
        for i, (features, kernel, strides, padding) in enumerate(specs, 1):
            y = Conv(features, kernel, strides, padding, name=f"conv{i}", **conv)(y)
            y = FoldedBatchNorm(name=f"bn{i}", **norm)(y)
            if i < len(specs):
                y = nn.relu(y)
        if self.downsample:
            x = Conv(specs[-1][0], 1, self.strides, name="downsample_0", **conv)(x)
            x = FoldedBatchNorm(name="downsample_1", **norm)(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """NHWC images -> pooled features [B, feature_dim] (`num_classes=0`) or logits.

    `train` selects batch statistics (and their running update, with `mutable=["batch_stats"]`)
    over the running ones. See the module docstring for the layout, names and initialisation.
    """

    depth: int = 50
    width: int = 64
    num_classes: int = 0
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bottleneck, blocks = _blocks(self.depth)
        conv = dict(
            use_bias=False,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            matmul_1x1=True,  # two of a bottleneck's three convs (jaxad.ops.conv.pointwise)
            kernel_init=resnet_kernel_init,
        )
        x = Conv(self.width, 7, 2, 3, name="conv1", **conv)(x)
        x = FoldedBatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        x = max_pool_3x3_s2(x)
        channels = self.width
        for stage, n_blocks in enumerate(blocks, 1):
            planes = self.width * 2 ** (stage - 1)
            out = planes * (EXPANSION if bottleneck else 1)
            for b in range(n_blocks):
                strides = 2 if stage > 1 and b == 0 else 1
                x = Block(
                    planes,
                    strides,
                    bottleneck=bottleneck,
                    downsample=strides != 1 or channels != out,
                    dtype=self.dtype,
                    fast_conv_grad=self.fast_conv_grad,
                    name=f"layer{stage}_{b}",
                )(x, train)
                channels = out
        x = x.mean(axis=(1, 2))
        if self.num_classes:
            x = TorchDense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x


class ProjectionHead(nn.Module):
    """LCL's projection head: Linear -> ReLU -> Linear (biases, no BN), then L2-normalised.

    2048 -> 2048 -> 128 with PyTorch's default Linear init (4,458,624 parameters). The output
    is float32 and unit-norm (PyTorch's `F.normalize`: divided by max(norm, 1e-12)), what the
    contrastive loss (`jaxad.ops.contrastive.supcon_loss`) expects. `norm='batch'` (not LCL's)
    normalises the hidden layer by the batch's statistics ("dense1_norm", `BatchStatNorm`), as
    SimCLR's head; `weights` [N] leaves padding rows out of them.
    """

    hidden: int = 2048
    features: int = 128
    dtype: DTypeLike | None = None
    norm: str = "none"  # 'none' (LCL's) or 'batch'

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
        x = TorchDense(self.hidden, dtype=self.dtype, name="dense1")(x)
        if self.norm == "batch":
            x = BatchStatNorm(name="dense1_norm")(x, weights)
        x = TorchDense(self.features, dtype=self.dtype, name="dense2")(nn.relu(x))
        x = x.astype(jnp.float32)
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
