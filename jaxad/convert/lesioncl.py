"""Lesion-based contrastive learning's backbone as torchvision names it.

- `backbone`: torchvision's ResNet (`model.depth`, `model.width`), the state dict LCL releases
  (`resnet50_128_08.pt`: `conv1.weight`, `bn1.*`, `layer<s>.<b>.*`, no `fc`) or torchvision's
  ImageNet one (whose `fc` is ignored). Names map as `jaxad.models.resnet_weights` maps them.

The projection head is not in LCL's released backbone: a converted run starts with a fresh one
(logged), which only contrastive training uses; exported files hold the backbone only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from jaxad.convert.core import Network
from jaxad.models import resnet_weights
from jaxad.models.resnet import ResNet


@functools.lru_cache(maxsize=8)
def resnet_table(depth: int, width: int, prefix: str = "") -> dict[str, str]:
    """{`ResNet` module (under `prefix`): torchvision's module}, in torchvision's order."""
    shapes = jax.eval_shape(
        ResNet(depth=depth, width=width).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
    modules = dict.fromkeys(p[:-1] for p in traverse_util.flatten_dict(shapes["params"]))
    # Every module has a `weight` (conv kernel, batch-norm scale or fc kernel) in torchvision.
    names = {
        resnet_weights.torch_key("params", (*m, "kernel"))[: -len(".weight")]: m for m in modules
    }
    order = [
        k[: -len(".weight")]
        for k in resnet_weights.torchvision_shapes(depth, width=width)
        if k.endswith(".weight")
    ]
    return {"/".join((prefix, *names[n]) if prefix else names[n]): n for n in order}


def not_converted(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    del config
    return ("head (the projection head, not part of LCL's released backbone)",)


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    depth, width = int(config.model.depth), int(config.model.width)
    return (
        Network(
            name="backbone",
            where={
                "params": ("net", "params", "backbone"),
                "batch_stats": ("net", "batch_stats", "backbone"),
            },
            table=resnet_table(depth, width),
            widths="model.depth, model.width",
            ignore=r"^fc\.",
        ),
    )
