"""EyePACS (Kaggle Diabetic Retinopathy Detection) fundus photos with their DR grades.

The split is the one Lesion-based Contrastive Learning (MICCAI 2021) fine-tuned and evaluated
on: train is Kaggle's training set (35,126 photos), validation the test photos Kaggle scored on
its public leaderboard (10,906) and test those of the private leaderboard (42,670). Each photo is
border-cropped and resized to a square (`jaxad.data.fundus.crop_border`, the crop both
Lesion2Void and Lesion-based CL used) and stored with its EyeQ field-of-view mask, exactly as the
EyeQ builder stores the same photos.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders import common, fundus

# The photo preprocessing (crop, FOV mask, JPEG encoding) is EyeQ's: the photos are the same.

EYES = ("left", "right")
# Kaggle's `Usage` column of the test solution -> this builder's split.
_USAGE_SPLITS = {"Public": "validation", "Private": "test"}
_NAME = re.compile(r"(\d+)_(left|right)")

_LAYOUT = """\
Expected manual_dir layout:
  trainLabels.csv            Kaggle's training labels, header "image,level"
  retinopathy_solution.csv   Kaggle's test solution, header "image,level,Usage"
  train/10_left.jpeg ...     the training photos (train.zip.*, extracted)
  test/1_left.jpeg ...       the test photos (test.zip.*, extracted)
"""

_INSTRUCTIONS = f"""\
Download the Kaggle "Diabetic Retinopathy Detection" data
(https://www.kaggle.com/c/diabetic-retinopathy-detection/data) after accepting the
competition rules: trainLabels.csv.zip, retinopathy_solution.csv, train.zip.* and test.zip.*.
Unzip the labels and extract the photos. See data_builders/eyepacs/README.md.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class EyepacsConfig(tfds.core.BuilderConfig):
    """The side of the stored square crops, in pixels."""

    image_size: int = 512


@dataclasses.dataclass(frozen=True)
class _Record:
    name: str  # e.g. "10_left"
    path: epath.Path
    grade: int
    patient: int
    eye: int  # index into EYES


class Builder(common.ManualBuilder):
    """EyePACS fundus photos, border-cropped, with DR grades and FOV masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        EyepacsConfig(
            name="crop_512",
            description="Border-cropped photos resized to 512 x 512, as Lesion-based CL used.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "crop_512"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    **fundus.photo_features(size),
                    "patient_id": tfds.features.Scalar(
                        dtype=np.int64, doc="Patient number, shared by both eyes."
                    ),
                    "eye": tfds.features.ClassLabel(names=list(EYES), doc="Which eye."),
                    "id": tfds.features.Text(doc="EyePACS image id, e.g. 10_left."),
                }
            ),
            supervised_keys=("image", "grade"),
            homepage="https://www.kaggle.com/c/diabetic-retinopathy-detection",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = dl_manager.manual_dir
        train = _read_labels(root / "trainLabels.csv", root / "train", ("image", "level"))
        test = _read_labels(
            root / "retinopathy_solution.csv", root / "test", ("image", "level", "Usage")
        )
        _check_images_exist(root / "train", "trainLabels.csv", [r for r, _ in train])
        _check_images_exist(root / "test", "retinopathy_solution.csv", [r for r, _ in test])
        return {
            "train": self._generate_examples([r for r, _ in train]),
            "validation": self._generate_examples([r for r, u in test if u == "validation"]),
            "test": self._generate_examples([r for r, u in test if u == "test"]),
        }

    def _generate_examples(self, records: Sequence[_Record]):
        size = self.builder_config.image_size
        photos = fundus.processed_photos(records, size, self._num_workers, self._corrupt)
        for record, image, fov in photos:
            yield (
                record.name,
                {
                    "image": image,
                    "fov": fov,
                    "label": int(record.grade > 0),
                    "grade": record.grade,
                    "patient_id": record.patient,
                    "eye": record.eye,
                    "id": record.name,
                },
            )
        self._corrupt.report(f"eyepacs/{self.builder_config.name}")


def _read_labels(
    path: epath.Path, folder: epath.Path, columns: Sequence[str]
) -> list[tuple[_Record, str | None]]:
    """Reads a Kaggle label file: (record, split from `Usage` or None), sorted by image name."""
    rows = common.read_csv(path, columns, _LAYOUT, what="EyePACS label file")
    records = []
    seen = set()
    for line, row in enumerate(rows, start=2):
        name = row["image"]
        match = _NAME.fullmatch(name)
        if not match:
            raise common.RawDataError(
                f"{path}:{line}: image {name!r} is not of the form <patient>_<left|right>."
            )
        if name in seen:
            raise common.RawDataError(f"{path}:{line}: image {name!r} is listed twice.")
        seen.add(name)
        grade = common.parse_int(row["level"], path, line, "level")
        if grade not in range(5):
            raise common.RawDataError(f"{path}:{line}: level must be 0-4, got {row['level']!r}.")
        split = None
        if "Usage" in columns:
            split = _USAGE_SPLITS.get(row["Usage"])
            if split is None:
                raise common.RawDataError(
                    f"{path}:{line}: Usage must be Public or Private, got {row['Usage']!r}."
                )
        patient, eye = match.groups()
        record = _Record(name, folder / f"{name}.jpeg", grade, int(patient), EYES.index(eye))
        records.append((record, split))
    # Numeric order (1_left, 1_right, 10_left, ...) whatever the file's order.
    return sorted(records, key=lambda item: (item[0].patient, item[0].eye))


def _check_images_exist(folder: epath.Path, csv_name: str, records: Sequence[_Record]) -> None:
    """Fails before any processing if the photo folder or a listed photo is missing."""
    paths = [r.path for r in records]
    common.require_listed_files(folder, paths, csv_name, _LAYOUT, what="EyePACS image folder")
