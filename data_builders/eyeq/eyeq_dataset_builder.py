"""EyeQ: EyePACS fundus photos with EyeQ quality grades, split for anomaly detection.

Normal means diabetic retinopathy (DR) grade 0. The training images are EyeQ-train's grade 0
photos, the abnormal ones are its grades 1-4, and the test split is EyeQ-test at every grade.
Each photo is border-cropped and resized (`jaxad.data.fundus.crop_border`) and stored with
its EyeQ field-of-view mask (`jaxad.data.fundus.fov_mask`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow_datasets as tfds
from etils import epath

from data_builders import common, fundus

QUALITIES = ("good", "usable", "reject")
_SPLITS = {"train": "train", "test": "test"}  # EyeQ split -> EyePACS folder holding its photos
_CSV_COLUMNS = ("image", "quality", "DR_grade")

_LAYOUT = """\
Expected manual_dir layout:
  Label_EyeQ_train.csv   EyeQ's labels, from https://github.com/HzFu/EyeQ (data/)
  Label_EyeQ_test.csv
  train/*.jpeg           the Kaggle Diabetic Retinopathy Detection training photos
  test/*.jpeg            the Kaggle Diabetic Retinopathy Detection test photos
"""

_INSTRUCTIONS = f"""\
The photos are EyePACS's, from the Kaggle "Diabetic Retinopathy Detection" competition
(https://www.kaggle.com/c/diabetic-retinopathy-detection/data): accept the competition rules,
download train.zip.* and test.zip.* and extract them. EyeQ-train photos are in Kaggle's train/
folder and EyeQ-test photos in its test/ folder. The labels are data/Label_EyeQ_train.csv and
data/Label_EyeQ_test.csv of https://github.com/HzFu/EyeQ. See data_builders/eyeq/README.md.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class EyeqConfig(tfds.core.BuilderConfig):
    """Which EyeQ quality grades to keep, the stored image size and the validation draw."""

    qualities: tuple[str, ...] = ("good",)
    image_size: int = 512
    val_fraction: float = 0.1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class _Record:
    name: str  # EyePACS image id, e.g. "10009_left"
    path: epath.Path
    grade: int
    quality: int


class Builder(common.ManualBuilder):
    """EyeQ fundus photos (EyePACS) with DR grades, EyeQ quality and FOV masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        EyeqConfig(
            name="good",
            description="EyeQ 'Good' quality photos only, the images Lesion2Void used.",
            qualities=("good",),
        ),
        EyeqConfig(
            name="all",
            description="Photos of every EyeQ quality (good, usable, reject).",
            qualities=QUALITIES,
        ),
    ]
    DEFAULT_CONFIG_NAME = "good"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    **fundus.photo_features(size),
                    "quality": tfds.features.ClassLabel(names=list(QUALITIES), doc="EyeQ grade."),
                    "id": tfds.features.Text(doc="EyePACS image id, e.g. 10009_left."),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/HzFu/EyeQ",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        root = dl_manager.manual_dir
        keep = {QUALITIES.index(q) for q in config.qualities}
        train = [r for r in _read_split(root, "train") if r.quality in keep]
        test = [r for r in _read_split(root, "test") if r.quality in keep]
        _check_images_exist(root, "train", train)
        _check_images_exist(root, "test", test)

        normal = [r for r in train if r.grade == 0]
        # EyeQ has no validation split and Lesion2Void's is unpublished, so draw our own.
        held_out = common.hash_split([r.name for r in normal], config.val_fraction, config.seed)
        return {
            "train": self._generate_examples([r for r in normal if r.name not in held_out]),
            "validation": self._generate_examples([r for r in normal if r.name in held_out]),
            "train_abnormal": self._generate_examples([r for r in train if r.grade > 0]),
            "test": self._generate_examples(test),
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
                    "quality": record.quality,
                    "id": record.name,
                },
            )
        self._corrupt.report(f"eyeq/{self.builder_config.name}")


def _read_split(root: epath.Path, split: str) -> list[_Record]:
    """Reads Label_EyeQ_<split>.csv (columns: unnamed index, image, quality, DR_grade)."""
    path = root / f"Label_EyeQ_{split}.csv"
    rows = common.read_csv(path, _CSV_COLUMNS, _LAYOUT, what="EyeQ label file")
    folder = root / _SPLITS[split]
    records = []
    for line, row in enumerate(rows, start=2):
        grade = common.parse_int(row["DR_grade"], path, line, "DR_grade")
        quality = common.parse_int(row["quality"], path, line, "quality")
        if grade not in range(5) or quality not in range(3):
            raise common.RawDataError(f"{path}:{line}: DR_grade must be 0-4 and quality 0-2: {row}")
        image = row["image"]
        records.append(_Record(image.rsplit(".", 1)[0], folder / image, grade, quality))
    return records


def _check_images_exist(root: epath.Path, split: str, records: Sequence[_Record]) -> None:
    """Fails before any processing if the EyePACS folder or a listed photo is missing."""
    paths = [r.path for r in records]
    csv_name = f"Label_EyeQ_{split}.csv"
    folder = root / _SPLITS[split]
    common.require_listed_files(folder, paths, csv_name, _LAYOUT, what="EyePACS image folder")
