"""MOOD 2020: brain MRI and abdominal CT volumes, whole or as the DPA solution's 2-D slices.

The Medical Out-of-Distribution Analysis Challenge (MOOD, MICCAI 2020) gives 800 brain MRI
volumes (256^3) and 550 abdominal CT volumes (512^3) without anomalies for training, and four
labelled "toy" test cases per region. Its test set is hidden, so the toy cases are the only
labelled data.

Two kinds of config per region (`brain`, `abdom`):

- `<region>_volumes`: every volume whole, as float16 (the precision the DPA solution sliced
  from), with its affine, its voxel labels (`mask`) and sample label (`label`).
- `<region>_axis{0,1,2}`: the DPA solution's 2-D slices (save_2D.py): every slice along the
  axis, `slices.area_resize`d to 256 x 256, kept if it has >= 4000 positive pixels.

Splits follow the solution's 10-fold cross-validation: `train` is every fold but `val_fold` (0,
as all its final models), `validation` is that fold, `toy` the toy cases. The solution drew its
folds with an unseeded shuffle, so they cannot be redrawn: its fold file is read if present,
otherwise folds come from a seeded hash of the file names (`hash_folds`).

Volumes are decoded one at a time, since an abdominal one is 512 MB as float32: slice configs
read the next volume while slicing one (`read_ahead`), on `num_workers` threads; whole-volume
configs read none ahead.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_builders import common
from jaxad.data import slices

REGIONS = ("brain", "abdom")
NUM_FOLDS = 10
FOLD_FILE = "train_folds_10.csv"
_FOLD_COLUMNS = ("filename", "test_fold")
_SUFFIX = ".nii.gz"
_LABEL_NAMES = ["normal", "anomalous"]
_T = TypeVar("_T")
_R = TypeVar("_R")

_LAYOUT = """\
Expected manual_dir layout (abdom alike, with abdom_train/), either with one folder per
region or with manual_dir being the region's folder itself:
  brain/
    brain_train/00000.nii.gz ...       training volumes (brain_train.zip)
    train_folds_10.csv                 optional: the DPA solution's folds,
                                       header "filename,test_fold" (00000.nii.gz,3)
    toy/toy_0.nii.gz ...               optional: toy test cases (brain_toy.zip)
    toy_label/pixel/toy_0.nii.gz       their voxel labels
    toy_label/sample/toy_0.nii.gz.txt  their sample labels (0 or 1)
"""

_INSTRUCTIONS = f"""\
Register for the MOOD challenge on Synapse (https://www.synapse.org/mood, project syn21343101),
accept its data terms and download brain_train.zip, brain_toy.zip, abdom_train.zip and
abdom_toy.zip. Extract the brain archives into <manual_dir>/brain/ and the abdominal ones into
<manual_dir>/abdom/. To reproduce the DPA solution's folds exactly, copy
folds/<region>/train_folds_10.csv from https://github.com/ninatu/mood_challenge into
<manual_dir>/<region>/. See data_builders/mood/README.md.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class MoodConfig(tfds.core.BuilderConfig):
    """A region, whole volumes (axis None) or slices along `axis`, and the validation fold.

    `resize`, `filter` and `min_nonzero` apply to slices: resize to `resize` x `resize` (None:
    native size), then drop slices with fewer than `min_nonzero` positive pixels if `filter`.
    `dtype` is the stored intensity type; `fold_seed` seeds the hashed folds.
    """

    region: str = "brain"
    axis: int | None = None
    resize: int | None = slices.SIZE
    filter: bool = True
    min_nonzero: int = slices.MIN_NONZERO
    val_fold: int = 0
    fold_seed: int = 0
    dtype: str = "float16"


def _configs() -> list[MoodConfig]:
    configs = []
    for region in REGIONS:
        what = "brain MRI" if region == "brain" else "abdominal CT"
        configs.append(
            MoodConfig(
                name=f"{region}_volumes",
                description=f"Whole {what} volumes (float16) with affine and toy labels.",
                region=region,
            )
        )
        configs += [
            MoodConfig(
                name=f"{region}_axis{axis}",
                description=f"{what} slices along axis {axis}, area-resized to 256 x 256, "
                "slices with < 4000 positive pixels dropped (the DPA solution's).",
                region=region,
                axis=axis,
            )
            for axis in range(3)
        ]
    return configs


@dataclasses.dataclass(frozen=True)
class _Volume:
    id: str  # file name up to its first dot, e.g. "00525" or "toy_0"
    path: epath.Path
    fold: int  # -1 for toy cases
    label: int = 0  # sample label
    label_path: epath.Path | None = None  # voxel labels (toy cases only)


@dataclasses.dataclass
class _Loaded:
    """A decoded volume and what goes with it."""

    image: np.ndarray  # [D, H, W] in the config's dtype
    mask: np.ndarray | None  # uint8 [D, H, W] voxel labels, None when the volume has none
    affine: np.ndarray
    value_range: tuple[float, float]


class Builder(common.ManualBuilder):
    """MOOD 2020 brain MRI and abdominal CT: whole volumes or the DPA solution's 2-D slices."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs()
    DEFAULT_CONFIG_NAME = "brain_volumes"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        dtype = np.dtype(config.dtype)
        compressed = tfds.features.Encoding.ZLIB
        fold = tfds.features.Scalar(np.int32, doc="Cross-validation fold 0-9, -1 for toy cases.")
        if config.axis is None:
            features = {
                "image": tfds.features.Tensor(
                    shape=(None, None, None),
                    dtype=dtype,
                    encoding=compressed,
                    doc="Intensities as stored (assumed in [0, 1]), in NIfTI voxel order.",
                ),
                "mask": tfds.features.Tensor(
                    shape=(None, None, None),
                    dtype=np.uint8,
                    encoding=compressed,
                    doc="Voxel labels in {0, 1}; zeros for the (normal) training volumes.",
                ),
                "label": tfds.features.ClassLabel(
                    names=_LABEL_NAMES, doc="Sample label; training volumes are normal."
                ),
                "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64, doc="NIfTI affine."),
                "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32, doc="Volume shape."),
                "id": tfds.features.Text(doc="File name without .nii.gz, e.g. 00525 or toy_0."),
                "fold": fold,
            }
        else:
            size = config.resize
            features = {
                "image": tfds.features.Tensor(
                    shape=(size, size, 1),
                    dtype=dtype,
                    encoding=compressed,
                    doc="Area-resized slice.",
                ),
                "mask": tfds.features.Tensor(
                    shape=(size, size, 1),
                    dtype=np.uint8,
                    encoding=compressed,
                    doc="1 where the slice covers an anomalous voxel (max-pooled voxel labels).",
                ),
                "label": tfds.features.ClassLabel(
                    names=_LABEL_NAMES, doc="1 if the slice holds anomalous voxels."
                ),
                "volume_label": tfds.features.ClassLabel(
                    names=_LABEL_NAMES, doc="Sample label of the slice's volume."
                ),
                "id": tfds.features.Text(doc="<volume>_<slice index>, e.g. 00525_37."),
                "volume": tfds.features.Text(doc="Volume id, e.g. 00525."),
                "slice": tfds.features.Scalar(np.int32, doc="Slice index along the axis."),
                "fold": fold,
            }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage="http://medicalood.dkfz.de/web/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if config.region not in REGIONS or config.axis not in (None, 0, 1, 2):
            raise ValueError(f"region must be one of {REGIONS} and axis None or 0-2: {config}")
        if not 0 <= config.val_fold < NUM_FOLDS:
            raise ValueError(f"val_fold must be in 0-{NUM_FOLDS - 1}, got {config.val_fold}")
        root = region_dir(dl_manager.manual_dir, config.region)
        train = _train_volumes(root, config.region, config.fold_seed)
        toy = _toy_volumes(root)
        splits = {
            "train": self._generate_examples(
                [v for v in train if v.fold != config.val_fold], "train"
            ),
            "validation": self._generate_examples(
                [v for v in train if v.fold == config.val_fold], "validation"
            ),
        }
        if toy:
            splits["toy"] = self._generate_examples(toy, "toy")
        return splits

    def _generate_examples(self, volumes: Sequence[_Volume], split: str):
        config = self.builder_config
        load = functools.partial(_load, dtype=np.dtype(config.dtype))
        if config.axis is None:
            # No read-ahead: tfds holds on to the last whole-volume example until it gets the
            # next, so reading ahead would keep three volumes alive.
            loads = ((volume, load(volume)) for volume in volumes)
        else:
            loads = read_ahead(load, volumes)
        out_of_range = []
        dropped_anomalous = 0
        for volume, loaded in loads:
            if isinstance(loaded, common.Unreadable):
                self._corrupt.handle(loaded.path, loaded.error)
                continue
            low, high = loaded.value_range
            if low < 0 or high > 1:
                if not out_of_range:  # Once: the solution assumes [0, 1], and we do not clip.
                    logging.warning(
                        "%s has intensities in [%g, %g], outside [0, 1]; kept as they are.",
                        volume.path,
                        low,
                        high,
                    )
                out_of_range.append(volume.id)
            if config.axis is None:
                yield volume.id, _volume_example(volume, loaded)
            else:
                for example in self._slice_examples(volume, loaded):
                    if isinstance(example, dict):
                        yield example["id"], example
                    else:
                        dropped_anomalous += example
            del loaded  # Before the next volume is read ahead.
        split = f"mood/{config.name} {split}"
        if out_of_range:
            logging.warning("%s: %d volume(s) outside [0, 1]", split, len(out_of_range))
        if dropped_anomalous:
            logging.warning(
                "%s: the filter dropped %d slice(s) holding anomalous voxels",
                split,
                dropped_anomalous,
            )
        self._corrupt.report(split)

    def _slice_examples(self, volume: _Volume, loaded: _Loaded) -> Iterator[dict[str, Any] | int]:
        """The kept slices' examples; a filtered-out slice with anomalous voxels yields 1."""
        config = self.builder_config
        make = functools.partial(
            _slice_example,
            volume=volume,
            loaded=loaded,
            axis=config.axis,
            size=config.resize,
            min_nonzero=config.min_nonzero if config.filter else None,
        )
        for _, example in common.ordered_map(
            make, range(loaded.image.shape[config.axis]), self._num_workers
        ):
            if example is not None:
                yield example


def region_dir(manual_dir: epath.PathLike, region: str) -> epath.Path:
    """`<manual_dir>/<region>`, or manual_dir itself if it holds `<region>_train/`."""
    manual_dir = epath.Path(manual_dir)
    if (manual_dir / f"{region}_train").is_dir():
        return manual_dir
    return manual_dir / region


def hash_folds(names: Iterable[str], num_folds: int, seed: int) -> dict[str, int]:
    """Assigns `names` to `num_folds` folds of equal size (+-1) by a seeded hash of each name.

    The names are ranked by `common.hash_rank` (SHA-256 of "<seed>/<name>") and cut into
    consecutive folds, as KFold cuts a shuffled list: independent of numpy and of the order of
    `names`.
    """
    ranked = common.hash_rank(names, seed)
    return {name: i * num_folds // len(ranked) for i, name in enumerate(ranked)}


def _volume_id(path: epath.Path) -> str:
    return path.name.split(".")[0]  # As the solution names slices: "00525.nii.gz" -> "00525".


def _nifti_files(folder: epath.Path) -> list[epath.Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(_SUFFIX))


def _train_volumes(root: epath.Path, region: str, seed: int) -> list[_Volume]:
    """The training volumes with their folds (from the fold file if present, else hashed)."""
    folder = common.require_file(root / f"{region}_train", "MOOD training folder", _LAYOUT)
    paths = {p.name: p for p in _nifti_files(folder)}
    if not paths:
        raise common.RawDataError(f"No {_SUFFIX} volumes in {folder}.\n{_LAYOUT}")
    fold_path = root / FOLD_FILE
    if fold_path.exists():
        folds = _read_folds(fold_path, folder, paths)
    else:
        folds = hash_folds(paths, NUM_FOLDS, seed)
    return [_Volume(_volume_id(p), p, folds[name]) for name, p in paths.items()]


def _read_folds(path: epath.Path, folder: epath.Path, paths: dict[str, Any]) -> dict[str, int]:
    """Reads the solution's fold file; it must list exactly the volumes of `folder`."""
    rows = common.read_csv(path, _FOLD_COLUMNS, _LAYOUT, what="MOOD fold file")
    folds = {}
    for line, row in enumerate(rows, start=2):
        fold = common.parse_int(row["test_fold"], path, line, "test_fold")
        if not 0 <= fold < NUM_FOLDS or row["filename"] in folds:
            raise common.RawDataError(
                f"{path}:{line}: test_fold must be 0-{NUM_FOLDS - 1} and each filename listed "
                f"once: {row}"
            )
        folds[row["filename"]] = fold
    absent = [name for name in folds if name not in paths]
    if absent:
        raise FileNotFoundError(
            f"Volume not found: {folder / absent[0]} ({len(absent)} of the {len(folds)} volumes "
            f"listed in {path} are missing).\n{_LAYOUT}"
        )
    unlisted = [name for name in paths if name not in folds]
    if unlisted:
        raise common.RawDataError(
            f"{path} does not list {folder / unlisted[0]} ({len(unlisted)} volume(s) unlisted); "
            f"remove the fold file to assign folds by hash instead."
        )
    return folds


def _toy_volumes(root: epath.Path) -> list[_Volume]:
    """The toy cases with their labels, or [] if there is no toy/ folder."""
    folder = root / "toy"
    if not folder.is_dir():
        return []
    volumes = []
    for path in _nifti_files(folder):
        pixel = common.require_file(
            root / "toy_label" / "pixel" / path.name, "MOOD toy voxel label file", _LAYOUT
        )
        sample = common.require_file(
            root / "toy_label" / "sample" / f"{path.name}.txt", "MOOD toy sample label", _LAYOUT
        )
        first_line = (sample.read_text().splitlines() or [""])[0]  # What the evaluation reads.
        label = common.parse_int(first_line, sample, 1, "sample label")
        if label not in (0, 1):
            raise common.RawDataError(f"{sample}:1: the sample label must be 0 or 1: {label}")
        volumes.append(_Volume(_volume_id(path), path, -1, label, pixel))
    return volumes


def _read_volume(path: epath.Path, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A 3-D NIfTI volume as `dtype`, its affine and its (min, max).

    Read as float32 rather than get_fdata's default float64: half the memory, and the same
    values for files stored as float32 or as integers.
    """
    image = nib.load(path)
    if image.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {image.shape}")
    data = image.get_fdata(dtype=np.float32, caching="unchanged")
    value_range = (float(data.min()), float(data.max()))
    return data.astype(dtype, copy=False), image.affine, value_range


def _load(volume: _Volume, dtype: np.dtype) -> _Loaded | common.Unreadable:
    """Reads a volume (and its voxel labels); an unreadable file is returned, not raised."""
    path = volume.path
    try:
        image, affine, value_range = _read_volume(path, dtype)
        mask = None
        if volume.label_path is not None:
            path = volume.label_path
            labels, _, _ = _read_volume(path, np.dtype(np.float32))
            if labels.shape != image.shape:
                raise ValueError(f"labels of shape {labels.shape} for a {image.shape} volume")
            mask = slices.binarize_label(labels)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        return common.Unreadable(path, err)
    return _Loaded(image, mask, affine, value_range)


def read_ahead(fn: Callable[[_T], _R], items: Iterable[_T]) -> Iterator[tuple[_T, _R]]:
    """Yields (item, fn(item)) in order, computing fn of the next item while one is used.

    For items too big for `common.ordered_map`'s look-ahead: at most two results are alive,
    provided the caller drops each result before asking for the next.
    """
    with ThreadPoolExecutor(1) as pool:
        current = None
        for item in items:
            upcoming = (item, pool.submit(fn, item))
            if current is not None:
                done, future = current
                current = None  # So the result is freed as soon as the caller drops it.
                yield done, future.result()
                del future
            current = upcoming
        if current is not None:
            done, future = current
            yield done, future.result()


def _volume_example(volume: _Volume, loaded: _Loaded) -> dict[str, Any]:
    mask = loaded.mask if loaded.mask is not None else np.zeros(loaded.image.shape, np.uint8)
    return {
        "image": loaded.image,
        "mask": mask,
        "label": volume.label,
        "affine": np.asarray(loaded.affine, np.float64),
        "shape": np.asarray(loaded.image.shape, np.int32),
        "id": volume.id,
        "fold": volume.fold,
    }


def _slice_example(
    index: int,
    *,
    volume: _Volume,
    loaded: _Loaded,
    axis: int,
    size: int | None,
    min_nonzero: int | None,
) -> dict[str, Any] | int | None:
    """One slice's example; for a filtered-out slice 1 if it holds anomalous voxels, else None."""
    image = slices.prepare_slice(slices.slice_along(loaded.image, axis, index), size, min_nonzero)
    labels = None if loaded.mask is None else slices.slice_along(loaded.mask, axis, index)
    anomalous = labels is not None and bool(labels.any())
    if image is None:
        return 1 if anomalous else None
    if labels is None:
        mask = np.zeros(image.shape, np.uint8)
    else:
        mask = slices.max_resize(labels, image.shape) if size else np.array(labels)
    return {
        "image": image[..., None].astype(loaded.image.dtype),
        "mask": mask[..., None],
        "label": int(anomalous),
        "volume_label": volume.label,
        "id": f"{volume.id}_{index}",
        "volume": volume.id,
        "slice": index,
        "fold": volume.fold,
    }
