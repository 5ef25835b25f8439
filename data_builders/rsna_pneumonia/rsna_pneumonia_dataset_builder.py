"""RSNA Pneumonia Detection Challenge chest X-rays, split for unsupervised anomaly detection.

The challenge's stage-2 training set has 26,684 frontal chest radiographs (one per patient, from
the NIH ChestX-ray14 collection), each labelled `Normal`, `No Lung Opacity / Not Normal` or
`Lung Opacity`, with radiologists' boxes around the opacities. Its test labels were never
published, so the splits here are drawn from the training set, by a seeded hash of the patient
id: normal images only for training and validation; `test` holds held-out normal images and
every `Lung Opacity` image (with its boxes as the anomaly mask); `test_not_normal` holds the
same normal images and every `No Lung Opacity / Not Normal` image, which is abnormal (label 1)
but has no boxes, so its empty mask is not a ground truth for pixel metrics.

Images are stored at the DICOM's native size (1024 x 1024) or resized (config `256`); the box
mask is rasterised at the stored size from the scaled boxes, not resampled.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_builders import common

CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
CLASS_NAMES = ("normal", "not_normal", "lung_opacity")  # the `class` feature's names
_LABELS_CSV = "stage_2_train_labels.csv"
_CLASSES_CSV = "stage_2_detailed_class_info.csv"
_IMAGES = "stage_2_train_images"

_LAYOUT = f"""\
Expected manual_dir layout (Kaggle "RSNA Pneumonia Detection Challenge", stage 2 files):
  {_LABELS_CSV}           header patientId,x,y,width,height,Target (one row per box)
  {_CLASSES_CSV}    header patientId,class
  {_IMAGES}/<patientId>.dcm
"""

_INSTRUCTIONS = f"""\
Accept the rules of the Kaggle competition "RSNA Pneumonia Detection Challenge"
(https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge), download its data
(`kaggle competitions download -c rsna-pneumonia-detection-challenge`) and extract the archive.
See data_builders/rsna_pneumonia/README.md.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class RsnaPneumoniaConfig(tfds.core.BuilderConfig):
    """Stored image size (None: the DICOM's own) and the seeded split of the normal images."""

    image_size: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class _Record:
    patient: str
    path: epath.Path
    cls: int  # index into CLASSES
    boxes: tuple[tuple[float, float, float, float], ...]  # (x, y, width, height), DICOM pixels


class Builder(common.ManualBuilder):
    """RSNA pneumonia chest X-rays with opacity boxes, normal-only training splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        RsnaPneumoniaConfig(
            name="native",
            description="Images at the DICOM's size, 1024 x 1024.",
            image_size=None,
        ),
        RsnaPneumoniaConfig(
            name="256",
            description="Images resized to 256 x 256 (antialiased bilinear), boxes scaled.",
            image_size=256,
        ),
    ]
    DEFAULT_CONFIG_NAME = "native"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(size, size, 1),
                        encoding_format="png",
                        doc="The DICOM's 8-bit pixels (MONOCHROME2), resized if the config says.",
                    ),
                    "mask": tfds.features.Image(
                        shape=(size, size, 1),
                        encoding_format="png",
                        doc="1 inside any opacity box, else 0 (all 0 without boxes).",
                    ),
                    "boxes": tfds.features.Tensor(
                        shape=(None, 4),
                        dtype=np.float32,
                        doc="Opacity boxes (x, y, width, height) in pixels of the stored image.",
                    ),
                    "class": tfds.features.ClassLabel(
                        names=list(CLASS_NAMES),
                        doc="Normal, No Lung Opacity / Not Normal, Lung Opacity.",
                    ),
                    "label": tfds.features.ClassLabel(
                        names=["normal", "abnormal"], doc="0: Normal, 1: either other class."
                    ),
                    "sex": tfds.features.Text(doc="PatientSex from the DICOM header: M or F."),
                    "age": tfds.features.Scalar(
                        dtype=np.int32, doc="PatientAge (years) from the header, -1 if absent."
                    ),
                    "view": tfds.features.Text(doc="ViewPosition from the header: PA or AP."),
                    "id": tfds.features.Text(doc="Kaggle patientId, the DICOM file's stem."),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        records = _read_records(dl_manager.manual_dir)
        by_class = collections.defaultdict(list)
        for record in records:
            by_class[record.cls].append(record)
        normal, not_normal, opacity = (by_class[i] for i in range(len(CLASSES)))
        split = split_normal([r.patient for r in normal], config)
        normal_by_split = {
            name: [r for r in normal if r.patient in ids] for name, ids in split.items()
        }
        return {
            "train": self._generate_examples(normal_by_split["train"]),
            "validation": self._generate_examples(normal_by_split["validation"]),
            "test": self._generate_examples(normal_by_split["test"] + opacity),
            "test_not_normal": self._generate_examples(normal_by_split["test"] + not_normal),
        }

    def _generate_examples(self, records: Sequence[_Record]):
        process = functools.partial(_process, size=self.builder_config.image_size)
        for record, result in common.ordered_map(process, records, self._num_workers):
            if isinstance(result, Exception):
                self._corrupt.handle(record.path, result)
                continue
            yield record.patient, result
        self._corrupt.report(f"rsna_pneumonia/{self.builder_config.name}")


def split_normal(patients: Sequence[str], config: RsnaPneumoniaConfig) -> dict[str, set[str]]:
    """Splits the normal patients into train, validation and test by a seeded hash of the id.

    Test is the first `test_fraction` of the ids ranked by the hash and validation the next
    `val_fraction`, so raising `val_fraction` keeps the test images and adds validation ones.
    """
    fractions = {"test": config.test_fraction, "validation": config.val_fraction}
    return common.hash_splits(patients, fractions, config.seed, rest="train")


def _read_records(root: epath.Path) -> list[_Record]:
    """Reads and cross-checks both CSV files; checks every listed DICOM exists."""
    boxes = _read_boxes(root / _LABELS_CSV)
    classes = _read_classes(root / _CLASSES_CSV)
    if set(boxes) != set(classes):
        only_boxes, only_classes = set(boxes) - set(classes), set(classes) - set(boxes)
        patient, where = (
            (min(only_boxes), _CLASSES_CSV) if only_boxes else (min(only_classes), _LABELS_CSV)
        )
        raise common.RawDataError(
            f"{root / where} has no row for patientId {patient} "
            f"({len(only_boxes) + len(only_classes)} patients are in only one CSV file).\n{_LAYOUT}"
        )
    opacity = CLASSES.index("Lung Opacity")
    for patient, patient_boxes in boxes.items():
        if (classes[patient] == opacity) != bool(patient_boxes):
            raise common.RawDataError(
                f"patientId {patient}: Target is {int(bool(patient_boxes))} in "
                f"{root / _LABELS_CSV} but its class in {root / _CLASSES_CSV} is "
                f"{CLASSES[classes[patient]]!r}; only 'Lung Opacity' images have boxes."
            )
    folder = root / _IMAGES
    records = [_Record(p, folder / f"{p}.dcm", classes[p], tuple(boxes[p])) for p in sorted(boxes)]
    _check_images_exist(folder, records)
    return records


def _read_boxes(path: epath.Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """patientId -> its boxes, from the labels CSV (Target 0 rows have empty coordinates)."""
    columns = ("patientId", "x", "y", "width", "height", "Target")
    rows = common.read_csv(path, columns, _LAYOUT, what="RSNA label file")
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    negative: set[str] = set()  # patients with a Target 0 row
    for line, row in enumerate(rows, start=2):
        target = common.parse_int(row["Target"], path, line, "Target")
        patient = row["patientId"]
        if target not in (0, 1) or not patient:
            raise common.RawDataError(f"{path}:{line}: needs a patientId and Target 0 or 1: {row}")
        if patient in negative or (target == 0 and patient in boxes):
            raise common.RawDataError(
                f"{path}:{line}: {patient} has a Target 0 row and another row; a Target 0 row "
                "must be the patient's only row."
            )
        patient_boxes = boxes.setdefault(patient, [])
        if target == 0:
            if any(row[c] for c in columns[1:5]):
                raise common.RawDataError(
                    f"{path}:{line}: a Target 0 row must have empty x, y, width, height: {row}"
                )
            negative.add(patient)
            continue
        box = tuple(common.parse_float(row[c], path, line, c) for c in columns[1:5])
        if not all(map(math.isfinite, box)) or box[2] <= 0 or box[3] <= 0:
            raise common.RawDataError(
                f"{path}:{line}: need finite x, y and width, height > 0: {row}"
            )
        patient_boxes.append(box)
    if not boxes:
        raise common.RawDataError(f"{path} has no rows.\n{_LAYOUT}")
    return boxes


def _read_classes(path: epath.Path) -> dict[str, int]:
    """patientId -> class index, from the detailed class CSV (one identical row per box)."""
    rows = common.read_csv(path, ("patientId", "class"), _LAYOUT, what="RSNA class file")
    classes: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if row["class"] not in CLASSES:
            raise common.RawDataError(
                f"{path}:{line}: unknown class {row['class']!r}; expected one of {CLASSES}"
            )
        cls = CLASSES.index(row["class"])
        if classes.setdefault(row["patientId"], cls) != cls:
            raise common.RawDataError(f"{path}:{line}: {row['patientId']} has two classes")
    return classes


def _check_images_exist(folder: epath.Path, records: Sequence[_Record]) -> None:
    """Fails before any decoding if the image folder or a listed DICOM is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"RSNA image folder not found: {folder}\n{_LAYOUT}")
    present = {p.name for p in folder.iterdir()}
    absent = [r.path for r in records if r.path.name not in present]
    if absent:
        raise FileNotFoundError(
            f"Image not found: {absent[0]} ({len(absent)} of the {len(records)} patients in "
            f"{_LABELS_CSV} have no DICOM in {folder}).\n{_LAYOUT}"
        )


def _header_text(ds: pydicom.Dataset, keyword: str) -> str:
    """A header value as text, read raw: RSNA's PatientAge ('51') is not a valid DICOM AS
    value, and converting it would log a validation warning for every file."""
    element = ds.get_item(keyword)
    if element is None or element.value is None:
        return ""
    value = element.value
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()


def _age(text: str) -> int:
    """Years from PatientAge: '51' (RSNA's form) or DICOM's '051Y'; other units and blanks -1."""
    text = text.removesuffix("Y")
    return int(text) if text.isdigit() else -1


def _read_dicom(path: epath.Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """The image as uint8 [H, W] (MONOCHROME1 inverted) and the header."""
    with path.open("rb") as f:
        ds = pydicom.dcmread(f)
        pixels = ds.pixel_array  # Decodes now, so a damaged file fails here, with its name.
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected one 8-bit greyscale frame, got {pixels.dtype} {pixels.shape}")
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels, ds


def _process(record: _Record, size: int | None) -> Mapping[str, object] | Exception:
    """Returns the example of `record`, or the exception that reading its DICOM raised.

    The exception is returned, not raised, for the builder's `on_corrupt` policy.
    """
    try:
        pixels, ds = _read_dicom(record.path)
    except Exception as err:  # pydicom and Pillow raise many types for damaged files.
        return err
    height, width = pixels.shape
    boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    if size is not None and (height, width) != (size, size):
        # Pillow's bilinear filter widens with the downscale factor (antialiased).
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))
        boxes = boxes * np.asarray([size / width, size / height] * 2, np.float32)
        height = width = size
    return {
        "image": common.encode_png(pixels),
        "mask": common.encode_png(common.box_mask(height, width, boxes)),
        "boxes": boxes,
        "class": CLASS_NAMES[record.cls],
        "label": int(record.cls != 0),
        "sex": _header_text(ds, "PatientSex"),
        "age": _age(_header_text(ds, "PatientAge")),
        "view": _header_text(ds, "ViewPosition"),
        "id": record.patient,
    }
