"""Evaluation at full resolution, one image at a time, for window-based methods (PICARD).

`jaxad.evaluate` resizes every test image to `data.image_size` and scores fixed-size batches.
Methods that score high-resolution images by sliding windows (a 2000 x 2500 tomosynthesis slice
holds thousands of 256-px windows) must see each image at its own size instead: here each
image of the split is read at native resolution, scored by `method.dense_map(state, image,
key)` (the method streams its windows through compiled calls in chunks), and compared with its
mask. Memory stays at one image and its map.

Metrics (`workdir/eval/metrics.json`, the same names as `jaxad.evaluate`'s):

- image level: `image_auroc`, ... from the image score = the maximum of the map inside the
  field of view (a tumour is small: its peak, not the image mean, says whether one is present);
- pixel level, pooled over every pixel of every image with a known ground truth (a mask, or a
  normal image, whose pixels are all negative), inside the field of view: `pixel_auroc`,
  `pixel_auprc`, `best_dice`, exact for maps rounded to float16 (`metrics.Float16Histogram`), so
  no pixel is stored or sorted; pooling lets normal-only images count, and makes the scale of
  the maps across images matter, as it does for a reader looking at them;
- pixel level, per image, averaged over the images that have both anomalous and normal pixels:
  `pixel_auroc_per_image`, `pixel_auprc_per_image` (each image judged on its own scale);
- the same for the trivial baseline, prefixed `baseline/`: the absolute z-score of each pixel's
  intensity against the training images' pixels (mean over channels), i.e. "unusually bright or
  dark", which bright masses on a darker background would already reveal.

`scores.csv` (one row per image) and a few overlays (downscaled to at most 1024 px) go to
`workdir/eval/`. Processes score disjoint images (`process_index::process_count`) and their
counts are summed, so a multi-host evaluation gives the same numbers as one host.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from jaxad import metrics as metrics_lib
from jaxad import writers
from jaxad.data import sources, transforms

# Overlays are downscaled so that their long side is at most this.
_OVERLAY_SIDE = 1024


def unit_image(rec: dict[str, Any], channels: int) -> np.ndarray:
    """A record's image as float32 [H, W, channels] in [0, 1], at its own resolution."""
    image = transforms.to_channels(rec["image"], channels)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return transforms.unit_float(image)


def intensity_stats(config: ml_collections.ConfigDict, max_images: int) -> tuple[float, float]:
    """Mean and std of the training images' pixels (unit scale, inside the FOV) for the baseline.

    Reads up to `max_images` training images of this process's shard; hosts combine their sums.
    """
    src = sources.get_source(config.data, config.data.train_split)
    n, total, squares = 0.0, 0.0, 0.0
    for i in list(range(jax.process_index(), len(src), jax.process_count()))[:max_images]:
        rec = src[i]
        x = unit_image(rec, config.data.channels).mean(axis=-1, dtype=np.float64)
        x = x[rec["fov"] > 0]
        n, total, squares = n + x.size, total + x.sum(), squares + np.square(x).sum()
    n, total, squares = _sum_over_processes(np.array([n, total, squares]))
    if n == 0:
        raise ValueError(f"split {config.data.train_split!r} has no training pixels for baseline")
    mean = total / n
    return float(mean), float(np.sqrt(max(squares / n - mean**2, 1e-12)))


def _sum_over_processes(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's per-image rows (JSON-able dicts), in process order."""
    if jax.process_count() == 1:
        return rows
    data = np.frombuffer(json.dumps(rows).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size]))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    parts = multihost_utils.process_allgather(padded)
    out = []
    for part, length in zip(parts, lengths, strict=True):
        out.extend(json.loads(bytes(part[:length]).decode()))
    return out


def evaluate_dense(
    config: ml_collections.ConfigDict,
    workdir: str,
    method,
    state: Any,
    *,
    step: int,
    split: str | None = None,
) -> dict:
    """Scores `split` image by image with `method.dense_map`; writes reports, returns metrics."""
    split = split or config.data.test_split
    out_dir = os.path.join(workdir, "eval")
    src = sources.get_source(config.data, split)
    channels = config.data.channels
    baseline = bool(config.eval.baseline)
    if baseline:
        mean, std = intensity_stats(config, int(config.eval.get("baseline_images", 64)))
    hists = {"": metrics_lib.Float16Histogram()}
    if baseline:
        hists["baseline/"] = metrics_lib.Float16Histogram()
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    rows, overlays = [], []
    num_overlays = int(config.eval.num_overlays)
    for i in range(jax.process_index(), len(src), jax.process_count()):
        rec = src[i]
        image = unit_image(rec, channels)
        maps = {"": np.asarray(method.dense_map(state, image, jax.random.fold_in(key, i)))}
        if maps[""].shape != image.shape[:2]:
            raise ValueError(f"dense_map gave {maps[''].shape} for an image of {image.shape}")
        if baseline:
            maps["baseline/"] = np.abs(image.mean(axis=-1) - mean) / std
        fov = rec["fov"] > 0
        mask = rec["mask"] > 0
        label = int(rec["label"])
        known = bool(rec["has_mask"]) or label == 0
        row = {
            "id": rec["id"],
            "label": label,
            "grade": int(rec["grade"]),
            "has_mask": bool(rec["has_mask"]),
        }
        for prefix, amap in maps.items():
            row[f"{prefix}score"] = float(amap[fov].max()) if fov.any() else float("nan")
            if config.eval.pixel_metrics and known:
                hists[prefix].update(amap, mask, valid=fov)
                if (mask & fov).any() and (~mask & fov).any():
                    own = metrics_lib.Float16Histogram().update(amap, mask, valid=fov).metrics()
                    row[f"{prefix}pixel_auroc"] = own["pixel_auroc"]
                    row[f"{prefix}pixel_auprc"] = own["pixel_auprc"]
        rows.append(row)
        if jax.process_index() == 0 and len(overlays) < num_overlays:
            overlays.append((rec, image, maps[""]))
    for hist in hists.values():
        hist.counts = _sum_over_processes(hist.counts)
    all_rows = _gather_rows(rows)
    results: dict[str, Any] = {"step": int(step), "split": split, "num_images": len(all_rows)}
    for prefix, hist in hists.items():
        results.update({f"{prefix}{k}": v for k, v in _image_metrics(all_rows, prefix).items()})
        if config.eval.pixel_metrics:
            results.update({f"{prefix}{k}": v for k, v in hist.metrics().items()})
            for name in ("pixel_auroc", "pixel_auprc"):
                own = [r[f"{prefix}{name}"] for r in all_rows if f"{prefix}{name}" in r]
                results[f"{prefix}{name}_per_image"] = float(np.mean(own)) if own else float("nan")
    if jax.process_index() == 0:
        _write(out_dir, results, all_rows, overlays)
    writers.log_info("dense eval at step %d: %s", step, _summary(results))
    return results


def _image_metrics(rows: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    labelled = [r for r in rows if r["label"] >= 0 and np.isfinite(r[f"{prefix}score"])]
    scores = np.array([r[f"{prefix}score"] for r in labelled])
    labels = np.array([r["label"] for r in labelled])
    out = dict(metrics_lib.image_metrics(scores, labels))
    graded = [(r[f"{prefix}score"], r["grade"]) for r in labelled if r["grade"] >= 0]
    if graded:
        s, g = zip(*graded, strict=True)
        out.update(metrics_lib.grade_aurocs(np.array(s), np.array(g)))
    return out


def _write(out_dir: str, results: dict, rows: list[dict], overlays: list) -> None:
    from jaxad import viz

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    columns = ["id", "label", "grade", "score", "baseline/score", "pixel_auroc", "pixel_auprc"]
    with open(os.path.join(out_dir, "scores.csv"), "w", encoding="utf-8") as f:
        f.write(",".join(c.replace("/", "_") for c in columns) + "\n")
        for r in rows:
            f.write(",".join(_cell(r.get(c, "")) for c in columns) + "\n")
    if overlays:
        d = os.path.join(out_dir, "overlays")
        os.makedirs(d, exist_ok=True)
        for rec, image, amap in overlays:
            image, amap, mask = downscale(image, amap, rec["mask"] if rec["has_mask"] else None)
            stem = str(rec["id"]).replace("/", "_").replace(os.sep, "_")
            panel = viz.side_by_side(image, amap, mask)
            viz.save_png(os.path.join(d, f"{stem}_label{int(rec['label'])}.png"), panel)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text}"' if "," in text else text


def downscale(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None):
    """Image, map and mask shrunk (bilinear) so that the long side is at most 1024, for PNGs."""
    h, w = amap.shape
    factor = max(h, w) / _OVERLAY_SIDE
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


def _summary(results: dict) -> str:
    keys = ("image_auroc", "pixel_auroc", "baseline/image_auroc", "baseline/pixel_auroc")
    return ", ".join(f"{k} {results[k]:.4f}" for k in keys if k in results)
