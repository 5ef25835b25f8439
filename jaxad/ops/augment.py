"""SimCLR's augmentations of the MOOD slices, drawn on device per sample (pure jax, vmapped).

The SimCLR fork that pre-trained the MOOD VGG19 applies, independently for each of the two views
of a slice (torchvision 0.5, Pillow 7, OpenCV 3.4):

1. RandomResizedCrop(96): an area fraction s ~ U(0.08, 1) and an aspect ratio r with
   log r ~ U(log 3/4, log 4/3) give w = round(sqrt(s A r)), h = round(sqrt(s A / r)) (A the
   image area, Python's half-to-even rounding); the first of 10 tries that fits in the image
   is taken, with its top-left corner uniform over the valid positions; when none fits, the
   centre crop of the whole image clamped to the ratio range. The crop is resized to 96 x 96
   by Pillow's bilinear filter, which is antialiased: a triangle widened by the downscaling
   factor, with half-pixel centres, renormalised at the crop's edges (`resample_matrix`).
2. RandomHorizontalFlip(0.5).
3. RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.8): brightness factor b ~ U(0.2, 1.8)
   (x -> b x), contrast factor c ~ U(0.2, 1.8) (x -> m + c (x - m), m the image mean), each
   clipped to [0, 1] as Pillow's 8-bit images are, in a random order. Saturation and hue do
   nothing to a grey image (its RGB copies are equal, so its saturation is 0), so of the four
   shuffled operations only the relative order of brightness and contrast matters: either
   first with probability 1/2. They commute except for the clipping.
4. RandomGrayscale(0.2): a no-op on grey images (their luma is the grey value), not drawn.
5. Gaussian blur with probability 0.5: OpenCV's 9 x 9 kernel (int(0.1 * 96)), separable, taps
   exp(-x^2 / (2 sigma^2)) normalised to sum 1, sigma ~ U(0.1, 2.0), borders reflected without
   repeating the edge pixel (OpenCV's BORDER_REFLECT_101, numpy's "reflect").
6. ToTensor: [0, 1], no mean/std normalisation.

Differences, all below one grey level: the original works on 8-bit images (the slice times 255
cast to uint8, and every Pillow/OpenCV operation rounds back to 8 bits); here everything is in
float32, and the contrast mean is not rounded to an integer grey level as Pillow's is. The
original drew the blur with numpy's global random state, which PyTorch 1.4 does not reseed in
its data-loader workers, so every worker replayed the same sequence of blur decisions in every
epoch; here every sample and view has its own key.

`sample_params` draws a view's parameters from one key and `apply_params` applies them, so each
step can be checked separately; `view` is both, `views` vmaps it over a batch with one key per
sample, and `two_views` draws the two independent views SimCLR compares.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Augment:
    """The augmentation's settings; the defaults are the MOOD SimCLR run's."""

    size: int = 96  # output side of RandomResizedCrop
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    tries: int = 10
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    blur_p: float = 0.5
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(
                f"blur_kernel must be odd and positive (OpenCV), got {self.blur_kernel}"
            )
        if not 0 < self.scale[0] <= self.scale[1] or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]: {self}")


def _factor_range(strength: float) -> tuple[float, float]:
    """torchvision's ColorJitter factor range for a strength s: [max(0, 1 - s), 1 + s]."""
    return max(0.0, 1.0 - strength), 1.0 + strength


def fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's fallback: the central crop within the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(key: jax.Array, height: int, width: int, aug: Augment = Augment()) -> jax.Array:
    """int32 [4] (top, left, h, w) of one RandomResizedCrop, torchvision's sampling.

    All tries are drawn at once and the first that fits is kept, which has the law of the
    sequential loop (later tries are independent of earlier ones).
    """
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = height * width
    target = area * jax.random.uniform(
        k_area, (aug.tries,), minval=aug.scale[0], maxval=aug.scale[1]
    )
    log_lo, log_hi = math.log(aug.ratio[0]), math.log(aug.ratio[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (aug.tries,), minval=log_lo, maxval=log_hi))
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    found = fits[first]
    f_top, f_left, f_h, f_w = fallback_box(height, width, aug.ratio)
    h = jnp.where(found, h[first], f_h)
    w = jnp.where(found, w[first], f_w)
    top = jnp.where(found, jax.random.randint(k_top, (), 0, height - h + 1), f_top)
    left = jnp.where(found, jax.random.randint(k_left, (), 0, width - w + 1), f_left)
    return jnp.stack([top, left, h, w]).astype(jnp.int32)


def sample_params(key: jax.Array, height: int, width: int, aug: Augment = Augment()) -> Params:
    """One view's random parameters (scalars) for an image of `height` x `width`.

    `box` (top, left, h, w); `flip`; `jitter` (whether ColorJitter runs), `brightness`,
    `contrast` (its factors) and `brightness_first`; `blur` and `sigma`.
    """
    keys = jax.random.split(key, 9)
    b_lo, b_hi = _factor_range(aug.brightness)
    c_lo, c_hi = _factor_range(aug.contrast)
    return {
        "box": crop_box(keys[0], height, width, aug),
        "flip": jax.random.uniform(keys[1]) < aug.flip_p,
        "jitter": jax.random.uniform(keys[2]) < aug.jitter_p,
        "brightness": jax.random.uniform(keys[3], minval=b_lo, maxval=b_hi),
        "contrast": jax.random.uniform(keys[4], minval=c_lo, maxval=c_hi),
        "brightness_first": jax.random.uniform(keys[5]) < 0.5,
        "blur": jax.random.uniform(keys[6]) < aug.blur_p,
        "sigma": jax.random.uniform(keys[7], minval=aug.blur_sigma[0], maxval=aug.blur_sigma[1]),
    }


def resample_matrix(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """[out_size, in_size] weights of Pillow's bilinear resize of the crop [start, start+length).

    Output pixel k is centred at start + (k + 0.5) * length / out_size; input pixel p (centre
    p + 0.5) has the triangle weight max(0, 1 - |p + 0.5 - centre| / f), f = max(1, length /
    out_size), and only pixels inside the crop count; rows are normalised to sum 1. With a
    dynamic `start` and `length` this is what cropping then resizing with Pillow computes.
    """
    scale = length.astype(jnp.float32) / out_size
    support = jnp.maximum(scale, 1.0)
    centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
    pixel = jnp.arange(in_size)
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(pixel + 0.5 - centre[:, None]) / support)
    inside = (pixel >= start) & (pixel < start + length)
    weights = jnp.where(inside[None, :], weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def resized_crop(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """[H, W, C] -> [size, size, C]: crop `box` (top, left, h, w), Pillow-bilinear resize."""
    height, width = image.shape[:2]
    rows = resample_matrix(box[0], box[2], height, size)
    cols = resample_matrix(box[1], box[3], width, size)
    return jnp.einsum("oh,hwc,pw->opc", rows, image.astype(jnp.float32), cols)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Pillow's Brightness: a blend with black, clipped."""
    return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Pillow's Contrast: a blend with the image's mean grey level, clipped."""
    mean = image.mean()
    return jnp.clip(mean + factor * (image - mean), 0.0, 1.0)


def color_jitter(image: jax.Array, params: Params) -> jax.Array:
    """Brightness and contrast in the drawn order, if `params["jitter"]`."""
    b, c = params["brightness"], params["contrast"]
    b_then_c = adjust_contrast(adjust_brightness(image, b), c)
    c_then_b = adjust_brightness(adjust_contrast(image, c), b)
    out = jnp.where(params["brightness_first"], b_then_c, c_then_b)
    return jnp.where(params["jitter"], out, image)


def gaussian_kernel(sigma: jax.Array, size: int) -> jax.Array:
    """OpenCV's getGaussianKernel(size, sigma): [size] taps summing to 1."""
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    taps = jnp.exp(-(x**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def gaussian_blur(image: jax.Array, sigma: jax.Array, size: int) -> jax.Array:
    """[H, W, C] separable Gaussian blur with reflect-101 borders (OpenCV's GaussianBlur)."""
    taps = gaussian_kernel(sigma, size)
    r = size // 2
    height, width = image.shape[:2]
    padded = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(taps[i] * padded[i : i + height] for i in range(size))
    return sum(taps[j] * rows[:, j : j + width] for j in range(size))


def apply_params(image: jax.Array, params: Params, aug: Augment = Augment()) -> jax.Array:
    """One view of a [H, W, C] image in [0, 1] -> [size, size, C] in [0, 1]."""
    x = resized_crop(image, params["box"], aug.size)
    x = jnp.where(params["flip"], x[:, ::-1], x)
    x = color_jitter(x, params)
    return jnp.where(params["blur"], gaussian_blur(x, params["sigma"], aug.blur_kernel), x)


def view(key: jax.Array, image: jax.Array, aug: Augment = Augment()) -> jax.Array:
    """One random view of a [H, W, C] image."""
    height, width = image.shape[:2]
    return apply_params(image, sample_params(key, height, width, aug), aug)


def views(key: jax.Array, images: jax.Array, aug: Augment = Augment()) -> jax.Array:
    """One random view of each of [B, H, W, C] images, with its own key per sample."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: view(k, x, aug))(keys, images)


def two_views(
    key: jax.Array, images: jax.Array, aug: Augment = Augment()
) -> tuple[jax.Array, jax.Array]:
    """Two independent random views of each image, as SimCLR's data transform draws them."""
    k1, k2 = jax.random.split(key)
    return views(k1, images, aug), views(k2, images, aug)
