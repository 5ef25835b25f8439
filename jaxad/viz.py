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

from jaxad import paths

__all__ = ["labelled_row", "map_range", "outline", "overlay", "save_png", "side_by_side"]

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
    fov: Any | None = None,
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
      fov: optional [H, W] field of view (> 0.5 inside): the map is drawn inside it only, and the
        default vmin and vmax are taken there (the border of a fundus photo is not scored).

    Returns:
      uint8 [H, W, 3]. A constant map (vmin == vmax) is drawn at the colormap's low end; NaNs too.
    """
    rgb = _as_rgb_uint8(image_uint8)
    amap = _as_map(anomaly_map, rgb.shape[:2])
    inside = None if fov is None else _as_map(fov, rgb.shape[:2]) > 0.5
    default_lo, default_hi = map_range(amap, inside)
    lo = default_lo if vmin is None else float(vmin)
    hi = default_hi if vmax is None else float(vmax)
    if hi > lo:
        unit = np.clip((amap - lo) / (hi - lo), 0.0, 1.0)
    else:
        unit = np.zeros_like(amap)
    unit = np.nan_to_num(unit, nan=0.0)
    heat = matplotlib.colormaps[cmap](unit)[..., :3] * 255.0
    out = (1.0 - alpha) * rgb + alpha * heat
    if inside is not None:
        out = np.where(inside[..., None], out, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def map_range(anomaly_map: Any, inside: Any | None = None) -> tuple[float, float]:
    """The finite minimum and maximum of a map (inside the boolean `inside`, if given)."""
    amap = np.asarray(anomaly_map, dtype=np.float64)
    keep = np.isfinite(amap) if inside is None else np.isfinite(amap) & np.asarray(inside, bool)
    values = amap[keep]
    return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)


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
    fov: Any | None = None,
    title: str = "",
    colorbar: bool = False,
    min_side: int = 128,
) -> np.ndarray:
    """One report panel: image | heatmap overlay | image with the ground-truth outline (if given).

    The outline (green, one pixel) is drawn on the plain image rather than on the heatmap, so the
    lesion stays visible whatever the colormap. Panels are separated by `gap` white columns.

    Args:
      image: [H, W, C] uint8 (or float in [0, 1]) image.
      anomaly_map: [H, W] anomaly map.
      mask: optional [H, W] (or [H, W, 1]) ground truth; anomalous where > 0.5.
      alpha, vmin, vmax, cmap, fov: as in `overlay` (the map is drawn inside `fov` only).
      gap: width in pixels of the separators.
      title: a line written above the panels (e.g. the file, its score and label).
      colorbar: adds the colour scale, labelled with vmin and vmax, at the right.
      min_side: with a title or colour bar, smaller images are enlarged by an integer factor
        (nearest neighbour) until their height is at least this, which leaves room for the text.

    Returns:
      uint8 [H, 2W + gap, 3], or [H, 3W + 2 gap, 3] with a mask, plus the title's rows and the
      colour bar's columns when asked for; save it with `save_png`.
    """
    rgb = _as_rgb_uint8(image)
    amap = _as_map(anomaly_map, rgb.shape[:2])
    inside = None if fov is None else _as_map(fov, rgb.shape[:2]) > 0.5
    lo, hi = map_range(amap, inside)
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    panels = [rgb, overlay(rgb, amap, alpha=alpha, vmin=lo, vmax=hi, cmap=cmap, fov=inside)]
    if mask is not None:
        panels.append(outline(rgb, mask))
    if title or colorbar:
        factor = max(1, -(-min_side // rgb.shape[0]))
        panels = [np.repeat(np.repeat(p, factor, axis=0), factor, axis=1) for p in panels]
    if colorbar:
        panels.append(_colorbar(panels[0].shape[0], lo, hi, cmap))
    separator = np.empty((panels[0].shape[0], gap, 3), np.uint8)
    separator[...] = _GAP_RGB
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [separator, panel]
    row = np.concatenate(pieces, axis=1)
    return _with_title(row, title) if title else row


_TEXT_H = 14  # rows of one line of Pillow's default font, with a margin


def _colorbar(height: int, lo: float, hi: float, cmap: str, width: int = 12) -> np.ndarray:
    """A vertical colour scale (high at the top) with `hi` and `lo` written beside it."""
    unit = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
    strip = np.rint(matplotlib.colormaps[cmap](unit)[..., :3] * 255.0).astype(np.uint8)
    labels = [f"{hi:.3g}", f"{lo:.3g}"]
    text_w = 6 * max(len(t) for t in labels) + 4
    bar = np.empty((height, width + text_w, 3), np.uint8)
    bar[...] = _GAP_RGB
    bar[:, :width] = strip
    canvas = Image.fromarray(bar)
    draw = ImageDraw.Draw(canvas)
    draw.text((width + 2, 0), labels[0], fill=(0, 0, 0))
    draw.text((width + 2, max(0, height - _TEXT_H + 2)), labels[1], fill=(0, 0, 0))
    return np.asarray(canvas)


def _with_title(row: np.ndarray, title: str) -> np.ndarray:
    out = np.empty((_TEXT_H + row.shape[0], row.shape[1], 3), np.uint8)
    out[...] = _GAP_RGB
    out[_TEXT_H:] = row
    canvas = Image.fromarray(out)
    ImageDraw.Draw(canvas).text((2, 1), title, fill=(0, 0, 0))
    return np.asarray(canvas)


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
    title_h = _TEXT_H
    row = np.empty((title_h + h * factor, len(rgbs) * (w * factor + gap) - gap, 3), np.uint8)
    row[...] = _GAP_RGB
    canvas = Image.fromarray(row)
    draw = ImageDraw.Draw(canvas)
    for i, ((title, _), rgb) in enumerate(zip(pictures, rgbs, strict=True)):
        x = i * (w * factor + gap)
        canvas.paste(Image.fromarray(rgb), (x, title_h))
        draw.text((x + 2, 1), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(path: str | os.PathLike[str], array: Any) -> Path | paths.Path:
    """Writes a uint8 (or bool) [H, W] or [H, W, 1|3|4] array as PNG, creating parent folders
    (a local path or `gs://`)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"save_png takes uint8 arrays, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot write an image of shape {array.shape}")
    path = paths.path(path) if paths.is_remote(path) else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with paths.writable(path) as target:
        Image.fromarray(array).save(target, format="PNG")
    return path
