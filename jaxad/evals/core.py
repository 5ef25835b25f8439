"""The shared core of every evaluator: scoring a split, streaming metrics, one report writer.

Every evaluator (`jaxad/evals/<type>.py`) turns a state into a `Result` (metrics, per-image
rows, overlay panels); `jaxad.evals.run` prefixes and merges them and `write_reports` writes
one `metrics.json` and one `scores.csv` (process 0 only, after every process's images have
been gathered). Anomaly-map evaluators share `MapAccumulator` and one of the two scoring
drivers: `accumulate_batched` (the split resized to `data.image_size`, in global batches) and
`accumulate_full_resolution` (image by image at each image's own size). Every loop over a
split calls `check_stop` once per batch or image, so that a run told to stop (SIGTERM) leaves
an evaluation at once (`Interrupted`) instead of finishing it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from PIL import Image

from jaxad import methods, parallel, paths, viz, writers
from jaxad import metrics as metrics_lib
from jaxad.data import pipeline, sources, transforms

# Overlays of full-resolution maps are downscaled so that their long side is at most this.
OVERLAY_SIDE = 1024


class Interrupted(Exception):
    """The run was told to stop (SIGTERM) during an evaluation, which was left unfinished."""


_stop_requested: Callable[[], bool] | None = None


@contextlib.contextmanager
def stoppable(stop_requested: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block, `check_stop` raises `Interrupted` once `stop_requested()` is true."""
    global _stop_requested
    previous, _stop_requested = _stop_requested, stop_requested
    try:
        yield
    finally:
        _stop_requested = previous


def check_stop() -> None:
    """Raises `Interrupted` if the run was told to stop; evaluators call it once per batch.

    Only one process sets the flag (a multi-process run stops at its preemption sync point,
    between training steps), so processes never leave an evaluation out of step.
    """
    if _stop_requested is not None and _stop_requested():
        raise Interrupted()


def uses_full_resolution(config: ml_collections.ConfigDict) -> bool:
    """Whether the run's anomaly maps are made at each image's own size (`dense_map`)."""
    return any(e.type == "anomaly_map" and bool(e.full_resolution) for e in config.evals.values())


def make_score_fn(method, mesh: Mesh):
    """Jits `method.score` with the batch and its outputs sharded along the data axis.

    One jitted function per method object and mesh, kept on the method: every evaluator of a
    run (and the normal maps of `normalize='normal'`) then shares one compilation, where a new
    `jax.jit` of the bound method would compile it again.
    """
    cache = vars(method).setdefault("_score_fns", {})
    if mesh not in cache:
        score = methods.jit(method, method.score, out_shardings=parallel.batch_sharded(mesh))
        cache[mesh] = writers.timed_first_call(score, "the scoring function")
    return cache[mesh]


def batch_scorer(method, state, mesh: Mesh, seed: int) -> Callable[[dict], dict]:
    """`method.score` of successive local batches, as numpy rows of this process.

    The key of the i-th batch is `fold_in(seed key, i)`, so stochastic scores are
    reproducible; `image_score` is added (the method's host-side image scores).
    """
    score_fn = make_score_fn(method, mesh)
    key = jax.random.fold_in(jax.random.key(seed), 2)
    counter = itertools.count()

    def scores_of(local: dict) -> dict:
        batch = parallel.global_batch(mesh, local)
        out = score_fn(state, batch, jax.random.fold_in(key, next(counter)))
        out = {k: local_rows(v, mesh) for k, v in out.items()}
        out["image_score"] = np.asarray(method.image_scores(out), np.float64)
        return out

    return scores_of


def score_stream(
    method, state, mesh: Mesh, batches: Iterable[dict], seed: int
) -> Iterator[tuple[dict, dict]]:
    """Yields (local batch, `batch_scorer` outputs) per batch, e.g. for prediction."""
    scores_of = batch_scorer(method, state, mesh, seed)
    for local in batches:
        yield local, scores_of(local)


def local_rows(x: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(
        multihost_utils.global_array_to_host_local_array(
            x, mesh, jax.sharding.PartitionSpec("data")
        )
    )


def unit_image(rec: dict[str, Any], channels: int) -> np.ndarray:
    """A record's image as float32 [H, W, channels] in [0, 1], at its own resolution."""
    image = transforms.to_channels(rec["image"], channels)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return transforms.unit_float(image)


def downscale(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None):
    """Image, map and mask shrunk (bilinear) so that the long side is at most 1024, for PNGs."""
    h, w = amap.shape
    factor = max(h, w) / OVERLAY_SIDE
    if factor <= 1:
        return image, amap, mask
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = np.stack(
        [
            np.asarray(Image.fromarray(image[..., c], "F").resize(size))
            for c in range(image.shape[-1])
        ],
        axis=-1,
    )
    amap = np.asarray(Image.fromarray(amap.astype(np.float32), "F").resize(size))
    if mask is not None:
        mask = np.asarray(Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(size)) > 127
    return small, amap, mask


# --- multi-host ------------------------------------------------------------------------------


def sum_over_processes(x: np.ndarray) -> np.ndarray:
    """Element-wise sum of an equal-shaped array over every process (identity on one)."""
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's rows (JSON-able dicts), in process order; identity on one process."""
    if jax.process_count() == 1:
        return rows
    return [row for part in parallel.gather_json(rows) for row in part]


# --- metrics of anomaly maps -----------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """What one evaluator produced: metrics (unprefixed), per-image rows and overlay panels.

    Rows hold `id`, `label`, `grade`, `has_mask` and the evaluator's own columns (for maps:
    `score`, and `pixel_auroc`, `pixel_auprc` for images with both pixel classes).
    """

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    overlays: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Arrays a later step needs (e.g. `jaxad.predict`): file name -> {key: array}, written to
    # the evaluation folder as .npz (read back with allow_pickle=False).
    files: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)


class MapAccumulator:
    """Streams anomaly maps into image and pixel metrics, in constant memory.

    Image level: the image scores of every labelled image (`image_auroc`, `image_auprc`,
    `f1_max`, and Lesion2Void's per-grade AUROCs where grades exist). Pixel level (when
    `pixel_metrics`), over the images whose ground truth is known (a mask, or a normal image,
    whose pixels are all negative), inside the field of view: pooled over every pixel
    (`pixel_auroc`, `pixel_auprc`, `best_dice`), exact for maps rounded to float16
    (`metrics.Float16Histogram`), and averaged per image over the images that have both
    classes (`pixel_auroc_per_image`, `pixel_auprc_per_image`). Processes add their own images;
    `finish` combines them, so a multi-host evaluation gives the numbers of one host.
    """

    def __init__(self, *, pixel_metrics: bool, num_overlays: int = 0):
        self.pixel_metrics = pixel_metrics
        self.num_overlays = num_overlays if jax.process_index() == 0 else 0
        self.hist = metrics_lib.Float16Histogram()
        self.rows: list[dict[str, Any]] = []
        self.overlays: list[dict[str, Any]] = []

    def add(
        self,
        *,
        id: str,
        label: int,
        grade: int,
        has_mask: bool,
        score: float,
        amap: np.ndarray,
        mask: np.ndarray,
        fov: np.ndarray,
    ) -> None:
        """Adds one image: its map [H, W], mask and FOV (> 0.5 is true) and image score."""
        row = {
            "id": str(id),
            "label": int(label),
            "grade": int(grade),
            "has_mask": bool(has_mask),
            "score": float(score),
        }
        mask, fov = np.asarray(mask) > 0.5, np.asarray(fov) > 0.5
        if self.pixel_metrics and (has_mask or label == 0):
            self.hist.update(amap, mask, valid=fov)
            if (mask & fov).any() and (~mask & fov).any():
                own = metrics_lib.Float16Histogram().update(amap, mask, valid=fov).metrics()
                row["pixel_auroc"] = own["pixel_auroc"]
                row["pixel_auprc"] = own["pixel_auprc"]
        self.rows.append(row)

    def add_overlay(
        self, id: str, label: int, image, amap, mask, *, score: float = np.nan, fov=None
    ) -> None:
        """Keeps one panel: image, map, mask (None: no ground truth), score and field of view."""
        self.overlays.append(
            dict(
                id=str(id), label=int(label), image=image, map=amap, mask=mask, score=score, fov=fov
            )
        )

    def wants_overlay(self, label: int) -> bool:
        """Up to `num_overlays` panels, half anomalous and half normal when both exist."""
        abnormal = sum(o["label"] > 0 for o in self.overlays)
        normal = len(self.overlays) - abnormal
        if label > 0:
            return abnormal < self.num_overlays // 2
        return normal < self.num_overlays - self.num_overlays // 2

    def finish(self, split: str) -> Result:
        """Combines every process's images; every process gets the same metrics."""
        self.hist.counts = sum_over_processes(self.hist.counts)
        rows = gather_rows(self.rows)
        out: dict[str, Any] = {"split": split, "num_images": len(rows)}
        out.update(image_metrics(rows))
        if self.pixel_metrics:
            out.update(self.hist.metrics())
            for name in ("pixel_auroc", "pixel_auprc"):
                own = [r[name] for r in rows if name in r]
                out[f"{name}_per_image"] = float(np.mean(own)) if own else float("nan")
        return Result(out, rows, self.overlays)


def image_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Image AUROC/AUPRC/F1 of rows with a label and a finite score, and per-grade AUROCs."""
    labelled = [r for r in rows if r["label"] >= 0 and np.isfinite(r["score"])]
    scores = np.array([r["score"] for r in labelled], np.float64)
    labels = np.array([r["label"] for r in labelled], np.int64)
    out = dict(metrics_lib.image_metrics(scores, labels))
    graded = [(r["score"], r["grade"]) for r in labelled if r["grade"] >= 0]
    if graded:
        s, g = zip(*graded, strict=True)
        out.update(metrics_lib.grade_aurocs(np.array(s), np.array(g)))
    return out


# --- the two ways of scoring a split ---------------------------------------------------------


def eval_split(config: ml_collections.ConfigDict, ecfg: ml_collections.ConfigDict) -> str:
    """The split an evaluator scores: its own `split`, else `eval.split`, else the test split.

    `"a+b"` reads several splits as one (e.g. normal test images with one anomalous set).
    """
    return ecfg.split or config.eval.split or config.data.test_split


def accumulate_batched(
    config: ml_collections.ConfigDict,
    split: str,
    mesh: Mesh,
    maps_of: Callable[[dict], tuple[np.ndarray, np.ndarray]],
    acc: MapAccumulator,
) -> MapAccumulator:
    """Scores the split resized to `data.image_size`, in padded global batches.

    `maps_of(local_batch)` gives this process's maps [B, S, S] and image scores [B]; every
    process calls it for the same number of batches (collectives inside stay in lock-step).
    """
    local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    src = sources.get_source(config.data, split)
    progress = writers.CountProgress(f"scoring split {split!r}", local_count(len(src)))
    done = 0
    for local in pipeline.source_batches(src, config.data, local_batch_size=local_bs):
        check_stop()
        maps, scores = maps_of(local)
        for j in np.flatnonzero(local["valid"]):
            acc.add(
                id=local["id"][j],
                label=local["label"][j],
                grade=local["grade"][j],
                has_mask=local["has_mask"][j],
                score=scores[j],
                amap=maps[j],
                mask=local["mask"][j],
                fov=local["fov"][j],
            )
            if acc.wants_overlay(local["label"][j]):
                mask = local["mask"][j] if local["has_mask"][j] else None
                acc.add_overlay(
                    local["id"][j],
                    local["label"][j],
                    local["image_uint8"][j],
                    maps[j],
                    mask,
                    score=float(scores[j]),
                    fov=local["fov"][j],
                )
        done += int(np.sum(local["valid"]))
        progress.update(done)
    log_scored(progress, done, split)
    return acc


def local_count(n: int) -> int:
    """How many of `n` records this process reads (records `process_index::process_count`)."""
    return len(range(jax.process_index(), n, jax.process_count()))


def log_scored(progress: writers.CountProgress, done: int, split: str) -> None:
    writers.log_info("scored %d images of split %r in %.1f s", done, split, progress.elapsed())


def accumulate_full_resolution(
    config: ml_collections.ConfigDict,
    split: str,
    map_of: Callable[[dict, np.ndarray, int], np.ndarray],
    acc: MapAccumulator,
    score_of: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> MapAccumulator:
    """Scores the split image by image at each image's own resolution.

    `map_of(record, unit_image, index)` gives the map [H, W] of one image (float32 [H, W, C]
    in [0, 1]); the image score is `score_of(map, fov)`, by default the map's maximum inside
    the field of view (a small lesion shows in its peak, not in the image mean). Processes take
    images `index::process_count`; memory stays at one image and its map.
    """
    src = sources.get_source(config.data, split)
    progress = writers.CountProgress(f"scoring split {split!r}", local_count(len(src)))
    done = 0
    for i in range(jax.process_index(), len(src), jax.process_count()):
        check_stop()
        rec = src[i]
        image = unit_image(rec, config.data.channels)
        amap = np.asarray(map_of(rec, image, i), np.float32)
        if amap.shape != image.shape[:2]:
            raise ValueError(
                f"the anomaly map has shape {amap.shape} for an image of {image.shape}"
            )
        fov = rec["fov"] > 0
        if score_of is not None:
            score = float(score_of(amap, fov))
        else:
            score = float(amap[fov].max()) if fov.any() else float("nan")
        acc.add(
            id=rec["id"],
            label=rec["label"],
            grade=rec["grade"],
            has_mask=rec["has_mask"],
            score=score,
            amap=amap,
            mask=rec["mask"],
            fov=fov,
        )
        if acc.wants_overlay(rec["label"]):
            mask = rec["mask"] if rec["has_mask"] else None
            small_fov = downscale(image, amap, fov)[2]
            acc.add_overlay(
                rec["id"], rec["label"], *downscale(image, amap, mask), score=score, fov=small_fov
            )
        done += 1
        progress.update(done)
    log_scored(progress, done, split)
    return acc


# --- reports ---------------------------------------------------------------------------------

ROW_KEYS = ("id", "label", "grade", "has_mask")


def write_reports(out_dir: str, results: dict, tables: list[tuple[str, Result]]) -> None:
    """Writes `metrics.json`, `scores.csv`, `overlays/` and each result's `files` (process 0
    only).

    `scores.csv` has one row per image of the first evaluator's order (images only another
    evaluator scored follow), columns `id, label, grade, has_mask` and then each evaluator's
    own columns under its prefix (`score`, `baseline/score`, `pixel_auroc`, ...); a cell is
    empty where an evaluator has no value.
    """
    if jax.process_index() != 0:
        return
    paths.makedirs(out_dir)
    with paths.path(paths.join(out_dir, "metrics.json")).open("w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    merged: dict[str, dict[str, Any]] = {}
    columns: list[str] = list(ROW_KEYS)
    for prefix, result in tables:
        for row in result.rows:
            target = merged.setdefault(row["id"], {k: row[k] for k in ROW_KEYS})
            for k, v in row.items():
                if k in ROW_KEYS:
                    continue
                target[prefix + k] = v
                if prefix + k not in columns:
                    columns.append(prefix + k)
    if merged:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(columns)
        for row in merged.values():
            w.writerow([_cell(row.get(c, "")) for c in columns])
        paths.path(paths.join(out_dir, "scores.csv")).write_bytes(text.getvalue().encode())
    for _, result in tables:
        for name, arrays in result.files.items():
            with paths.path(paths.join(out_dir, name)).open("wb") as f:
                np.savez(f, **arrays)
    for prefix, result in tables:
        if not result.overlays:
            continue
        d = paths.join(out_dir, "overlays", prefix.strip("/").replace("/", "_"))
        paths.makedirs(d)
        for it in result.overlays:
            stem = os.path.splitext(it["id"])[0].replace("/", "_").replace(os.sep, "_")
            panel = it.get("panel")
            if panel is None:
                panel = viz.side_by_side(
                    it["image"],
                    it["map"],
                    it["mask"],
                    fov=it.get("fov"),
                    title=_overlay_title(it),
                    colorbar=True,
                )
            viz.save_png(paths.join(d, f"{stem}_label{it['label']}.png"), panel)


def _overlay_title(it: dict[str, Any]) -> str:
    """`test/crack/000.png | score 0.0312 | label 1`."""
    score = it.get("score", np.nan)
    score = f" | score {score:.4g}" if np.isfinite(score) else ""
    return f"{it['id']}{score} | label {it['label']}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
