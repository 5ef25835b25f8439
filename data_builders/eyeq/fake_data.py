"""Fake EyeQ raw files in the real layout, for tests and benchmarks (no real photo is used).

`write(root)` writes `train/*.jpeg`, `test/*.jpeg` and the two EyeQ label tables with their real
header. The photos are EyePACS-like discs (`data_builders.eyepacs.fake_data.fundus_photo`): EyeQ
photos are EyePACS photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_builders.eyepacs.fake_data import fundus_photo

# (EyePACS name, EyeQ quality 0/1/2, DR grade) as in Label_EyeQ_{train,test}.csv.
TRAIN_ROWS = (
    [(f"{10 + i}_left", 0, 0) for i in range(10)]
    + [(f"{30 + g}_right", 0, g) for g in range(1, 5)]
    + [("40_left", 1, 0), ("41_left", 1, 0), ("42_left", 2, 0), ("43_left", 1, 2)]
)
TEST_ROWS = [(f"{1 + i}_left", 0, 0) for i in range(3)] + [
    ("5_right", 0, 2),
    ("6_right", 0, 4),
    ("7_left", 1, 0),
    ("8_left", 2, 3),
]


def write(
    root: Path, *, repeat: int = 1, height: int = 120, width: int = 160, seed: int = 0
) -> dict[str, list[tuple[str, int, int]]]:
    """Writes the raw layout under `root`; returns the (name, quality, grade) rows per split.

    `repeat` > 1 writes that many copies of the row pattern under new ids (for benchmarks).
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, base in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        rows = [
            (name if r == 0 else f"{r}{name}", quality, grade)
            for r in range(repeat)
            for name, quality, grade in base
        ]
        (root / split).mkdir(parents=True, exist_ok=True)
        lines = [",image,quality,DR_grade"]
        for i, (name, quality, grade) in enumerate(rows):
            lines.append(f"{i},{name}.jpeg,{quality},{grade}")
            photo = fundus_photo(width, height, rng)
            Image.fromarray(photo).save(root / split / f"{name}.jpeg", quality=90)
        (root / f"Label_EyeQ_{split}.csv").write_text("\n".join(lines) + "\n")
        written[split] = rows
    return written
