"""PICARD's networks as its original code names them (inpainter/model/networks.py).

- `gen`: `Generator` (`coarse_generator` and `fine_generator`, each layer a `Conv2dBlock` whose
  conv is `.conv`), the state dict the original saves as `gen_<iter>.pt`. Required: it inpaints.
- `localD`, `globalD`: `LocalDis` and `GlobalDis` (`dis_conv_module.conv1` ... `conv4`, then
  `linear`), saved together as `dis_<iter>.pt` = {'localD': ..., 'globalD': ...}, which a file
  holds as `localD.<key>` / `globalD.<key>` (see the README's one-liner). The local critic is
  required when a metric uses its features (`MCD_feature`, ...); the global critic only trains,
  so without one a run starts with a fresh one (logged).

Channel dropout has no parameters, so the drop rate and the dropout layers (config
`picard.drop_rate`, `picard.dropout_layers`) are free; the widths are `model.width` (ngf),
`model.critic_width` (ndf) and `data.channels` (input_dim), and the critics' linear layers fix
`picard.box_size` and `picard.window_size` (the original's 128 and 256).
"""

from __future__ import annotations

import ml_collections

from jaxad.convert.core import Network

# The layers of both networks in the original's order; jaxad's modules have the same names.
_STEM = ("conv1", "conv2_downsample", "conv3", "conv4_downsample", "conv5", "conv6")
_DILATED = ("conv7_atrous", "conv8_atrous", "conv9_atrous", "conv10_atrous")
_DECODER = ("11", "12", "13", "14", "15", "16", "17")
COARSE_LAYERS = (*_STEM, *_DILATED, *(f"conv{i}" for i in _DECODER))
FINE_LAYERS = (
    *_STEM,
    *_DILATED,
    *(f"pm{name}" for name in _STEM),
    "pmconv9",
    "pmconv10",
    *(f"allconv{i}" for i in _DECODER),
)
CRITIC_CONVS = ("conv1", "conv2", "conv3", "conv4")


def generator_table() -> dict[str, str]:
    """{`jaxad.models.picard.Generator` module: the original's module}, in the original's order."""
    table = {f"coarse/{name}": f"coarse_generator.{name}.conv" for name in COARSE_LAYERS}
    table.update({f"fine/{name}": f"fine_generator.{name}.conv" for name in FINE_LAYERS})
    return table


def critic_table() -> dict[str, str]:
    """{`jaxad.models.picard.Critic` module: the original's module} (LocalDis and GlobalDis)."""
    table = {name: f"dis_conv_module.{name}.conv" for name in CRITIC_CONVS}
    table["linear"] = "linear"
    return table


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    features = any(m.endswith("_feature") for m in config.picard.metrics)
    return (
        Network(
            name="gen",
            where={"params": ("g", "params")},
            table=generator_table(),
            widths="model.width, data.channels",
        ),
        Network(
            name="localD",
            where={"params": ("d_local", "params")},
            table=critic_table(),
            widths="model.critic_width, picard.box_size, data.channels",
            prefix="localD",
            required=features,
        ),
        Network(
            name="globalD",
            where={"params": ("d_global", "params")},
            table=critic_table(),
            widths="model.critic_width, picard.window_size, data.channels",
            prefix="globalD",
            required=False,
        ),
    )
