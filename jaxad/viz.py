"""Heatmap overlays and PNG panels for evaluation reports (host-side, headless).

Only matplotlib's colormap registry is used (never pyplot), so nothing here needs a display or
picks a GUI backend, and the output is a plain uint8 array that any writer can store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["labelled_row", "outline", "overlay", "save_png", "side_by_side"]

_OUTLINE_RGB = (0, 255, 0)
_GAP_RGB = (255, 255, 255)


def _as_rgb_uint8(image: Any) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] as uint8 RGB; float images are taken to be in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 1|3|4], got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise ValueError(f"expected uint8 (or float in [0, 1]) images, got {image.dtype}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _as_map(anomaly_map: Any, shape: tuple[int, int]) -> np.ndarray:
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if amap.ndim == 3 and amap.shape[-1] == 1:
        amap = amap[..., 0]
    if amap.shape != shape:
        raise ValueError(f"map of shape {amap.shape} for an image of {shape}; resize it first")
    return amap


def overlay(
    image_uint8: Any,
    anomaly_map: Any,
    *,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
) -> np.ndarray:
    """Blends a colour-mapped anomaly map over an image.

    Args:
      image_uint8: [H, W, C] with C in {1, 3} (or [H, W]); uint8, or float in [0, 1].
      anomaly_map: [H, W] anomaly map of the same size.
      alpha: weight of the heatmap (0 = image only, 1 = heatmap only).
      vmin, vmax: map values sent to the ends of the colormap; default to the map's own min and max,
        which shows where a single image is most anomalous. Pass fixed values (e.g. a threshold
        calibrated on normal images) to compare images with each other.
      cmap: name of a matplotlib colormap.

    Returns:
      uint8 [H, W, 3]. A constant map (vmin == vmax) is drawn at the colormap's low end; NaNs too.
    """
    rgb = _as_rgb_uint8(image_uint8)
    amap = _as_map(anomaly_map, rgb.shape[:2])
    finite = amap[np.isfinite(amap)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 0.0
    lo, hi = float(vmin), float(vmax)
    if hi > lo:
        unit = np.clip((amap - lo) / (hi - lo), 0.0, 1.0)
    else:
        unit = np.zeros_like(amap)
    unit = np.nan_to_num(unit, nan=0.0)
    heat = matplotlib.colormaps[cmap](unit)[..., :3] * 255.0
    out = (1.0 - alpha) * rgb + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Inner one-pixel boundary of a binary mask."""
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool))


def outline(image: Any, mask: Any) -> np.ndarray:
    """The image (RGB uint8) with the one-pixel outline of `mask` (> 0.5) drawn in green."""
    rgb = _as_rgb_uint8(image).copy()
    rgb[_outline(_as_map(mask, rgb.shape[:2]) > 0.5)] = _OUTLINE_RGB
    return rgb


def side_by_side(
    image: Any,
    anomaly_map: Any,
    mask: Any | None = None,
    *,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    gap: int = 2,
) -> np.ndarray:
    """One report panel: image | heatmap overlay | image with the ground-truth outline (if given).

    The outline (green, one pixel) is drawn on the plain image rather than on the heatmap, so the
    lesion stays visible whatever the colormap. Panels are separated by `gap` white columns.

    Args:
      image: [H, W, C] uint8 (or float in [0, 1]) image.
      anomaly_map: [H, W] anomaly map.
      mask: optional [H, W] (or [H, W, 1]) ground truth; anomalous where > 0.5.
      alpha, vmin, vmax, cmap: as in `overlay`.
      gap: width in pixels of the separators.

    Returns:
      uint8 [H, 2W + gap, 3], or [H, 3W + 2 gap, 3] with a mask; save it with `save_png`.
    """
    rgb = _as_rgb_uint8(image)
    panels = [rgb, overlay(rgb, anomaly_map, alpha=alpha, vmin=vmin, vmax=vmax, cmap=cmap)]
    if mask is not None:
        panels.append(outline(rgb, mask))
    separator = np.empty((rgb.shape[0], gap, 3), np.uint8)
    separator[...] = _GAP_RGB
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [separator, panel]
    return np.concatenate(pieces, axis=1)


def labelled_row(
    pictures: list[tuple[str, Any]], *, min_side: int = 128, gap: int = 2
) -> np.ndarray:
    """Pictures side by side, each under its title: one row of a report.

    Pictures are [H, W] or [H, W, 1|3] (uint8, or float in [0, 1]) of one size; small ones are
    enlarged by an integer factor (nearest neighbour, so pixels stay visible) until their
    shorter side is at least `min_side`, which leaves room for the titles.

    Returns uint8 [title + H', n W' + (n - 1) gap, 3].
    """
    rgbs = [_as_rgb_uint8(p) for _, p in pictures]
    if len({r.shape for r in rgbs}) != 1:
        raise ValueError(f"pictures of different shapes: {[r.shape for r in rgbs]}")
    h, w = rgbs[0].shape[:2]
    factor = max(1, -(-min_side // min(h, w)))
    rgbs = [np.repeat(np.repeat(r, factor, axis=0), factor, axis=1) for r in rgbs]
    title_h = 14
    row = np.empty((title_h + h * factor, len(rgbs) * (w * factor + gap) - gap, 3), np.uint8)
    row[...] = _GAP_RGB
    canvas = Image.fromarray(row)
    draw = ImageDraw.Draw(canvas)
    for i, ((title, _), rgb) in enumerate(zip(pictures, rgbs, strict=True)):
        x = i * (w * factor + gap)
        canvas.paste(Image.fromarray(rgb), (x, title_h))
        draw.text((x + 2, 1), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(path: str | os.PathLike[str], array: Any) -> Path:
    """Writes a uint8 (or bool) [H, W] or [H, W, 1|3|4] array as PNG, creating parent folders."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"save_png takes uint8 arrays, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot write an image of shape {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path
