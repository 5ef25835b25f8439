"""Lesion2Void's networks as its original code names them (unet/unet_parts.py, modules.py).

- `unet`: `UNet(n_channels, n_classes, bilinear=False)`, the state dict the original saves
  (`best_validation_weights.pt`, `epoch_<n>.pt`, without DataParallel's `module.`). It is the
  network that scores, so it is required.
- `patchgan`: `NLayerDiscriminator(input_nc)` (n_layers 3, batch norm). The original never
  saves it; without one, a run starts with a fresh critic (logged), which only training uses.

`model.width` and `model.disc_width` are the originals' 64 (`ndf`); other widths are checked
against the files' shapes.
"""

from __future__ import annotations

import ml_collections

from jaxad.convert.core import Network

# DoubleConv: (conv, batch norm, ReLU) twice in one nn.Sequential.
_DOUBLE_CONV = {"conv1": "0", "norm1": "1", "conv2": "3", "norm2": "4"}


def unet_table() -> dict[str, str]:
    """{`jaxad.models.unet.UNet` module: the original's module}, in the original's order."""
    blocks = {"inc": "inc"}
    blocks.update({f"down{k}/conv": f"down{k}.maxpool_conv.1" for k in range(1, 5)})
    table = {}
    for block, torch_block in blocks.items():
        for name, index in _DOUBLE_CONV.items():
            table[f"{block}/{name}"] = f"{torch_block}.double_conv.{index}"
    for k in range(1, 5):
        table[f"up{k}/up"] = f"up{k}.up"
        for name, index in _DOUBLE_CONV.items():
            table[f"up{k}/conv/{name}"] = f"up{k}.conv.double_conv.{index}"
    table["outc"] = "outc.conv"
    return table


def patchgan_table(n_layers: int = 3) -> dict[str, str]:
    """{`jaxad.models.patchgan.PatchGAN` module: the original's `model.<i>`}.

    The original's nn.Sequential holds (conv, LeakyReLU), then (conv, norm, LeakyReLU) per layer,
    then the last conv.
    """
    table = {"layer0/conv": "model.0"}
    for n in range(1, n_layers + 1):
        table[f"layer{n}/conv"] = f"model.{3 * n - 1}"
        table[f"layer{n}/norm"] = f"model.{3 * n}"
    table[f"layer{n_layers + 1}/conv"] = f"model.{3 * n_layers + 2}"
    return table


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    del config
    return (
        Network(
            name="unet",
            where={"params": ("g", "params"), "batch_stats": ("g", "batch_stats")},
            table=unet_table(),
            transposed=frozenset(f"up{k}/up" for k in range(1, 5)),
            widths="model.width, data.channels",
        ),
        Network(
            name="patchgan",
            where={"params": ("d", "params"), "batch_stats": ("d", "batch_stats")},
            table=patchgan_table(),
            widths="model.disc_width, data.channels",
            required=False,
        ),
    )
