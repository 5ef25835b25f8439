"""Tests of the fundus border crop and field-of-view masks on synthetic and real photos."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from jaxad.data import fundus


def _disc_image(h, w, centre, radius, colour=(180, 80, 30), background=0, seed=0):
    """A fundus-like photo: a textured bright disc on a flat dark background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:h, :w]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    img = np.full((h, w, 3), background, dtype=np.float64)
    img[disc] = colour
    img[disc] += rng.normal(0, 6, (disc.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8), disc


def _iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


def test_crop_wide_photo_to_disc_bounding_box():
    img, disc = _disc_image(200, 300, centre=(100, 150), radius=90)
    rows, cols = np.flatnonzero(disc.any(1)), np.flatnonzero(disc.any(0))
    box = fundus._foreground_box(Image.fromarray(img))
    # The blur widens the box by at most its 2-pixel reach.
    expected = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    assert box is not None
    assert np.abs(np.subtract(box, expected)).max() <= 2

    out = fundus.crop_border(Image.fromarray(img))
    assert out.size == (512, 512) and out.mode == "RGB"
    middle = np.asarray(out)[256].max(axis=1)
    bright = np.flatnonzero(middle > 100)
    # The disc now spans the crop from edge to edge; the black border is gone.
    assert bright[0] <= 8 and bright[-1] >= 503


def test_crop_ignores_grey_border_level():
    img, _ = _disc_image(200, 300, centre=(100, 150), radius=90, background=40)
    box = fundus._foreground_box(Image.fromarray(img))
    assert box is not None and abs(box[0] - 60) <= 2 and abs(box[2] - 241) <= 2


@pytest.mark.parametrize(
    "size, box",
    [
        ((220, 200), (10, 0, 210, 200)),  # w <= 1.2 h: no search, centred square
        ((200, 200), (0, 0, 200, 200)),
        ((150, 200), (0, 0, 150, 200)),  # taller than wide: the whole photo, stretched
    ],
)
def test_crop_narrow_photo_uses_square_box(size, box):
    w, h = size
    img, _ = _disc_image(h, w, centre=(h // 2, w // 3), radius=min(h, w) // 3)
    pil = Image.fromarray(img)
    expected = pil.crop(box).resize((512, 512), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(fundus.crop_border(pil)), np.asarray(expected))


def test_crop_falls_back_to_square_when_disc_is_small():
    # A disc under 0.8 h across is not trusted as the retina's box.
    img, _ = _disc_image(200, 300, centre=(100, 150), radius=40)
    assert fundus._foreground_box(Image.fromarray(img)) is None
    out = fundus.crop_border(Image.fromarray(img), size=64)
    expected = (
        Image.fromarray(img).crop((50, 0, 250, 200)).resize((64, 64), Image.Resampling.LANCZOS)
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_fov_mask_recovers_disc_with_dark_lesions():
    img, disc = _disc_image(512, 512, centre=(250, 262), radius=230)
    # Dark blobs inside the disc must not punch holes in the mask.
    rows, cols = np.mgrid[:512, :512]
    for r, c in [(200, 200), (300, 320), (260, 150)]:
        img[(rows - r) ** 2 + (cols - c) ** 2 <= 20**2] = 3
    mask = fundus.fov_mask(img)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert _iou(mask, disc) > 0.95


def test_fov_mask_recovers_disc_clipped_top_and_bottom():
    img, disc = _disc_image(512, 600, centre=(256, 300), radius=290)
    assert _iou(fundus.fov_mask(Image.fromarray(img)), disc) > 0.95


def test_fov_mask_rejects_blank_image():
    with pytest.raises(ValueError, match="no field of view"):
        fundus.fov_mask(np.zeros((64, 64, 3), np.uint8))


def test_circle_mask():
    mask = fundus.circle_mask(512, 512)
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert mask[256, 256] == 1 and mask[0, 0] == 0 and mask[256, 5] == 0
    assert mask.sum() == pytest.approx(np.pi * 250**2, rel=0.01)


def test_real_retina_padded_to_wide_aspect():
    retina = skimage.data.retina()  # 1411 x 1411, the disc nearly fills it
    h, w = retina.shape[:2]
    left = 400
    padded = np.zeros((h, w + 2 * left + 37, 3), np.uint8)
    padded[:, left : left + w] = retina
    box = fundus._foreground_box(Image.fromarray(padded))
    assert box is not None
    assert left - 2 <= box[0] and box[2] <= left + w + 2  # the black padding is cut off
    assert box[2] - box[0] > 0.9 * w

    out = np.asarray(fundus.crop_border(Image.fromarray(padded)))
    assert out.shape == (512, 512, 3)
    mask = fundus.fov_mask(out)
    # The mask covers the bright retina and leaves the dark corners out.
    retina_region = out.max(axis=2) > 20
    assert _iou(mask, retina_region) > 0.9
    assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[256, 256] == 1
