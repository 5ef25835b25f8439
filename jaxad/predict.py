r"""Anomaly maps and image scores for a folder of unlabelled images, with a trained run's model.

  python -m jaxad.predict --workdir=DIR --input=FOLDER --output=OUT

Loads the run with `jaxad.checkpoint.load_run` (its config and best validated state, else its
latest checkpoint: the state its final evaluation scored), scores every image under FOLDER
(recursively) with the same preprocessing and `method.score` as evaluation, and writes
`OUT/<relative path>.npy` (the map, resized to the image's own size), `OUT/<relative path>.png`
(an overlay) and `OUT/scores.csv` (path, score). Runs evaluated at full resolution (an
`anomaly_map` evaluator with `full_resolution=True`: window-based methods such as PICARD)
score each image at its own resolution instead, one at a time, with `method.dense_map`, and
the image score is the map's maximum.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a finished jaxad training run.")
_INPUT = flags.DEFINE_string("input", None, "Folder of images to score.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for maps, overlays and scores.csv.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch size (0: config.eval.batch_size).")


def predict(workdir: str, input_dir: str, output_dir: str, batch_size: int = 0) -> str:
    """Scores every image under `input_dir`; returns the path of the written scores.csv."""
    from jaxad import checkpoint, parallel
    from jaxad.data import sources
    from jaxad.evals import core

    mesh = parallel.make_mesh()
    run = checkpoint.load_run(workdir, mesh=mesh)
    config = run.config
    if batch_size:
        config.eval.batch_size = batch_size
    full_resolution = core.uses_full_resolution(config)
    _check_hook(run, "dense_map" if full_resolution else "score")
    src = sources.ImageListSource(input_dir, channels=config.data.channels)
    if full_resolution:
        rows = _predict_full_resolution(config, run.method, run.state, src, output_dir)
    else:
        local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="batch_size")
        rows = _predict_batched(
            config, run.method, run.state, mesh, src, input_dir, output_dir, local_bs
        )
    path = os.path.join(output_dir, "scores.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "score"])
        w.writerows((p, f"{s:.6g}") for p, s in rows)
    return path


def _check_hook(run, hook: str) -> None:
    """A one-line error for a run whose method makes no anomaly maps (e.g. pre-training)."""
    from jaxad import methods

    if not methods.provides(run.method, hook):
        raise ValueError(
            f"{run.workdir} is a run of method {run.config.method!r}, which has no {hook}: it "
            "makes no anomaly maps to predict with."
        )


def _predict_full_resolution(
    config, method, state, src, output_dir: str
) -> list[tuple[str, float]]:
    """Maps at each image's own size, one image at a time (window-based methods)."""
    import jax

    from jaxad import viz
    from jaxad.evals import core

    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    rows = []
    for i in range(len(src)):
        rec = src[i]
        image = core.unit_image(rec, config.data.channels)
        amap = np.asarray(method.dense_map(state, image, jax.random.fold_in(key, i)), np.float32)
        stem = os.path.join(output_dir, os.path.splitext(rec["id"])[0])
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        np.save(stem + ".npy", amap)
        viz.save_png(stem + ".png", viz.side_by_side(*core.downscale(image, amap)[:2]))
        rows.append((rec["id"], float(amap.max())))
    return rows


def _predict_batched(
    config, method, state, mesh, src, input_dir: str, output_dir: str, local_bs: int
) -> list[tuple[str, float]]:
    """Maps at `data.image_size` resized back to each image's size (the shared evaluation path)."""
    from jaxad import viz
    from jaxad.data import pipeline, sources
    from jaxad.evals import core

    batches = pipeline.source_batches(src, config.data, local_batch_size=local_bs)
    rows = []
    for local, out in core.score_stream(method, state, mesh, batches, config.seed):
        for j in np.flatnonzero(local["valid"]):
            rel = str(local["id"][j])
            full = os.path.join(input_dir, rel)
            with Image.open(full) as im:
                size = im.size
            amap = _resize_map(out["map"][j], size)
            stem = os.path.join(output_dir, os.path.splitext(rel)[0])
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            np.save(stem + ".npy", amap)
            image = sources.read_image(full, config.data.channels)
            viz.save_png(stem + ".png", viz.side_by_side(image, amap))
            rows.append((rel, float(out["image_score"][j])))
    return rows


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height) = `size`."""
    img = Image.fromarray(np.asarray(amap, np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), np.float32)


def main(argv: list[str]) -> None:
    del argv
    if not (_WORKDIR.value and _INPUT.value and _OUTPUT.value):
        print("jaxad.predict: error: --workdir, --input and --output are needed.", file=sys.stderr)
        sys.exit(2)
    from jaxad import writers

    writers.setup_logging()
    try:
        path = predict(_WORKDIR.value, _INPUT.value, _OUTPUT.value, _BATCH.value)
    except (OSError, ValueError) as e:
        print(f"jaxad.predict: error: {e}", file=sys.stderr)
        sys.exit(2)
    writers.log_info("wrote %s", path)


if __name__ == "__main__":
    app.run(main)
