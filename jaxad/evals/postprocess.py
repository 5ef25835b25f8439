"""Post-processing of anomaly maps before they are scored: smoothing and the image score.

Every map method's raw map is noisy at the pixel scale (a reconstruction residual, a window
grid), and each paper took its image score differently (a mean, a maximum, a filtered sum). These
options let any method's maps be compared, or improved, the same way; the `anomaly_map`
evaluator applies them when its config asks (`configs/common.py:anomaly_map_eval`), and the
defaults leave the method's own map and score untouched.

- `smooth(maps, sigma)`: a Gaussian filter of `sigma` pixels on each map, as anomalib smooths
  every model's map (sigma 4 at 256 px there; the kernel reaches 4 sigma on each side).
- `NormalStats` and `normalize(maps, stats)`: each pixel's map value minus its mean over the
  maps of normal validation images, over their spread there (`normalize='normal'`). A place
  where normal images vary (the optic disc, whose position changes; a bright vessel) is damped;
  the spread is floored at its median over the image, so that a place where normal maps barely
  vary is not made more sensitive than a typical one.
- `image_scores(maps, fov, kind, top_k, drop_largest)`: 'max' (the map's maximum), 'mean',
  'topk_mean' (the mean of the highest `top_k` fraction of pixels: a maximum that one hot pixel
  cannot set), or 'components', each over the field of view. 'components' is Lesion2Void's
  original post-processing (`jaxad.ops.fundus_score`) on any map: the map min-max normalised
  inside the field of view, Otsu's threshold, the 8-connected components above it ranked by
  size, the `drop_largest` largest dropped and the map summed over the next 70, so that normal
  anatomy leaving a large residual in every image (the optic disc; the original drops 30
  components of 224 px photographs as disc, vessels and rim) does not count. Whether it helps
  depends on the method and data (bench/README.md, "Independent test sets").

Order: smoothing, then normalisation, then the image score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from jaxad.ops import fundus_score

# 'method': the score the method gives (its `score`'s image score, or the maximum inside the
# field of view at full resolution).
IMAGE_SCORES = ("method", "max", "mean", "topk_mean", "components")
# 'components' sums over at most this many components after the dropped ones, as the original.
KEPT_COMPONENTS = 70
# 'none': the map as made; 'normal': by the statistics of normal validation maps.
NORMALIZE = ("none", "normal")


def check(
    sigma: float,
    kind: str,
    top_k: float,
    where: str,
    normalize: str = "none",
    drop_largest: int = 1,
) -> None:
    """Raises a one-line error naming `where` (a config key prefix) for a bad setting."""
    if normalize not in NORMALIZE:
        raise ValueError(f"{where}.normalize={normalize!r}: use one of {', '.join(NORMALIZE)}")
    if not sigma >= 0:
        raise ValueError(f"{where}.smooth_sigma={sigma}: use 0 (off) or a positive number")
    if kind not in IMAGE_SCORES:
        raise ValueError(f"{where}.image_score={kind!r}: use one of {', '.join(IMAGE_SCORES)}")
    if not 0 < top_k <= 1:
        raise ValueError(f"{where}.top_k={top_k}: a fraction of the pixels in (0, 1]")
    if not (isinstance(drop_largest, int) and drop_largest >= 0):
        raise ValueError(f"{where}.drop_largest={drop_largest!r}: a number of components >= 0")


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Each [H, W] map of [..., H, W] filtered by a Gaussian of `sigma` pixels (0: unchanged)."""
    maps = np.asarray(maps, np.float32)
    if sigma <= 0:
        return maps
    spatial = (0,) * (maps.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(maps, spatial, mode="nearest", truncate=4.0)


class NormalStats:
    """Per-pixel sum and sum of squares of the maps of normal images (label 0).

    Duck-types the accumulator of `jaxad.evals.core.accumulate_batched` (`add`,
    `wants_overlay`), so the statistics stream over a split like any evaluation.
    """

    def __init__(self):
        self.count = 0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def add(self, *, label: int, amap: np.ndarray, **_) -> None:
        if label != 0:
            return
        amap = np.asarray(amap, np.float64)
        if self.total is None:
            self.total, self.squares = np.zeros_like(amap), np.zeros_like(amap)
        self.count += 1
        self.total += amap
        self.squares += amap * amap

    def wants_overlay(self, label: int) -> bool:
        return False

    def combined(self, sum_over_processes: Callable, shape: tuple[int, ...]) -> NormalStats:
        """The statistics of every process (`sum_over_processes`: an array's elementwise sum over
        processes, called by all of them); a process without normal images adds zeros of
        `shape`, the maps' size."""
        out = NormalStats()
        none = np.zeros(shape)
        out.count = int(sum_over_processes(np.array([self.count]))[0])
        out.total = sum_over_processes(none if self.total is None else self.total)
        out.squares = sum_over_processes(none if self.squares is None else self.squares)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """{'mean', 'scale'} [H, W] float32: the normal maps' mean and floored spread."""
        if not self.count:
            raise ValueError("no normal image was scored")
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean * mean, 0.0))
        floor = max(float(np.median(std)), 1e-6)
        return {
            "mean": mean.astype(np.float32),
            "scale": np.maximum(std, floor).astype(np.float32),
        }


def normalize(maps: np.ndarray, stats: dict[str, np.ndarray] | None) -> np.ndarray:
    """Maps [..., H, W] as (map - mean) / scale of `NormalStats.arrays` (None: unchanged)."""
    maps = np.asarray(maps, np.float32)
    if stats is None:
        return maps
    if maps.shape[-2:] != stats["mean"].shape:
        raise ValueError(
            f"maps of {maps.shape[-2:]} px but normal statistics of {stats['mean'].shape} px: "
            "evaluate the run again to remake them"
        )
    return (maps - stats["mean"]) / stats["scale"]


def image_scores(
    maps: np.ndarray, fov: np.ndarray, kind: str, top_k: float = 0.01, drop_largest: int = 1
) -> np.ndarray:
    """[B] image scores of maps [B, H, W] over their fields of view [B, H, W] (> 0.5 inside;
    an empty one counts every pixel)."""
    maps = np.asarray(maps, np.float32)
    inside = np.asarray(fov) > 0.5
    out = np.empty(len(maps), np.float32)
    for i, (m, f) in enumerate(zip(maps, inside, strict=True)):
        values = m[f] if f.any() else m.ravel()
        if kind == "max":
            out[i] = values.max()
        elif kind == "mean":
            out[i] = values.mean()
        elif kind == "topk_mean":
            k = max(1, int(round(top_k * values.size)))
            out[i] = np.partition(values, values.size - k)[-k:].mean()
        elif kind == "components":
            out[i] = _component_score(m, f if f.any() else np.ones_like(f), drop_largest)
        else:
            raise ValueError(f"image score {kind!r}: use one of {', '.join(IMAGE_SCORES[1:])}")
    return out


def _component_score(amap: np.ndarray, inside: np.ndarray, drop_largest: int) -> float:
    """'components' of one map [H, W] with its field of view (module docstring)."""
    values = amap[inside].astype(np.float64)
    lo, hi = values.min(), values.max()
    if hi == lo:
        return 0.0
    diff = np.where(inside, (amap.astype(np.float64) - lo) / (hi - lo), 0.0)
    return fundus_score.component_sum(diff, drop_largest, drop_largest + KEPT_COMPONENTS)


def apply(
    maps: np.ndarray,
    scores: np.ndarray,
    fov: np.ndarray,
    *,
    sigma: float = 0.0,
    kind: str = "method",
    top_k: float = 0.01,
    drop_largest: int = 1,
    normal: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(maps, image scores) after smoothing, normalisation by `normal` (`NormalStats.arrays`)
    and the chosen image score; with the defaults the method's own (maps, scores). The image
    score 'method' stays the method's own even when the maps are normalised."""
    maps = normalize(smooth(maps, sigma), normal)
    if kind == "method":
        return maps, np.asarray(scores, np.float32)
    return maps, image_scores(maps, fov, kind, top_k, drop_largest)
