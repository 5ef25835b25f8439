"""COVID-19 Radiography Database chest X-rays, split for anomaly detection as MorphAEus did.

The Kaggle database (Chowdhury et al. 2020, Rahman et al. 2021) holds 299 x 299 PNG chest
radiographs in four classes, Normal, Lung_Opacity, COVID and Viral Pneumonia, each with a lung
mask. MorphAEus (Bercea et al., MICCAI 2023) trains on normal images only, with an 80/10/10
train/validation/test split of the 10,192 normal images, and tests each abnormal set against the
normal test images: all 6,012 Lung_Opacity images and the 2,474 COVID images numbered
1143-3616.

MorphAEus drew its normal split with numpy's global RNG (seed 2109) over an unsorted `glob`
listing, whose order depends on the authors' file system, so that split cannot be regenerated
from the files. `normal_split` keeps its rule (int(0.1 n) test images, as many validation
images, the rest train; test drawn from the held-out ones) and its seed, and draws with a seeded
hash of the file name instead (see README.md).

Images are stored as MorphAEus reads them: channel 0 of multi-channel files, at the native size.
The lung mask, resized to the image, is stored as the field of view.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from data_builders import common

CLASSES = ("Normal", "Lung_Opacity", "COVID", "Viral Pneumonia")  # folders and file prefixes
CLASS_NAMES = ("normal", "lung_opacity", "covid", "viral_pneumonia")  # the `class` feature
# Images per class in the release MorphAEus used (the current one).
RELEASE_COUNTS = {"Normal": 10192, "Lung_Opacity": 6012, "COVID": 3616, "Viral Pneumonia": 1345}
DATASET_FOLDER = "COVID-19_Radiography_Dataset"
SEED = 2109  # MorphAEus's split seed

_LAYOUT = f"""\
Expected manual_dir layout (Kaggle "COVID-19 Radiography Database"; manual_dir may also be
the {DATASET_FOLDER} folder itself):
  {DATASET_FOLDER}/Normal/images/Normal-<n>.png          n = 1, 2, ... without gaps
  {DATASET_FOLDER}/Normal/masks/Normal-<n>.png           lung mask of each image
  {DATASET_FOLDER}/Lung_Opacity/{{images,masks}}/Lung_Opacity-<n>.png
  {DATASET_FOLDER}/COVID/{{images,masks}}/COVID-<n>.png
  {DATASET_FOLDER}/Viral Pneumonia/{{images,masks}}/Viral Pneumonia-<n>.png   (config `all`)
"""

_INSTRUCTIONS = f"""\
Download the Kaggle dataset "COVID-19 Radiography Database"
(https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database), e.g. with
`kaggle datasets download -d tawsifurrahman/covid19-radiography-database`, and extract it.
See data_builders/covid19_radiography/README.md.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class Covid19RadiographyConfig(tfds.core.BuilderConfig):
    """Which abnormal sets to build, MorphAEus's COVID id range and the normal split's seed."""

    covid_ids: tuple[int, int] = (1143, 3616)
    every_image: bool = False
    seed: int = SEED


class _Record(NamedTuple):
    name: str  # file stem, e.g. "Normal-1"
    image: epath.Path
    mask: epath.Path
    cls: int  # index into CLASSES


class Builder(common.ManualBuilder):
    """COVID-19 Radiography Database with lung masks, normal-only training splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        Covid19RadiographyConfig(
            name="morphaeus",
            description="MorphAEus's sets: normal train/validation/test, Lung_Opacity, COVID "
            "1143-3616.",
        ),
        Covid19RadiographyConfig(
            name="all",
            description="MorphAEus's sets plus the other COVID images and Viral Pneumonia.",
            every_image=True,
        ),
    ]
    DEFAULT_CONFIG_NAME = "morphaeus"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, 1),
                        encoding_format="png",
                        doc="Channel 0 of the PNG at its native size (299 x 299).",
                    ),
                    "fov": tfds.features.Image(
                        shape=(None, None, 1),
                        encoding_format="png",
                        doc="The database's lung mask resized to the image: 1 lungs, 0 else.",
                    ),
                    "class": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "label": tfds.features.ClassLabel(
                        names=["normal", "abnormal"], doc="0: Normal, 1: any other class."
                    ),
                    "id": tfds.features.Text(doc="File stem, e.g. Normal-1."),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        root = dataset_root(dl_manager.manual_dir)
        wanted = [c for c in CLASSES if config.every_image or c != "Viral Pneumonia"]
        by_class = {cls: _list_class(root, cls) for cls in wanted}
        normal = by_class["Normal"]
        split = normal_split([r.name for r in normal], config.seed)
        first, last = config.covid_ids
        covid = by_class["COVID"]
        if len(covid) < last:
            raise FileNotFoundError(
                f"Image not found: {root / 'COVID' / 'images' / f'COVID-{last}.png'} (MorphAEus "
                f"tests on COVID-{first} to COVID-{last}; the folder has {len(covid)} images)."
                f"\n{_LAYOUT}"
            )
        in_range = [first <= _number(r.name) <= last for r in covid]
        splits = {
            "train": [r for r in normal if r.name in split["train"]],
            "validation": [r for r in normal if r.name in split["validation"]],
            "test": [r for r in normal if r.name in split["test"]],
            "test_opacity": by_class["Lung_Opacity"],
            "test_covid": [r for r, keep in zip(covid, in_range, strict=True) if keep],
        }
        if config.every_image:
            splits["test_covid_other"] = [
                r for r, keep in zip(covid, in_range, strict=True) if not keep
            ]
            splits["test_viral"] = by_class["Viral Pneumonia"]
        return {name: self._generate_examples(records) for name, records in splits.items()}

    def _generate_examples(self, records: Sequence[_Record]):
        for record, result in common.ordered_map(_process, records, self._num_workers):
            if isinstance(result, common.Unreadable):
                self._corrupt.handle(result.path, result.error)
                continue
            image, fov = result
            yield (
                record.name,
                {
                    "image": image,
                    "fov": fov,
                    "class": CLASS_NAMES[record.cls],
                    "label": int(record.cls != 0),
                    "id": record.name,
                },
            )
        self._corrupt.report(f"covid19_radiography/{self.builder_config.name}")


def normal_split(names: Iterable[str], seed: int = SEED) -> dict[str, set[str]]:
    """MorphAEus's 80/10/10 split of the normal images, drawn by a seeded hash of each name.

    As in MorphAEus, k = int(0.1 * n) images are held out for validation and k of those for
    test. Taking the first k names in `common.hash_rank` order for test and the next k for
    validation draws the same way (a uniform subset of a uniform subset), independent of the
    names' order.
    """
    names = set(names)
    if not names:
        return {"train": set(), "validation": set(), "test": set()}
    k = int(0.1 * len(names))
    fraction = k / len(names)
    return common.hash_splits(names, {"test": fraction, "validation": fraction}, seed, rest="train")


def dataset_root(manual_dir: epath.PathLike) -> epath.Path:
    """The folder holding the class folders: manual_dir or its COVID-19_Radiography_Dataset."""
    manual_dir = epath.Path(manual_dir)
    nested = manual_dir / DATASET_FOLDER
    return nested if nested.is_dir() else manual_dir


def _number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def _list_class(root: epath.Path, cls: str) -> list[_Record]:
    """The images of one class folder, by number, each with its mask; fails on any gap."""
    images, masks = root / cls / "images", root / cls / "masks"
    for folder in (images, masks):
        if not folder.is_dir():
            raise FileNotFoundError(f"{cls} folder not found: {folder}\n{_LAYOUT}")
    pattern = re.compile(rf"{re.escape(cls)}-([1-9][0-9]*)\.png")
    paths = {}
    for path in images.iterdir():
        if path.name.startswith("."):
            continue
        match = pattern.fullmatch(path.name)
        if not match:
            raise common.RawDataError(
                f"Unexpected file {path}: the images of {cls} are named {cls}-<n>.png.\n{_LAYOUT}"
            )
        paths[int(match[1])] = path
    if not paths:
        raise common.RawDataError(f"No images in {images}.\n{_LAYOUT}")
    gaps = [n for n in range(1, max(paths) + 1) if n not in paths]
    if gaps:
        # The files are numbered without gaps: a gap means an incompletely extracted archive.
        raise FileNotFoundError(
            f"Image not found: {images / f'{cls}-{gaps[0]}.png'} ({len(gaps)} of "
            f"{cls}-1 to {cls}-{max(paths)} are missing).\n{_LAYOUT}"
        )
    present = {p.name for p in masks.iterdir()}
    absent = [masks / p.name for p in paths.values() if p.name not in present]
    if absent:
        raise FileNotFoundError(
            f"Lung mask not found: {sorted(absent)[0]} ({len(absent)} of the {len(paths)} "
            f"{cls} images have no mask).\n{_LAYOUT}"
        )
    if len(paths) != RELEASE_COUNTS[cls]:
        logging.warning(
            "%s has %d images, the release MorphAEus used has %d: the splits will differ from "
            "its splits (see data_builders/covid19_radiography/README.md).",
            images,
            len(paths),
            RELEASE_COUNTS[cls],
        )
    index = CLASSES.index(cls)
    return [_Record(paths[n].stem, paths[n], masks / paths[n].name, index) for n in sorted(paths)]


def _read_channel0(path: epath.Path) -> np.ndarray:
    """uint8 [H, W]: the first channel, as MorphAEus keeps from torchvision's decoding."""
    with path.open("rb") as f, Image.open(f) as img:
        img.load()  # Decode now, so a truncated file fails here, with its name.
        if img.mode not in ("L", "LA", "RGB", "RGBA"):
            img = img.convert("RGB")  # Palette and 1-bit PNGs, expanded as libpng does.
        array = np.asarray(img)
    return array if array.ndim == 2 else array[..., 0]


def _read_lung_mask(path: epath.Path, height: int, width: int) -> np.ndarray:
    """uint8 [height, width] in {0, 1}: the mask (0/255 or 0/1 PNG), resized if need be.

    The 256 x 256 masks are resized to the 299 x 299 images bilinearly and thresholded at half,
    which keeps the lung outline smooth where nearest-neighbour scaling would step it.
    """
    with path.open("rb") as f, Image.open(f) as img:
        img.load()
        mask = np.asarray(img.convert("L"))
    mask = mask >= max(int(mask.max()), 1) / 2
    if mask.shape != (height, width):
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (width, height), Image.BILINEAR
        )
        mask = np.asarray(resized) >= 128
    return mask.astype(np.uint8)


def _process(record: _Record) -> tuple[bytes, bytes] | common.Unreadable:
    """PNG bytes of the image and its lung mask, or the file that failed and the exception.

    Failures are returned, not raised, for the builder's `on_corrupt` policy.
    """
    try:
        image = _read_channel0(record.image)
    except (OSError, SyntaxError, ValueError) as err:
        return common.Unreadable(record.image, err)
    try:
        fov = _read_lung_mask(record.mask, *image.shape)
    except (OSError, SyntaxError, ValueError) as err:
        return common.Unreadable(record.mask, err)
    return common.encode_png(image), common.encode_png(fov)
