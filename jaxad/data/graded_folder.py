"""Graded images in split and grade folders (`GradedFolderSource`), as PYCLS reads EyePACS.

Layout::

    <root>/train/<grade>/*          training images of each grade
    <root>/val/<grade>/*            validation images (the folder may also be named valid/ or
                                    validation/)
    <root>/test/<grade>/*           test images

``<grade>`` is a folder named 0, 1, 2, 3 or 4 (for diabetic retinopathy: none, mild, moderate,
severe non-proliferative, proliferative). The demo `jaxad.data.dr_demo` is written this way.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from jaxad.data.folder import IMAGE_EXTENSIONS, read_image
from jaxad.data.fov import check_fov_kind, field_of_view
from jaxad.data.records import record

GRADED_LAYOUT = (
    "expected <root>/<split>/<grade>/<image> with split folders train, val (or valid, "
    "validation) and test, and grade folders 0-4"
)

# Folders a split is read from, by split name: the first name is PYCLS's; jaxad names the
# validation split "validation" (``data.val_split``), so "val" is accepted as the same split.
SPLIT_FOLDERS = {
    "train": ("train",),
    "validation": ("val", "valid", "validation"),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}


def _images(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


class GradedFolderSource:
    """Images in ``<root>/<split>/<grade>/``, one grade folder per disease grade.

    Splits: ``"train"``, ``"validation"`` (or ``"val"``: the folder ``val/``, ``valid/`` or
    ``validation/``; more than one of them is an error) and ``"test"``. There is no hold-out:
    each split has its own folder.

    Every subfolder of a split folder must be a grade, named by an integer 0 to
    ``num_grades - 1`` (folders starting with "." are skipped); a grade folder may be empty, the
    split may not. Images are png, jpg, jpeg, bmp, tif or tiff (any case), read in (grade, file
    name) order and converted to ``channels`` (1 or 3) by Pillow.

    Records: ``grade`` from the folder, ``label`` 1 when the grade is above 0 (referable or not
    is the method's business; 0 is "no disease"), ``mask`` zeros with ``has_mask=False`` (grades
    carry no lesion masks), ``fov`` from ``fov`` (`jaxad.data.fov`: "eyeq" or "circle" for fundus
    photos, "ones" by default) and ``id`` the path relative to ``root``, e.g.
    ``"train/2/0003.png"``.

    A missing root, split folder or unreadable layout raises at construction with one line naming
    the folder; an unreadable image raises `ImageReadError` naming the file when it is read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        channels: int = 3,
        fov: str = "ones",
        num_grades: int = 5,
    ):
        if split not in SPLIT_FOLDERS:
            raise ValueError(
                f"unknown split {split!r} for graded folder {root}; use train, validation or test"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        check_fov_kind(fov)
        self.root = pathlib.Path(root).expanduser()
        self.split = split
        self.channels = channels
        self.fov = fov
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist; {GRADED_LAYOUT}")
        self.folder = self._split_folder(self.root, split)
        # Each entry: (image path, grade).
        self._entries: list[tuple[pathlib.Path, int]] = []
        grade_names = {str(g): g for g in range(num_grades)}
        subfolders = sorted(p for p in self.folder.iterdir() if p.is_dir())
        for sub in subfolders:
            if sub.name.startswith("."):
                continue
            if sub.name not in grade_names:
                raise ValueError(
                    f"folder {sub} is not a grade: grade folders are named 0 to {num_grades - 1}"
                )
        for sub in sorted(
            (p for p in subfolders if p.name in grade_names), key=lambda p: grade_names[p.name]
        ):
            self._entries += [(p, grade_names[sub.name]) for p in _images(sub)]
        if not self._entries:
            raise ValueError(f"no images in {self.folder}/<grade>/; {GRADED_LAYOUT}")

    @staticmethod
    def _split_folder(root: pathlib.Path, split: str) -> pathlib.Path:
        names = SPLIT_FOLDERS[split]
        found = [root / n for n in names if (root / n).is_dir()]
        if not found:
            raise FileNotFoundError(
                f"missing folder {root / names[0]} for split {split!r}; {GRADED_LAYOUT}"
            )
        if len(found) > 1:
            raise ValueError(
                f"split {split!r} of {root} is ambiguous: "
                f"{' and '.join(str(f) for f in found)} both exist"
            )
        return found[0]

    @property
    def paths(self) -> list[str]:
        """Image paths of the split, in record order."""
        return [str(p) for p, _ in self._entries]

    @property
    def grades(self) -> np.ndarray:
        """Grades of the split (int32), in record order, without reading any image."""
        return np.array([g for _, g in self._entries], dtype=np.int32)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the split (int32: grade > 0), in record order."""
        return (self.grades > 0).astype(np.int32)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, grade = self._entries[index]
        image = read_image(path, self.channels)
        mask = np.zeros(image.shape[:2], np.uint8)
        rel = path.relative_to(self.root).as_posix()
        fov = field_of_view(image, self.fov, path)
        return record(image, mask, int(grade > 0), False, rel, fov, grade=grade)

    def __repr__(self) -> str:
        return f"GradedFolderSource(root={str(self.root)!r}, split={self.split!r}, len={len(self)})"
