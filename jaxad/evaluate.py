"""One evaluation path for every method: scores a split, computes metrics, writes reports.

Writes `workdir/eval/metrics.json`, `workdir/eval/scores.csv` (one row per image) and a few
heatmap overlays. The trivial baseline (per-pixel distance from the mean training image) is
computed in the same pass so every report shows what the method adds over it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxad import metrics as metrics_lib
from jaxad import parallel, viz, writers
from jaxad.data import pipeline


def make_score_fn(method, mesh: Mesh):
    """Jits `method.score` with the batch and its outputs sharded along the data axis."""
    return jax.jit(method.score, out_shardings=parallel.batch_sharded(mesh))


def score_stream(
    method, state, mesh: Mesh, batches: Iterable[dict], seed: int
) -> Iterator[tuple[dict, dict]]:
    """Yields (local batch, this process's rows of the method's outputs as numpy) per batch.

    The key of batch i is `fold_in(seed key, i)`, so stochastic scores are reproducible.
    """
    score_fn = make_score_fn(method, mesh)
    key = jax.random.fold_in(jax.random.key(seed), 2)
    for i, local in enumerate(batches):
        out = score_fn(state, parallel.global_batch(mesh, local), jax.random.fold_in(key, i))
        out = {k: _local_rows(v, mesh) for k, v in out.items()}
        out["image_score"] = np.asarray(method.image_scores(out), np.float64)
        yield local, out


def _local_rows(x: jax.Array, mesh: Mesh) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(
        multihost_utils.global_array_to_host_local_array(
            x, mesh, jax.sharding.PartitionSpec("data")
        )
    )


def _gather(x: np.ndarray) -> np.ndarray:
    """Concatenates equal-shaped per-process arrays along axis 0 (identity on one process)."""
    if jax.process_count() == 1:
        return x
    return np.concatenate(list(multihost_utils.process_allgather(x)), axis=0)


def mean_training_image(config: ml_collections.ConfigDict, local_batch_size: int) -> np.ndarray:
    """The baseline's reference: the mean normalised training image, accumulated in a stream."""
    acc = metrics_lib.MeanImage()
    for b in pipeline.eval_batches(
        config.data, config.data.train_split, local_batch_size=local_batch_size
    ):
        acc.update(b["image"][b["valid"]])
    total = _gather(np.asarray(acc.total, np.float64)[None])
    count = _gather(np.asarray([acc.count], np.float64))
    return total.sum(0) / count.sum()


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    method,
    state: Any,
    mesh: Mesh,
    *,
    step: int,
    split: str | None = None,
) -> dict:
    """Scores `split` (default `config.data.test_split`), writes the reports, returns metrics.

    Image metrics use every labelled image. Pixel metrics (when `eval.pixel_metrics` and some
    image has a mask) use the images whose ground truth is known (with a mask, or normal) and
    only pixels inside the field of view, since pixels outside it carry no anatomy to judge.
    With `eval.dense`, images are scored one by one at full resolution instead
    (`jaxad.evaluate_dense`).
    """
    if config.eval.get("dense", False):
        from jaxad import evaluate_dense  # Full-resolution, window-based methods only.

        return evaluate_dense.evaluate_dense(config, workdir, method, state, step=step, split=split)
    split = split or config.data.test_split
    out_dir = os.path.join(workdir, "eval")
    local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    mean_image = mean_training_image(config, local_bs) if config.eval.baseline else None
    per_image = {k: [] for k in ("valid", "label", "grade", "has_mask", "score", "baseline")}
    per_pixel = {k: [] for k in ("map", "baseline", "mask", "fov")}
    rows, overlays = [], []
    batches = pipeline.eval_batches(config.data, split, local_batch_size=local_bs)
    for local, out in score_stream(method, state, mesh, batches, config.seed):
        for k in ("valid", "label", "grade", "has_mask"):
            per_image[k].append(np.asarray(local[k]))
        per_image["score"].append(out["image_score"])
        if mean_image is not None:
            base_map, base_score = metrics_lib.distance_to_mean(mean_image, local["image"])
            per_image["baseline"].append(base_score)
        if config.eval.pixel_metrics:
            per_pixel["map"].append(out["map"].astype(np.float16))
            per_pixel["mask"].append(local["mask"] > 0.5)
            per_pixel["fov"].append(local["fov"] > 0.5)
            if mean_image is not None:
                per_pixel["baseline"].append(base_map.astype(np.float16))
        for j in np.flatnonzero(local["valid"]):
            rows.append((str(local["id"][j]), int(local["label"][j]), int(local["grade"][j])))
        overlays.extend(_overlay_candidates(local, out, config.eval.num_overlays, overlays))
    local_cols = {k: np.concatenate(v) for k, v in per_image.items() if v}
    g = {k: _gather(v) for k, v in local_cols.items()}
    pixels = {k: _gather(np.concatenate(v)) for k, v in per_pixel.items() if v}
    results: dict[str, Any] = {"step": int(step), "split": split}
    results["num_images"] = int(g["valid"].sum())
    results.update(_metrics(g, g["score"], pixels.get("map"), pixels))
    if mean_image is not None:
        base = _metrics(g, g["baseline"], pixels.get("baseline"), pixels)
        results.update({f"baseline/{k}": v for k, v in base.items()})
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    _write_scores(out_dir, rows, local_cols)
    _write_overlays(out_dir, overlays)
    writers.log_info("eval at step %d: %s", step, _summary(results))
    return results


def _metrics(g: dict, scores: np.ndarray, maps: np.ndarray | None, pixels: dict) -> dict:
    """Image metrics, per-grade AUROCs and pixel metrics of one set of scores and maps."""
    valid = g["valid"].astype(bool)
    labelled = valid & (g["label"] >= 0)
    out = dict(metrics_lib.image_metrics(scores[labelled], g["label"][labelled]))
    graded = valid & (g["grade"] >= 0)
    if graded.any():
        out.update(metrics_lib.grade_aurocs(scores[graded], g["grade"][graded]))
    known = valid & (g["has_mask"].astype(bool) | (g["label"] == 0))
    if maps is not None and (valid & g["has_mask"].astype(bool) & (g["label"] > 0)).any():
        out.update(
            metrics_lib.pixel_metrics(
                maps[known].astype(np.float32), pixels["mask"][known], valid=pixels["fov"][known]
            )
        )
    return out


def _overlay_candidates(local, out, limit: int, taken: list) -> list:
    """Up to `limit` images for overlays, half anomalous and half normal when both exist."""
    if jax.process_index() != 0:
        return []
    picked = []
    for j in np.flatnonzero(local["valid"]):
        want_abnormal = sum(t["label"] > 0 for t in taken + picked) < limit // 2
        want_normal = sum(t["label"] <= 0 for t in taken + picked) < limit - limit // 2
        label = int(local["label"][j])
        if (label > 0 and want_abnormal) or (label <= 0 and want_normal):
            picked.append(
                dict(
                    id=str(local["id"][j]),
                    label=label,
                    image=local["image_uint8"][j],
                    map=out["map"][j],
                    mask=local["mask"][j] if local["has_mask"][j] else None,
                )
            )
    return picked


def _write_scores(out_dir: str, rows: list, cols: dict) -> None:
    """`scores.csv` (one process) or `scores-<p>-of-<n>.csv` (each process its own rows)."""
    name = "scores.csv"
    if jax.process_count() > 1:
        name = f"scores-{jax.process_index()}-of-{jax.process_count()}.csv"
    os.makedirs(out_dir, exist_ok=True)
    valid = cols["valid"].astype(bool)
    scores = cols["score"][valid]
    base = cols["baseline"][valid] if "baseline" in cols else None
    with open(os.path.join(out_dir, name), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["path", "label", "grade", "score"] + (["baseline_score"] if base is not None else [])
        )
        for i, (path, label, grade) in enumerate(rows):
            extra = [f"{base[i]:.6g}"] if base is not None else []
            w.writerow([path, label, grade, f"{scores[i]:.6g}"] + extra)


def _write_overlays(out_dir: str, items: list) -> None:
    if not items:
        return
    d = os.path.join(out_dir, "overlays")
    os.makedirs(d, exist_ok=True)
    for it in items:
        stem = os.path.splitext(it["id"])[0].replace("/", "_").replace(os.sep, "_")
        panel = viz.side_by_side(it["image"], it["map"], it["mask"])
        viz.save_png(os.path.join(d, f"{stem}_label{it['label']}.png"), panel)


def _summary(results: dict) -> str:
    keys = ("image_auroc", "pixel_auroc", "baseline/image_auroc", "baseline/pixel_auroc")
    return ", ".join(f"{k} {results[k]:.4f}" for k in keys if k in results)
