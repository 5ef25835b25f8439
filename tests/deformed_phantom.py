"""A second population for deformable methods: the Shepp-Logan phantom under random warps.

Independent of `jaxad.data.cxr_phantom`: every normal image is scikit-image's Shepp-Logan head
phantom (shipped with the package) under a random affine pose and a smooth elastic displacement,
with a little noise, so normal variation is geometric; anomalies are soft discs of raised
intensity inside the head, with masks. Written as an MVTec-layout folder of 8-bit PNGs, which
jaxad reads with `data.name='folder'`.
"""

from __future__ import annotations

import pathlib

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage as ndi


def _template(size: int) -> np.ndarray:
    phantom = skimage.data.shepp_logan_phantom().astype(np.float32)  # 400 x 400 in [0, 1]
    image = Image.fromarray(phantom).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32)


def _warp(rng: np.random.Generator, template: np.ndarray, *disc: np.ndarray) -> list[np.ndarray]:
    """The template (and any extra maps) sampled through one random pose and elastic field."""
    size = template.shape[0]
    centre = (size - 1) / 2
    angle = np.deg2rad(rng.uniform(-6, 6))
    scale = rng.uniform(0.88, 1.08, size=2)
    shift = rng.uniform(-0.05, 0.05, size=2) * size
    rows, cols = np.mgrid[:size, :size].astype(np.float32) - centre
    cos, sin = np.cos(angle), np.sin(angle)
    src_r = (cos * rows - sin * cols) / scale[0] + centre + shift[0]
    src_c = (sin * rows + cos * cols) / scale[1] + centre + shift[1]
    for coords in (src_r, src_c):
        field = ndi.gaussian_filter(rng.normal(size=(size, size)), size / 8)
        coords += field / (np.abs(field).max() + 1e-8) * rng.uniform(1.0, 0.05 * size)
    return [
        ndi.map_coordinates(m, [src_r, src_c], order=1, mode="constant") for m in (template, *disc)
    ]


def _disc(rng: np.random.Generator, head: np.ndarray) -> np.ndarray:
    """A soft disc of weight 1 at its centre, placed inside the head's interior."""
    size = head.shape[0]
    inside = np.argwhere(ndi.binary_erosion(head > 0.05, iterations=max(size // 10, 1)))
    r, c = inside[rng.integers(len(inside))]
    radius = rng.uniform(0.05, 0.09) * size
    dist = np.hypot(*(np.mgrid[:size, :size] - np.array([r, c])[:, None, None]))
    return np.clip((radius - dist) / 1.5 + 0.5, 0.0, 1.0).astype(np.float32)


def _png(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def write(root: pathlib.Path, *, size: int = 64, train: int = 300, test: int = 40, seed: int = 0):
    """train/good (normal), test/good and test/disc (half each) and ground_truth/disc masks."""
    rng = np.random.default_rng(seed)
    template = _template(size)
    for split, n in (("train", train), ("test", test // 2)):
        for i in range(n):
            (image,) = _warp(rng, template)
            _png(root / split / "good" / f"{i:03d}.png", image + rng.normal(0, 0.01, image.shape))
    for i in range(test - test // 2):
        (head,) = _warp(rng, template)
        disc = _disc(rng, head)
        image = head + rng.uniform(0.2, 0.3) * disc + rng.normal(0, 0.01, head.shape)
        _png(root / "test" / "disc" / f"{i:03d}.png", image)
        _png(root / "ground_truth" / "disc" / f"{i:03d}_mask.png", (disc >= 0.5).astype(np.float32))
    return root
