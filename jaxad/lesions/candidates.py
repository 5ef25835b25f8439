"""Lesion candidates without a detector: multi-scale line top-hats on the green channel.

Lesion-based contrastive learning (LCL, MICCAI 2021) cuts its patches around the boxes of a
Faster R-CNN trained on IDRiD. Where no detector output exists, `lesion_candidates` stands in
for it with classical fundus image analysis (no training, no weights):

1. The green channel, where red lesions and exudates have the most contrast, is taken inside
   the field of view (FOV) at a working resolution (FOV diameter at most `work_diameter` px).
   The FOV is trimmed to the retina and a thin rim, and the outside is filled with the nearest
   retina, so that the black border does not look like a dark lesion.
2. At each level of a 2x pyramid, the background is estimated by closings (dark lesions:
   microaneurysms, haemorrhages) and openings (bright lesions: exudates) with 9 px line
   segments in 8 orientations, keeping the orientation that changes the image least. A vessel
   is long and thin, so the segment lying along it keeps it in the background; a lesion shorter
   than the segment in every direction is removed by all of them and stands out in the top-hat
   (image minus background), as in Spencer et al.'s and Zana and Klein's microaneurysm and
   vessel work. The top-hat divided by the background is a relative contrast, so the dim
   periphery counts as much as the bright centre; a 2 x 2 opening removes the one-pixel ridges
   that curved vessels leave. Level l sees lesions up to about 9 * 2**l px.
3. Each level's contrast is divided by its threshold: `k_noise` times the photo's pixel noise
   (a median-absolute-deviation estimate, halved per level) but at least `min_contrast`. The
   maximum over levels is the strength z; pixels with z >= 1 seed components that grow into
   z >= 1/2 (hysteresis, so boxes cover a lesion's faint edge).
4. Each component becomes a box scored 1 - 2**-z_peak (0.5 at the threshold, 0.75 at twice
   it), with a rough class in IDRiD's codes (0 microaneurysm: dark and small, 1 haemorrhage:
   dark, 2 hard exudate: bright). Boxes centred on the optic disc (the brightest large blob) are
   dropped, and dark ones centred on the fovea (the darkest large blob of the central retina,
   about 2.5 disc diameters from the disc): a detector trained on IDRiD calls neither a lesion,
   and the fovea would otherwise give a box in nearly every normal photo, so LCL's rule of
   dropping photos without a box would drop none. Then greedy non-maximum suppression keeps at
   most `max_boxes`.

It is a substitute for the authors' detector, not a reproduction: it finds blobs of high
contrast, including some vessel crossings and bright reflexes, misses lesions fainter than
`min_contrast`, and drops dark lesions on the fovea with it. `candidate_recall` measures it
on photos drawn as the fundus demo (`jaxad.data.demo`) draws them; a lesion is a connected part
of the demo's mask, found when a candidate box contains the centre of its bounding box
(`found_lesions`). Measured (this machine, 2 shared cores):

- 256 px (the demo's size), 50 photos of each lesion type (microaneurysm, haemorrhage, exudate,
  mixed: 1009 lesions) and 50 normal ones: recall 0.968 (microaneurysms 0.956, haemorrhages
  0.946, exudates 1.0, mixed 0.964), 0.84 under the stricter IoU >= 0.1; 6.6 boxes per lesion
  photo (at most 25) and 2.5 per normal photo (a few vessel crossings and reflexes); 0.27 s per
  photo wall-clock. Without `skip_fovea`: recall 0.996, 7.6 and 3.5 boxes: the fovea was one
  box in nearly every photo; the skip loses the dark lesions drawn on or next to it, and some
  haemorrhages near it taken for it.
- The same photos with the lesions at half their drawn contrast (`lesion_contrast=0.5`, a probe
  of fainter lesions): recall 0.73 (microaneurysms 0.57, haemorrhages 0.71, exudates 0.97),
  5.7 boxes per lesion photo. Lowering `min_contrast` trades boxes for recall.
- 512 px, 10 photos of each type (194 lesions) and 10 normal: recall 0.97 (IoU 0.84), 13.0
  boxes per lesion photo (at most 27), 9.5 per normal photo; 0.77 s per photo wall-clock on
  the loaded machine, about 0.35 s of CPU.
- Then LCL's filter (`jaxad.lesions.boxes.filter_boxes` at 256 px: max side 64, margin 2.5;
  15 photos of each kind): at threshold 0.8 (score z >= 2.3) recall 0.80, 3.1 boxes per lesion
  photo, none on a normal photo (so LCL drops normal photos, as with its detector); at 0.7:
  0.92, 3.7, none; at 0.5 (no score cut): 0.97, 5.8, 2.3.

The demo's lesions are conspicuous; on real photos the recall is unmeasured (expect it lower).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

# Box classes, as IDRiD's lesion codes (the `idrid` builder's `box_classes`).
MICROANEURYSM, HAEMORRHAGE, EXUDATE = 0, 1, 2
# Line segments are this long (pixels) at every pyramid level; level l sees lesions of up to
# about LINE * 2**l working pixels.
_LINE = 9
# Boxes centred this close to the optic disc's centre are dropped (in FOV diameters; the disc's
# radius is about 0.07).
_DISC_RADIUS = 0.09
# The fovea is looked for this far from the disc's centre (in FOV diameters; it lies about 2.5
# disc diameters away), with a difference of Gaussians of this scale after a closing of this
# side (`_fovea`), and dark boxes centred this close to it are dropped.
_FOVEA_DISTANCE = (0.25, 0.45)
_FOVEA_SIGMA = 0.04
_FOVEA_CLOSING = 0.05
_FOVEA_RADIUS = 0.06
# Dark boxes up to this size (in FOV diameters) are called microaneurysms, larger ones
# haemorrhages: a rough split (a microaneurysm is under about 125 um, the FOV about 12 mm).
_MICROANEURYSM_SIZE = 0.03


def lesion_candidates(
    image: np.ndarray,
    fov: np.ndarray | None = None,
    *,
    max_boxes: int = 50,
    work_diameter: int = 512,
    largest_lesion: float = 0.16,
    angles: int = 8,
    k_noise: float = 6.0,
    min_contrast: float = 0.15,
    nms_iou: float = 0.3,
    skip_disc: bool = True,
    skip_fovea: bool = True,
    dark: bool = True,
    bright: bool = True,
) -> np.ndarray:
    """Lesion candidate boxes of one fundus photo (see the module docstring for the method).

    Args:
      image: uint8 [H, W, 3] RGB (or [H, W] / [H, W, 1] greyscale, used as is), any size.
      fov: bool or {0, 1} [H, W] field of view; None fits EyeQ's circle
        (`jaxad.data.fov.field_of_view`), or takes the whole image when that finds none.
      max_boxes: at most this many boxes, the highest scores.
      work_diameter: images whose FOV is wider are downscaled to this FOV diameter first
        (speed; a microaneurysm is still a few pixels at 512).
      largest_lesion: the longest line segment as a fraction of the FOV diameter; lesions wider
        than this in every direction are seen only at their edges.
      angles: number of line orientations (over 180 degrees).
      k_noise: the contrast threshold in units of the photo's relative pixel noise (its
        standard deviation, estimated robustly by `_noise`; halved at each coarser level).
      min_contrast: the threshold is never below this relative contrast: vessel remnants and
        texture, not noise, set the floor on clean photos.
      nms_iou: a box overlapping a higher-scoring one with a larger IoU is dropped.
      skip_disc: drop boxes centred on the optic disc (`_optic_disc`), whose rim and vessels
        would otherwise give a few candidates in every photo.
      skip_fovea: drop dark boxes centred on the fovea (`_fovea`, found when the disc is),
        a dark blob in nearly every photo that a trained detector does not call a lesion.
      dark, bright: look for dark (red) and bright (exudate) lesions.

    Returns:
      float32 [N, 6] boxes (x1, y1, x2, y2, score, class), N <= max_boxes, best first, in the
      image's pixels with pixel edges as coordinates (a box of the single pixel (row 3, column
      5) is (5, 3, 6, 4)); score in [0.5, 1), class `MICROANEURYSM`, `HAEMORRHAGE` or `EXUDATE`.
    """
    green, brightest = _channels(image)
    fov = _fov(image, fov)
    if not fov.any() or not (dark or bright):
        return np.zeros((0, 6), np.float32)
    # Work inside the FOV's bounding box, at a bounded resolution.
    rows, cols = ndi.find_objects(fov.astype(np.uint8))[0]
    green, brightest, fov = green[rows, cols], brightest[rows, cols], fov[rows, cols]
    diameter = 2.0 * np.sqrt(fov.sum() / np.pi)
    scale = min(1.0, work_diameter / diameter)
    if scale < 1.0:
        size = (max(1, round(green.shape[1] * scale)), max(1, round(green.shape[0] * scale)))
        green, brightest, fov_f = (
            np.asarray(Image.fromarray(a).resize(size, Image.BOX), np.float32)
            for a in (green, brightest, fov.astype(np.float32))
        )
        fov = fov_f >= 0.5
    # A fitted FOV circle may reach a few pixels into the black border, whose edge would look
    # like a dark lesion, and a whole-frame FOV (a folder without FOV masks) takes all of it:
    # keep only the retina (no channel near black; holes, such as a dark haemorrhage, filled),
    # and measure every size on the retina's own diameter.
    fov &= ndi.binary_fill_holes(brightest > 0.2 * float(np.median(brightest[fov])))
    work_diam = 2.0 * np.sqrt(fov.sum() / np.pi)
    inside, green = _fill_outside(green, fov, rim=max(2.0, 0.01 * work_diam))
    if not inside.any():
        return np.zeros((0, 6), np.float32)
    level = float(np.median(green[inside]))
    noise = _noise(green, inside) / max(level, 1e-6)
    green = ndi.gaussian_filter(green, 0.75, mode="nearest")
    # Divide by the background, but not by the near-black of a dark photo's noise floor.
    floor = max(0.1 * level, 1.0)

    levels = [green]
    while _LINE * 2 ** len(levels) <= largest_lesion * work_diam and min(levels[-1].shape) >= 8:
        levels.append(_half(levels[-1]))
    # Strength z per polarity, coarse to fine: each level's contrast over its threshold, and the
    # maximum with the coarser levels' z brought up to this level's size.
    polarities = [p for p, on in (("dark", dark), ("bright", bright)) if on]
    z = None
    for lvl in reversed(range(len(levels))):
        contrast = np.stack(_top_hats(levels[lvl], _LINE, angles, floor, polarities))
        # Thin ridges are what the line segments leave of vessel edges: open them away.
        contrast = ndi.grey_opening(contrast, size=(1, 2, 2))
        # Averaging 2**lvl x 2**lvl pixels divides the noise by 2**lvl.
        contrast /= max(k_noise * noise / 2**lvl, min_contrast)
        z = contrast if z is None else np.maximum(contrast, _double(z, contrast.shape[1:]))
    z[:, ~inside] = 0.0

    small = _MICROANEURYSM_SIZE * work_diam
    found = np.concatenate([_components(zp, p, small) for zp, p in zip(z, polarities, strict=True)])
    if skip_disc or skip_fovea:
        factor = 2 ** (len(levels) - 1)
        disc = _optic_disc(levels[-1], factor, inside, work_diam)
        fovea = None
        if disc is not None and skip_fovea:
            fovea = _fovea(levels[-1], factor, inside, work_diam, disc)
        cy, cx = (found[:, 1] + found[:, 3]) / 2, (found[:, 0] + found[:, 2]) / 2
        keep = np.ones(len(found), bool)
        if disc is not None and skip_disc:
            keep &= np.hypot(cy - disc[0], cx - disc[1]) > _DISC_RADIUS * work_diam
        if fovea is not None:
            near = np.hypot(cy - fovea[0], cx - fovea[1]) <= _FOVEA_RADIUS * work_diam
            keep &= ~near | (found[:, 5] == EXUDATE)
        found = found[keep]
    found = _nms(found, nms_iou, max_boxes)
    # Back to the image's pixels.
    found[:, [0, 2]] = found[:, [0, 2]] / scale + cols.start
    found[:, [1, 3]] = found[:, [1, 3]] / scale + rows.start
    return found.astype(np.float32)


def _channels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(green channel, brightest channel) as float32 [H, W]; a grey image is both."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        grey = image.astype(np.float32)
        return grey, grey
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"expected an [H, W, 3] or [H, W] image, got shape {image.shape}")
    return image[..., 1].astype(np.float32), image[..., :3].max(axis=-1).astype(np.float32)


def _fov(image: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """The given FOV as bool, else EyeQ's fitted circle, else the whole image."""
    h, w = np.asarray(image).shape[:2]
    if fov is not None:
        fov = np.asarray(fov)
        if fov.ndim == 3 and fov.shape[-1] == 1:
            fov = fov[..., 0]
        if fov.shape != (h, w):
            raise ValueError(f"the FOV has shape {fov.shape}, the image {(h, w)}")
        return fov > 0
    from jaxad.data.fov import field_of_view
    from jaxad.data.records import ImageReadError

    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    try:
        return field_of_view(rgb, "eyeq") > 0
    except ImageReadError:
        return np.ones((h, w), bool)


def _fill_outside(green: np.ndarray, fov: np.ndarray, rim: float) -> tuple[np.ndarray, np.ndarray]:
    """(FOV shrunk by `rim` px, `green` outside it replaced by the nearest pixel inside it).

    Closings would otherwise see the black border as a huge dark lesion along the rim, and the
    FOV's outermost ring is often unevenly lit.
    """
    # Padded: beyond the array's edge is outside the FOV too (the crop ends at the FOV's edge).
    inside = ndi.distance_transform_edt(np.pad(fov, 1))[1:-1, 1:-1] > rim
    if not inside.any():
        return inside, green
    _, (iy, ix) = ndi.distance_transform_edt(~inside, return_indices=True)
    return inside, green[iy, ix]


def _optic_disc(
    coarse: np.ndarray, factor: int, inside: np.ndarray, diameter: float
) -> tuple[float, float] | None:
    """The optic disc's centre (row, column) in working pixels, or None if nothing stands out.

    The disc is the brightest large structure of a fundus photo: the maximum of the coarsest
    pyramid level (`factor` working pixels per pixel) smoothed over 3 % of the FOV diameter
    `diameter`, provided it is at least 15 % brighter than the FOV's median.
    """
    small = inside
    while small.shape != coarse.shape:
        small = _half(small.astype(np.float32)) > 0.99
    if not small.any():
        return None
    smooth = ndi.gaussian_filter(coarse, 0.03 * diameter / factor, mode="nearest")
    smooth[~small] = -np.inf
    row, col = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    if smooth[row, col] < 1.15 * float(np.median(coarse[small])):
        return None
    return (row + 0.5) * factor, (col + 0.5) * factor


def _fovea(
    coarse: np.ndarray,
    factor: int,
    inside: np.ndarray,
    diameter: float,
    disc: tuple[float, float],
) -> tuple[float, float] | None:
    """The fovea's centre (row, column) in working pixels, or None if nothing stands out.

    The fovea is the darkest large blob of the central retina, about 2.5 disc diameters from
    the disc: the minimum of the coarsest level's difference of Gaussians (`_FOVEA_SIGMA` and
    three times it, in FOV diameters, so uneven lighting and the dark rim do not count), after
    a closing that fills dark lesions narrower than `_FOVEA_CLOSING` (a haemorrhage is darker
    than the fovea and would be taken for it), within `_FOVEA_DISTANCE` of the disc and at
    least 15 % of the diameter inside the rim, provided it is at least 5 % of the FOV's median
    below its surround. `disc` is in working pixels, as the result.
    """
    small = inside
    while small.shape != coarse.shape:
        small = _half(small.astype(np.float32)) > 0.99
    rows, cols = np.mgrid[: coarse.shape[0], : coarse.shape[1]]
    dist = np.hypot((rows + 0.5) * factor - disc[0], (cols + 0.5) * factor - disc[1]) / diameter
    depth = ndi.distance_transform_edt(np.pad(small, 1))[1:-1, 1:-1] * factor / diameter
    lo, hi = _FOVEA_DISTANCE
    ring = (dist >= lo) & (dist <= hi) & (depth >= 0.15)
    if not ring.any():
        return None
    sigma = _FOVEA_SIGMA * diameter / factor
    # A closing first fills dark lesions narrower than the fovea: a haemorrhage is darker.
    side = max(1, round(_FOVEA_CLOSING * diameter / factor))
    coarse = ndi.grey_closing(coarse, size=(side, side), mode="nearest")
    dog = ndi.gaussian_filter(coarse, sigma, mode="nearest") - ndi.gaussian_filter(
        coarse, 3 * sigma, mode="nearest"
    )
    dog[~ring] = np.inf
    row, col = np.unravel_index(int(np.argmin(dog)), dog.shape)
    if dog[row, col] > -0.05 * float(np.median(coarse[small])):
        return None
    return (row + 0.5) * factor, (col + 0.5) * factor


def _noise(image: np.ndarray, inside: np.ndarray) -> float:
    """Standard deviation of the image's pixel noise (Immerkaer's Laplacian-difference filter).

    The filter cancels any locally linear signal; the median absolute deviation of what is left
    (divided by the filter's norm, 6) ignores the few pixels on edges, vessels and lesions.
    """
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    residual = ndi.convolve(image, kernel, mode="nearest")[inside]
    return 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) / 6.0


def _half(image: np.ndarray) -> np.ndarray:
    """2 x 2 mean downsampling (an odd last row or column is repeated)."""
    h, w = image.shape
    padded = np.pad(image, ((0, h % 2), (0, w % 2)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))


def _double(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x upsampling of [..., h, w] (pixel areas aligned, as `_half` pools them),
    cropped to `shape`."""
    for axis in (-2, -1):
        n = image.shape[axis]
        prev = np.take(image, np.r_[0, : n - 1], axis=axis)
        nxt = np.take(image, np.r_[1:n, n - 1], axis=axis)
        pair = np.stack([0.75 * image + 0.25 * prev, 0.75 * image + 0.25 * nxt], axis=axis)
        doubled = list(image.shape)
        doubled[axis] = 2 * n
        image = pair.reshape(doubled)
    return image[..., : shape[0], : shape[1]]


def _top_hats(
    image: np.ndarray, length: int, angles: int, floor: float, polarities: list[str]
) -> list[np.ndarray]:
    """Relative contrast of features shorter than `length` px in every direction, per polarity.

    Dark: (minimum over orientations of the line closing - image) / background; bright: (image -
    maximum over orientations of the line opening) / background.
    """
    background = {p: None for p in polarities}
    for k in range(angles):
        filtered = _line_filters(image, length, np.pi * k / angles, polarities)
        for p, f in zip(polarities, filtered, strict=True):
            if background[p] is None:
                background[p] = f
            elif p == "dark":
                np.minimum(background[p], f, out=background[p])
            else:
                np.maximum(background[p], f, out=background[p])
    out = []
    for p in polarities:
        diff = background[p] - image if p == "dark" else image - background[p]
        out.append(np.maximum(diff, 0.0) / np.maximum(background[p], floor))
    return out


def _line_filters(
    image: np.ndarray, length: int, angle: float, polarities: list[str]
) -> list[np.ndarray]:
    """Closing ("dark") and opening ("bright") with a line segment of `length` px at `angle`.

    The image is sheared so that the discrete line becomes a row, where a closing or opening is
    two fast running-extremum passes (`scipy.ndimage.maximum_filter1d`), then sheared back.
    """
    c, s = np.cos(angle), np.sin(angle)
    if abs(s) > abs(c):  # Closer to vertical: the same on the transpose.
        return [f.T for f in _line_filters(image.T, length, np.pi / 2 - angle, polarities)]
    n = max(1, round(length * abs(c)))
    n += 1 - n % 2  # Odd, so the segment is centred.
    h, w = image.shape
    straight = abs(s) < 1e-9  # A row already.
    if straight:
        sheared = image
    else:
        shift = np.rint(np.arange(w) * (s / c)).astype(np.int64)
        shift -= shift.min()
        pad = int(shift.max())
        cols = np.arange(w)[None, :]
        sheared = image[np.clip(np.arange(-pad, h)[:, None] + shift[None, :], 0, h - 1), cols]
    out = []
    for p in polarities:
        first, second = ndi.maximum_filter1d, ndi.minimum_filter1d
        if p == "bright":
            first, second = second, first
        f = second(first(sheared, n, axis=1, mode="nearest"), n, axis=1, mode="nearest")
        out.append(f if straight else f[np.arange(h)[:, None] + pad - shift[None, :], cols])
    return out


def _components(z: np.ndarray, polarity: str, microaneurysm_px: float) -> np.ndarray:
    """Boxes [N, 6] of the hysteresis components of strength `z` (seeds >= 1, grown to >= 1/2)."""
    labels, n = ndi.label(z >= 0.5, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 6), np.float32)
    grown = labels > 0
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, labels[grown], z[grown])
    peak = peak[1:]
    area = np.bincount(labels[grown], minlength=n + 1)[1:]
    slices = ndi.find_objects(labels)
    keep = (peak >= 1.0) & (area >= 2)
    out = np.zeros((int(keep.sum()), 6), np.float32)
    for row, i in enumerate(np.flatnonzero(keep)):
        ys, xs = slices[i]
        out[row, :4] = (xs.start, ys.start, xs.stop, ys.stop)
        out[row, 4] = 1.0 - 2.0 ** -float(peak[i])
    if polarity == "bright":
        out[:, 5] = EXUDATE
    else:
        side = np.maximum(out[:, 2] - out[:, 0], out[:, 3] - out[:, 1])
        out[:, 5] = np.where(side <= microaneurysm_px, MICROANEURYSM, HAEMORRHAGE)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of boxes (x1, y1, x2, y2, ...) in edge coordinates."""
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def _nms(boxes: np.ndarray, iou: float, max_boxes: int) -> np.ndarray:
    """Greedy non-maximum suppression by score; at most `max_boxes` survive."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    boxes = boxes[order]
    kept: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) == max_boxes:
            break
        suppressed[i + 1 :] |= box_iou(boxes[i : i + 1], boxes[i + 1 :])[0] > iou
    return boxes[kept]


# ---------------------------------------------------------------------------------------------
# Measuring recall
# ---------------------------------------------------------------------------------------------


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """float32 [K, 4] boxes (x1, y1, x2, y2, edge coordinates) of a mask's 8-connected parts."""
    labels, _ = ndi.label(np.asarray(mask) > 0, structure=np.ones((3, 3), bool))
    return np.asarray(
        [(xs.start, ys.start, xs.stop, ys.stop) for ys, xs in ndi.find_objects(labels)],
        np.float32,
    ).reshape(-1, 4)


def found_lesions(
    boxes: np.ndarray, mask: np.ndarray, *, criterion: str = "centre", iou: float = 0.1
) -> np.ndarray:
    """bool [K]: whether a box finds each connected part of `mask` (`mask_boxes` order).

    `criterion="centre"`: some box contains the centre of the part's bounding box (an exudate
    cluster found as one box finds each of its deposits; a box that only touches a lesion's
    edge does not find it). `criterion="iou"`: some box has IoU >= `iou` with the part's box.
    Both are looser than a detector's usual IoU 0.5, as LCL needs a 128 px patch that shows the
    lesion, not an outline of it.
    """
    truth = mask_boxes(mask)
    if len(truth) == 0 or len(boxes) == 0:
        return np.zeros(len(truth), bool)
    boxes = np.asarray(boxes, np.float32)
    if criterion == "iou":
        return box_iou(truth, boxes).max(axis=1) >= iou
    if criterion != "centre":
        raise ValueError(f"criterion must be 'centre' or 'iou', got {criterion!r}")
    cx = (truth[:, 0, None] + truth[:, 2, None]) / 2
    cy = (truth[:, 1, None] + truth[:, 3, None]) / 2
    inside = (boxes[None, :, 0] <= cx) & (cx <= boxes[None, :, 2])
    inside &= (boxes[None, :, 1] <= cy) & (cy <= boxes[None, :, 3])
    return inside.any(axis=1)


def candidate_recall(
    n_per_type: int = 20,
    n_normal: int = 20,
    *,
    size: int = 256,
    seed: int = 0,
    iou: float = 0.1,
    lesion_contrast: float = 1.0,
    lesion_types: Sequence[str] = ("microaneurysm", "haemorrhage", "exudate", "mixed"),
    **candidate_kwargs,
) -> dict[str, float]:
    """Recall and boxes per image of `lesion_candidates` on demo photos drawn in memory.

    The photos are drawn as `jaxad.data.demo` draws its test split (`make_normal_fundus`, then
    `add_lesions` of each type, `n_per_type` each, plus `n_normal` lesion-free ones), with their
    exact FOV, from seeds of their own (not the demo folder's images). A lesion is a connected
    part of the mask; `found_lesions` decides whether the candidates find it.
    `lesion_contrast` < 1 blends each lesion photo towards its normal photo (0.5: half the
    drawn contrast), to probe lesions fainter than the demo's, which are conspicuous.

    Returns:
      `recall` (criterion "centre", over all lesions), `recall_iou` (criterion "iou" with
      `iou`), `recall_<type>` (centre), `lesions`, `images`, `boxes_per_image` (mean over the
      lesion photos), `max_boxes_per_image`, `boxes_per_normal_image` (false candidates on the
      lesion-free photos) and `seconds_per_image` (wall time of `lesion_candidates` alone).
    """
    from jaxad.data import demo

    centre: dict[str, list[bool]] = {t: [] for t in lesion_types}
    overlap: list[bool] = []
    counts: list[int] = []
    normal_counts: list[int] = []
    seconds = 0.0
    for t, kind in enumerate(("normal", *lesion_types)):
        for i in range(n_normal if kind == "normal" else n_per_type):
            rng = np.random.default_rng([seed, 7919, t, i])
            normal = demo.make_normal_fundus(rng, size)
            image, mask = normal.image, None
            if kind != "normal":
                image, mask = demo.add_lesions(normal, kind, rng)
                if lesion_contrast != 1.0:
                    blend = normal.image + lesion_contrast * (image - normal.image.astype(float))
                    image = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
            start = time.perf_counter()
            boxes = lesion_candidates(image, normal.fov, **candidate_kwargs)
            seconds += time.perf_counter() - start
            if mask is None:
                normal_counts.append(len(boxes))
                continue
            counts.append(len(boxes))
            centre[kind] += found_lesions(boxes, mask).tolist()
            overlap += found_lesions(boxes, mask, criterion="iou", iou=iou).tolist()
    every = [f for kind in lesion_types for f in centre[kind]]
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")
    return {
        "recall": mean(every),
        "recall_iou": mean(overlap),
        **{f"recall_{kind}": mean(found) for kind, found in centre.items()},
        "lesions": len(every),
        "images": len(counts) + len(normal_counts),
        "boxes_per_image": mean(counts),
        "max_boxes_per_image": max(counts, default=0),
        "boxes_per_normal_image": mean(normal_counts),
        "seconds_per_image": seconds / max(1, len(counts) + len(normal_counts)),
    }
