"""Fundus photo preprocessing: the black-border crop and the field of view (FOV).

Both steps reproduce what the published fundus pipelines did, in plain numpy, Pillow and scipy
(no OpenCV, no TensorFlow):

- `crop_border`: the black-border crop used by Lesion2Void and Lesion-based Contrastive Learning
  (the Kaggle diabetic retinopathy "o_O" team's crop), then a Lanczos resize to a square.
- `fov_mask`: the field-of-view circle of the EyeQ preprocessing, whose masks Lesion2Void used.
  `circle_mask` is the simpler fixed circle that Lesion2Void's README offers as an alternative.

`process_photo` does both for one photo file and encodes the result (`encode_photo`) as the
fundus builders of `data_builders/` (EyeQ, EyePACS, IDRiD) store it; `jaxad.data.fov` fits the
same FOV to the images of a folder (`data.fov`). The tfds-specific parts (features, the
builders' worker pool and corrupt-file policy) are in `data_builders/fundus.py`.
"""

from __future__ import annotations

import io
import os

import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageFilter
from scipy import ndimage

# Pixels must exceed the border's brightest value by this much to count as retina.
_BACKGROUND_MARGIN = 10


def crop_border(img: Image.Image, size: int = 512) -> Image.Image:
    """Crops the black border around the retina and resizes the crop to `size` x `size`.

    The search only runs on wide photos (w > 1.2 h), where the border is on the left and right;
    otherwise, or when the search finds too little, a centred h-wide box is used.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    # Lanczos is the filter Pillow < 10 called ANTIALIAS, which the original crop used.
    return img.crop(crop_box(img)).resize((size, size), Image.Resampling.LANCZOS)


def crop_box(img: Image.Image) -> tuple[int, int, int, int]:
    """The box (left, upper, right, lower) that `crop_border` crops from an RGB `img`.

    Builders that crop masks along with the photo (IDRiD) need it; `crop_border` only returns
    the crop.
    """
    return _foreground_box(img) or _square_box(*img.size)


def encode_photo(img: Image.Image, path: os.PathLike | str) -> tuple[bytes, bytes]:
    """JPEG bytes of a cropped photo and PNG bytes of its EyeQ field of view.

    A photo without a field of view to fit (`fov_mask` fails) gets the centred circle, with a
    warning naming `path`. JPEG quality 100 without chroma subsampling, as Lesion2Void saved its
    crops.
    """
    try:
        fov = fov_mask(img)
    except ValueError:
        logging.warning("No field of view found in %s; using a centred circle.", path)
        fov = circle_mask(img.height, img.width)
    image = io.BytesIO()
    img.save(image, format="JPEG", quality=100, subsampling=0)
    mask = io.BytesIO()
    Image.fromarray(fov).save(mask, format="PNG")
    return image.getvalue(), mask.getvalue()


def process_photo(path: epath.PathLike, size: int) -> tuple[bytes, bytes] | Exception:
    """`crop_border` and `encode_photo` of one photo file: (JPEG, FOV PNG) bytes.

    An undecodable photo is returned as its exception, for the builder's `on_corrupt` policy.
    """
    try:
        with epath.Path(path).open("rb") as f, Image.open(f) as img:
            img.load()  # Decode now, so a truncated file fails here, with its name.
            cropped = crop_border(img, size)
    except (OSError, SyntaxError, ValueError) as err:
        return err
    return encode_photo(cropped, path)


def _foreground_box(img: Image.Image) -> tuple[int, int, int, int] | None:
    """Returns the retina's bounding box (left, upper, right, lower), or None to use the square."""
    w, h = img.size
    # Below 32 px wide there is no border strip to sample.
    if w <= 1.2 * h or w < 32:
        return None
    # Blurring first keeps isolated bright pixels (JPEG noise, dust) from widening the box.
    blurred = img.filter(ImageFilter.BLUR)
    # The original slices the right strip with a negative floor division, which makes it
    # ceil(w / 32) wide; kept so the threshold matches on every width.
    left_strip = np.asarray(blurred.crop((0, 0, w // 32, h)))
    right_strip = np.asarray(blurred.crop((w + (-w) // 32, 0, w, h)))
    background = np.maximum(left_strip.max(axis=(0, 1)), right_strip.max(axis=(0, 1)))
    # Retina: any channel above its background level + margin. A per-band lookup table and
    # getbbox do this in C, ten times faster than numpy on a 12-megapixel photo.
    threshold = background.astype(int) + _BACKGROUND_MARGIN
    lut = [255 if v > t else 0 for t in threshold for v in range(256)]
    box = blurred.point(lut).getbbox()
    if box is None:
        return None
    left, upper, right, lower = box
    # A box much smaller than the photo's height means the search failed (dark or odd photo).
    if right - left < 0.8 * h or lower - upper < 0.8 * h:
        return None
    return left, upper, right, lower


def _square_box(w: int, h: int) -> tuple[int, int, int, int]:
    """Returns the centred box of width h and full height (the whole photo when h >= w)."""
    margin = (w - h) // 2
    return max(margin, 0), 0, min(w - margin, w), h


def fov_mask(img: Image.Image | np.ndarray) -> np.ndarray:
    """Returns EyeQ's field-of-view mask of an RGB fundus photo: a filled circle, uint8 {0, 1}.

    EyeQ fits a circle to the thresholded retina instead of keeping the threshold itself, so
    dark lesions or a dim rim do not punch holes in the mask. The steps follow EyeQ's
    preprocessing (grey, half size, stretch, threshold, hole fill, opening, centre from the
    widest rows and columns, radius from the rim-distance histogram). Each OpenCV operation is
    reproduced with OpenCV 4's rounding, so the masks matched EyeQ's pixel for pixel on the
    photos this was checked on (synthetic discs and `skimage.data.retina()`).

    Raises:
        ValueError: if the photo has no bright region to fit (e.g. a blank image).
    """
    rgb = np.asarray(img)
    gray = _gray(rgb) if rgb.ndim == 3 else rgb.astype(np.uint8)
    h, w = gray.shape
    small = _stretch(_half_size(gray))
    mask = _retina_region(small)
    if not mask.any():
        raise ValueError("no field of view found: the image has no region brighter than the rest")
    centre_row, centre_col = _centre(mask)
    radius = _radius(mask, centre_row, centre_col)
    return _disk(h, w, int(centre_row * 2), int(centre_col * 2), int(radius * 2))


def circle_mask(h: int, w: int, radius_frac: float = 250 / 512) -> np.ndarray:
    """Returns a centred filled circle of radius `radius_frac * min(h, w)`, uint8 {0, 1}.

    The default is the circle of Lesion2Void's Graham enhancement (radius 250 px at 512), the
    simple replacement its README suggests for the FOV mask.
    """
    return _disk(h, w, h // 2, w // 2, radius_frac * min(h, w))


def _gray(rgb: np.ndarray) -> np.ndarray:
    """Returns the uint8 luma, with OpenCV's 15-bit fixed-point RGB weights and rounding."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15).astype(np.uint8)


def _half_size(gray: np.ndarray) -> np.ndarray:
    """Halves the image as OpenCV's linear resize at x0.5 does: 2x2 means, rounded half up."""
    h, w = gray.shape
    # OpenCV sizes the output as n / 2 rounded half to even. For an odd size the last row or
    # column is averaged with itself; OpenCV then takes another code path whose rounding
    # differs by one grey level on a few pixels, too few to move the fitted circle.
    padded = np.pad(gray, ((0, h % 2), (0, w % 2)), mode="edge").astype(np.int32)
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    half = (blocks.sum(axis=(1, 3)) + 2) // 4
    return half[: int(np.rint(h / 2)), : int(np.rint(w / 2))].astype(np.uint8)


def _stretch(gray: np.ndarray) -> np.ndarray:
    """Min-max stretches to 0..255 so the threshold below adapts to dim photos."""
    lo, hi = int(gray.min()), int(gray.max())
    if hi == lo:
        return np.zeros_like(gray)
    # float32 arithmetic and round-half-to-even, as OpenCV's 8-bit normalisation does.
    scale = 255.0 / (hi - lo)
    scaled = gray.astype(np.float32) * np.float32(scale) + np.float32(-lo * scale)
    return np.rint(scaled).astype(np.uint8)


def _retina_region(gray: np.ndarray) -> np.ndarray:
    """Thresholds, fills holes and opens: the retina as one solid bool region."""
    threshold = max(0.0, float(gray.mean()) / 3 - 5)
    mask = gray > threshold
    # Background connected (4-neighbours) to the top-left or bottom-right corner stays
    # background; any other dark pixels are holes in the retina (lesions, vessels) and filled.
    # Two corners because the left and right borders are separate when the retina touches
    # the top and bottom edges.
    labels, _ = ndimage.label(~mask)
    outside = [label for label in {labels[0, 0], labels[-1, -1]} if label != 0]
    mask = ~np.isin(labels, outside)
    # Opening with a 20 x 20 square removes thin bright bits (text, reflections) outside the
    # disc. Both passes use the same even window (offsets -10..+9), as OpenCV does, and
    # pixels beyond the edge never constrain the result.
    mask = ndimage.minimum_filter(mask, size=20, mode="constant", cval=True)
    return ndimage.maximum_filter(mask, size=20, mode="constant", cval=False)


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """Returns the mean index of the rows and of the columns at least 95 % as full as the fullest.

    On a disc clipped at the top and bottom, the widest rows are a band around the centre.
    """
    rows = mask.sum(axis=1)
    cols = mask.sum(axis=0)
    return (
        float(np.flatnonzero(rows > rows.max() * 0.95).mean()),
        float(np.flatnonzero(cols > cols.max() * 0.95).mean()),
    )


def _radius(mask: np.ndarray, centre_row: float, centre_col: float) -> int:
    """Returns the largest rim distance that is (nearly) as common as the most common one.

    Rim pixels on the circle all sit at about the same distance, so the histogram peaks at the
    radius; the clipped straight edges of the disc spread out over shorter distances.
    """
    size = max(mask.shape[1] // 400 * 2 + 1, 3)
    kernel = _ellipse(size)
    # Morphological gradient: dilation minus erosion, pixels beyond the edge ignored.
    dilated = ndimage.binary_dilation(mask, structure=kernel, border_value=0)
    eroded = ndimage.binary_erosion(mask, structure=kernel, border_value=1)
    rows, cols = np.nonzero(dilated & ~eroded)
    distance = np.sqrt((rows - centre_row) ** 2 + (cols - centre_col) ** 2)
    counts = np.bincount(np.ceil(distance).astype(np.int64))
    return int(np.flatnonzero(counts > counts.max() * 0.995).max())


def _ellipse(size: int) -> np.ndarray:
    """Returns OpenCV's elliptic structuring element of an odd `size` (a cross for 3)."""
    r = size // 2
    kernel = np.zeros((size, size), dtype=bool)
    for i in range(size):
        dx = int(np.rint(r * np.sqrt(max(r * r - (i - r) ** 2, 0) / (r * r))))
        kernel[i, max(r - dx, 0) : min(r + dx + 1, size)] = True
    return kernel


def _disk(h: int, w: int, centre_row: float, centre_col: float, radius: float) -> np.ndarray:
    """Returns the filled circle `(y - cy)^2 + (x - cx)^2 <= r^2` as uint8 {0, 1}."""
    rows = (np.arange(h) - centre_row) ** 2
    cols = (np.arange(w) - centre_col) ** 2
    return (rows[:, None] + cols[None, :] <= radius**2).astype(np.uint8)
