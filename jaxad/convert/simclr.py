"""The MOOD SimCLR model as the SimCLR fork names it (models/simclr.py, base model "vgg19").

- `simclr`: `ResNetSimCLR('vgg19', out_dim)`, the state dict the fork saves (`model.pth`):
  `features.0.<i>.*` (torchvision's VGG19 conv stack inside `features`, then the adaptive pool
  `features.1`) and the projection head `l1`, `l2` (Linear). Required.

Widths: `model.vgg_width` (64 for VGG19), `model.pool_size` (7), `model.hidden` (the fork's
2048) and `model.out_dim`.
"""

from __future__ import annotations

import ml_collections

from jaxad.convert.core import Network
from jaxad.models.torch_import import TORCHVISION_CONV_INDICES
from jaxad.models.vgg import CONV_NAMES


def simclr_table() -> dict[str, str]:
    """{`SimCLRModel` module: the original's module}, in the original's order."""
    table = {
        f"features/{name}": f"features.0.{index}"
        for name, index in zip(CONV_NAMES, TORCHVISION_CONV_INDICES, strict=True)
    }
    table.update({"l1": "l1", "l2": "l2"})
    return table


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    if config is not None and config.model.get("head_norm", "none") != "none":
        raise ValueError(
            f"model.head_norm={config.model.head_norm!r}: the SimCLR fork's head has no "
            "normalisation, so this run has no counterpart there (only model.head_norm='none')"
        )
    return (
        Network(
            name="simclr",
            where={"params": ("model", "params")},
            table=simclr_table(),
            widths="model.vgg_width, model.pool_size, model.hidden, model.out_dim",
        ),
    )
