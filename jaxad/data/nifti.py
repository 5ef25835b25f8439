"""2-D slices of your own NIfTI volumes, prepared as the MOOD DPA solution prepared its data.

`NiftiFolderSource` reads every ``*.nii.gz`` and ``*.nii`` file under a folder (recursively, any
3-D shape) and serves the slices along one axis as jaxad's common record (see
`jaxad.data.records`), with exactly the preparation of the ``mood/<region>_axis<k>`` tfds
configs, by the same functions (`jaxad.data.slices`): the volume read as float32 and stored as
float16, each slice area-resized to ``resize`` x ``resize``, dropped if it has fewer than
``min_nonzero`` positive pixels, and rounded to float16 as the builder stores it. Intensities
are not rescaled: the solution assumes volumes in [0, 1].

Volumes are never all in memory. At construction each volume of the split is read once, one at
a time, to find its kept slices; that index is cached per volume (keyed by path, size,
modification time and the preparation options) under ``$JAXAD_DATA_DIR/nifti_index`` or
``~/.cache/jaxad/nifti_index``, never in your folder. A record then reads its volume on demand,
keeping the last ``cache_volumes`` volumes decoded. Uncompressed ``.nii`` files without intensity
scaling are memory-mapped and read slice by slice instead, which is what makes shuffled training
fast: a shuffled order over ``.nii.gz`` files decodes a whole volume for most records, so
decompress them (or build the tfds dataset) before training on many volumes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import threading
import zlib
from typing import Any

import numpy as np

from jaxad.data import slices, splits
from jaxad.data.records import ConcatSource, ImageReadError, Source

SUFFIXES = (".nii.gz", ".nii")
_INDEX_VERSION = 1


def _is_nifti(path: pathlib.Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(SUFFIXES)


def volume_name(rel: str) -> str:
    """ "sub/00001" from "sub/00001.nii.gz": the relative path without the NIfTI suffix."""
    for suffix in SUFFIXES:
        if rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def default_cache_dir() -> pathlib.Path:
    """`$JAXAD_DATA_DIR/nifti_index`, else `~/.cache/jaxad/nifti_index`."""
    base = os.environ.get("JAXAD_DATA_DIR")
    base = pathlib.Path(base) if base else pathlib.Path.home() / ".cache" / "jaxad"
    return base / "nifti_index"


def _load_errors() -> tuple[type[BaseException], ...]:
    import nibabel as nib

    return (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def _open(path: pathlib.Path):
    """The nibabel image of a 3-D volume (header only; data stay on disk)."""
    import nibabel as nib

    try:
        img = nib.load(os.fspath(path))
    except _load_errors() as e:
        raise ImageReadError(f"cannot read volume {path}: {e}") from e
    if len(img.shape) != 3:
        raise ImageReadError(f"volume {path} is not 3-D: shape {img.shape}")
    return img


def read_volume(path: str | os.PathLike, dtype: str | np.dtype = "float16") -> np.ndarray:
    """A whole 3-D volume as the mood builder reads it: float32 from nibabel, then `dtype`."""
    path = pathlib.Path(path)
    img = _open(path)
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except _load_errors() as e:
        raise ImageReadError(f"cannot read volume {path}: {e}") from e
    return data.astype(dtype, copy=False)


def _memory_mapped(img) -> bool:
    """Whether slices can be read from disk alone: an uncompressed file without scaling."""
    proxy = img.dataobj
    return (
        getattr(proxy, "is_proxy", False)
        and not str(img.get_filename()).lower().endswith(".gz")
        and proxy.slope == 1.0
        and proxy.inter == 0.0
    )


def _mapped_slice(img, axis: int, index: int, dtype: np.dtype) -> np.ndarray:
    """One slice, with the casts `read_volume` applies to the whole volume."""
    raw = np.asarray(img.dataobj[(slice(None),) * axis + (index,)])
    # nibabel's get_fdata(float32) first promotes the stored type with float32 (float64 for
    # 32/64-bit integers), then casts to float32.
    wide = raw.astype(np.promote_types(raw.dtype, np.float32), copy=False)
    return wide.astype(np.float32, copy=False).astype(dtype, copy=False)


class NiftiFolderSource:
    """Slices along `axis` of the NIfTI volumes under `root`, split by volume.

    Args:
      root: folder searched recursively for ``*.nii.gz`` and ``*.nii`` files (hidden files are
        skipped), in sorted order of their paths relative to `root`.
      split: "train", "validation" or "all". Validation is the first round(val_fraction * n)
        volumes (at least one when n >= 2 and val_fraction > 0) in the seeded hash order of their
        relative paths (`jaxad.data.splits.hash_rank`, as `splits.hash_split`), train the
        rest: disjoint by volume, independent of numpy and of the order of the files.
      axis: slicing axis, 0, 1 or 2.
      resize: slices are area-resized to resize x resize (None: native size).
      min_nonzero: the filter's threshold, a count of pixels > 0 after resizing.
      filter: drop slices under the threshold (the solution's default).
      val_fraction: fraction of the volumes held out for validation.
      seed: seed of the hash split.
      dtype: precision the volume is held in and slices are rounded to: "float16", as the mood
        builder stores them, or "float32".
      cache_dir: where the per-volume slice index is cached (None: `default_cache_dir()`;
        False: no cache).
      cache_volumes: decoded volumes kept in memory for `__getitem__`.

    Records: ``image`` float32 [H, W, 1] (values as stored, e.g. [0, 1]), ``mask`` zeros,
    ``fov`` ones, ``label`` 0, ``grade`` -1, ``has_mask`` False (nothing is known about
    anomalies), ``id`` ``<relative path without suffix>_<slice index>``, e.g. ``00525_37``.

    Raises:
      FileNotFoundError: `root` does not exist.
      ValueError: no volume under `root`, or bad options.
      ImageReadError: a volume of the split is unreadable or not 3-D (the message names it).
    """

    SPLITS = ("train", "validation", "all")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        axis: int,
        resize: int | None = slices.SIZE,
        min_nonzero: int = slices.MIN_NONZERO,
        filter: bool = True,
        val_fraction: float = 0.1,
        seed: int = 0,
        dtype: str = "float16",
        cache_dir: str | os.PathLike | bool | None = None,
        cache_volumes: int = 2,
    ):
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r} for NIfTI folder {root}; use {self.SPLITS}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"dtype must be float16 or float32, got {dtype}")
        self.root = pathlib.Path(root).expanduser()
        self.split = split
        self.axis = int(axis)
        self.resize = int(resize) if resize else None
        self.min_nonzero = int(min_nonzero) if filter else None
        self.dtype = np.dtype(dtype)
        self.cache_volumes = max(1, int(cache_volumes))
        if cache_dir is None or cache_dir is True:
            cache_dir = default_cache_dir()
        self._cache_dir = pathlib.Path(cache_dir) if cache_dir else None

        if not self.root.is_dir():
            raise FileNotFoundError(f"NIfTI folder {self.root} does not exist")
        paths = sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if _is_nifti(p)
        )
        if not paths:
            raise ValueError(f"no NIfTI volumes (*.nii.gz, *.nii) under {self.root}")
        held_out = self._holdout(paths, val_fraction, seed)
        if split == "train":
            paths = [p for p in paths if p not in held_out]
        elif split == "validation":
            paths = [p for p in paths if p in held_out]
        self.volumes = paths
        # (relative path, slice index) of every kept slice, volume after volume.
        self._entries: list[tuple[str, int]] = []
        for rel in self.volumes:
            self._entries += [(rel, i) for i in self._kept_slices(rel)]
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    @staticmethod
    def _holdout(paths: list[str], val_fraction: float, seed: int) -> set[str]:
        n_val = round(val_fraction * len(paths))
        if n_val == 0 and val_fraction > 0 and len(paths) >= 2:
            n_val = 1
        return set(splits.hash_rank(paths, seed)[:n_val])

    # -- Index ------------------------------------------------------------------------------

    def _index_key(self, path: pathlib.Path) -> str:
        stat = path.stat()
        key = {
            "version": _INDEX_VERSION,
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "axis": self.axis,
            "resize": self.resize,
            "min_nonzero": self.min_nonzero,
            "dtype": self.dtype.name,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _kept_slices(self, rel: str) -> list[int]:
        """Indices of the slices the filter keeps, from the cache or by reading the volume."""
        path = self.root / rel
        cache_file = None
        if self._cache_dir is not None:
            cache_file = self._cache_dir / f"{self._index_key(path)}.json"
            try:
                return [int(i) for i in json.loads(cache_file.read_text())["kept"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # Not cached yet (or a damaged entry): index the volume.
        volume = read_volume(path, self.dtype)
        kept = [
            i
            for i in range(volume.shape[self.axis])
            if self._prepare(slices.slice_along(volume, self.axis, i)) is not None
        ]
        if cache_file is not None:
            self._write_index(cache_file, {"path": str(path), "shape": volume.shape, "kept": kept})
        return kept

    @staticmethod
    def _write_index(cache_file: pathlib.Path, entry: dict[str, Any]) -> None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(entry))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # A read-only cache only costs re-indexing next time.

    # -- Records ----------------------------------------------------------------------------

    def _prepare(self, image: np.ndarray) -> np.ndarray | None:
        return slices.prepare_slice(image, self.resize, self.min_nonzero)

    def _slice(self, rel: str, index: int) -> np.ndarray:
        path = self.root / rel
        if not rel.lower().endswith(".gz"):
            img = _open(path)  # A plain file: only its header is read here.
            if _memory_mapped(img):
                try:
                    return _mapped_slice(img, self.axis, index, self.dtype)
                except _load_errors() as e:
                    raise ImageReadError(f"cannot read volume {path}: {e}") from e
        with self._lock:  # One decode at a time: concurrent readers of one volume share it.
            volume = self._cache.get(rel)
            if volume is None:
                volume = read_volume(path, self.dtype)
                self._cache[rel] = volume
                while len(self._cache) > self.cache_volumes:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(rel)
        return slices.slice_along(volume, self.axis, index)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel, i = self._entries[index]
        image = self._prepare(self._slice(rel, i))
        if image is None:
            raise ImageReadError(f"volume {self.root / rel} changed since it was indexed")
        image = image.astype(self.dtype).astype(np.float32)[..., None]
        h, w = image.shape[:2]
        return {
            "image": image,
            "mask": np.zeros((h, w), np.uint8),
            "fov": np.ones((h, w), np.uint8),
            "label": np.int32(0),
            "grade": np.int32(-1),
            "has_mask": np.bool_(False),
            "id": f"{volume_name(rel)}_{i}",
        }

    @property
    def entries(self) -> list[tuple[str, int]]:
        """(volume path relative to root, slice index) of every record, in record order."""
        return list(self._entries)

    @property
    def labels(self) -> np.ndarray:
        return np.zeros(len(self), np.int32)

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes get the index but neither the lock nor decoded volumes.
        state = dict(self.__dict__)
        del state["_lock"], state["_cache"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = collections.OrderedDict()

    def __repr__(self) -> str:
        return (
            f"NiftiFolderSource(root={str(self.root)!r}, split={self.split!r}, axis={self.axis}, "
            f"volumes={len(self.volumes)}, len={len(self)})"
        )


def source_from_config(data_cfg, split: str) -> Source:
    """`NiftiFolderSource` from ``data_cfg``: ``root``, ``axis``, ``resize``, ``min_nonzero``,
    ``filter``, ``val_fraction``, ``split_seed`` (its ``seed``) and ``dtype``, whose defaults
    are in ``configs/common.py:data_config()``.

    ``axis`` may list several axes ("0,1,2", or a sequence such as (0, 2), which is what the
    command line makes of ``--config.data.axis=0,2``), as SimCLR pre-training on slices along
    every axis: their sources are read as one (`jaxad.data.records.ConcatSource`).
    """
    if not data_cfg.root:
        raise ValueError("data.name='nifti_folder' needs data.root, a folder of NIfTI volumes")
    axes = _axes(data_cfg.axis)
    if len(axes) > 1:
        return ConcatSource([_source(data_cfg, split, a) for a in axes])
    return _source(data_cfg, split, axes[0])


def _axes(value: Any) -> list[int]:
    """The slicing axes of ``data.axis``: an int, a comma-separated string or a sequence."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    axes = [str(a).strip() for a in parts if str(a).strip()]
    if not axes or any(a not in ("0", "1", "2") for a in axes):
        raise ValueError(
            f"data.axis={value!r}: the slicing axis, 0, 1 or 2, or a list such as '0,1,2'"
        )
    return [int(a) for a in axes]


def _source(data_cfg, split: str, axis: int) -> NiftiFolderSource:
    return NiftiFolderSource(
        data_cfg.root,
        split,
        axis=axis,
        resize=data_cfg.resize,
        min_nonzero=data_cfg.min_nonzero,
        filter=data_cfg.filter,
        val_fraction=data_cfg.val_fraction,
        seed=data_cfg.split_seed,
        dtype=data_cfg.dtype,
    )
