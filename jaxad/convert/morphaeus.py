"""MorphAEus's network as its original code names it (model_zoo/morphaeus.py, deformer.py and
convolutional_autoencoders.py).

- `morphaeus`: `MorphAEus(inshape, in_channels=1, channels=widths, out_ch=1, strides=2...,
  norm='batch', act='swish', deconv_mode='stride', nr_ref_channels=3, bidir=True)`. The trainer
  saves `best_model.pt` / `latest_model.pt` as {'model_weights': state dict,
  'optimizer_weights': ..., 'epoch': ...}; a file holds the state dict as `model_weights.<key>`
  (see the README's one-liner) or bare. Names: `encoder.conv__encode_<i>` / `conv__batch_<i>`,
  `decoder.conv__decode_<i>` / `conv__batch_<i>` / `conv__decode_final`, and
  `deformer.deformerNN.ref__refine_<i>` (transposed convs) / `ref__batch_<i>`,
  `deformer.flow`. The deformer's two sampling grids (`deformer.transformer.grid`,
  `deformer.integrate.transformer.grid`, [1, 2, H, W] pixel coordinates) are buffers fixed by
  the image size: ignored on import, written on export. With `morphaeus.deform=False` it is the
  baseline `ConvAutoEncoder` ("MorphAEus-woPLM"), which has the same `encoder` / `decoder`.

jaxad's modules count from 1 (`encoder/conv1`, `bn1`), the original's from 0. Widths:
`model.widths` (channels), `data.image_size` (inshape, 128 in the paper). A plain autoencoder
trained alongside (`morphaeus.train_plain`) and the perceptual loss's VGG19 are no part of the
original's file: the first starts fresh (logged), the second is read from
`morphaeus.vgg_weights` as in any run.
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from jaxad.convert.core import Network
from jaxad.models.morphaeus import DEFORMER_LEVELS

GRIDS = ("deformer.integrate.transformer.grid", "deformer.transformer.grid")


def morphaeus_table(levels: int, deform: bool = True) -> dict[str, str]:
    """{`jaxad.models.morphaeus.MorphAEus` module: the original's module}, in its order."""
    table = {}
    for i in range(levels):
        table[f"encoder/conv{i + 1}"] = f"encoder.conv__encode_{i}"
        table[f"encoder/bn{i + 1}"] = f"encoder.conv__batch_{i}"
    for i in range(levels):
        table[f"decoder/conv{i + 1}"] = f"decoder.conv__decode_{i}"
        table[f"decoder/bn{i + 1}"] = f"decoder.conv__batch_{i}"
    table["decoder/final"] = "decoder.conv__decode_final"
    if deform:
        for i in range(DEFORMER_LEVELS):
            table[f"deformer/refine{i + 1}"] = f"deformer.deformerNN.ref__refine_{i}"
            table[f"deformer/bn{i + 1}"] = f"deformer.deformerNN.ref__batch_{i}"
        table["deformer/flow"] = "deformer.flow"
    return table


def sampling_grids(size: int) -> dict[str, np.ndarray]:
    """The deformer's grid buffers at `size` x `size`: [1, 2, H, W], row then column index."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    grid = np.stack([rows, cols])[None].astype(np.float32)
    return dict.fromkeys(GRIDS, grid)


def not_converted(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if config.morphaeus.train_plain:
        return ("plain (the plain autoencoder trained alongside, not in the original's file)",)
    return ()


def networks(config: ml_collections.ConfigDict) -> tuple[Network, ...]:
    deform = bool(config.morphaeus.deform)
    size = int(config.data.image_size)
    return (
        Network(
            name="morphaeus",
            where={"params": ("net", "params"), "batch_stats": ("net", "batch_stats")},
            table=morphaeus_table(len(config.model.widths), deform),
            transposed=frozenset(f"deformer/refine{i + 1}" for i in range(DEFORMER_LEVELS)),
            widths="model.widths, data.image_size",
            prefix="model_weights",
            constants=functools.partial(sampling_grids, size) if deform else None,
        ),
    )
