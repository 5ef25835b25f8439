"""Report pictures of what a method did to a few test images (evaluator type `panels`).

For methods with a `panels` hook (`jaxad.methods.base.Method.panels`): MorphAEus shows the
input, its pseudo-healthy prior, the prior warped onto the input, the deformation (a grid
warped the same way) and the residual. One PNG row per image, titled, with the ground-truth
outline where a mask exists, in `eval/overlays/<prefix>/`: `num` images (0:
`eval.num_overlays`), half anomalous and half normal when the split has both. No metrics.
"""

from __future__ import annotations

import re

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxad import methods, parallel, viz, writers
from jaxad.data import pipeline
from jaxad.evals import core
from jaxad.methods import base


def check(ecfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, method) -> None:
    if not base.provides(method, "panels"):
        raise ValueError(
            f"method {config.method!r} has no panels hook: remove the evaluator of type 'panels' "
            "from config.evals."
        )


def _agree(flag: bool) -> bool:
    """Process 0's decision, on every process (they must call the jitted hook together)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def row(names_and_pictures: dict, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One image's report row: the image, each picture (`*_map` as a heatmap), the truth."""
    pictures = [("image", image)]
    for name in sorted(names_and_pictures):
        picture = names_and_pictures[name]
        title = re.sub(r"^\d+ ", "", name)
        if name.endswith("_map"):
            pictures.append((title[: -len("_map")], viz.overlay(image, picture, vmin=0.0)))
        else:
            pictures.append((title, np.clip(picture, 0.0, 1.0)))
    if mask is not None:
        pictures.append(("truth", viz.outline(image, mask)))
    return viz.labelled_row(pictures)


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = core.eval_split(config, ecfg)
    num = int(ecfg.num or config.eval.num_overlays)
    picked = core.MapAccumulator(pixel_metrics=False, num_overlays=num)  # its half/half rule
    fn = methods.jit(method, method.panels, out_shardings=parallel.batch_sharded(mesh))
    fn = writers.timed_first_call(fn, "the panels function")
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    batches = pipeline.eval_batches(config.data, split, local_batch_size=local_bs)
    for i, local in enumerate(batches):
        core.check_stop()
        if _agree(len(picked.overlays) >= picked.num_overlays):
            break
        valid = np.flatnonzero(local["valid"])
        if not _agree(any(picked.wants_overlay(local["label"][j]) for j in valid)):
            continue
        out = fn(state, parallel.global_batch(mesh, local), jax.random.fold_in(key, i))
        out = {k: core.local_rows(v, mesh) for k, v in out.items()}
        for j in valid:
            if picked.wants_overlay(local["label"][j]):
                mask = local["mask"][j] if local["has_mask"][j] else None
                panel = row({k: v[j] for k, v in out.items()}, local["image_uint8"][j], mask)
                picked.overlays.append(
                    dict(id=str(local["id"][j]), label=int(local["label"][j]), panel=panel)
                )
    return core.Result({}, [], picked.overlays)
