"""Random-access data sources that yield jaxad's common record.

Every source has ``__len__`` and ``__getitem__`` (so grain can read it with
``grain.MapDataset.source``) and returns, per example, a dict of numpy values *before* resizing:

=========  ====================  ==============================================================
key        type                  meaning
=========  ====================  ==============================================================
image      uint8 [H, W, C]       C is 1 or 3; uint16 or float32 for data with more than 8 bits
                                 (tfds datasets storing them), read in unit scale by
                                 `jaxad.data.transforms`
mask       uint8 [H, W]          ground-truth anomaly mask in {0, 1}; zeros when there is none
fov        uint8 [H, W]          field of view in {0, 1}; ones when unknown
label      int32                 0 normal, 1 anomalous, -1 unknown
grade      int32                 disease grade, -1 when there is none
has_mask   bool                  whether ``mask`` is a real ground truth (see each source)
id         str                   file path (relative to the folder root) or image id
=========  ====================  ==============================================================

Sources:

- `FolderSource`: a folder in the MVTec-AD layout (your own data, or the generated demo).
- `TfdsSource`: a tfds dataset prepared in ``array_record`` format (read without TensorFlow).
- `get_source(data_cfg, split)` picks one from ``data_cfg.name``.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# The validation hold-out of a folder without ``val/good`` is drawn with this fixed seed, so that
# it does not change with the training seed and train and validation stay disjoint across runs.
HOLDOUT_SEED = 0

FOLDER_LAYOUT = (
    "expected an MVTec-AD layout: <root>/train/good/* (normal training images), optional "
    "<root>/val/good/*, <root>/test/<type>/* (test/good is normal, any other type anomalous) and "
    "<root>/ground_truth/<type>/<stem>_mask.png"
)

# Raw files a manual-download builder needs in --manual_dir, by dataset name. A new builder with
# MANUAL_DOWNLOAD_INSTRUCTIONS adds one line here so that the "not prepared" error says what to get.


class ImageReadError(OSError):
    """An image or mask file could not be decoded; the message names the file."""


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset has not been built in the data_dir; the message says how to build it."""


# ---------------------------------------------------------------------------------------------
# MVTec-layout folders
# ---------------------------------------------------------------------------------------------


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
        return _record(image, mask, label, has_mask, rel, field_of_view(image, self.fov, path))

    def __repr__(self) -> str:
        return f"FolderSource(root={str(self.root)!r}, split={self.split!r}, len={len(self)})"


# ---------------------------------------------------------------------------------------------
# tfds (array_record)
# ---------------------------------------------------------------------------------------------


def default_tfds_data_dir() -> str:
    """The data_dir tfds uses when none is given ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    from tensorflow_datasets.core import constants

    return os.path.expanduser(constants.DATA_DIR)


def not_prepared_message(name: str, data_dir: str | os.PathLike | None) -> str:
    """The error text for a tfds dataset that is not built in ``data_dir``.

    Args:
      name: tfds name, optionally with config and version (``"eyeq/good"``, ``"eyeq/good:1.0.0"``).
      data_dir: the directory searched (None for the tfds default).
    """
    data_dir = str(data_dir) if data_dir else default_tfds_data_dir()
    base, _, config = name.split(":")[0].partition("/")
    what = f"tfds dataset {base!r}" + (f" (config {config!r})" if config else "")
    build_name = name.split(":")[0]
    text = (
        f"{what} is not prepared in data_dir {data_dir}. Build it with: "
        f"python -m jaxad.data.build {build_name} --manual_dir=PATH --data_dir={data_dir}"
    )
    if base.isidentifier() and importlib.util.find_spec(f"data_builders.{base}") is not None:
        text += f" (PATH holds the raw files laid out as data_builders/{base}/README.md says)"
    text += ". Configs run with ':demo' need no download."
    return text


class TfdsSource:
    """A tfds dataset prepared in ``array_record`` format, mapped to the common record.

    The same as ``tfds.data_source(name, split=split, data_dir=data_dir, try_gcs=False)`` (which is
    ``builder.as_data_source(split)``), but it never downloads or builds anything: a dataset that is
    not in ``data_dir`` raises `DatasetNotPreparedError` with the command that builds it. The
    builder code need not be imported; tfds reads the metadata written next to the data.

    Mapping: a missing ``mask`` becomes zeros with ``has_mask=False`` (a present one gives
    ``has_mask=True``); a missing ``fov`` becomes ones; ``[H, W, 1]`` masks and FOVs become
    ``[H, W]``; a missing ``label`` or ``grade`` becomes -1; ``id`` is decoded to str (or
    ``"<name>/<split>/<index>"`` when the dataset has none). Other features are dropped.
    """

    def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None):
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import registered

        self.name = name
        self.split = split
        self.data_dir = str(data_dir) if data_dir else None
        try:
            builder = tfds.builder(name, data_dir=self.data_dir, try_gcs=False)
        except registered.DatasetNotFoundError:
            # Neither registered builder code nor prepared files under data_dir.
            raise DatasetNotPreparedError(not_prepared_message(name, self.data_dir)) from None
        if not builder.is_prepared():
            raise DatasetNotPreparedError(not_prepared_message(name, self.data_dir))
        self._source = builder.as_data_source(split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._to_common(self._source[index], index)

    def _to_common(self, ex: Mapping[str, Any], index: int) -> dict[str, Any]:
        image = np.asarray(ex["image"])
        if image.dtype not in (np.uint8, np.uint16):
            image = image.astype(np.float32)  # float16 slices (MOOD) and float32 alike
        if image.ndim == 2:
            image = image[..., None]
        h, w = image.shape[:2]
        has_mask = "mask" in ex
        mask = _hw(ex["mask"]) if has_mask else np.zeros((h, w), np.uint8)
        fov = _hw(ex["fov"]) if "fov" in ex else np.ones((h, w), np.uint8)
        if "id" in ex:
            ex_id = ex["id"]
            ex_id = ex_id.decode("utf-8") if isinstance(ex_id, bytes) else str(ex_id)
        else:
            ex_id = f"{self.name}/{self.split}/{index}"
        return {
            "image": image,
            "mask": (mask > 0).astype(np.uint8),
            "fov": (fov > 0).astype(np.uint8),
            "label": np.int32(ex.get("label", -1)),
            "grade": np.int32(ex.get("grade", -1)),
            "has_mask": np.bool_(has_mask),
            "id": ex_id,
        }

    def __repr__(self) -> str:
        return f"TfdsSource(name={self.name!r}, split={self.split!r}, len={len(self)})"


def _hw(x: Any) -> np.ndarray:
    """[H, W] or [H, W, 1] -> uint8 [H, W]."""
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x.astype(np.uint8)


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
        return _record(image, mask, -1, False, rel, field_of_view(image, self.fov, path))


FOV_KINDS = ("ones", "eyeq", "circle")


def check_fov_kind(kind: str) -> None:
    if kind not in FOV_KINDS:
        raise ValueError(f"data.fov={kind!r} is not one of {', '.join(FOV_KINDS)}")


def field_of_view(image: np.ndarray, kind: str, path: os.PathLike | str = "") -> np.ndarray:
    """The field of view of an image without a stored one: uint8 [H, W] in {0, 1}.

    `ones`: everything; `eyeq`: EyeQ's fitted-circle algorithm (what the EyeQ builder stores);
    `circle`: the centred circle of Lesion2Void's preprocessing (radius 250/512 of the size).
    """
    h, w = image.shape[:2]
    if kind == "ones":
        return np.ones((h, w), np.uint8)
    from data_builders import fundus  # Fundus-specific: imported only when asked for.

    if kind == "circle":
        return fundus.circle_mask(h, w)
    try:
        return fundus.fov_mask(image[..., 0] if image.shape[-1] == 1 else image)
    except ValueError as e:
        raise ImageReadError(f"no field of view found in {path}: {e}") from e


def _record(image, mask, label: int, has_mask: bool, rel: str, fov: np.ndarray) -> dict[str, Any]:
    """The common record every source yields (see the module docstring)."""
    return {
        "image": image,
        "mask": mask,
        "fov": fov,
        "label": np.int32(label),
        "grade": np.int32(-1),
        "has_mask": np.bool_(has_mask),
        "id": rel,
    }


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


class ConcatSource:
    """Several sources read as one, in order (e.g. the slices along every axis for SimCLR)."""

    def __init__(self, parts: list[Any]):
        if not parts:
            raise ValueError("ConcatSource needs at least one source")
        self.parts = parts
        self._ends = np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[part - 1]) if part else 0
        return self.parts[part][index - start]

    def __repr__(self) -> str:
        return f"ConcatSource({self.parts!r})"


def _demo_root(kind: str, root: str | None) -> pathlib.Path:
    """Generates (once) and returns a demo folder: `kind` 'fundus', 'phantom' or 'brain'."""
    if kind == "fundus":
        from jaxad.data import demo  # Imported here: only demo configs need it.

        return demo.ensure_fundus_demo(root)
    if kind == "phantom":
        from jaxad.data import phantom

        return phantom.ensure_phantom_demo(root)
    if kind == "brain":
        from jaxad.data import brain_phantom

        return brain_phantom.ensure_brain_demo(root)
    raise ValueError(f"data.demo={kind!r}: use 'fundus', 'phantom' or 'brain'")


def get_source(data_cfg, split: str) -> FolderSource | TfdsSource:
    """The source of ``split`` described by ``data_cfg`` (an ml_collections ConfigDict).

    ``data_cfg.name``:

    - ``"folder"``: `FolderSource` over ``data_cfg.root`` with ``data_cfg.channels``
      (optional ``data_cfg.val_fraction``, default 0.1).
    - ``"nifti_folder"``: `jaxad.data.nifti.NiftiFolderSource`, slices along ``data_cfg.axis``
      of the NIfTI volumes under ``data_cfg.root`` (optional ``resize``, ``min_nonzero``,
      ``filter``, ``val_fraction``).
    - ``"demo"``: generates a demo folder once (``data_cfg.demo``: ``"fundus"`` (default),
      `jaxad.data.demo`, or ``"phantom"``, `jaxad.data.phantom`; in ``data_cfg.root`` if set,
      else a cache folder) and reads it as a folder; ``"brain"`` (`jaxad.data.brain_phantom`)
      is read as ``"nifti_folder"`` over its ``train/`` volumes.
    - anything else: `TfdsSource` of ``data_cfg.tfds_name`` (or ``data_cfg.name``), read from
      ``data_cfg.data_dir`` (default: the tfds data_dir); a comma-separated list of names is
      read as one `ConcatSource` (e.g. ``"mood/brain_axis0,mood/brain_axis1"``).
    """
    name = data_cfg.name
    if name == "folder":
        if not data_cfg.root:
            raise ValueError(
                "data.name='folder' needs data.root, the path of an MVTec-layout folder"
            )
        return FolderSource(
            data_cfg.root,
            split,
            channels=data_cfg.channels,
            val_fraction=data_cfg.get("val_fraction", 0.1),
            fov=data_cfg.get("fov", "ones"),
        )
    if name == "nifti_folder":
        from jaxad.data import nifti  # Imported here: only NIfTI data need nibabel.

        return nifti.source_from_config(data_cfg, split)
    if name == "demo":
        kind = data_cfg.get("demo", "fundus")
        root = _demo_root(kind, data_cfg.get("root") or None)
        if kind == "brain":  # NIfTI volumes: the normal training population, sliced.
            from jaxad.data import nifti

            cfg = data_cfg.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.root = str(root / "train")
            return nifti.source_from_config(cfg, split)
        return FolderSource(
            root,
            split,
            channels=data_cfg.channels,
            val_fraction=data_cfg.get("val_fraction", 0.1),
            fov=data_cfg.get("fov", "ones"),
        )
    names = [n.strip() for n in (data_cfg.get("tfds_name") or name).split(",") if n.strip()]
    data_dir = data_cfg.get("data_dir") or None
    if len(names) > 1:
        return ConcatSource([TfdsSource(n, split, data_dir=data_dir) for n in names])
    return TfdsSource(names[0], split, data_dir=data_dir)
