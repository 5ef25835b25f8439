"""A small fake copy of the MOOD raw data, in the real layout, for tests and benchmarks.

`write(root)` writes `<root>/brain/` and `<root>/abdom/` as the challenge's archives extract:
`<region>_train/00000.nii.gz ...`, `toy/toy_{i}.nii.gz`, `toy_label/pixel/toy_{i}.nii.gz` and
`toy_label/sample/toy_{i}.nii.gz.txt`, optionally `train_folds_10.csv` as the DPA solution's.
Volumes are float32 NIfTI ellipsoid phantoms (intensities in [0.1, 0.9], zero outside), with an
affine; anomalous toy cases hold a bright cube that their voxel labels mark.
"""

from __future__ import annotations

import os
from typing import Any

import nibabel as nib
import numpy as np

from data_builders.mood import mood_dataset_builder as mood

# Volumes per region and their edge length: the real data has 800 x 256^3 and 550 x 512^3.
DEFAULTS = {"brain": {"n": 10, "size": 16}, "abdom": {"n": 5, "size": 32}}
TOY_LABELS = (1, 0, 1, 0)  # sample label of toy_0, toy_1, ...
SLICE_SIZE = 256  # The slice configs' resize and min_nonzero, for the expected sizes.
MIN_NONZERO = 4000


def _affine(region: str, size: int) -> np.ndarray:
    spacing = (1.0, 1.0, 1.0) if region == "brain" else (0.75, 0.75, 1.25)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-0.5 * s * size for s in spacing]  # Centred on the origin.
    return affine


def phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size]^3: an ellipsoid, 0.9 at its centre falling to 0.1 at its surface, 0 outside.

    Built a slab at a time, so a 512^3 phantom needs little more than its own 512 MB.
    """
    radii = rng.uniform(0.3, 0.45, 3) * size
    centre = size / 2 + rng.uniform(-0.05, 0.05, 3) * size
    x, y, z = (((np.arange(size) + 0.5 - c) / r) ** 2 for c, r in zip(centre, radii, strict=True))
    volume = np.empty((size, size, size), np.float32)
    step = 32
    for start in range(0, size, step):
        r2 = x[:, None, None] + y[None, :, None] + z[None, None, start : start + step]
        volume[:, :, start : start + step] = np.where(r2 <= 1, 0.1 + 0.8 * (1 - r2), 0)
    return volume


def anomaly_box(size: int) -> slice:
    """The index range, on every axis, of the bright cube in anomalous toy cases."""
    return slice(size // 2 - size // 8, size // 2 + size // 8)


def kept_slices(volume: np.ndarray, axis: int, size: int = SLICE_SIZE) -> int:
    """How many slices along `axis` the slice configs keep (>= MIN_NONZERO positive pixels).

    Counted without resizing, for slice sides that divide or are multiples of `size`: upsampling
    by f repeats each pixel f x f times, and an area mean of non-negative pixels is positive
    exactly when one of them is.
    """
    positive = np.moveaxis(volume > 0, axis, 0)
    n, h, w = positive.shape
    if size % h == 0 and size % w == 0:
        counts = positive.sum(axis=(1, 2)) * (size // h) * (size // w)
    elif h % size == 0 and w % size == 0:
        blocks = positive.reshape(n, size, h // size, size, w // size).any(axis=(2, 4))
        counts = blocks.sum(axis=(1, 2))
    else:
        raise ValueError(f"Slices of {h} x {w} neither divide nor are multiples of {size}.")
    return int(np.count_nonzero(counts >= MIN_NONZERO))


def _save(array: np.ndarray, affine: np.ndarray, path: os.PathLike) -> None:
    nib.save(nib.Nifti1Image(array, affine), os.fspath(path))


def write(
    root: os.PathLike | str,
    region: str | None = None,
    n: int | None = None,
    size: int | None = None,
    toy: int = len(TOY_LABELS),
    fold_file: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes fake raw data under `root` and returns what a build of it must give.

    Args:
      root: the manual_dir to fill.
      region: "brain" or "abdom" (default: both).
      n: training volumes per region (default `DEFAULTS`).
      size: edge of the cubic volumes (default `DEFAULTS`); it must divide or be a multiple of
        256 for the expected slice counts.
      toy: number of toy cases (0: no toy/ folder); sample labels cycle through `TOY_LABELS`.
      fold_file: also write `train_folds_10.csv` (folds (3 i + 1) % 10 of the i-th volume);
        otherwise the builder hashes the names.
      seed: seeds the phantoms.

    Returns:
      {"sizes": {config name: {split: examples}} for the default configs (val_fold 0),
       "folds": {region: {volume id: fold}}, "toy_labels": {region: {toy id: sample label}},
       "size": {region: edge}, "affine": {region: 4 x 4 affine}}.
    """
    out: dict[str, Any] = {"sizes": {}, "folds": {}, "toy_labels": {}, "size": {}, "affine": {}}
    for r, name in enumerate([region] if region else list(DEFAULTS)):
        n_train = DEFAULTS[name]["n"] if n is None else n
        edge = DEFAULTS[name]["size"] if size is None else size
        base = os.path.join(os.fspath(root), name)
        affine = _affine(name, edge)
        os.makedirs(os.path.join(base, f"{name}_train"), exist_ok=True)
        files = [f"{i:05d}.nii.gz" for i in range(n_train)]
        if fold_file:
            folds = {f: (3 * i + 1) % mood.NUM_FOLDS for i, f in enumerate(files)}
            lines = ["filename,test_fold"] + [f"{f},{fold}" for f, fold in folds.items()]
            with open(os.path.join(base, mood.FOLD_FILE), "w") as f:
                f.write("\n".join(lines) + "\n")
        else:
            folds = mood.hash_folds(files, mood.NUM_FOLDS, seed=0)
        kept = {axis: {"train": 0, "validation": 0} for axis in range(3)}
        for i, file in enumerate(files):
            volume = phantom(edge, np.random.default_rng([seed, r, i]))
            _save(volume, affine, os.path.join(base, f"{name}_train", file))
            split = "validation" if folds[file] == 0 else "train"
            for axis in range(3):
                kept[axis][split] += kept_slices(volume, axis)
            del volume
        volumes = {
            "train": sum(fold != 0 for fold in folds.values()),
            "validation": sum(fold == 0 for fold in folds.values()),
        }
        toy_labels = {}
        if toy:
            for sub in ("toy", "toy_label/pixel", "toy_label/sample"):
                os.makedirs(os.path.join(base, sub), exist_ok=True)
            box = (anomaly_box(edge),) * 3
            for t in range(toy):
                label = TOY_LABELS[t % len(TOY_LABELS)]
                volume = phantom(edge, np.random.default_rng([seed, r, n_train + t]))
                labels = np.zeros(volume.shape, np.uint8)
                if label:
                    volume[box] = 0.95
                    labels[box] = 1
                file = f"toy_{t}.nii.gz"
                _save(volume, affine, os.path.join(base, "toy", file))
                _save(labels, affine, os.path.join(base, "toy_label", "pixel", file))
                with open(os.path.join(base, "toy_label", "sample", f"{file}.txt"), "w") as f:
                    f.write(f"{label}\n")
                toy_labels[f"toy_{t}"] = label
                for axis in range(3):
                    kept[axis]["toy"] = kept[axis].get("toy", 0) + kept_slices(volume, axis)
            volumes["toy"] = toy
        out["sizes"][f"{name}_volumes"] = volumes
        for axis in range(3):
            out["sizes"][f"{name}_axis{axis}"] = kept[axis]
        out["folds"][name] = {f.split(".")[0]: fold for f, fold in folds.items()}
        out["toy_labels"][name] = toy_labels
        out["size"][name] = edge
        out["affine"][name] = affine
    return out
