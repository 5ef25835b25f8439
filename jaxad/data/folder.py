"""Images in files: MVTec-AD style folders (`FolderSource`) and plain image lists.

`FolderSource` reads your own data, or the generated demos (`jaxad.data.demo`,
`jaxad.data.phantom`), laid out as MVTec-AD is; `ImageListSource` reads every image under a
folder, unlabelled, for prediction. Both yield the common record of `jaxad.data.records`, with a
field of view computed per image when asked (`jaxad.data.fov`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from jaxad.data.fov import check_fov_kind, field_of_view
from jaxad.data.records import ImageReadError, record

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# The validation hold-out of a folder without ``val/good`` is drawn with this fixed seed, so that
# it does not change with the training seed and train and validation stay disjoint across runs.
HOLDOUT_SEED = 0

FOLDER_LAYOUT = (
    "expected an MVTec-AD layout: <root>/train/good/* (normal training images), optional "
    "<root>/val/good/*, <root>/test/<type>/* (test/good is normal, any other type anomalous) and "
    "<root>/ground_truth/<type>/<stem>_mask.png"
)


def _is_image(path: pathlib.Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _to_uint8(img: Image.Image) -> Image.Image:
    """Brings 16/32-bit greyscale images to 8 bits (Pillow's own conversion would clip them)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit range mapped linearly onto 0..255.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    return img


def read_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """Reads an image file as uint8 [H, W, channels] (greyscale or RGB converted by Pillow).

    Raises:
      ImageReadError: the file cannot be decoded (the message names the file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as img:
            img.load()
            img = _to_uint8(img).convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files.
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    return arr[..., None] if channels == 1 else arr


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads a mask file as uint8 [H, W] in {0, 1} (any non-zero pixel is anomalous)."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(_to_uint8(img).convert("L"), dtype=np.uint8)
    except Exception as e:
        raise ImageReadError(f"cannot read mask {path}: {e}") from e
    return (arr > 0).astype(np.uint8)


class FolderSource:
    """Images in an MVTec-AD style folder.

    Layout::

        <root>/train/good/*                     normal training images
        <root>/val/good/*                       optional normal validation images
        <root>/test/good/*                      normal test images (label 0)
        <root>/test/<type>/*                    anomalous test images (label 1), any <type> but good
        <root>/ground_truth/<type>/<stem>_mask.png   mask of test/<type>/<stem>.*

    Images are png, jpg, jpeg, bmp, tif or tiff (any case), read in sorted order and converted to
    ``channels`` (1 or 3) by Pillow; 16-bit greyscale is scaled linearly to 8 bits.

    Splits:

    - ``"train"``: ``train/good``, minus the validation hold-out when there is no ``val/good``.
    - ``"validation"``: ``val/good`` if that folder exists; otherwise a hold-out of
      ``round(val_fraction * n)`` images of ``train/good`` (at least one when n >= 2 and
      ``val_fraction > 0``), chosen by a permutation seeded with `HOLDOUT_SEED`. These images are
      removed from ``"train"``, so the two never overlap. ``val_fraction=0`` keeps all of
      ``train/good`` for training (the MVTec protocol) and leaves validation empty. Adding images to
      ``train/good`` redraws the hold-out.
    - ``"test"``: every ``test/<type>`` folder, types in sorted order.

    Masks: a normal image (label 0) has an all-zero mask with ``has_mask=True``, since its ground
    truth is known to be empty. An anomalous image takes its mask from
    ``ground_truth/<type>/<stem>_mask.<ext>``; when that file is missing (MVTec always has it, other
    data may not) the record gets ``has_mask=False`` and a zero mask, so pixel-level metrics must
    skip it. The field of view is unknown here: ``fov`` is all ones. ``id`` is the image path
    relative to ``root`` (posix style), e.g. ``"test/crack/000.png"``.

    Missing or empty folders raise at construction; an unreadable image raises `ImageReadError`
    naming the file when that example is read.
    """

    SPLITS = ("train", "validation", "test")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        channels: int,
        val_fraction: float = 0.1,
        fov: str = "ones",
    ):
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r} for folder {root}; use one of {self.SPLITS}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        check_fov_kind(fov)
        self.root = pathlib.Path(root).expanduser()
        self.split = split
        self.channels = channels
        self.fov = fov
        # Each entry: (image path, label, mask path or None, has_mask).
        self._entries: list[tuple[pathlib.Path, int, pathlib.Path | None, bool]] = []

        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist; {FOLDER_LAYOUT}")
        train_dir = self.root / "train" / "good"
        if not train_dir.is_dir():
            raise FileNotFoundError(f"missing folder {train_dir}; {FOLDER_LAYOUT}")

        if split == "test":
            self._entries = self._test_entries()
        else:
            val_dir = self.root / "val" / "good"
            if val_dir.is_dir():
                folder = train_dir if split == "train" else val_dir
                paths = _list_images(folder)
                if not paths:
                    raise ValueError(f"no images in {folder}; {FOLDER_LAYOUT}")
            else:
                train = _list_images(train_dir)
                if not train:
                    raise ValueError(f"no images in {train_dir}; {FOLDER_LAYOUT}")
                held_out = self._holdout(len(train), val_fraction)
                if split == "train":
                    paths = [p for i, p in enumerate(train) if i not in held_out]
                else:
                    paths = [p for i, p in enumerate(train) if i in held_out]
            self._entries = [(p, 0, None, True) for p in paths]

    @staticmethod
    def _holdout(n: int, val_fraction: float) -> set[int]:
        if n < 2 or val_fraction <= 0:
            return set()
        n_val = max(1, round(val_fraction * n))
        perm = np.random.default_rng(HOLDOUT_SEED).permutation(n)
        return {int(i) for i in perm[:n_val]}

    def _test_entries(self) -> list[tuple[pathlib.Path, int, pathlib.Path | None, bool]]:
        test_dir = self.root / "test"
        if not test_dir.is_dir():
            raise FileNotFoundError(f"missing folder {test_dir}; {FOLDER_LAYOUT}")
        entries = []
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            images = _list_images(type_dir)
            if type_dir.name == "good":
                entries += [(p, 0, None, True) for p in images]
                continue
            masks = {}
            gt_dir = self.root / "ground_truth" / type_dir.name
            if gt_dir.is_dir():
                for m in _list_images(gt_dir):
                    if m.stem.endswith("_mask"):
                        masks.setdefault(m.stem[: -len("_mask")], m)
            for p in images:
                mask_path = masks.get(p.stem)
                entries.append((p, 1, mask_path, mask_path is not None))
        if not entries:
            raise ValueError(f"no images in {test_dir}/<type>/; {FOLDER_LAYOUT}")
        return entries

    @property
    def paths(self) -> list[str]:
        """Image paths of the split, in record order."""
        return [str(p) for p, *_ in self._entries]

    @property
    def labels(self) -> np.ndarray:
        """Labels of the split (int32), in record order, without reading any image."""
        return np.array([label for _, label, *_ in self._entries], dtype=np.int32)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label, mask_path, has_mask = self._entries[index]
        image = read_image(path, self.channels)
        h, w = image.shape[:2]
        if mask_path is None:
            mask = np.zeros((h, w), np.uint8)
        else:
            mask = read_mask(mask_path)
            if mask.shape != (h, w):
                raise ValueError(
                    f"mask {mask_path} has size {mask.shape[::-1]} but image {path} has {(w, h)}"
                )
        rel = path.relative_to(self.root).as_posix()
        return record(image, mask, label, has_mask, rel, field_of_view(image, self.fov, path))

    def __repr__(self) -> str:
        return f"FolderSource(root={str(self.root)!r}, split={self.split!r}, len={len(self)})"


class ImageListSource:
    """Unlabelled images (every image file under ``root``, recursively, sorted), for prediction.

    Records have label -1, no mask and ``id`` = the path relative to ``root``.
    """

    def __init__(self, root: str | os.PathLike, *, channels: int, fov: str = "ones"):
        check_fov_kind(fov)
        self.fov = fov
        self.root = pathlib.Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"input folder {self.root} does not exist")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and _is_image(p))
        if not self.paths:
            raise ValueError(f"no images (png, jpg, jpeg, bmp, tif) found under {self.root}")
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        image = read_image(path, self.channels)
        mask = np.zeros(image.shape[:2], np.uint8)
        rel = path.relative_to(self.root).as_posix()
        return record(image, mask, -1, False, rel, field_of_view(image, self.fov, path))
