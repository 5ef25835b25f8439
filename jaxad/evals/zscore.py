"""Baseline: the absolute intensity z-score of each pixel (evaluator type `zscore`).

The map is |x - m| / s for each pixel's intensity x (unit scale, mean over channels), with m
and s the mean and standard deviation of the training images' pixels inside the field of view
(up to `max_train_images` images per process, at their own resolution); the image score is the
map's maximum inside the field of view. It flags whatever is unusually bright or dark, which
bright masses on a darker background would already reveal.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxad.data import sources
from jaxad.evals import core


def check(ecfg, config, method) -> None:
    del config, method
    if int(ecfg.max_train_images) < 1:
        raise ValueError(
            f"max_train_images of a zscore evaluator must be >= 1, got {ecfg.max_train_images}"
        )


def intensity_stats(config: ml_collections.ConfigDict, max_images: int) -> tuple[float, float]:
    """Mean and std of the training images' pixels (unit scale, inside the FOV).

    Reads up to `max_images` training images of this process's shard; hosts add their sums.
    """
    src = sources.get_source(config.data, config.data.train_split)
    n, total, squares = 0.0, 0.0, 0.0
    for i in list(range(jax.process_index(), len(src), jax.process_count()))[:max_images]:
        core.check_stop()
        rec = src[i]
        x = core.unit_image(rec, config.data.channels).mean(axis=-1, dtype=np.float64)
        x = x[rec["fov"] > 0]
        n, total, squares = n + x.size, total + x.sum(), squares + np.square(x).sum()
    n, total, squares = core.sum_over_processes(np.array([n, total, squares]))
    if n == 0:
        raise ValueError(
            f"split {config.data.train_split!r} has no training pixels for the z-score"
        )
    mean = total / n
    return float(mean), float(np.sqrt(max(squares / n - mean**2, 1e-12)))


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = core.eval_split(config, ecfg)
    del method, state
    mean, std = intensity_stats(config, int(ecfg.max_train_images))
    acc = core.MapAccumulator(pixel_metrics=bool(config.eval.pixel_metrics))
    if ecfg.full_resolution:

        def map_of(rec, image, index):
            del rec, index
            return np.abs(image.mean(axis=-1) - mean) / std

        core.accumulate_full_resolution(config, split, map_of, acc)
    else:
        data_mean = np.asarray(config.data.mean, np.float32)
        data_std = np.asarray(config.data.std, np.float32)

        def maps_of(local):
            unit = local["image"] * data_std + data_mean
            maps = np.abs(unit.mean(axis=-1) - mean) / std
            fov = local["fov"] > 0.5
            scores = np.array(
                [m[f].max() if f.any() else np.nan for m, f in zip(maps, fov, strict=True)]
            )
            return maps.astype(np.float32), scores

        core.accumulate_batched(config, split, mesh, maps_of, acc)
    return acc.finish(split)
