"""A small fake copy of IDRiD parts A and B, in the real layout, for tests and benchmarks.

Part A photos carry drawn lesions whose masks are written as IDRiD's are (RGB TIFF, lesions in
pure red) and whose boxes under the original mask-to-box rule are known by construction,
including the two cases that rule treats specially: a blob inside the hole of a ring (no box of
its own) and two blobs touching at a corner (one box). Not every photo has every lesion type,
and the last test photo has none, as a normal control. Part B's label files have the real
header (with its trailing space), trailing empty columns and a final row of empty cells.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from data_builders.eyepacs.fake_data import fundus_photo

_FOLDERS = {"train": "a. Training Set", "test": "b. Testing Set"}
_LABEL_FILES = {
    "train": "a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "b. IDRiD_Disease Grading_Testing Labels.csv",
}
# Dark red for MA and HE, yellow for exudates, pale for the optic disc.
_COLOURS = {
    "MA": (90, 20, 10),
    "HE": (90, 20, 10),
    "EX": (230, 200, 60),
    "SE": (220, 190, 120),
    "OD": (250, 220, 150),
}
_MASK_FOLDERS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}


def write(
    root: os.PathLike | str,
    *,
    width: int = 180,
    height: int = 120,
    segmentation: tuple[int, int] = (3, 2),
    grading: tuple[int, int] = (5, 3),
    seed: int = 0,
) -> dict:
    """Writes the fake raw files under `root` and returns what a build of them must hold.

    Args:
      width, height: photo size (IDRiD's is 4288 x 2848); lesions scale with the height.
      segmentation, grading: (train, test) photo counts of parts A and B.

    Returns:
      {"sizes": {config: {split: count}},
       "segmentation": {id: {"split", "masks": {code: bool [H, W]}, "boxes": float32 [N, 4],
                             "classes": [N]}} in original photo pixels, classes 0 MA ... 3 SE,
       "grading": {split: {id: (DR grade, oedema risk)}}}.
    """
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    for part in ("A. Segmentation", "B. Disease Grading"):
        for folder in _FOLDERS.values():  # IDRiD has both, even when a count here is 0
            os.makedirs(os.path.join(root, part, "1. Original Images", folder), exist_ok=True)
    segmented, graded = {}, {}
    number = 0
    for split, count in zip(_FOLDERS, segmentation, strict=True):
        for i in range(count):
            number += 1
            name = f"IDRiD_{number:02d}"
            normal = split == "test" and i == count - 1
            photo = fundus_photo(width, height, rng, radius=0.6)
            segmented[name] = _write_segmentation(root, split, name, number, normal, photo)
    for split, count in zip(_FOLDERS, grading, strict=True):
        graded[split] = {}
        lines = ["Image name,Retinopathy grade,Risk of macular edema ,,"]
        for i in range(count):
            name = f"IDRiD_{i + 1:03d}"
            grade, edema = (i * 3 + len(split)) % 5, i % 3
            graded[split][name] = (grade, edema)
            lines.append(f"{name},{grade},{edema},,")
            photo = fundus_photo(width, height, rng, radius=0.6)
            _save_jpeg(
                photo, root, "B. Disease Grading", "1. Original Images", _FOLDERS[split], name
            )
        lines.append(",,,,")
        folder = os.path.join(root, "B. Disease Grading", "2. Groundtruths")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, _LABEL_FILES[split]), "w") as f:
            f.write("\n".join(lines) + "\n")

    sizes = {
        "segmentation": dict(zip(_FOLDERS, segmentation, strict=True)),
        "grading": dict(zip(_FOLDERS, grading, strict=True)),
    }
    sizes |= {f"{name}_512": dict(counts) for name, counts in sizes.items()}
    return {"sizes": sizes, "segmentation": segmented, "grading": graded}


def _save_jpeg(photo: np.ndarray, root: str, *folders: str) -> None:
    folder = os.path.join(root, *folders[:-1])
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(photo).save(os.path.join(folder, f"{folders[-1]}.jpg"), quality=95)


def _write_segmentation(
    root: str,
    split: str,
    name: str,
    number: int,
    normal: bool,
    photo: np.ndarray,
) -> dict:
    """Draws the photo's lesions into it and its masks, writes both, returns masks and boxes."""
    height, width = photo.shape[:2]
    u = max(1, height // 120)  # one base pixel
    x0, y0 = width // 2 - 50 * u + number * u, height // 2 - 40 * u  # inside the disc

    def rect(x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        return x0 + x * u, y0 + y * u, w * u, h * u

    # Per lesion type: blobs, each drawn from rectangles, and whether the box script gives it a
    # box of its own. The expected box is the drawn blob's extent under the script's rule.
    lesions = {
        "MA": [([rect(0, 0, 2, 2)], True), ([rect(10, 50, 2, 2)], True)],
        "HE": [([rect(30, 10, 6, 4)], True)] if number % 3 != 2 else [],
        "EX": [
            # A 9 x 9 ring, a dot in its hole (inside the ring's contour: no box of its own),
            # and two squares that touch at a corner (one 8-connected blob: one box).
            (
                [rect(50, 30, 9, 1), rect(50, 38, 9, 1), rect(50, 30, 1, 9), rect(58, 30, 1, 9)],
                True,
            ),
            ([rect(54, 34, 1, 1)], False),
            ([rect(20, 60, 3, 3), rect(23, 63, 3, 3)], True),
        ],
        "SE": [([rect(70, 5, 5, 5)], True)] if number % 2 == 0 else [],
    }
    if normal:
        lesions = {code: [] for code in lesions}
    masks, boxes, classes = {}, [], []
    for cls, (code, blobs) in enumerate(lesions.items()):
        mask = np.zeros((height, width), bool)
        found = []
        for rects, has_box in blobs:
            drawn = np.zeros_like(mask)
            for x, y, w, h in rects:
                drawn[y : y + h, x : x + w] = True
            rows, cols = np.nonzero(drawn)
            if has_box:
                found.append((cols.min() - 1, rows.min() - 1, cols.max() + 1, rows.max() + 1))
            mask |= drawn
        found.sort(key=lambda b: (b[1], b[0]))
        boxes += found
        classes += [cls] * len(found)
        masks[code] = mask
        photo[mask] = _COLOURS[code]
    rows, cols = np.mgrid[:height, :width]
    masks["OD"] = (rows - height // 2) ** 2 + (cols - (x0 + 85 * u)) ** 2 <= (8 * u) ** 2
    photo[masks["OD"]] = _COLOURS["OD"]

    truth = os.path.join(root, "A. Segmentation", "2. All Segmentation Groundtruths")
    for code, mask in masks.items():
        folder = os.path.join(truth, _FOLDERS[split], _MASK_FOLDERS[code])
        os.makedirs(folder, exist_ok=True)
        if mask.any():  # IDRiD has no file for a lesion type the photo does not show.
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[mask, 0] = 255  # IDRiD draws every mask in pure red.
            Image.fromarray(rgb).save(os.path.join(folder, f"{name}_{code}.tif"))
    _save_jpeg(photo, root, "A. Segmentation", "1. Original Images", _FOLDERS[split], name)
    return {
        "split": split,
        "masks": masks,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "classes": classes,
    }
