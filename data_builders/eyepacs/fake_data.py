"""A small fake copy of the Kaggle EyePACS files, in the real layout, for tests and benchmarks.

`write(root)` writes `trainLabels.csv`, `retinopathy_solution.csv` (the real headers), and
`train/*.jpeg`, `test/*.jpeg`: fundus-like photos (a textured reddish disc between black
borders) named `<patient>_<left|right>.jpeg` as Kaggle names them.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

_USAGES = ("Public", "Private", "Private")  # cycled over the test photos


def fundus_photo(
    width: int, height: int, rng: np.random.Generator, radius: float = 0.47
) -> np.ndarray:
    """uint8 [height, width, 3]: a textured disc of radius `radius * height` on black.

    Wide photos keep black borders left and right, as fundus cameras produce them, so the
    border crop has something to find; a radius above 0.5 clips the disc at the top and bottom.
    """
    rows, cols = np.mgrid[:height, :width]
    disc = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 <= (radius * height) ** 2
    img = np.zeros((height, width, 3), np.float64)
    img[disc] = rng.uniform([120, 40, 10], [200, 90, 40])
    img[disc] += rng.normal(0, 5, (int(disc.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write(
    root: os.PathLike | str,
    *,
    width: int = 160,
    height: int = 120,
    train_patients: int = 4,
    test_patients: int = 5,
    seed: int = 0,
) -> dict:
    """Writes the fake raw files under `root` and returns what a build of them must hold.

    Returns:
      {"sizes": {config: {split: count}}, "examples": {image id: (split, grade)}}.
    """
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    examples = {}
    # Patient numbers that sort differently as text and as numbers, as Kaggle's do.
    train_ids = [10 + 7 * i for i in range(train_patients)]
    test_ids = [1 + 5 * i for i in range(test_patients)]
    train = [(f"{p}_{eye}", (p + len(eye)) % 5) for p in train_ids for eye in ("left", "right")]
    test = [(f"{p}_{eye}", (p * 3 + len(eye)) % 5) for p in test_ids for eye in ("left", "right")]

    train_lines = ["image,level"]
    for name, grade in sorted(train):
        train_lines.append(f"{name},{grade}")
        examples[name] = ("train", grade)
    test_lines = ["image,level,Usage"]
    for i, (name, grade) in enumerate(sorted(test)):
        usage = _USAGES[i % len(_USAGES)]
        test_lines.append(f"{name},{grade},{usage}")
        examples[name] = ("validation" if usage == "Public" else "test", grade)

    for folder, rows in (("train", train), ("test", test)):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for name, _ in rows:
            photo = fundus_photo(width, height, rng)
            Image.fromarray(photo).save(os.path.join(root, folder, f"{name}.jpeg"), quality=90)
    with open(os.path.join(root, "trainLabels.csv"), "w") as f:
        f.write("\n".join(train_lines) + "\n")
    with open(os.path.join(root, "retinopathy_solution.csv"), "w") as f:
        f.write("\n".join(test_lines) + "\n")

    sizes = {"train": 0, "validation": 0, "test": 0}
    for split, _ in examples.values():
        sizes[split] += 1
    return {"sizes": {"crop_512": sizes}, "examples": examples}
