"""A small fake copy of the COVID-19 Radiography Database, in the real layout and file names.

Each class folder holds `images/<Class>-<n>.png` and `masks/<Class>-<n>.png`, numbered from 1
without gaps, as in the Kaggle release. Most images are 8-bit greyscale; some are RGB, RGBA or
greyscale+alpha whose channel 0 differs from their luminance (the builder keeps channel 0), and
the lung masks are smaller than the images (256 vs 299 px in the release), some of them RGB.
The COVID class needs MorphAEus's range 1143-3616, so it has the release's 3,616 images by
default; they are tiny, so writing and building them takes a few seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from data_builders.covid19_radiography.covid19_radiography_dataset_builder import (
    CLASSES,
    DATASET_FOLDER,
)

DEFAULT_COUNTS = {"Normal": 20, "Lung_Opacity": 5, "COVID": 3616, "Viral Pneumonia": 3}
COVID_IDS = (1143, 3616)


def write(
    root: epath.PathLike,
    *,
    counts: dict[str, int] | None = None,
    image_size: int = 16,
    mask_size: int = 12,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes `root`/COVID-19_Radiography_Dataset and returns what the builder should make of it.

    Returns:
      `root`: the dataset folder; `counts`: images per class; `sizes`: config -> split ->
      number of examples.
    """
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    rng = np.random.default_rng(seed)
    dataset = epath.Path(root) / DATASET_FOLDER
    for cls in CLASSES:
        (dataset / cls / "images").mkdir(parents=True, exist_ok=True)
        (dataset / cls / "masks").mkdir(parents=True, exist_ok=True)
        for n in range(1, counts[cls] + 1):
            name = f"{cls}-{n}.png"
            _image(image_size, n, rng).save(dataset / cls / "images" / name)
            _mask(mask_size, rgb=n % 5 == 0).save(dataset / cls / "masks" / name)
    (dataset / "README.md.txt").write_text("COVID-19 Radiography Database (fake copy)\n")

    k = int(0.1 * counts["Normal"])
    first, last = COVID_IDS
    in_range = max(0, min(last, counts["COVID"]) - first + 1)
    morphaeus = {
        "train": counts["Normal"] - 2 * k,
        "validation": k,
        "test": k,
        "test_opacity": counts["Lung_Opacity"],
        "test_covid": in_range,
    }
    every = dict(
        morphaeus,
        test_covid_other=counts["COVID"] - in_range,
        test_viral=counts["Viral Pneumonia"],
    )
    return {"root": dataset, "counts": counts, "sizes": {"morphaeus": morphaeus, "all": every}}


def _image(size: int, n: int, rng: np.random.Generator) -> Image.Image:
    """A greyscale radiograph-like image; every 7th is RGB, 11th RGBA, 13th greyscale+alpha."""
    yy, xx = np.mgrid[:size, :size] / size
    grey = 160.0 - 80.0 * ((np.abs(xx - 0.5) > 0.1) & (np.abs(yy - 0.5) < 0.3))
    grey = np.clip(grey + rng.normal(0.0, 10.0, grey.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, grey.shape, dtype=np.uint8)  # not the grey: tests channel 0
    if n % 7 == 0:
        return Image.fromarray(np.stack([grey, other, 255 - other], -1), "RGB")
    if n % 11 == 0:
        return Image.fromarray(np.stack([grey, other, other, np.full_like(grey, 255)], -1), "RGBA")
    if n % 13 == 0:
        return Image.fromarray(np.stack([grey, other], -1), "LA")
    return Image.fromarray(grey, "L")


def _mask(size: int, rgb: bool) -> Image.Image:
    """Two lung rectangles, 255 inside: rows 1/6-5/6, columns 1/12-5/12 and 7/12-11/12."""
    mask = np.zeros((size, size), np.uint8)
    rows = slice(size // 6, 5 * size // 6)
    mask[rows, size // 12 : 5 * size // 12] = 255
    mask[rows, 7 * size // 12 : 11 * size // 12] = 255
    image = Image.fromarray(mask, "L")
    return image.convert("RGB") if rgb else image
