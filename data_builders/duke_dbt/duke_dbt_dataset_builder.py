"""BCS-DBT (Duke breast tomosynthesis, TCIA) as full-resolution 2-D slices for anomaly detection.

Each BCS-DBT view (lcc, rcc, lmlo, rmlo of a study) is a tomosynthesis volume in one multi-frame
DICOM, labelled normal, actionable, benign or cancer; benign and cancer views carry lesion boxes
drawn on one slice each. PICARD (Konz et al., MedIA 2023) trains on full-resolution slices of
normal views only and evaluates against the tumour boxes, so this builder stores:

- `train`: slices of the normal views of BCS-DBT's training set (by default the central slice);
- `train_abnormal`: each annotated slice of the training set's boxed views, boxes as a mask;
- `validation`, `test`: the annotated slices of the boxed views of those BCS-DBT sets, plus the
  central slice of each of their normal views (empty mask), so image-level AUROC has negatives.

Actionable views have no boxes; with benign or cancer views lacking one they are left out (and
counted in the log) unless `unboxed_splits` asks for `<split>_unboxed` splits. Slices are
oriented and windowed as the providers' reader does (see `volumes`) and stored as 8-bit PNG,
the form PICARD's loader reads (it converts every image to 8-bit greyscale).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Sequence

import numpy as np
import pydicom
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_builders import common
from data_builders.duke_dbt import volumes

SPLITS = ("train", "validation", "test")
GRADES = ("normal", "actionable", "benign", "cancer")  # The label CSVs' one-hot columns.
BOX_CLASSES = ("benign", "cancer")
_KEY = ("PatientID", "StudyUID", "View")
_PATH_COLUMNS = (*_KEY, "descriptive_path", "classic_path")
_LABEL_COLUMNS = (*_KEY, "Normal", "Actionable", "Benign", "Cancer")
_BOX_COLUMNS = (*_KEY, "Slice", "X", "Y", "Width", "Height", "Class", "AD", "VolumeSlices")
_TABLES = ("file-paths", "labels", "boxes")
# The tables' names on TCIA. Older downloads have a space after "BCS-DBT" and other suffixes,
# so a table is found by the pattern "BCS-DBT[- ]<table>-<split>*.csv" (see `_find_table`).
CSV_NAMES = {
    ("file-paths", "train"): "BCS-DBT-file-paths-train-v2.csv",
    ("labels", "train"): "BCS-DBT-labels-train-v2.csv",
    ("boxes", "train"): "BCS-DBT-boxes-train-v2.csv",
    ("file-paths", "validation"): "BCS-DBT-file-paths-validation-v2.csv",
    ("labels", "validation"): "BCS-DBT-labels-validation-PHASE-2-Jan-2024.csv",
    ("boxes", "validation"): "BCS-DBT-boxes-validation-v2-PHASE-2-Jan-2024.csv",
    ("file-paths", "test"): "BCS-DBT-file-paths-test-v2.csv",
    ("labels", "test"): "BCS-DBT-labels-test-PHASE-2.csv",
    ("boxes", "test"): "BCS-DBT-boxes-test-v2-PHASE-2-Jan-2024.csv",
}

_LAYOUT = """\
Expected manual_dir layout (the folder the NBIA Data Retriever downloaded into, plus the tables):
  BCS-DBT-file-paths-train-v2.csv                   required
  BCS-DBT-labels-train-v2.csv                       required
  BCS-DBT-boxes-train-v2.csv                        required
  BCS-DBT-file-paths-validation-v2.csv              optional: present, it builds `validation`
  BCS-DBT-labels-validation-PHASE-2-Jan-2024.csv      and needs these two
  BCS-DBT-boxes-validation-v2-PHASE-2-Jan-2024.csv
  BCS-DBT-file-paths-test-v2.csv                    optional: present, it builds `test`
  BCS-DBT-labels-test-PHASE-2.csv                     and needs these two
  BCS-DBT-boxes-test-v2-PHASE-2-Jan-2024.csv
  Breast-Cancer-Screening-DBT/<PatientID>/<study>/<series>/1-1.dcm
                                one DICOM per view, at the descriptive_path or classic_path of
                                the file-paths table (relative to manual_dir)
Tables may be named "BCS-DBT <table>-<split>..." (older downloads) or carry other suffixes.
See data_builders/duke_dbt/README.md.
"""

_INSTRUCTIONS = f"""\
Breast-Cancer-Screening-DBT on The Cancer Imaging Archive (https://doi.org/10.7937/E4WT-CD02):
download the images of the training set (and of the validation and test sets if wanted) with
the NBIA Data Retriever from the collection's .tcia manifests, into manual_dir, and put the
file-path, label and box tables of each set (CSV files on the same page) next to the
Breast-Cancer-Screening-DBT folder. The training images are about 1.4 TB of the 1.63 TB.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class DukeDbtConfig(tfds.core.BuilderConfig):
    """Which slices of the normal training views to keep and how to scale intensities.

    Attributes:
      normal_slices: slices kept per normal `train` view, centred on the middle one (index
        num_slices // 2) and `slice_step` apart; 0 keeps every `slice_step`-th slice.
      slice_step: distance between the kept slices of a normal training view.
      intensity: 'window' (the DICOM window, as the providers' reader) or 'minmax' (the volume's
        own minimum and maximum; decodes every slice, so builds are many times slower).
      box_slice_tolerance: a slice's mask holds the boxes of its view annotated within
        tolerance * VolumeSlices slices of it (0: only the boxes drawn on that slice; 0.25: the
        BCS-DBT detection challenge's rule for where a lesion counts as found).
      unboxed_splits: also build `<split>_unboxed`, the central slice of each abnormal view
        without boxes (actionable ones), labelled abnormal with an empty mask.
    """

    normal_slices: int = 1
    slice_step: int = 1
    intensity: str = "window"
    box_slice_tolerance: float = 0.0
    unboxed_splits: bool = False


@dataclasses.dataclass(frozen=True)
class _Box:
    x: int
    y: int
    width: int
    height: int
    slice: int
    cls: int  # index in BOX_CLASSES
    ad: bool  # architectural distortion
    volume_slices: int


@dataclasses.dataclass(frozen=True)
class _View:
    patient: str
    study: str
    view: str  # lcc, rcc, lmlo or rmlo
    descriptive_path: str
    classic_path: str
    grade: int  # index in GRADES
    boxes: tuple[_Box, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.patient}/{self.study}/{self.view}"


@dataclasses.dataclass(frozen=True)
class _Item:
    """A view to read and the rule choosing its slices from its number of slices."""

    view: _View
    path: epath.Path
    pick: Callable[[int], list[int]]


@dataclasses.dataclass(frozen=True)
class _Slice:
    index: int
    num_slices: int
    image: bytes  # PNG
    mask: bytes  # PNG
    boxes: tuple[_Box, ...]


class Builder(common.ManualBuilder):
    """BCS-DBT tomosynthesis slices: normal training slices, boxed lesion slices for testing."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DukeDbtConfig(
            name="slices",
            description="The central slice of each normal training view (PICARD's setting).",
        ),
        DukeDbtConfig(
            name="slices5",
            description="Five slices, 4 apart, around the centre of each normal training view.",
            normal_slices=5,
            slice_step=4,
        ),
    ]
    DEFAULT_CONFIG_NAME = "slices"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, 1),
                        encoding_format="png",
                        doc="Slice at full resolution, oriented and windowed to 8 bits.",
                    ),
                    "mask": tfds.features.Image(
                        shape=(None, None, 1),
                        encoding_format="png",
                        doc="1 inside the slice's lesion boxes, 0 elsewhere.",
                    ),
                    "label": tfds.features.ClassLabel(
                        names=["normal", "abnormal"], doc="0: normal view, 1: any other."
                    ),
                    "grade": tfds.features.ClassLabel(
                        names=list(GRADES), doc="BCS-DBT label of the view."
                    ),
                    "boxes": tfds.features.Tensor(
                        shape=(None, 4), dtype=np.int32, doc="Lesion boxes: x, y, width, height."
                    ),
                    "box_class": tfds.features.Sequence(
                        tfds.features.ClassLabel(names=list(BOX_CLASSES)), doc="Box pathology."
                    ),
                    "box_slice": tfds.features.Tensor(
                        shape=(None,), dtype=np.int32, doc="Slice each box is drawn on."
                    ),
                    "box_ad": tfds.features.Tensor(
                        shape=(None,), dtype=np.bool_, doc="Box marks an architectural distortion."
                    ),
                    "patient_id": tfds.features.Text(doc="BCS-DBT PatientID, e.g. DBT-P00013."),
                    "study_id": tfds.features.Text(doc="BCS-DBT StudyUID, e.g. DBT-S00163."),
                    "view": tfds.features.Text(doc="lcc, rcc, lmlo or rmlo."),
                    "slice": tfds.features.Scalar(dtype=np.int32, doc="Slice index, from 0."),
                    "num_slices": tfds.features.Scalar(dtype=np.int32, doc="Slices of the view."),
                    "id": tfds.features.Text(doc="<PatientID>/<StudyUID>/<View>/<slice>."),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://doi.org/10.7937/E4WT-CD02",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        _check_config(config)
        root = dl_manager.manual_dir
        present = [s for s in SPLITS if s == "train" or _find_table(root, "file-paths", s)]
        for split in SPLITS:
            if split not in present:
                logging.warning(
                    "No %s in %s: building without the %s split.",
                    CSV_NAMES["file-paths", split],
                    root,
                    split,
                )
        views = {split: _read_split(root, split) for split in present}
        _require_collection_folder(root, views["train"])

        central = functools.partial(normal_slices, count=1, step=1)
        train_normal = functools.partial(
            normal_slices, count=config.normal_slices, step=config.slice_step
        )
        plans: dict[str, list[tuple[_View, Callable[[int], list[int]]]]] = {}
        for split, split_views in views.items():
            boxed = [(v, _box_slices(v)) for v in split_views if v.boxes]
            unboxed = [(v, central) for v in split_views if v.grade > 0 and not v.boxes]
            if split == "train":
                plans["train"] = [(v, train_normal) for v in split_views if v.grade == 0]
                plans["train_abnormal"] = boxed
            else:
                plans[split] = [
                    (v, _box_slices(v) if v.boxes else central)
                    for v in split_views
                    if v.boxes or v.grade == 0
                ]
            if config.unboxed_splits:
                plans[f"{split}_unboxed"] = unboxed
            elif unboxed:
                logging.warning(
                    "%s: leaving out %d abnormal views without boxes (e.g. %s; "
                    "unboxed_splits=True keeps them).",
                    split,
                    len(unboxed),
                    unboxed[0][0].name,
                )
        for name in [name for name, plan in plans.items() if not plan]:
            logging.warning("%s would have no examples (tfds cannot store it); left out.", name)
            del plans[name]
        # Every file is located before any is decoded, so a missing one stops the build at once.
        finder = volumes.FileFinder(root)
        items = {
            name: [_Item(v, _locate(finder, root, v), pick) for v, pick in plan]
            for name, plan in plans.items()
        }
        return {name: self._generate_examples(name, split) for name, split in items.items()}

    def _generate_examples(self, split: str, items: Sequence[_Item]):
        config = self.builder_config
        process = functools.partial(
            _process, intensity=config.intensity, tolerance=config.box_slice_tolerance
        )
        for item, result in common.ordered_map(process, items, self._num_workers):
            if isinstance(result, Exception):
                self._corrupt.handle(item.path, result)
                continue
            view = item.view
            for s in result:
                example_id = f"{view.name}/{s.index}"
                yield (
                    example_id,
                    {
                        "image": s.image,
                        "mask": s.mask,
                        "label": int(view.grade > 0),
                        "grade": view.grade,
                        "boxes": np.array(
                            [(b.x, b.y, b.width, b.height) for b in s.boxes], np.int32
                        ).reshape(-1, 4),
                        "box_class": [b.cls for b in s.boxes],
                        "box_slice": np.array([b.slice for b in s.boxes], np.int32),
                        "box_ad": np.array([b.ad for b in s.boxes], np.bool_),
                        "patient_id": view.patient,
                        "study_id": view.study,
                        "view": view.view,
                        "slice": s.index,
                        "num_slices": s.num_slices,
                        "id": example_id,
                    },
                )
        self._corrupt.report(f"duke_dbt/{config.name} {split}")


def normal_slices(num_slices: int, count: int, step: int) -> list[int]:
    """Indices of `count` slices `step` apart centred on slice num_slices // 2, those that exist.

    count=0 gives every `step`-th slice, the middle one included.
    """
    center = num_slices // 2
    if count == 0:
        return list(range(center % step, num_slices, step))
    first = center - step * ((count - 1) // 2)
    return [s for s in range(first, first + step * count, step) if 0 <= s < num_slices]


def _box_slices(view: _View) -> Callable[[int], list[int]]:
    """The slices boxes are drawn on (whatever the volume's size)."""
    slices = sorted({b.slice for b in view.boxes})
    return lambda num_slices: slices


def _check_config(config: DukeDbtConfig) -> None:
    if config.intensity not in volumes.INTENSITIES:
        raise ValueError(f"intensity={config.intensity!r}: use one of {volumes.INTENSITIES}")
    if config.normal_slices < 0 or config.slice_step < 1 or config.box_slice_tolerance < 0:
        raise ValueError(
            "normal_slices must be >= 0, slice_step >= 1 and box_slice_tolerance >= 0, got "
            f"{config.normal_slices}, {config.slice_step}, {config.box_slice_tolerance}"
        )


def _find_table(root: epath.Path, table: str, split: str) -> epath.Path | None:
    """The CSV file of `table` ('file-paths', 'labels' or 'boxes') for `split`, if present.

    Raises:
      RawDataError: several files match (naming them).
    """
    pattern = f"BCS-DBT[- ]{table}-{split}*.csv"
    matches = sorted(p for p in root.iterdir() if fnmatch.fnmatchcase(p.name, pattern))
    if len(matches) > 1:
        raise common.RawDataError(
            f"Several {table} tables of the {split} set in {root}: {[p.name for p in matches]}; "
            f"keep one (e.g. {CSV_NAMES[table, split]}).\n{_LAYOUT}"
        )
    return matches[0] if matches else None


def _table(root: epath.Path, table: str, split: str) -> epath.Path:
    """`_find_table`, or FileNotFoundError naming the file by its TCIA name."""
    path = _find_table(root, table, split)
    return path or common.require_file(
        root / CSV_NAMES[table, split], f"BCS-DBT {table} table", _LAYOUT
    )


def _read_split(root: epath.Path, split: str) -> list[_View]:
    """The labelled views of a BCS-DBT set with their boxes, sorted by patient, study, view.

    Raises:
      FileNotFoundError, RawDataError: a table is missing, lacks a column, holds a bad value or
        contradicts another table (naming the file and line).
    """
    tables = {t: _table(root, t, split) for t in _TABLES}
    paths_csv, labels_csv, boxes_csv = tables["file-paths"], tables["labels"], tables["boxes"]
    rows = common.read_csv(paths_csv, _PATH_COLUMNS, _LAYOUT, what="BCS-DBT file-paths table")
    paths: dict[tuple[str, ...], tuple[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        key = _key(row, paths_csv, line)
        if key in paths:
            raise common.RawDataError(f"{paths_csv}:{line}: view {'/'.join(key)} listed twice")
        paths[key] = (row["descriptive_path"], row["classic_path"])

    grades: dict[tuple[str, ...], int] = {}
    rows = common.read_csv(labels_csv, _LABEL_COLUMNS, _LAYOUT, what="BCS-DBT labels table")
    for line, row in enumerate(rows, start=2):
        key = _key(row, labels_csv, line)
        flags = [common.parse_int(row[c], labels_csv, line, c) for c in _LABEL_COLUMNS[3:]]
        if sorted(flags) != [0, 0, 0, 1]:
            raise common.RawDataError(
                f"{labels_csv}:{line}: exactly one of {list(_LABEL_COLUMNS[3:])} must be 1: {row}"
            )
        if key in grades:
            raise common.RawDataError(f"{labels_csv}:{line}: view {'/'.join(key)} listed twice")
        if key not in paths:
            raise common.RawDataError(
                f"{labels_csv}:{line}: view {'/'.join(key)} is not in {paths_csv}"
            )
        grades[key] = flags.index(1)
    unlabelled = len(paths.keys() - grades.keys())
    if unlabelled:
        logging.warning(
            "%s: %d views have no label in %s; left out.", split, unlabelled, labels_csv
        )

    boxes: dict[tuple[str, ...], list[_Box]] = {}
    for line, row in enumerate(
        common.read_csv(boxes_csv, _BOX_COLUMNS, _LAYOUT, what="BCS-DBT boxes table"), start=2
    ):
        key = _key(row, boxes_csv, line)
        if grades.get(key, 0) == 0:
            state = "labelled normal" if key in grades else "not listed"
            raise common.RawDataError(
                f"{boxes_csv}:{line}: box on view {'/'.join(key)}, {state} in {labels_csv}"
            )
        boxes.setdefault(key, []).append(_parse_box(row, boxes_csv, line))

    return [
        _View(*key, *paths[key], grade=grades[key], boxes=tuple(boxes.get(key, ())))
        for key in sorted(grades)
    ]


def _key(row: dict[str, str], path: epath.Path, line: int) -> tuple[str, str, str]:
    """(PatientID, StudyUID, View) of a row; the View must name a side (l... or r...)."""
    if row["View"][:1].lower() not in ("l", "r") or not row["PatientID"] or not row["StudyUID"]:
        raise common.RawDataError(
            f"{path}:{line}: needs a PatientID, a StudyUID and a View starting with l or r "
            f"(the breast's side): {row}"
        )
    return row["PatientID"], row["StudyUID"], row["View"]


def _parse_box(row: dict[str, str], path: epath.Path, line: int) -> _Box:
    """A row of a boxes table, checked: a positive size on an existing slice, a known class."""
    x, y, width, height, slice_, ad, volume_slices = (
        common.parse_int(row[c], path, line, c)
        for c in ("X", "Y", "Width", "Height", "Slice", "AD", "VolumeSlices")
    )
    cls = row["Class"].lower()
    if width <= 0 or height <= 0 or not 0 <= slice_ < volume_slices or cls not in BOX_CLASSES:
        raise common.RawDataError(
            f"{path}:{line}: a box needs Width, Height > 0, 0 <= Slice < VolumeSlices and a Class "
            f"in {list(BOX_CLASSES)}: {row}"
        )
    return _Box(x, y, width, height, slice_, BOX_CLASSES.index(cls), bool(ad), volume_slices)


def _require_collection_folder(root: epath.Path, views: Sequence[_View]) -> None:
    """Fails early, naming it, when the downloaded collection's top folder is missing."""
    if views:
        top = views[0].descriptive_path.replace("\\", "/").split("/")[0]
        common.require_file(root / top, "DICOM folder", _LAYOUT)


def _locate(finder: volumes.FileFinder, root: epath.Path, view: _View) -> epath.Path:
    path = finder.find(view.descriptive_path, view.classic_path)
    if path is None:
        raise FileNotFoundError(
            f"DICOM file of view {view.name} not found: {root / view.descriptive_path} (nor at "
            f"its classic_path {view.classic_path!r}); an incomplete download?\n{_LAYOUT}"
        )
    return path


def _process(item: _Item, intensity: str, tolerance: float) -> list[_Slice] | Exception:
    """Reads the chosen slices of a view as PNG images with their box masks.

    An unreadable or inconsistent file is returned as its exception, for the `on_corrupt` policy.
    """
    view = item.view
    try:
        header = pydicom.dcmread(item.path, stop_before_pixels=True)
        num_slices = volumes.num_frames(header)
        for box in view.boxes:
            if box.volume_slices != num_slices:
                raise ValueError(
                    f"{num_slices} slices, but the boxes table gives VolumeSlices "
                    f"{box.volume_slices} for view {view.name}"
                )
        out = []
        slices = item.pick(num_slices)
        for index, frame in volumes.read_slices(item.path, header, slices, view.view, intensity):
            near = tuple(
                b for b in view.boxes if abs(b.slice - index) <= tolerance * b.volume_slices
            )
            mask = common.box_mask(*frame.shape, [(b.x, b.y, b.width, b.height) for b in near])
            out.append(
                _Slice(index, num_slices, common.encode_png(frame), common.encode_png(mask), near)
            )
        return out
    except Exception as err:  # pydicom raises many types for a truncated or malformed file.
        return err
