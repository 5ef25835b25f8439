"""Lesion-based contrastive learning's networks as LCL's code (and torchvision) names them.

- `backbone`: torchvision's ResNet (`model.depth`, `model.width`), the state dict LCL releases
  (`resnet50_128_08.pt`: `conv1.weight`, `bn1.*`, `layer<s>.<b>.*`, no `fc`), torchvision's
  ImageNet one (whose `fc` is ignored), or the `net.*` part of the state dict of LCL's own
  `ContrastiveModel` (which it pickles whole: `torch.save(model, ...)`; its unused 1000-way
  `net.fc` is ignored). Names map as `jaxad.models.resnet_weights` maps them. Required.
- `head`: the projection head, `head.0` and `head.2` (Linear) of that state dict (`model.hidden`,
  `model.head_features`). The released backbone has none: a run then starts with a fresh one
  (logged), which only contrastive training uses.

A file of the whole model feeds both (`--weights=FILE`); exported files hold each alone, as
`model.net` and `model.head` load them.
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


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    if config.model.get("head_norm", "none") != "none":
        raise ValueError(
            f"model.head_norm={config.model.head_norm!r}: LCL's head has no normalisation, so "
            "this run has no counterpart in the original (only model.head_norm='none')"
        )
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
            prefix="net",
            ignore=r"^fc\.",
        ),
        Network(
            name="head",
            where={"params": ("net", "params", "head")},
            table={"dense1": "0", "dense2": "2"},
            widths="model.head_hidden, model.head_features",
            prefix="head",
            required=False,
        ),
    )
