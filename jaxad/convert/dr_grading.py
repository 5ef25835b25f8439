"""DR grading's network as LCL's grading code (PYCLS) names it: a torchvision ResNet whose `fc`
is Linear(features, 1).

- `resnet`: `conv1.weight`, `bn1.*`, `layer<s>.<b>.*` and `fc.*` (the one-output grading head).
  Required, fc included: a converted run scores with it.

Only `grading.mode='finetune'` converts: the linear probe standardises the features with a
batch norm the original has no counterpart of.
"""

from __future__ import annotations

import ml_collections

from jaxad.convert.core import Network
from jaxad.convert.lesioncl import resnet_table


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    if config.grading.mode != "finetune":
        raise ValueError(
            f"grading.mode={config.grading.mode!r}: only 'finetune' runs convert (the linear "
            "probe's feature normalisation has no counterpart in the original)."
        )
    depth, width = int(config.model.depth), int(config.model.width)
    return (
        Network(
            name="resnet",
            where={"params": ("net", "params"), "batch_stats": ("net", "batch_stats")},
            table={**resnet_table(depth, width, "backbone"), "fc": "fc"},
            widths="model.depth, model.width",
        ),
    )
