"""Per-example transforms on the common record (pure numpy and Pillow, no JAX).

The record is the dict described in `jaxad.data.records`. `resize_record` turns it into the
resized form the pipeline batches: ``image`` uint8 [S, S, C], ``mask`` uint8 [S, S] and ``fov``
float32 [S, S] in [0, 1]. Random transforms take a ``np.random.Generator`` so that grain can seed
them per record.

Images are uint8 (photos, X-rays) or, for data with more than 8 bits (MRI and CT slices, 16-bit
mammography), uint16 or float. Those are read in "unit scale" (`unit_float`: uint16 / 65535,
floats as stored, e.g. MOOD's [0, 1] intensities) as float32 and resized in Pillow's float mode
with the same antialiased bilinear filter, so no precision is lost to 8 bits; `normalize`
divides uint8 by 255 and leaves floats as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


# ITU-R 601-2 luma, the weights of Pillow's ``convert("L")``.
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def unit_float(image: np.ndarray) -> np.ndarray:
    """A uint16 or float image as float32 in unit scale (uint16 / 65535; floats unchanged)."""
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise ValueError(f"images must be uint8, uint16 or float, got {image.dtype}")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image as uint8 for display: uint8 unchanged, others from unit scale, clipped to [0, 1]."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(unit_float(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """[H, W, C] with C in {1, 3} -> [H, W, channels], uint8 or float32 in unit scale.

    Greyscale is repeated into RGB; RGB becomes greyscale with Pillow's ITU-R 601-2 luma, as
    ``Image.convert("L")`` does for folder images (the same weights for float images).
    """
    if image.dtype != np.uint8:
        image = unit_float(image)
    c = image.shape[-1]
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if c == 3 and channels == 1:
        if image.dtype != np.uint8:
            return (image @ _LUMA)[..., None]
        return np.asarray(Image.fromarray(image, "RGB").convert("L"), dtype=np.uint8)[..., None]
    raise ValueError(f"cannot convert an image with {c} channels to {channels}")


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [S, S, C] with Pillow bilinear (float32 -> float32 likewise).

    Pillow's bilinear filter widens with the downscale factor (it is antialiased), so this equals
    torchvision's ``Resize`` on PIL images, which the reference implementations use. Float
    images are resized channel by channel in Pillow's 32-bit float mode "F", as the MOOD
    solution resizes its float slices.
    """
    h, w = _size_hw(size)
    if image.shape[:2] == (h, w):
        return image
    if image.dtype != np.uint8:
        channels = [
            np.asarray(Image.fromarray(image[..., c], "F").resize((w, h), Image.BILINEAR))
            for c in range(image.shape[-1])
        ]
        return np.stack(channels, axis=-1).astype(np.float32)
    if image.shape[-1] == 1:
        out = Image.fromarray(image[..., 0], "L").resize((w, h), Image.BILINEAR)
        return np.asarray(out, dtype=np.uint8)[..., None]
    out = Image.fromarray(image, "RGB").resize((w, h), Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """uint8 [H, W] -> uint8 [S, S] with nearest neighbour (values stay in the same set)."""
    h, w = _size_hw(size)
    if mask.shape == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask, "L").resize((w, h), Image.NEAREST), dtype=np.uint8)


def resize_fov(fov: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """uint8 [H, W] in {0, 1} -> float32 [S, S] in [0, 1] with Pillow bilinear.

    The FOV is scaled to 0/255, resized as an 8-bit image and divided by 255: the same soft edges,
    to the last bit, as the reference code that loads the mask as an image, resizes it bilinearly
    and applies ``ToTensor``.
    """
    h, w = _size_hw(size)
    img = Image.fromarray((fov > 0).astype(np.uint8) * 255, "L")
    if fov.shape != (h, w):
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def resize_record(rec: dict[str, Any], size: int | Sequence[int]) -> dict[str, Any]:
    """Resizes a common record to ``size`` (an int S for S x S, or (height, width)).

    Returns a new dict: ``image`` uint8 [S, S, C] (bilinear, antialiased), ``mask`` uint8 [S, S]
    (nearest), ``fov`` float32 [S, S] in [0, 1] (bilinear, soft edges); other keys are copied.
    """
    out = dict(rec)
    out["image"] = resize_image(rec["image"], size)
    out["mask"] = resize_mask(rec["mask"], size)
    out["fov"] = resize_fov(rec["fov"], size)
    return out


def random_crop(
    rec: dict[str, Any], rng: np.random.Generator, size: int, *, min_max: float, tries: int = 100
) -> dict[str, Any]:
    """A uniformly placed ``size`` x ``size`` crop of a record at its own resolution.

    For window-based methods trained on patches of large images (PICARD's 256 crops of
    tomosynthesis slices), which must not be resized as a whole. An image whose short side is
    below ``size`` is first resized (bilinear) so that it equals ``size``. Background rejection:
    a crop whose brightest pixel is below ``min_max`` (unit scale, 0-1) is drawn again, up to
    ``tries`` times (then the last one is kept); PICARD's rule, max >= -0.99 in [-1, 1], is
    ``min_max = 0.005``. ``mask`` and ``fov`` are cropped alike; ``fov`` becomes float32.
    """
    image = rec["image"]
    h, w = image.shape[:2]
    out = dict(rec)
    if min(h, w) < size:
        scale = size / min(h, w)
        hw = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = resize_image(image, hw)
        out["mask"] = resize_mask(rec["mask"], hw)
        out["fov"] = resize_fov(rec["fov"], hw)
        h, w = hw
    threshold = min_max * (255.0 if image.dtype == np.uint8 else 1.0)
    for _ in range(max(tries, 1)):
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = image[top : top + size, left : left + size]
        if crop.max() >= threshold:
            break
    window = (slice(top, top + size), slice(left, left + size))
    out["image"] = crop
    out["mask"] = out["mask"][window]
    out["fov"] = np.asarray(out["fov"], np.float32)[window]
    return out


def random_flips(
    rec: dict[str, Any],
    rng: np.random.Generator,
    *,
    hflip: bool,
    vflip: bool,
    flip_fov: bool,
) -> dict[str, Any]:
    """Flips a record left-right and/or up-down, each with probability 1/2.

    The horizontal coin is drawn before the vertical one (torchvision's RandomHorizontalFlip then
    RandomVerticalFlip). ``image`` and ``mask`` always flip together. ``fov`` flips with them only
    when ``flip_fov`` is True; ``flip_fov=False`` reproduces the reference Lesion2Void code, whose
    FOV mask goes through a separate transform and is never flipped. For near-circular FOVs centred
    in the image this matters little. Returns a new dict whose arrays may be views of the input.
    """
    out = dict(rec)
    axes = []
    if hflip and rng.random() < 0.5:
        axes.append(1)
    if vflip and rng.random() < 0.5:
        axes.append(0)
    if axes:
        out["image"] = np.flip(rec["image"], axis=axes)
        out["mask"] = np.flip(rec["mask"], axis=axes)
        if flip_fov:
            out["fov"] = np.flip(rec["fov"], axis=axes)
    return out


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [..., C] -> float32 ``(x / 255 - mean) / std`` per channel (ToTensor + Normalize).

    Float images (unit scale, see `unit_float`) give ``(x - mean) / std``.
    """
    c = image.shape[-1]
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.shape != (c,) or std.shape != (c,):
        raise ValueError(
            f"mean and std need one value per channel ({c}), got {mean.tolist()}, {std.tolist()}"
        )
    if image.dtype != np.uint8:
        return (unit_float(image) - mean) / std
    out = image.astype(np.float32)  # the operations in place: no further 4-byte copies
    np.divide(out, np.float32(255.0), out=out)
    np.subtract(out, mean, out=out)
    np.divide(out, std, out=out)
    return out
