"""The MOOD 2020 DPA's networks as the solution's code names them (mood/dpa).

- `enc`, `dec`: the stabilised networks of `Resnet9EncoderNetworks` /
  `Resnet9DecoderNetworks` at `max_image_res` (`get_net(stab, 128)`); the solution saves them
  together as `{'enc': ..., 'dec': ...}` (with its config and iteration), which a file holds as
  `enc.<key>` / `dec.<key>` (see the README's one-liner). Both are required.
- `vgg19`: the frozen perceptual network, the solution's `PretrainedVGG19FeatureExtractor`
  (`conv1_1.weight` ...). torchvision's names (`features.<i>.*`) and the SimCLR model's
  (`features.0.<i>.*`, whose projection head `l1` / `l2` is ignored) are read too. Required:
  it scores.

Widths: `model.nf` (= `inner_dims`), `model.latent_dim`, `data.image_size` (=
`max_image_res`, which sets the number of blocks) and `model.vgg_width` (64 for VGG19).
"""

from __future__ import annotations

import math
import re

import ml_collections

from jaxad.convert.core import Network
from jaxad.models.torch_import import TORCHVISION_CONV_INDICES
from jaxad.models.vgg import CONV_NAMES

_TORCHVISION = re.compile(r"^features\.(?:0\.)?(\d+)\.(weight|bias)$")
_CONV_OF_INDEX = dict(zip(TORCHVISION_CONV_INDICES, CONV_NAMES, strict=True))


def _block(table: dict, flax: str, torch: str, *, resample: bool) -> None:
    """A pre-activation residual block: `model` is (LeakyReLU, [pool or upsample], conv block,
    conv block) and `skipcon` ([pool or upsample], 1x1 conv block, only when widths differ)."""
    first, second = (2, 3) if resample else (1, 2)
    table[f"{flax}/conv1"] = f"{torch}.model.{first}.model.0"
    table[f"{flax}/conv2"] = f"{torch}.model.{second}.model.0"
    table[f"{flax}/skip"] = f"{torch}.skipcon.{'1.' if resample else ''}model.0"


def encoder_table(image_size: int = 128) -> dict[str, str]:
    """{`Encoder` module (under `encoder`): the original's module}, in the original's order."""
    stages = int(math.log2(image_size)) - 2
    table = {"from_image": f"model.preprocess_res_{image_size}.0.model.0"}
    _block(table, "res0", f"model.preprocess_res_{image_size}.1", resample=False)
    for k in range(1, stages + 1):
        _block(table, f"res{k}", f"model.res_{image_size >> (k - 1)}.0", resample=True)
    table["to_latent"] = "model.res_4.1.model.0"
    return table


def decoder_table(image_size: int = 128) -> dict[str, str]:
    """{`Decoder` module (under `decoder`): the original's module}, in the original's order."""
    stages = int(math.log2(image_size)) - 2
    table = {"from_latent": "model.res_4.1.model.0"}
    for k in range(1, stages + 1):
        _block(table, f"res{k}", f"model.res_{4 << k}.0", resample=True)
    table["to_image"] = f"model.postprocess_res_{image_size}.1.model.0"
    return table


def vgg19_aliases(key: str) -> str:
    """torchvision's `features.<i>.*` and SimCLR's `features.0.<i>.*` -> `conv<b>_<i>.*`."""
    match = _TORCHVISION.match(key)
    if match and int(match.group(1)) in _CONV_OF_INDEX:
        return f"{_CONV_OF_INDEX[int(match.group(1))]}.{match.group(2)}"
    return key


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    size = int(config.data.image_size)
    return (
        Network(
            name="enc",
            where={"params": ("ae", "params", "encoder")},
            table=encoder_table(size),
            widths="model.nf, model.latent_dim, data.image_size, data.channels",
            prefix="enc",
        ),
        Network(
            name="dec",
            where={"params": ("ae", "params", "decoder")},
            table=decoder_table(size),
            widths="model.nf, model.latent_dim, data.image_size, data.channels",
            prefix="dec",
        ),
        Network(
            name="vgg19",
            where={"params": ("vgg", "params")},
            table={name: name for name in CONV_NAMES},
            widths="model.vgg_width",
            ignore=r"^(l1|l2|classifier)\.",
            aliases=vgg19_aliases,
        ),
    )
