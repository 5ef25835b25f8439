"""Embedded demo dataset for window-based methods: textured phantom images with "masses".

PICARD localises tumours in high-resolution tomosynthesis by completing windows from their
surroundings. Its demo needs images that are large relative to a window, a background whose
content can be predicted from its surroundings, and anomalies that cannot, with no download.
This module draws them procedurally (numpy and scipy only):

- background: a smooth illumination field times a quasi-periodic texture, the sum of a few
  sinusoidal gratings around one orientation and frequency per image (a stand-in for the
  oriented fibroglandular strands of a breast), plus fine noise;
- a "mass": a blob with a soft, irregular edge inside which the texture is replaced by gratings
  of another orientation and frequency, a little brighter. Its mean and contrast stay close to
  the background's, so per-pixel intensity alone finds it poorly; what gives it away is that
  its content does not continue its surroundings. The mask marks the blob.

Layout (MVTec-AD, as `jaxad.data.demo`): `train/good/`, `test/good/`, `test/mass/` and
`ground_truth/mass/<stem>_mask.png`; 8-bit greyscale PNGs. `ensure_phantom_demo()` generates it
once into a cache folder (`$JAXAD_DATA_DIR/demo/phantom_v1` or `~/.cache/jaxad/demo/...`).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from jaxad.data import demo

VERSION = "phantom_v1"
_SPLIT_CODES = {"train": 0, "test_good": 1, "mass": 2}


def _gratings(
    rng: np.random.Generator, shape: tuple[int, int], angle: float, period: float, n: int
) -> np.ndarray:
    """Sum of `n` unit sinusoids with orientations within 15 degrees of `angle` (radians) and
    periods within 20 % of `period` (pixels), random phases, normalised to unit std."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    out = np.zeros(shape, np.float32)
    for _ in range(n):
        a = angle + rng.uniform(-0.26, 0.26)
        f = 2 * np.pi / (period * rng.uniform(0.8, 1.2))
        out += np.sin(f * (np.cos(a) * cols + np.sin(a) * rows) + rng.uniform(0, 2 * np.pi))
    return out / max(float(out.std()), 1e-6)


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def normal_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, float]:
    """A float32 [size, size] phantom in [0, 1] and its texture's orientation and period."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(7.0, 10.0)
    texture = _gratings(rng, (size, size), angle, period, 3)
    light = 0.5 + 0.08 * _smooth(rng, (size, size), size / 4)
    noise = 0.02 * rng.standard_normal((size, size)).astype(np.float32)
    return np.clip(light + 0.12 * texture + noise, 0, 1), angle, period


def add_mass(
    rng: np.random.Generator, image: np.ndarray, angle: float, period: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blends one mass into `image`; returns the new image and its bool mask."""
    size = image.shape[0]
    radius = rng.uniform(0.06, 0.1) * size
    margin = int(radius) + size // 8
    cy, cx = rng.integers(margin, size - margin, 2)
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    theta = np.arctan2(rows - cy, cols - cx)
    wobble = 1 + 0.15 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
    dist = np.hypot(rows - cy, cols - cx) / (radius * wobble)
    alpha = np.clip((1.15 - dist) / 0.3, 0, 1)  # soft edge, 1 inside
    other = _gratings(rng, image.shape, angle + np.pi / 2, period * 0.6, 3)
    inside = 0.5 + 0.05 + 0.12 * other + 0.02 * rng.standard_normal(image.shape)
    out = np.clip((1 - alpha) * image + alpha * inside, 0, 1)
    return out.astype(np.float32), alpha >= 0.5


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _save(path: pathlib.Path, image: np.ndarray) -> None:
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path, format="PNG")


def generate_phantom_demo(
    root: str | os.PathLike,
    *,
    n_train: int = 48,
    n_test_good: int = 12,
    n_test_mass: int = 24,
    size: int = 192,
    seed: int = 0,
) -> pathlib.Path:
    """Writes the dataset into `root`; the completion marker goes last."""
    root = pathlib.Path(root)
    good = {"train": root / "train" / "good", "test_good": root / "test" / "good"}
    for split, folder in good.items():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_train if split == "train" else n_test_good):
            _save(folder / f"{i:03d}.png", normal_image(_rng(seed, split, i), size)[0])
    images, masks = root / "test" / "mass", root / "ground_truth" / "mass"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(n_test_mass):
        rng = _rng(seed, "mass", i)
        image, mask = add_mass(rng, *normal_image(rng, size))
        _save(images / f"{i:03d}.png", image)
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{i:03d}_mask.png")
    info = dict(
        version=VERSION,
        seed=seed,
        size=size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_mass=n_test_mass,
    )
    (root / "README.txt").write_text(
        f"Synthetic phantom demo ({VERSION}) for jaxad, generated by jaxad.data.phantom with "
        f"seed {seed}. SYNTHETIC DATA: textured phantoms with texture-defect masses, "
        f"{size}x{size} greyscale PNGs, MVTec-AD layout.\n"
    )
    (root / demo.MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return root


def ensure_phantom_demo(root: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """Returns the phantom demo folder, generating it first if it is missing or incomplete."""
    return demo.ensure_generated(VERSION, generate_phantom_demo, root, seed=seed)
