"""A small fake copy of BCS-DBT in the real layout, for tests and benchmarks.

`write(root)` writes the nine CSV tables under their TCIA names and headers and one multi-frame
DICOM per view (pydicom; uint16 MONOCHROME2 with BitsStored 10, the shared functional groups'
Frame VOI LUT window that the reader uses, and the frame laterality tag). Every other view is
RLE Lossless encapsulated: pydicom cannot write the JPEG 2000 of the real files, and RLE takes
the same frame-by-frame path through the encapsulated pixel data. Files sit where the NBIA Data
Retriever puts them: at the descriptive path with "NA" for the empty series description (the
tables omit it), except one view at the exact descriptive path and one in the classic layout.

Each frame is a half-ellipse breast on the side of the view's laterality, of intensity
`tissue_value(slice)`, with `LESION`-valued squares where the boxes of that slice are; views
marked `rotated` are stored upside down (180 degrees), as the reader must correct.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

WINDOW = (512.0, 1024.0)  # WindowCenter, WindowWidth: values 0..1024 map onto 0..255.
LESION = 1023
COLLECTION = "Breast-Cancer-Screening-DBT"
_TOMO_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3"  # Breast Tomosynthesis Image Storage
_UID_ROOT = "1.2.826.0.1.3680043.8.498."

# split, patient, study, view, label (the labels table's column), depth (index into `frames`),
# stored upside down
_VIEWS = (
    ("train", "DBT-P00001", "DBT-S00001", "lcc", "Normal", 0, False),
    ("train", "DBT-P00001", "DBT-S00001", "lmlo", "Normal", 1, True),
    ("train", "DBT-P00001", "DBT-S00001", "rcc", "Normal", 2, False),
    ("train", "DBT-P00001", "DBT-S00001", "rmlo", "Normal", 0, True),
    ("train", "DBT-P00002", "DBT-S00002", "lcc", "Actionable", 0, False),
    ("train", "DBT-P00002", "DBT-S00002", "lmlo", "Normal", 1, False),
    ("train", "DBT-P00002", "DBT-S00002", "rcc", "Cancer", 1, True),
    ("train", "DBT-P00002", "DBT-S00002", "rmlo", "Benign", 0, False),
    ("validation", "DBT-P00003", "DBT-S00003", "lcc", "Normal", 0, False),
    ("validation", "DBT-P00003", "DBT-S00003", "rcc", "Cancer", 1, True),
    ("validation", "DBT-P00004", "DBT-S00004", "rmlo", "Normal", 1, False),
    ("test", "DBT-P00005", "DBT-S00005", "lcc", "Benign", 0, False),
    ("test", "DBT-P00005", "DBT-S00005", "lmlo", "Normal", 1, False),
    ("test", "DBT-P00005", "DBT-S00005", "rmlo", "Actionable", 0, False),
    ("test", "DBT-P00006", "DBT-S00006", "lcc", "Cancer", 2, False),
    ("test", "DBT-P00006", "DBT-S00006", "rcc", "Normal", 2, True),
)
_BOXES = {  # index in _VIEWS -> boxes as (Slice, Class, AD)
    6: ((3, "cancer", 0), (8, "cancer", 1)),  # two slices of one view
    7: ((4, "benign", 0),),
    9: ((6, "cancer", 0),),
    11: ((2, "benign", 0), (2, "benign", 1)),  # two boxes on one slice
    14: ((5, "cancer", 0),),
}
_LABELS = ("Normal", "Actionable", "Benign", "Cancer")
TABLES = {
    "train": (
        "BCS-DBT-file-paths-train-v2.csv",
        "BCS-DBT-labels-train-v2.csv",
        "BCS-DBT-boxes-train-v2.csv",
    ),
    "validation": (
        "BCS-DBT-file-paths-validation-v2.csv",
        "BCS-DBT-labels-validation-PHASE-2-Jan-2024.csv",
        "BCS-DBT-boxes-validation-v2-PHASE-2-Jan-2024.csv",
    ),
    "test": (
        "BCS-DBT-file-paths-test-v2.csv",
        "BCS-DBT-labels-test-PHASE-2.csv",
        "BCS-DBT-boxes-test-v2-PHASE-2-Jan-2024.csv",
    ),
}


@dataclasses.dataclass
class FakeView:
    split: str
    patient: str
    study: str
    view: str
    label: str  # Normal, Actionable, Benign or Cancer
    frames: int
    rotated: bool  # stored upside down
    boxes: list[tuple[int, int, int, int, int, str, int]]  # x, y, w, h, slice, class, AD
    descriptive_path: str = ""  # as in the file-paths table
    classic_path: str = ""
    file: str = ""  # where the DICOM is, relative to root


def tissue_value(slice_index: int) -> int:
    """The raw breast intensity of a slice, distinct per slice."""
    return 200 + 10 * slice_index


def write(
    root: os.PathLike | str,
    *,
    rows: int = 64,
    cols: int = 48,
    frames: Sequence[int] = (9, 12, 17),
    extra_normal_views: int = 0,
    rle: bool = True,
) -> dict[str, Any]:
    """Writes the fake raw dataset under `root` and returns what a build must give.

    Args:
      rows, cols: frame size (real views are 2457 x 1996 or 2457 x 1890).
      frames: the three volume depths views cycle through, each above 8 (the deepest fake box's
        slice); real views have dozens of slices.
      extra_normal_views: more normal training views (patients DBT-P1xxxx), for benchmarks.
      rle: encapsulate every other view as RLE Lossless (False: all native, much faster to
        write at full size).

    Returns:
      {"views": [FakeView], "rows", "cols", "sizes": {config: {split: examples}}}.
    """
    if len(frames) != 3 or min(frames) <= 8:
        raise ValueError(f"frames needs three depths above 8, got {frames}")
    root = os.fspath(root)
    views = [
        FakeView(split, patient, study, view, label, frames[depth], rotated, [])
        for split, patient, study, view, label, depth, rotated in _VIEWS
    ]
    for i, boxes in _BOXES.items():
        views[i].boxes = [_box(views[i].view, j, rows, cols) + b for j, b in enumerate(boxes)]
    for i in range(extra_normal_views):
        patient, study = f"DBT-P1{i // 4:04d}", f"DBT-S1{i // 4:04d}"
        view = ("lcc", "rcc", "lmlo", "rmlo")[i % 4]
        views.append(
            FakeView("train", patient, study, view, "Normal", frames[i % 3], i % 3 == 1, [])
        )
    for i, view in enumerate(views):
        _place(view, i)
        _write_dicom(os.path.join(root, view.file), view, rows, cols, rle and i % 2 == 1)
    _write_tables(root, views)
    return {"views": views, "rows": rows, "cols": cols, "sizes": _sizes(views)}


def _box(view: str, i: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    """A box inside the breast, away from the image edges (x, y, w, h)."""
    w, h = max(cols // 6, 2), max(rows // 8, 2)
    x = cols // 5 if view.startswith("l") else cols - cols // 5 - w
    return x, rows // 3 + i * (h + 2), w, h


def _place(view: FakeView, i: int) -> None:
    """Sets the table paths and where the file is (see the module docstring)."""
    study_folder = f"01-01-2000-{view.study}-MAMMO SCREENING DIGITAL BILATERAL-{10000 + i * 7}"
    series = f"{1000 + i}.000000"
    view.descriptive_path = (
        f"{COLLECTION}/{view.patient}/{study_folder}/{series}-{20000 + i * 13}/1-1.dcm"
    )
    view.classic_path = f"{COLLECTION}/{view.patient}/{_uid(view, 1)}/{_uid(view, 2)}/1-1.dcm"
    if i == 2:
        view.file = view.descriptive_path
    elif i == 5:
        view.file = view.classic_path
    else:
        view.file = view.descriptive_path.replace(f"{series}-", f"{series}-NA-")


def _uid(view: FakeView, kind: int) -> str:
    digits = "".join(c for c in view.patient + view.study + view.view if c.isdigit())
    return f"{_UID_ROOT}{kind}{digits}{sum(map(ord, view.view))}"


def _volume(view: FakeView, rows: int, cols: int) -> np.ndarray:
    """The slices as stored: the breast on the view's side, lesions at the boxes."""
    r, c = np.ogrid[:rows, :cols]
    chest = 0 if view.view.startswith("l") else cols - 1
    breast = ((r - rows / 2) / (0.4 * rows)) ** 2 + ((c - chest) / (0.8 * cols)) ** 2 <= 1
    volume = np.zeros((view.frames, rows, cols), np.uint16)
    for index, frame in enumerate(volume):
        frame[breast] = tissue_value(index)
    for x, y, w, h, box_slice, _, _ in view.boxes:
        volume[box_slice, y : y + h, x : x + w] = LESION
    return np.ascontiguousarray(volume[:, ::-1, ::-1]) if view.rotated else volume


def _write_dicom(path: str, view: FakeView, rows: int, cols: int, rle: bool) -> None:
    volume = _volume(view, rows, cols)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _TOMO_STORAGE
    meta.MediaStorageSOPInstanceUID = _uid(view, 3)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _TOMO_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = view.patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(view, 1), _uid(view, 2)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, view.frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 10, 9, 0
    voi, anatomy, shared = Dataset(), Dataset(), Dataset()
    voi.WindowCenter, voi.WindowWidth = WINDOW
    # The laterality tag is not what the reader trusts: it is wrong in some real files.
    anatomy.FrameLaterality = view.view[0].upper()
    shared.FrameVOILUTSequence = [voi]
    shared.FrameAnatomySequence = [anatomy]
    ds.SharedFunctionalGroupsSequence = [shared]
    if rle:
        ds.compress(RLELossless, volume)
    else:
        ds.PixelData = volume.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_tables(root: str, views: list[FakeView]) -> None:
    for split, (paths_name, labels_name, boxes_name) in TABLES.items():
        rows = [v for v in views if v.split == split]
        _write_csv(
            os.path.join(root, paths_name),
            ["PatientID", "StudyUID", "View", "descriptive_path", "classic_path"],
            [[v.patient, v.study, v.view, v.descriptive_path, v.classic_path] for v in rows],
        )
        _write_csv(
            os.path.join(root, labels_name),
            ["PatientID", "StudyUID", "View", *_LABELS],
            [[v.patient, v.study, v.view] + [int(v.label == k) for k in _LABELS] for v in rows],
        )
        header = ["PatientID", "StudyUID", "View", "Subject", "Slice", "X", "Y", "Width"]
        _write_csv(
            os.path.join(root, boxes_name),
            [*header, "Height", "Class", "AD", "VolumeSlices"],
            [
                [v.patient, v.study, v.view, 0, s, x, y, w, h, cls, ad, v.frames]
                for v in rows
                for x, y, w, h, s, cls, ad in v.boxes
            ],
        )


def _write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _sizes(views: list[FakeView]) -> dict[str, dict[str, int]]:
    """Examples per split of each config, counted independently of the builder's code."""

    def normal_count(frames: int, count: int, step: int) -> int:
        center = frames // 2
        return sum(
            1
            for s in range(frames)
            if (s - center) % step == 0
            and -((count - 1) // 2) * step <= s - center
            and s - center <= count // 2 * step
        )

    def boxed(split: str) -> int:
        return sum(len({b[4] for b in v.boxes}) for v in views if v.split == split)

    def normals(split: str, count: int, step: int) -> int:
        return sum(
            normal_count(v.frames, count, step)
            for v in views
            if v.split == split and v.label == "Normal"
        )

    sizes = {}
    for config, (count, step) in {"slices": (1, 1), "slices5": (5, 4)}.items():
        sizes[config] = {
            "train": normals("train", count, step),
            "train_abnormal": boxed("train"),
            "validation": boxed("validation") + normals("validation", 1, 1),
            "test": boxed("test") + normals("test", 1, 1),
        }
    return sizes
