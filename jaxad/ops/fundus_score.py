"""Lesion2Void's image score: post-processing of a reconstruction-residual map (host-side numpy).

The original scoring script turns the 3-channel residual of one fundus image into a scalar by:
1. min-max normalising the whole residual (all channels jointly) to [0, 1];
2. taking the green channel;
3. zeroing everything outside a filled circle of radius 100 centred at (112, 112) on 224 x 224;
4. converting to uint8 by truncation of v * 255;
5. binarising with OpenCV's Otsu threshold (computed over the whole image, zeros included);
6. labelling 8-connected components, sorting them by size (largest first) and keeping ranks 30..99,
   which drops the 30 largest (vessels, optic disc, rim) and keeps up to 70 lesion-sized ones;
7. summing the normalised green residual over the kept pixels.

Every step reproduces OpenCV's exact rule, so the score matches the original's bit for bit on the
same residual (checked against opencv-python 5.0 during development; OpenCV is not a dependency):
- The filled circle (`cv2.circle`, thickness -1, default 8-connected line type) is exactly the set
  of pixels with (y - cy)^2 + (x - cx)^2 <= r^2 around an integer centre, radius inclusive.
- Otsu is OpenCV's rule (threshold t maximising the between-class variance of a 256-bin histogram,
  foreground = pixels > t, first maximum wins), computed with OpenCV's running-mean recurrence so
  that exactly tied thresholds resolve the same way. scikit-image's `threshold_otsu` differs on ties
  and on constant images (OpenCV returns t = 0, making a constant non-zero image all foreground).
- OpenCV numbers 8-connected components in the raster order of the 2 x 2 blocks its block-based
  labelling scans (the first block a component touches), not in plain pixel raster order;
  equal-sized components keep that order under the stable sort, as Python's `list.sort` did in the
  original.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "component_sum",
    "fov_circle",
    "keep_ranked_components",
    "otsu_threshold",
    "postprocess_score",
    "postprocess_scores",
    "ranked_components",
    "scaled_radius",
]

# The original was tuned on 224 x 224 images with a circle of radius 100.
_REFERENCE_SIZE = 224
_REFERENCE_RADIUS = 100
_FLT_EPSILON = float(np.finfo(np.float32).eps)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def scaled_radius(height: int, width: int) -> int:
    """Radius 100 at 224 px, scaled to the shorter side and rounded half up."""
    return int(np.floor(_REFERENCE_RADIUS * min(height, width) / _REFERENCE_SIZE + 0.5))


def fov_circle(height: int, width: int, radius: int) -> np.ndarray:
    """Filled circle at the integer centre (H // 2, W // 2), radius inclusive, as OpenCV draws."""
    rows = np.arange(height)[:, None] - height // 2
    cols = np.arange(width)[None, :] - width // 2
    return rows * rows + cols * cols <= radius * radius


def otsu_threshold(image: np.ndarray) -> int:
    """OpenCV's Otsu threshold of a uint8 image; binarise with `image > threshold`.

    Follows OpenCV's recurrence and float operation order, including skipping levels whose class
    weight is below float32 epsilon, so that ties between thresholds break exactly as in OpenCV.
    Returns 0 when no split exists (a constant image).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"Otsu works on uint8 images, got {image.dtype}")
    hist = np.bincount(image.ravel(), minlength=256)
    scale = 1.0 / image.size
    # The integer sum is exact, as is OpenCV's double sum of these integers.
    mean_all = float(np.dot(np.arange(256, dtype=np.int64), hist)) * scale
    q1 = mu1 = best_sigma = 0.0
    best = 0
    for level, count in enumerate(hist.tolist()):
        p = count * scale
        mu1 *= q1
        q1 += p
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + level * p) / q1
        mu2 = (mean_all - q1 * mu1) / q2
        gap = mu1 - mu2
        sigma = q1 * q2 * gap * gap
        if sigma > best_sigma:
            best_sigma, best = sigma, level
    return best


def ranked_components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a 2D binary image, ranked by size, largest first.

    Returns the label image (0 = background) and the labels in rank order. Components of equal
    size keep the order in which OpenCV's `connectedComponents` numbers them: by the first 2 x 2
    block (blocks in raster order) that the component touches.
    """
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {binary.shape}")
    labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    if count == 0:
        return labels, np.zeros(0, dtype=labels.dtype)
    h, w = labels.shape
    padded = np.pad(labels, ((0, h % 2), (0, w % 2)))
    ph, pw = padded.shape
    # Visit pixels block by block, blocks in raster order; a label's first visit gives its order.
    by_block = padded.reshape(ph // 2, 2, pw // 2, 2).transpose(0, 2, 1, 3).ravel()
    ids, first = np.unique(by_block, return_index=True)
    foreground = ids > 0
    opencv_order = ids[foreground][np.argsort(first[foreground])]
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    ranked = opencv_order[np.argsort(-sizes[opencv_order], kind="stable")]
    return labels, ranked


def keep_ranked_components(binary: np.ndarray, rank_lo: int, rank_hi: int) -> np.ndarray:
    """Mask of the components of size rank rank_lo..rank_hi-1 (0 = largest; `ranked_components`)."""
    labels, ranked = ranked_components(binary)
    keep = np.zeros(len(ranked) + 1, dtype=bool)
    keep[ranked[rank_lo:rank_hi]] = True
    return keep[labels]


def postprocess_score(
    residual: Any,
    *,
    channel: int = 1,
    radius: int | None = 100,
    rank_lo: int = 30,
    rank_hi: int = 100,
) -> float:
    """Lesion2Void image score of one residual map (steps in the module docstring).

    Args:
      residual: [H, W, C] absolute reconstruction residual (channels last, RGB order).
      channel: channel that is scored after the joint normalisation; 1 (green) in the original.
      radius: radius of the circular field of view in pixels, centred at (H // 2, W // 2). The
        original uses 100 at 224 x 224; None scales that to the image (see `scaled_radius`).
      rank_lo, rank_hi: size ranks of the components kept (0 = largest, rank_hi excluded).

    Returns:
      The sum of the normalised residual over the kept components. A constant residual gives 0.0
      (the original divides by zero there and has no defined score).
    """
    if not 0 <= rank_lo <= rank_hi:
        raise ValueError(f"need 0 <= rank_lo <= rank_hi, got {rank_lo}, {rank_hi}")
    residual = np.asarray(residual)
    if residual.ndim != 3:
        raise ValueError(f"expected a residual [H, W, C], got shape {residual.shape}")
    if not np.issubdtype(residual.dtype, np.floating):
        residual = residual.astype(np.float64)
    lo, hi = residual.min(), residual.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("residual has non-finite values")
    if hi == lo:
        return 0.0
    # Normalise in the residual's own precision, as the original did in place on its float32 array.
    normed = (residual[..., channel] - lo) / (hi - lo)
    h, w = normed.shape
    if radius is None:
        radius = scaled_radius(h, w)
    # The original's circle is float64, which lifts the product (and the uint8 rounding) to float64.
    diff = np.where(fov_circle(h, w, radius), normed.astype(np.float64), 0.0)
    return component_sum(diff, rank_lo, rank_hi)


def component_sum(diff: np.ndarray, rank_lo: int, rank_hi: int) -> float:
    """Steps 4-7 on a map `diff` [H, W] in [0, 1] (zero outside its field of view): the sum of
    `diff` over the above-Otsu components of size rank rank_lo..rank_hi-1."""
    image = (diff * 255.0).astype(np.uint8)
    foreground = image > otsu_threshold(image)
    kept = keep_ranked_components(foreground, rank_lo, rank_hi)
    return float(diff[kept].sum())


def postprocess_scores(residuals: Any, **kwargs: Any) -> np.ndarray:
    """`postprocess_score` for each residual of a batch [N, H, W, C]; returns float64 [N]."""
    residuals = np.asarray(residuals)
    if residuals.ndim != 4:
        raise ValueError(f"expected residuals [N, H, W, C], got shape {residuals.shape}")
    return np.array([postprocess_score(r, **kwargs) for r in residuals], dtype=np.float64)
