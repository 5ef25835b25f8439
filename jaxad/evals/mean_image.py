"""Baseline: per-pixel distance from the mean training image (evaluator type `mean_image`).

The map is the L2 distance over channels between a test image and the mean of the normalised,
resized training images; the image score is the map's spatial mean (resized path) or its
maximum inside the field of view (full resolution, where the mean image is resized to each
image). It knows nothing but where normal images are usually bright or dark, so a method must
beat it to show it learnt more.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from PIL import Image

from jaxad import metrics as metrics_lib
from jaxad import parallel
from jaxad.data import pipeline
from jaxad.evals import core


def check(ecfg, config, method) -> None:
    del ecfg, config, method  # Needs the data only.


def mean_training_image(config: ml_collections.ConfigDict, local_batch_size: int) -> np.ndarray:
    """The mean normalised training image [S, S, C], accumulated in a stream over processes."""
    acc = metrics_lib.MeanImage()
    for b in pipeline.eval_batches(
        config.data, config.data.train_split, local_batch_size=local_batch_size
    ):
        core.check_stop()
        acc.update(b["image"][b["valid"]])
    total = core.sum_over_processes(np.asarray(acc.total, np.float64))
    count = core.sum_over_processes(np.asarray([acc.count], np.float64))
    return total / count[0]


def _resize(mean: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float [S, S, C] image to [height, width, C]."""
    if mean.shape[:2] == (height, width):
        return mean
    return np.stack(
        [
            np.asarray(
                Image.fromarray(mean[..., c].astype(np.float32), "F").resize(
                    (width, height), Image.BILINEAR
                )
            )
            for c in range(mean.shape[-1])
        ],
        axis=-1,
    )


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = core.eval_split(config, ecfg)
    del method, state
    local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    mean = mean_training_image(config, local_bs)
    acc = core.MapAccumulator(pixel_metrics=bool(config.eval.pixel_metrics))
    if ecfg.full_resolution:
        data_mean = np.asarray(config.data.mean, np.float32)
        data_std = np.asarray(config.data.std, np.float32)

        def map_of(rec, image, index):
            del rec, index
            normalised = (image - data_mean) / data_std
            ref = _resize(mean, *image.shape[:2])
            return metrics_lib.distance_to_mean(ref, normalised[None])[0][0]

        core.accumulate_full_resolution(config, split, map_of, acc)
    else:
        core.accumulate_batched(
            config,
            split,
            mesh,
            lambda local: metrics_lib.distance_to_mean(mean, local["image"]),
            acc,
        )
    return acc.finish(split)
