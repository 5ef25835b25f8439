r"""Anomaly maps and image scores for a folder of unlabelled images, with a trained run's model.

  python -m jaxad.predict --workdir=DIR --input=FOLDER --output=OUT

Loads the run with `jaxad.checkpoint.load_run` (its config and best validated state, else its
latest checkpoint: the state its final evaluation scored), scores every image under FOLDER
(recursively) with the same preprocessing and `method.score` as evaluation, and writes
`OUT/<relative path>.npy` (the map, resized to the image's own size), `OUT/<relative path>.png`
(an overlay) and `OUT/scores.csv` (path, score). A run with a `threshold` evaluator
(`jaxad.evals.threshold`, thresholds picked on its validation split) also gets a decision per
image (`anomalous`, score >= the image threshold), a `calibrated_score` in [0, 1] (0.5 at the
threshold) and `OUT/<relative path>_anomalous.png`, the pixels at or above the pixel threshold.
Runs evaluated at full resolution (an `anomaly_map` evaluator with `full_resolution=True`:
window-based methods such as PICARD) score each image at its own resolution instead, one at a
time, with `method.dense_map`, and the image score is the map's maximum. The run's evaluator
post-processing (`evals.model.smooth_sigma`, `normalize`, `image_score`, `top_k`,
`drop_largest`; `jaxad.evals.postprocess`) is applied as in evaluation, with the normal
statistics the evaluation saved (`eval/normal_maps.npz`).

The images are verified first (`jaxad.data.folder.check_images`): undecodable ones stop the
run, all named at once, or are left out with a warning when the run's `data.on_corrupt` is
'skip'; images far smaller than the model's input (under a quarter of `data.image_size`) are
named in a warning before scoring. Images smaller than the model's input are upsampled to it
and named in a warning; at full resolution, an image smaller than the method's window cannot be
scored and is skipped with a warning naming it (an error if no image can be scored). Progress
lines with an ETA follow a long run.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from absl import app, flags
from PIL import Image

from jaxad import cli, paths

PROG = "jaxad.predict"

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
    _check_images(src, config)
    limits = _thresholds(workdir, config)
    post = _post_settings(workdir, config)
    if full_resolution:
        rows = _predict_full_resolution(
            config, run.method, run.state, src, output_dir, post, limits
        )
    else:
        local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="batch_size")
        rows = _predict_batched(
            config, run.method, run.state, mesh, src, input_dir, output_dir, local_bs, post, limits
        )
    path = paths.join(output_dir, "scores.csv")
    text = io.StringIO(newline="")
    w = csv.writer(text)
    if limits is None:
        w.writerow(["path", "score"])
        w.writerows((p, f"{s:.6g}") for p, s in rows)
    else:
        from jaxad.evals import threshold

        t, low, high = (
            limits[k] for k in ("image_threshold", "image_score_min", "image_score_max")
        )
        w.writerow(["path", "score", "anomalous", "calibrated_score"])
        for p, s in rows:
            calibrated = float(threshold.calibrate(s, t, low, high))
            w.writerow([p, f"{s:.6g}", int(s >= t), f"{calibrated:.4f}"])
    paths.path(path).write_bytes(text.getvalue().encode())
    return path


def _thresholds(workdir: str, config) -> dict | None:
    """The thresholds the run's `threshold` evaluator saved in eval/metrics.json, or None."""
    import json

    from jaxad import writers
    from jaxad.evals import threshold

    path = paths.path(paths.join(workdir, "eval", "metrics.json"))
    if not any(e.type == "threshold" for e in (config.get("evals") or {}).values()):
        return None
    found = threshold.saved(config, json.loads(path.read_text())) if path.exists() else None
    if found is None:
        writers.logger.warning(
            "the run lists a 'threshold' evaluator but %s holds no thresholds: evaluate it "
            "(--config.mode=eval) to get decisions; writing scores only",
            path,
        )
    else:
        writers.log_info("thresholds from %s: %s", path, found)
    return found


def _save_decision(stem: str, amap: np.ndarray, limits: dict | None) -> None:
    """`<stem>_anomalous.png`: the pixels at or above the run's pixel threshold (white)."""
    if limits is None or not np.isfinite(limits["pixel_threshold"]):
        return
    mask = (amap >= limits["pixel_threshold"]).astype(np.uint8) * 255
    with paths.writable(stem + "_anomalous.png") as target:
        Image.fromarray(mask).save(target, format="PNG")


def _save_map(stem: str, amap: np.ndarray) -> None:
    """Writes `<stem>.npy` (a local path or `gs://`), creating its folder."""
    paths.makedirs(os.path.dirname(stem))
    with paths.writable(stem + ".npy") as target:
        np.save(target, amap)


def _check_hook(run, hook: str) -> None:
    """A one-line error for a run whose method makes no anomaly maps (e.g. pre-training)."""
    from jaxad import methods

    if not methods.provides(run.method, hook):
        raise ValueError(
            f"{run.workdir} is a run of method {run.config.method!r}, which has no {hook}: it "
            "makes no anomaly maps to predict with."
        )


def _check_images(src, config) -> None:
    """Verifies the input images before scoring: bad files per `data.on_corrupt` (left out of
    `src` when 'skip'), and a warning naming the images far smaller than the model's input."""
    from jaxad import writers
    from jaxad.data import folder

    what = f"input folder {src.root}"
    info = folder.check_images(src.paths, what=what)
    bad = {p for p in src.paths if info[str(p)].problem()}
    on_corrupt = getattr(config.data, "on_corrupt", "") or "fail"
    messages = [f"{p}: {info[str(p)].problem()}" for p in sorted(bad)]
    if not folder.apply_on_corrupt(messages, on_corrupt, what, total=len(src)):
        src.paths = [p for p in src.paths if p not in bad]
    min_side = folder.min_side_for(config.data.image_size)
    tiny = [p for p in src.paths if min(info[str(p)].size) < min_side]
    if tiny:
        sizes = [
            f"{p.relative_to(src.root)} ({'x'.join(map(str, info[str(p)].size))})" for p in tiny
        ]
        writers.logger.warning(
            "%d image(s) far smaller than the model's %d px input (under %d px a side): their "
            "maps and scores mean little: %s",
            len(tiny),
            config.data.image_size,
            min_side,
            ", ".join(sizes[:5]) + (", ..." if len(sizes) > 5 else ""),
        )


def _title(rel: str, score: float) -> str:
    return f"{rel} | score {score:.4g}"


def _predict_full_resolution(
    config, method, state, src, output_dir: str, post: dict, limits: dict | None = None
) -> list[tuple[str, float]]:
    """Maps at each image's own size, one image at a time (window-based methods)."""
    import jax

    from jaxad import viz, writers
    from jaxad.evals import core, postprocess

    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    window = int(getattr(method, "window", 0))  # Window-based methods cannot score less.
    rows, skipped = [], []
    progress = writers.CountProgress("scoring images", len(src))
    for i in range(len(src)):
        if i:
            progress.update(i)
        rec = src[i]
        image = core.unit_image(rec, config.data.channels)
        if min(image.shape[:2]) < window:
            writers.logger.warning(
                "skipped %s: %dx%d is smaller than the model's %dx%d window",
                rec["id"],
                image.shape[1],
                image.shape[0],
                window,
                window,
            )
            skipped.append(rec["id"])
            continue
        amap = np.asarray(method.dense_map(state, image, jax.random.fold_in(key, i)), np.float32)
        fov = rec.get("fov", np.ones(amap.shape, np.float32))
        amap, score = postprocess.apply(amap[None], [amap.max()], fov[None], **post)
        amap, score = amap[0], float(score[0])
        stem = paths.join(output_dir, os.path.splitext(rec["id"])[0])
        _save_map(stem, amap)
        _save_decision(stem, amap, limits)
        panel = viz.side_by_side(
            *core.downscale(image, amap)[:2], title=_title(rec["id"], score), colorbar=True
        )
        viz.save_png(stem + ".png", panel)
        rows.append((rec["id"], score))
    writers.log_info("scored %d images in %.1f s", len(rows), progress.elapsed())
    if skipped and not rows:
        raise ValueError(
            f"every image ({len(skipped)}, e.g. {skipped[0]}) is smaller than the model's "
            f"{window}x{window} window: nothing to score."
        )
    return rows


def _predict_batched(
    config,
    method,
    state,
    mesh,
    src,
    input_dir: str,
    output_dir: str,
    local_bs: int,
    post: dict,
    limits: dict | None = None,
) -> list[tuple[str, float]]:
    """Maps at `data.image_size` resized back to each image's size (the shared evaluation path)."""
    from jaxad import viz, writers
    from jaxad.data import pipeline, sources
    from jaxad.evals import core, postprocess

    batches = pipeline.source_batches(src, config.data, local_batch_size=local_bs)
    rows, small = [], []
    progress = writers.CountProgress("scoring images", len(src))
    for local, out in core.score_stream(method, state, mesh, batches, config.seed):
        maps, scores = postprocess.apply(out["map"], out["image_score"], local["fov"], **post)
        for j in np.flatnonzero(local["valid"]):
            rel = str(local["id"][j])
            full = paths.join(src.root, rel)
            with Image.open(paths.readable(full)) as im:
                size = im.size
            if min(size) < config.data.image_size:
                small.append(f"{rel} ({size[0]}x{size[1]})")
            amap = _resize_map(maps[j], size)
            stem = paths.join(output_dir, os.path.splitext(rel)[0])
            _save_map(stem, amap)
            _save_decision(stem, amap, limits)
            image = sources.read_image(full, config.data.channels)
            score = float(scores[j])
            panel = viz.side_by_side(image, amap, title=_title(rel, score), colorbar=True)
            viz.save_png(stem + ".png", panel)
            rows.append((rel, score))
        progress.update(len(rows))
    writers.log_info("scored %d images in %.1f s", len(rows), progress.elapsed())
    if small:
        writers.logger.warning(
            "%d image(s) smaller than the model's %d px input were upsampled to it, so their "
            "maps are coarser than the image: %s",
            len(small),
            config.data.image_size,
            ", ".join(small[:5]) + (", ..." if len(small) > 5 else ""),
        )
    return rows


def _post_settings(workdir: str, config) -> dict:
    """The keyword arguments of `postprocess.apply` that the run's evaluation used, with the
    normal statistics it saved when its maps are normalised."""
    from jaxad.evals import anomaly_map

    post = anomaly_map.settings(config)
    own = anomaly_map.own_evaluator(config)
    if own is None or anomaly_map.normalize(own) == "none":
        return post
    path = paths.join(workdir, "eval", anomaly_map.stats_file(own))
    if not paths.path(path).exists():
        raise ValueError(
            f"{path} is missing: the run normalises its maps by normal validation maps; "
            "evaluate it first (--config.mode=eval)"
        )
    with paths.path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
        post["normal"] = {k: np.asarray(z[k], np.float32) for k in ("mean", "scale")}
    return post


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height) = `size`."""
    img = Image.fromarray(np.asarray(amap, np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), np.float32)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.die(PROG, f"unexpected arguments {argv[1:]}; use --workdir, --input and --output.")
    if not (_WORKDIR.value and _INPUT.value and _OUTPUT.value):
        cli.die(PROG, "--workdir, --input and --output are needed.")
    from jaxad import writers

    writers.setup_logging()
    try:
        path = predict(_WORKDIR.value, _INPUT.value, _OUTPUT.value, _BATCH.value)
    except (OSError, ValueError) as e:
        cli.die(PROG, str(e))
    writers.log_info("wrote %s", path)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, PROG))
