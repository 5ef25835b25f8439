"""Lesion-based contrastive learning's patch sampling and augmentations, drawn on device.

LCL (MICCAI 2021) pre-trains on pairs of 128 x 128 patches cut around one detected lesion of an
EyePACS image (512 x 512 RGB), each patch augmented independently. Everything here is pure jax on
float32 RGB images [H, W, 3] in [0, 1], jittable and vmapped over a batch with one key per sample
(as `jaxad.ops.augment`).

Patch sampling (the original's dataset item is one image): one box is picked uniformly among the
image's lesion boxes (x1, y1, x2, y2, float pixels), then two patches containing it are placed
independently. Per axis (x shown; y the same with heights), with box width b = x2 - x1 and slack
s = size - b:

- normal case (x1 < W - b): shift = int(u * min(x1, s)), u ~ U[0, 1), patch [x1 - shift, x2 + s -
  shift): the left shift is capped by x1, so the patch never starts before 0, but it can run past
  the right edge, where Pillow's crop pads with black;
- mirrored case (x1 >= W - b, a box reaching the right edge; B3's 5 px margin excludes it): the
  shift is drawn on the right, shift = int(u * min(W - b, s)), patch [x1 - (s - shift), x2 + shift).

Pillow rounds the float corners half to even (Python's `round`), so for an even `size` (LCL's
128) its crop is exactly `size` wide, as here; the patch contains every pixel whose centre is
strictly inside the box. The original draws u with Python's `random`; here each image has a key.

Augmentations, in the original's order (torchvision on Pillow images), then Normalize:

1. RandomHorizontalFlip(0.5), 2. RandomVerticalFlip(0.5);
3. ColorJitter(0.4, 0.4, 0.4, 0.1), always on: factors b, c, s ~ U[0.6, 1.4], hue ~ U[-0.1, 0.1],
   applied in a random order (a permutation of the four per sample); brightness blends with black,
   contrast with the mean luma of the image, saturation with the luma image, hue shifts H in HSV;
   each clamped to [0, 1];
4. RandomResizedCrop(size, scale (0.8, 1.2), ratio (0.8, 1.2)): torchvision's 10 tries, then the
   central crop (a scale above 1 often fails all tries, leaving the whole patch), resized by
   Pillow's antialiased bilinear filter (`augment.crop_box`, `augment.resample_matrix`);
5. RandomAffine(180, translate (0.2, 0.2)): angle ~ U(-180, 180), integer shifts
   round(U(-0.2 W, 0.2 W)) (half to even), about the image centre (W/2, H/2), fill 0. torchvision's
   default interpolation for RandomAffine (and RandomRotation) is NEAREST, which is kept: output
   pixel centre (x + 0.5, y + 0.5) is mapped back and reads the input pixel containing it;
6. RandomGrayscale(0.2): ITU-R 601-2 luma (0.299, 0.587, 0.114) replicated to 3 channels;
7. Normalize with EyePACS's mean and std.

`GRADING` is the downstream fine-tuning augmentation of the grader (PYCLS `eyepacs.yaml`): the
same functions with other settings (brightness and contrast 0.2 only, a crop to the image size
with scale (0.87, 1.15) and ratio (0.7, 1.3), no grayscale). PYCLS applies RandomRotation and then
RandomAffine(degrees=0, translate) as two transforms, so the rotation's corners that leave the
frame are lost before the shift; `separate_translation` reproduces that. (RandomRotation turns
counter-clockwise and F.affine clockwise; the angle's law is symmetric, so this is the same law.)

Differences from the original, about one 8-bit grey level or less: the original's Pillow images
are 8-bit and every operation rounds back to uint8 (Pillow's resize even rounds between its two
passes); Pillow's contrast mean is rounded to an integer grey level, and torchvision shifts the
hue of a Pillow image in 8-bit HSV, by a whole number of 1/255 turns. The colour
formulas here are torchvision's float tensor ones, except the luma weights: Pillow's 0.299 (as
the original) where torchvision's tensor code has 0.2989. Pillow's nearest-neighbour affine uses
16.16 fixed point, so a pixel whose source lies within ~1e-5 px of a pixel border may read its
neighbour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxad.ops import augment

Params = dict[str, jax.Array]

EYEPACS_MEAN = (0.425753653049469, 0.29737451672554016, 0.21293757855892181)
EYEPACS_STD = (0.27670302987098694, 0.20240527391433716, 0.1686241775751114)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's convert("L")


@dataclasses.dataclass(frozen=True)
class LesionAugment:
    """Augmentation settings; the defaults are LCL's (B5). A strength of 0 turns a jitter off."""

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    crop_size: int | None = None  # RandomResizedCrop's output side; None: the input's side
    crop_scale: tuple[float, float] = (0.8, 1.2)
    crop_ratio: tuple[float, float] = (0.8, 1.2)
    crop_tries: int = 10
    degrees: float = 180.0  # rotation angle ~ U(-degrees, degrees)
    translate: tuple[float, float] = (0.2, 0.2)  # max shift as a fraction of (width, height)
    separate_translation: bool = False  # rotate, then shift the rotated image (PYCLS)
    grayscale_p: float = 0.2
    mean: tuple[float, float, float] | None = EYEPACS_MEAN  # None: leave in [0, 1]
    std: tuple[float, float, float] | None = EYEPACS_STD

    def __post_init__(self):
        for name in ("hflip_p", "vflip_p", "grayscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if min(self.brightness, self.contrast, self.saturation, self.degrees) < 0:
            raise ValueError(f"jitter strengths and degrees must be >= 0: {self}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (torchvision), got {self.hue}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        self.crop_law()  # validates scale and ratio

    def crop_law(self) -> augment.Augment:
        """RandomResizedCrop's box law as `augment.Augment` settings (only scale, ratio, tries)."""
        return augment.Augment(scale=self.crop_scale, ratio=self.crop_ratio, tries=self.crop_tries)


LCL = LesionAugment()
GRADING = LesionAugment(
    brightness=0.2,
    contrast=0.2,
    saturation=0.0,
    hue=0.0,
    crop_scale=(0.87, 1.15),
    crop_ratio=(0.7, 1.3),
    separate_translation=True,
    grayscale_p=0.0,
)


# ----------------------------------------------------------------------------- lesion patches


def patch_start(u: Any, lo: Any, hi: Any, extent: int, size: int, *, xp: Any = jnp) -> Any:
    """int32 first pixel of a `size`-long patch around the box [lo, hi) on an axis of `extent`.

    B4's rule for one uniform `u` in [0, 1), then Pillow's rounding. Defensive clipping (B3's
    filter makes it a no-op): the box is clipped to [0, extent], a box longer than `size` gets
    slack 0 (the patch then starts at the box and covers its first `size` pixels), and the start
    is clipped at 0 (reachable only in the mirrored case with extent < size). ``xp=np`` runs
    the same rule on the host (`jaxad.data.pipeline.lesion_pair_example`).
    """
    lo = xp.clip(lo, 0.0, extent)
    hi = xp.clip(hi, lo, extent)
    width = hi - lo
    slack = xp.maximum(size - width, 0.0)
    normal = lo < extent - width
    room = xp.where(normal, xp.minimum(lo, slack), xp.minimum(extent - width, slack))
    shift = xp.trunc(u * room)  # Python's int() on a non-negative float
    start = xp.where(normal, lo - shift, lo - (slack - shift))
    return xp.maximum(xp.round(start), 0).astype(xp.int32)


def lesion_patch_origin(
    key: jax.Array, box: jax.Array, image_hw: tuple[int, int], size: int = 128
) -> jax.Array:
    """int32 [2] (top, left) of a random `size` patch containing `box` (x1, y1, x2, y2)."""
    height, width = image_hw
    u = jax.random.uniform(key, (2,))
    box = box.astype(jnp.float32)
    top = patch_start(u[1], box[1], box[3], height, size)
    left = patch_start(u[0], box[0], box[2], width, size)
    return jnp.stack([top, left])


def choose_box(key: jax.Array, boxes: jax.Array, num_boxes: jax.Array) -> jax.Array:
    """One of the first `num_boxes` rows of `boxes` [K, 4], uniformly (rows past it are padding).

    B3 drops images without boxes, so `num_boxes` >= 1; 0 is treated as 1.
    """
    index = jax.random.randint(key, (), 0, jnp.maximum(num_boxes, 1))
    return boxes[index]


def crop_patch(image: jax.Array, origin: jax.Array, size: int) -> jax.Array:
    """[size, size, C] from (top, left) >= 0, zero past the bottom/right edges (Pillow's crop)."""
    padded = jnp.pad(image, ((0, size), (0, size), (0, 0)))
    return lax.dynamic_slice(padded, (origin[0], origin[1], 0), (size, size, image.shape[2]))


def lesion_patch(
    key: jax.Array, image: jax.Array, boxes: jax.Array, num_boxes: jax.Array, size: int = 128
) -> jax.Array:
    """A random `size` patch of `image` [H, W, C] containing one of its lesion boxes."""
    k_box, k_place = jax.random.split(key)
    box = choose_box(k_box, boxes, num_boxes)
    return crop_patch(image, lesion_patch_origin(k_place, box, image.shape[:2], size), size)


def pair_origins(
    key: jax.Array,
    boxes: jax.Array,
    num_boxes: jax.Array,
    image_hw: tuple[int, int],
    size: int = 128,
) -> tuple[jax.Array, jax.Array]:
    """(box [4], origins int32 [2, 2]): one lesion, two independent placements around it."""
    k_box, k1, k2 = jax.random.split(key, 3)
    box = choose_box(k_box, boxes, num_boxes)
    origins = jnp.stack([lesion_patch_origin(k, box, image_hw, size) for k in (k1, k2)])
    return box, origins


def two_lesion_patches(
    key: jax.Array, image: jax.Array, boxes: jax.Array, num_boxes: jax.Array, size: int = 128
) -> tuple[jax.Array, jax.Array]:
    """LCL's positive pair before augmentation: two crops around the same lesion (B4)."""
    _, origins = pair_origins(key, boxes, num_boxes, image.shape[:2], size)
    return crop_patch(image, origins[0], size), crop_patch(image, origins[1], size)


def lesion_pairs(
    key: jax.Array, images: jax.Array, boxes: jax.Array, num_boxes: jax.Array, size: int = 128
) -> tuple[jax.Array, jax.Array]:
    """`two_lesion_patches` of images [B, H, W, C], boxes [B, K, 4], num_boxes [B], a key each."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x, b, n: two_lesion_patches(k, x, b, n, size))(
        keys, images, boxes, num_boxes
    )


# ----------------------------------------------------------------------------- colour


def luma(image: jax.Array) -> jax.Array:
    """[..., 3] -> [..., 1] grey level (ITU-R 601-2)."""
    return (image @ jnp.asarray(LUMA, image.dtype))[..., None]


def to_grayscale(image: jax.Array) -> jax.Array:
    """Luma replicated to 3 channels, as RandomGrayscale's `convert("L")` then RGB."""
    return jnp.broadcast_to(luma(image), image.shape)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """factor * image + (1 - factor) * other, clamped: torchvision's colour ops."""
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with black."""
    return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the mean luma of the whole image [H, W, 3] (one image: vmap over a batch)."""
    return _blend(image, luma(image).mean(), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the luma image."""
    return _blend(image, luma(image), factor)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
    """[..., 3] RGB -> HSV, H in [0, 1) turns; H = S = 0 for greys (no division by zero)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    v = image.max(axis=-1)
    chroma = v - image.min(axis=-1)
    grey = chroma == 0
    s = jnp.where(grey, 0.0, chroma / jnp.where(grey, 1.0, v))
    c = jnp.where(grey, 1.0, chroma)
    rc, gc, bc = (v - r) / c, (v - g) / c, (v - b) / c
    h = jnp.where(v == r, bc - gc, jnp.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(grey, 0.0, jnp.mod(h / 6.0, 1.0))
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """[..., 3] HSV -> RGB, the closed form of the six-sector formula."""
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]), keeping saturation and value."""
    hsv = rgb_to_hsv(image)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # torchvision's op indices 0..3


def color_jitter(image: jax.Array, params: Params, settings: LesionAugment = LCL) -> jax.Array:
    """ColorJitter: the four ops in the order `params["order"]`; an op of strength 0 is skipped.

    torchvision draws the permutation over all four and skips those that are off, which is this.
    """
    adjust = {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast,
        "saturation": adjust_saturation,
        "hue": adjust_hue,
    }
    branches = [
        (lambda x, n=name: adjust[n](x, params[n])) if getattr(settings, name) else (lambda x: x)
        for name in JITTER_OPS
    ]
    # One traced step, looped: four unrolled switches would trace and compile every op four times.
    step = lambda i, x: lax.switch(params["order"][i], branches, x)
    image = lax.fori_loop(0, len(JITTER_OPS), step, image)
    return image


# ----------------------------------------------------------------------------- geometry


def affine(image: jax.Array, angle: jax.Array, translate: jax.Array) -> jax.Array:
    """torchvision's F.affine(angle, translate, scale 1, shear 0, NEAREST, fill 0) of [H, W, C].

    `angle` in degrees turns the image clockwise as displayed (F.affine's convention; 90 is
    np.rot90(image, -1)), about the centre (W/2, H/2); `translate` (tx, ty) pixels moves it right
    and down. Each output pixel centre is mapped back through the inverse transform and reads the
    input pixel containing it, or 0 outside the image.
    """
    height, width = image.shape[:2]
    theta = jnp.deg2rad(angle)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    y = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5 - height / 2 - translate[1]
    x = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5 - width / 2 - translate[0]
    col = jnp.floor(cos * x + sin * y + width / 2).astype(jnp.int32)
    row = jnp.floor(-sin * x + cos * y + height / 2).astype(jnp.int32)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    out = image[jnp.clip(row, 0, height - 1), jnp.clip(col, 0, width - 1)]
    return jnp.where(inside[..., None], out, 0.0).astype(image.dtype)


def normalize(image: jax.Array, settings: LesionAugment = LCL) -> jax.Array:
    """(x - mean) / std per channel; the identity when the settings have no mean."""
    if settings.mean is None:
        return image
    mean = jnp.asarray(settings.mean, image.dtype)
    return (image - mean) / jnp.asarray(settings.std, image.dtype)


# ----------------------------------------------------------------------------- pipeline


def output_hw(height: int, width: int, settings: LesionAugment = LCL) -> tuple[int, int]:
    """The views' (height, width): RandomResizedCrop's square side, or the input's shape."""
    if settings.crop_size is None:
        return height, width
    return settings.crop_size, settings.crop_size


def resized_crop(image: jax.Array, box: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """[H, W, C] -> [*out_hw, C]: crop `box` (top, left, h, w), Pillow's antialiased bilinear.

    `augment.resized_crop` for a possibly non-square output (the grader keeps the image's shape).
    """
    height, width = image.shape[:2]
    rows = augment.resample_matrix(box[0], box[2], height, out_hw[0])
    cols = augment.resample_matrix(box[1], box[3], width, out_hw[1])
    return jnp.einsum("oh,hwc,pw->opc", rows, image.astype(jnp.float32), cols)


def sample_params(key: jax.Array, height: int, width: int, settings: LesionAugment = LCL) -> Params:
    """One view's random parameters (scalars) for an image of `height` x `width`.

    `hflip`, `vflip`; `order` (permutation of `JITTER_OPS`) and the factors `brightness`,
    `contrast`, `saturation`, `hue` (a shift); `box` (top, left, h, w) of the resized crop;
    `angle` (degrees) and `translate` (int32 tx, ty, in output pixels); `gray`.
    """
    k_uniform, k_box = jax.random.split(key)
    # One draw for all the scalars (each random call adds a threefry hash to compile).
    u = jax.random.uniform(k_uniform, (14,))
    out_h, out_w = output_hw(height, width, settings)
    max_shift = jnp.asarray([settings.translate[0] * out_w, settings.translate[1] * out_h])
    between = lambda v, lo, hi: lo + (hi - lo) * v
    factor = lambda v, s: between(v, max(0.0, 1.0 - s), 1.0 + s)  # torchvision's jitter range
    return {
        "hflip": u[0] < settings.hflip_p,
        "vflip": u[1] < settings.vflip_p,
        "order": jnp.argsort(u[10:14]).astype(jnp.int32),  # a uniform permutation
        "brightness": factor(u[2], settings.brightness),
        "contrast": factor(u[3], settings.contrast),
        "saturation": factor(u[4], settings.saturation),
        "hue": between(u[5], -settings.hue, settings.hue),
        "box": augment.crop_box(k_box, height, width, settings.crop_law()),
        "angle": between(u[6], -settings.degrees, settings.degrees),
        # Python's round (half to even), as torchvision rounds the shift
        "translate": jnp.round(between(u[7:9], -max_shift, max_shift)).astype(jnp.int32),
        "gray": u[9] < settings.grayscale_p,
    }


def apply_params(image: jax.Array, params: Params, settings: LesionAugment = LCL) -> jax.Array:
    """One view of an RGB image [H, W, 3] in [0, 1] -> normalised [*output_hw, 3] (B5's order)."""
    x = image.astype(jnp.float32)
    x = jnp.where(params["hflip"], x[:, ::-1], x)
    x = jnp.where(params["vflip"], x[::-1], x)
    x = color_jitter(x, params, settings)
    x = resized_crop(x, params["box"], output_hw(*image.shape[:2], settings))
    translate = params["translate"].astype(jnp.float32)
    if settings.separate_translation:
        x = affine(affine(x, params["angle"], jnp.zeros(2)), 0.0, translate)
    else:
        x = affine(x, params["angle"], translate)
    x = jnp.where(params["gray"], to_grayscale(x), x)
    return normalize(x, settings)


def view(key: jax.Array, image: jax.Array, settings: LesionAugment = LCL) -> jax.Array:
    """One random augmented view of an RGB image [H, W, 3]."""
    height, width = image.shape[:2]
    return apply_params(image, sample_params(key, height, width, settings), settings)


def views(key: jax.Array, images: jax.Array, settings: LesionAugment = LCL) -> jax.Array:
    """One random view of each of images [B, H, W, 3], with its own key per sample."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: view(k, x, settings))(keys, images)
