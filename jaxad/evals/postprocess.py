"""Post-processing of anomaly maps before they are scored: smoothing and the image score.

Every map method's raw map is noisy at the pixel scale (a reconstruction residual, a window
grid), and each paper took its image score differently (a mean, a maximum, a filtered sum). These
options let any method's maps be compared, or improved, the same way; the `anomaly_map`
evaluator applies them when its config asks (`configs/common.py:anomaly_map_eval`), and the
defaults leave the method's own map and score untouched.

- `smooth(maps, sigma)`: a Gaussian filter of `sigma` pixels on each map, as anomalib smooths
  every model's map (sigma 4 at 256 px there; the kernel reaches 4 sigma on each side).
- `image_scores(maps, fov, kind, top_k)`: 'max' (the map's maximum), 'mean', or 'topk_mean'
  (the mean of the highest `top_k` fraction of pixels: a maximum that one hot pixel cannot
  set), each over the field of view.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 'method': the score the method gives (its `score`'s image score, or the maximum inside the
# field of view at full resolution).
IMAGE_SCORES = ("method", "max", "mean", "topk_mean")


def check(sigma: float, kind: str, top_k: float, where: str) -> None:
    """Raises a one-line error naming `where` (a config key prefix) for a bad setting."""
    if not sigma >= 0:
        raise ValueError(f"{where}.smooth_sigma={sigma}: use 0 (off) or a positive number")
    if kind not in IMAGE_SCORES:
        raise ValueError(f"{where}.image_score={kind!r}: use one of {', '.join(IMAGE_SCORES)}")
    if not 0 < top_k <= 1:
        raise ValueError(f"{where}.top_k={top_k}: a fraction of the pixels in (0, 1]")


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Each [H, W] map of [..., H, W] filtered by a Gaussian of `sigma` pixels (0: unchanged)."""
    maps = np.asarray(maps, np.float32)
    if sigma <= 0:
        return maps
    spatial = (0,) * (maps.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(maps, spatial, mode="nearest", truncate=4.0)


def image_scores(maps: np.ndarray, fov: np.ndarray, kind: str, top_k: float = 0.01) -> np.ndarray:
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
        else:
            raise ValueError(f"image score {kind!r}: use one of {', '.join(IMAGE_SCORES[1:])}")
    return out


def apply(
    maps: np.ndarray,
    scores: np.ndarray,
    fov: np.ndarray,
    *,
    sigma: float = 0.0,
    kind: str = "method",
    top_k: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """(maps, image scores) after smoothing and the chosen image score; with the defaults the
    method's own (maps, scores)."""
    maps = smooth(maps, sigma)
    if kind == "method":
        return maps, np.asarray(scores, np.float32)
    return maps, image_scores(maps, fov, kind, top_k)
