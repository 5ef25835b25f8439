"""2-D slices of your own NIfTI volumes, prepared as the MOOD DPA solution prepared its data.

`NiftiFolderSource` reads every ``*.nii.gz`` and ``*.nii`` file under a folder (recursively, any
3-D shape) and serves the slices along one axis as jaxad's common record (see
`jaxad.data.records`), with exactly the preparation of the ``mood/<region>_axis<k>`` tfds
configs, by the same functions (`jaxad.data.slices`): the volume read as float32 and stored as
float16, each slice area-resized to ``resize`` x ``resize``, dropped if it has fewer than
``min_nonzero`` positive pixels, and rounded to float16 as the builder stores it. Intensities
are not rescaled: the solution assumes volumes in [0, 1].

Each volume is decoded once per machine. The first time a volume is seen, it is read whole, one
at a time, and its kept slices, prepared as above, are written to a local cache: the slice index
(``<key>.json``, which slices the filter keeps) and the slices themselves (``<key>.npy``, float16
[kept, resize, resize], uncompressed), keyed by the volume's path, size, modification time and
the preparation options, under ``$JAXAD_DATA_DIR/nifti_index`` or ``~/.cache/jaxad/nifti_index``,
never in your folder. Several axes of one folder are indexed together, one decode per volume.
A record is then one contiguous read of its slice from the cache: a shuffled epoch over many
compressed volumes reads slices, not volumes, and does no decoding, slicing, resizing or
rounding. The values are the ones the volume gives directly, to the bit.

The slice files are bounded (``slice_cache_gb``, ``data.nifti_cache_gb``, 50 GB by default;
least recently used files of earlier runs are evicted first, and the disk keeps at least 2 GB
free); a volume that does not fit is read as without the cache, and the log says how many.
The log also gives the cache's folder and size. Without the slice cache (``slice_cache=False``,
``data.nifti_cache=False``) a record reads its volume on demand, keeping the last
``cache_volumes`` volumes decoded (uncompressed ``.nii`` files without intensity scaling are
memory-mapped and read slice by slice), which makes a shuffled order over ``.nii.gz`` files
decode a whole volume for most records.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import shutil
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from jaxad import paths as jpaths  # `paths` names lists of volumes here.
from jaxad.data import slices, splits
from jaxad.data.records import ConcatSource, ImageReadError, Source, apply_on_corrupt

SUFFIXES = (".nii.gz", ".nii")
_INDEX_VERSION = 1
# Bound of the slice cache, and space it always leaves free on its disk.
DEFAULT_CACHE_GB = 50.0
_MIN_FREE_BYTES = 2 * 1024**3
# Slice files used since this time are in use by this process: never evicted by it.
_STARTED = time.time()


def _is_nifti(path: jpaths.Path) -> bool:
    """The name first: on Cloud Storage each `is_file` is a request."""
    return not path.name.startswith(".") and path.name.lower().endswith(SUFFIXES) and path.is_file()


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


def load_remote(path: jpaths.Path):
    """A NIfTI image read whole into memory (nibabel opens only local files by name)."""
    import gzip

    import nibabel as nib

    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    if len(data) >= 4 and int.from_bytes(data[:4], "little") == 540:  # NIfTI-2 header size
        return nib.Nifti2Image.from_bytes(data)
    return nib.Nifti1Image.from_bytes(data)


def _open(path: jpaths.Path | pathlib.Path):
    """The nibabel image of a 3-D volume (header only for a local file; data stay on disk).

    A `gs://` volume is read into memory whole.
    """
    import nibabel as nib

    try:
        img = load_remote(jpaths.path(path)) if jpaths.is_remote(path) else nib.load(path)
    except _load_errors() as e:
        raise ImageReadError(f"cannot read volume {path}: {e}") from e
    if len(img.shape) != 3:
        raise ImageReadError(f"volume {path} is not 3-D: shape {img.shape}")
    return img


def read_volume(path: str | os.PathLike, dtype: str | np.dtype = "float16") -> np.ndarray:
    """A whole 3-D volume as the mood builder reads it: float32 from nibabel, then `dtype`."""
    path = jpaths.path(path)
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


def _read_header(path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) of a C-order `.npy` file holding all its data, else None."""
    try:
        with open(path, "rb") as f:
            if np.lib.format.read_magic(f) != (1, 0):
                return None
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            offset, size = f.tell(), os.fstat(f.fileno()).st_size
    except (OSError, ValueError, SyntaxError):
        return None
    if fortran_order or size != offset + int(np.prod(shape)) * dtype.itemsize:
        return None  # Truncated, or with trailing bytes: not a file this module wrote.
    return tuple(shape), dtype, offset


def _write_slices(path: pathlib.Path, rows: list[np.ndarray], dtype: np.dtype) -> bool:
    """Writes `rows` as one [n, H, W] `.npy` file; a crash never leaves a partial `path`."""
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (len(rows), *rows[0].shape),
    }
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for row in rows:
                f.write(np.ascontiguousarray(row, dtype=dtype).tobytes())
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False  # A read-only or full cache only costs decoding the volume per record.


class _SliceFiles:
    """The bound on the `.npy` slice files of one cache folder: least recently used go first.

    A file's modification time is its last use (set when a source opens it). Files used since
    this process started are never evicted by it, so that sources of one run (training,
    validation, several axes) do not evict each other's slices.
    """

    def __init__(self, directory: pathlib.Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        self._files: dict[str, tuple[float, int]] | None = None  # name -> (mtime, bytes)

    def _scan(self) -> dict[str, tuple[float, int]]:
        if self._files is None:
            self._files = {}
            try:
                entries = list(os.scandir(self.directory))
            except OSError:
                entries = []
            for entry in entries:
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                if entry.name.endswith(".npy"):
                    self._files[entry.name] = (stat.st_mtime, stat.st_size)
                elif entry.name.endswith(".tmp") and stat.st_mtime < time.time() - 86400:
                    pathlib.Path(entry.path).unlink(missing_ok=True)  # Left by a crash.
        return self._files

    def total_bytes(self) -> int:
        return sum(size for _, size in self._scan().values())

    def used(self, path: pathlib.Path) -> None:
        """Marks a slice file as just used (in use by this process)."""
        try:
            os.utime(path)
        except OSError:
            return
        if self._files is not None and path.name in self._files:
            self._files[path.name] = (time.time(), self._files[path.name][1])

    def reserve(self, path: pathlib.Path, nbytes: int) -> bool:
        """Whether `nbytes` more fit under the bound, evicting files of earlier runs to fit."""
        files = self._scan()
        files.pop(path.name, None)  # A damaged file of that name is about to be replaced.
        total = sum(size for _, size in files.values())
        for name, (mtime, size) in sorted(files.items(), key=lambda kv: kv[1][0]):
            if total + nbytes <= self.max_bytes or mtime >= _STARTED:
                break
            (self.directory / name).unlink(missing_ok=True)
            del files[name]
            total -= size
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return False
        if total + nbytes > self.max_bytes or free - nbytes < _MIN_FREE_BYTES:
            return False
        files[path.name] = (time.time(), nbytes)
        return True


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
      cache_dir: where the slice index and the slices are cached (None: `default_cache_dir()`;
        False: no cache, every construction reads every volume).
      cache_volumes: decoded volumes kept in memory for records whose slices are not cached.
      slice_cache: keep the prepared slices in `cache_dir` (see the module docstring); False
        keeps only the index and reads volumes on demand.
      slice_cache_gb: bound of the slice files in `cache_dir`, in GB (1e9 bytes).
      index: find the kept slices now. False leaves the source empty until `index_together`
        indexes it with others over the same volumes (as `source_from_config` does for
        several axes, decoding each volume once for all of them).
      on_corrupt: a volume that does not decode, or is not 3-D, when indexed: 'fail' raises
        one error naming every such volume; 'skip' leaves them out (`skipped`), as
        `data.on_corrupt` for image folders.

    Records: ``image`` float32 [H, W, 1] (values as stored, e.g. [0, 1]), ``mask`` zeros,
    ``fov`` ones, ``label`` 0, ``grade`` -1, ``has_mask`` False (nothing is known about
    anomalies), ``id`` ``<relative path without suffix>_<slice index>``, e.g. ``00525_37``.

    Raises:
      FileNotFoundError: `root` does not exist.
      ValueError: no volume under `root`, or bad options.
      BadFilesError: volumes of the split are unreadable or not 3-D (one line naming them),
        with on_corrupt='fail'.
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
        slice_cache: bool = True,
        slice_cache_gb: float = DEFAULT_CACHE_GB,
        index: bool = True,
        on_corrupt: str = "fail",
    ):
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r} for NIfTI folder {root}; use {self.SPLITS}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"dtype must be float16 or float32, got {dtype}")
        if slice_cache_gb < 0:
            raise ValueError(f"slice_cache_gb must be >= 0, got {slice_cache_gb}")
        self.root = jpaths.path(root)
        self.split = split
        self.axis = int(axis)
        self.resize = int(resize) if resize else None
        self.min_nonzero = int(min_nonzero) if filter else None
        self.dtype = np.dtype(dtype)
        self.cache_volumes = max(1, int(cache_volumes))
        if cache_dir is None or cache_dir is True:
            cache_dir = default_cache_dir()
        if cache_dir and jpaths.is_remote(cache_dir):
            raise ValueError(
                f"cache_dir {cache_dir}: the NIfTI slice cache must be a local folder (it is "
                "read slice by slice); give a local path, e.g. the default $JAXAD_DATA_DIR."
            )
        self._cache_dir = pathlib.Path(cache_dir) if cache_dir else None
        self.slice_cache = bool(slice_cache) and self._cache_dir is not None
        self.slice_cache_bytes = int(float(slice_cache_gb) * 1e9)

        if not self.root.is_dir():
            raise FileNotFoundError(f"NIfTI folder {self.root} does not exist")
        paths = sorted(
            p.relative_to(self.root).as_posix()
            for p in jpaths.files_under(self.root)
            if _is_nifti(p)
        )
        if not paths:
            raise ValueError(f"no NIfTI volumes (*.nii.gz, *.nii) under {self.root}")
        held_out = self._holdout(paths, val_fraction, seed)
        if split == "train":
            paths = [p for p in paths if p not in held_out]
        elif split == "validation":
            paths = [p for p in paths if p in held_out]
        self.volumes = paths
        self.on_corrupt = on_corrupt
        self.skipped: list[str] = []  # Volumes left out under on_corrupt='skip'.
        # (relative path, slice index) of every kept slice, volume after volume, and its row in
        # the volume's slice file.
        self._entries: list[tuple[str, int]] = []
        self._rows: list[int] = []
        # Relative path -> (slice file, data offset, (H, W)) of the volumes whose slices are
        # cached.
        self._slice_files: dict[str, tuple[pathlib.Path, int, tuple[int, int]]] = {}
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        if index:
            index_together([self])

    @staticmethod
    def _holdout(paths: list[str], val_fraction: float, seed: int) -> set[str]:
        n_val = round(val_fraction * len(paths))
        if n_val == 0 and val_fraction > 0 and len(paths) >= 2:
            n_val = 1
        return set(splits.hash_rank(paths, seed)[:n_val])

    # -- Index and slice cache --------------------------------------------------------------

    def _index_key(self, path: jpaths.Path) -> str:
        if jpaths.is_remote(path):
            st = path.stat()
            where, size, mtime = str(path), int(st.length or 0), int(st.mtime or 0) * 10**9
        else:
            st = os.stat(path)
            where, size, mtime = str(path.resolve()), st.st_size, st.st_mtime_ns
        key = {
            "version": _INDEX_VERSION,
            "path": where,
            "size": size,
            "mtime_ns": mtime,
            "axis": self.axis,
            "resize": self.resize,
            "min_nonzero": self.min_nonzero,
            "dtype": self.dtype.name,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _cached_index(self, key: str) -> dict[str, Any] | None:
        """The volume's cached index entry (``kept``, ``shape``), or None."""
        if self._cache_dir is None:
            return None
        try:
            entry = json.loads((self._cache_dir / f"{key}.json").read_text())
            entry["kept"] = [int(i) for i in entry["kept"]]
            entry["shape"] = [int(n) for n in entry["shape"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # Not cached yet (or a damaged entry): index the volume.
        return entry if len(entry["shape"]) == 3 else None

    def _slice_shape(self, volume_shape: Sequence[int]) -> tuple[int, int]:
        if self.resize:
            return self.resize, self.resize
        h, w = (n for a, n in enumerate(volume_shape) if a != self.axis)
        return int(h), int(w)

    def _slices_bytes(self, entry: dict[str, Any]) -> int:
        h, w = self._slice_shape(entry["shape"])
        return len(entry["kept"]) * h * w * self.dtype.itemsize

    def _attach(self, rel: str, key: str, entry: dict[str, Any]) -> bool:
        """Serves the volume's records from its slice file, if that file is whole."""
        path = self._cache_dir / f"{key}.npy"
        hw = self._slice_shape(entry["shape"])
        header = _read_header(path)
        if header is None or header[:2] != ((len(entry["kept"]), *hw), self.dtype):
            return False  # Missing, truncated or damaged: rebuilt like a missing one.
        self._slice_files[rel] = (path, header[2], hw)
        return True

    def _index_volume(
        self, rel: str, key: str, volume: np.ndarray, files: _SliceFiles | None
    ) -> list[int]:
        """Kept slices of a decoded volume; caches the index and, if they fit, the slices."""
        kept, rows = [], []
        for i in range(volume.shape[self.axis]):
            image = self._prepare(slices.slice_along(volume, self.axis, i))
            if image is not None:
                kept.append(i)
                if files is not None:
                    rows.append(image.astype(self.dtype))
        if self._cache_dir is None:
            return kept
        entry = {"path": str(self.root / rel), "shape": list(volume.shape), "kept": kept}
        self._write_index(self._cache_dir / f"{key}.json", entry)
        path = self._cache_dir / f"{key}.npy"
        if files is not None and rows and files.reserve(path, self._slices_bytes(entry)):
            if _write_slices(path, rows, self.dtype):
                self._attach(rel, key, entry)
        return kept

    def _leave_out(self, bad: Mapping[str, str]) -> None:
        """Drops the volumes `bad` names (on_corrupt='skip') and any slice added of them."""
        keep = [k for k, (rel, _) in enumerate(self._entries) if rel not in bad]
        self._entries = [self._entries[k] for k in keep]
        self._rows = [self._rows[k] for k in keep]
        self.volumes = [rel for rel in self.volumes if rel not in bad]
        self.skipped = [str(self.root / rel) for rel in bad]

    def _add(self, rel: str, kept: list[int]) -> None:
        self._entries += [(rel, i) for i in kept]
        self._rows += range(len(kept))

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

    def _cached_slice(self, rel: str, row: int) -> np.ndarray | None:
        """The prepared slice from the cache (one read), or None if it is not cached."""
        where = self._slice_files.get(rel)
        if where is None:
            return None
        path, offset, (h, w) = where
        nbytes = h * w * self.dtype.itemsize
        try:
            with open(path, "rb", buffering=0) as f:
                data = os.pread(f.fileno(), nbytes, offset + row * nbytes)
        except OSError:
            data = b""
        if len(data) != nbytes:  # Evicted by another run meanwhile: decode from now on.
            self._slice_files.pop(rel, None)
            return None
        return np.frombuffer(data, self.dtype).reshape(h, w)

    def _slice(self, rel: str, index: int) -> np.ndarray:
        path = self.root / rel
        # A plain local file: only its header is read here (a remote one is decoded whole).
        if not rel.lower().endswith(".gz") and not jpaths.is_remote(path):
            img = _open(path)
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
        image = self._cached_slice(rel, self._rows[index])
        if image is None:
            prepared = self._prepare(self._slice(rel, i))
            if prepared is None:
                raise ImageReadError(f"volume {self.root / rel} changed since it was indexed")
            image = prepared.astype(self.dtype)
        image = image.astype(np.float32)[..., None]
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
    def cached_volumes(self) -> list[str]:
        """The volumes whose records are read from the slice cache."""
        return [rel for rel in self.volumes if rel in self._slice_files]

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


def index_together(parts: Sequence[NiftiFolderSource]) -> None:
    """Indexes sources over the same volumes (e.g. one per axis), decoding each at most once.

    For each volume and source: the cached index and slices when they are there; otherwise the
    volume is decoded (once for all sources that need it) and its index and prepared slices are
    cached, the slices only while they fit in the bound.
    """
    first = parts[0]
    same = (first.root, first.volumes, first.dtype, first._cache_dir)
    if any((p.root, p.volumes, p.dtype, p._cache_dir) != same for p in parts):
        raise ValueError("index_together needs sources over the same volumes, dtype and cache")
    files = None
    if any(p.slice_cache for p in parts):
        files = _SliceFiles(first._cache_dir, min(p.slice_cache_bytes for p in parts))
    decoded = uncached = 0
    bad: dict[str, str] = {}  # Relative path -> why it does not read.
    for rel in first.volumes:
        path = first.root / rel
        volume = None
        for part in parts:
            if rel in bad:
                break
            key = part._index_key(path) if part._cache_dir is not None else ""
            entry = part._cached_index(key)
            part_files = files if part.slice_cache else None
            if entry is not None and (part_files is None or not entry["kept"]):
                part._add(rel, entry["kept"])  # Nothing to read from the slice cache.
                continue
            if entry is not None and part._attach(rel, key, entry):
                part_files.used(part._slice_files[rel][0])
                part._add(rel, entry["kept"])
                continue
            if entry is not None and not part_files.reserve(
                part._cache_dir / f"{key}.npy", part._slices_bytes(entry)
            ):
                part._add(rel, entry["kept"])  # No room: its records decode the volume.
                uncached += 1
                continue
            if volume is None:
                try:
                    volume = read_volume(path, first.dtype)
                except ImageReadError as e:
                    bad[rel] = str(e)
                    break
                decoded += 1
            kept = part._index_volume(rel, key, volume, part_files)
            part._add(rel, kept)
            uncached += bool(part_files and kept and rel not in part._slice_files)
    if bad:  # Every unreadable volume named at once; 'skip' leaves them out of every part.
        what = f"NIfTI folder {first.root} ({first.split})"
        apply_on_corrupt(
            list(bad.values()), first.on_corrupt, what, total=len(first.volumes), kind="volume"
        )
        for part in parts:
            part._leave_out(bad)
    _log_cache(parts, files, decoded, uncached)


def _log_cache(
    parts: Sequence[NiftiFolderSource], files: _SliceFiles | None, decoded: int, uncached: int
) -> None:
    first = parts[0]
    what = f"{first.root} ({first.split}, axis {','.join(str(p.axis) for p in parts)})"
    if files is None:
        logging.info(
            "NIfTI volumes of %s: %d (%d decoded now); slices not cached, records read volumes",
            what,
            len(first.volumes),
            decoded,
        )
        return
    files._files = None  # Rescan: other processes may have written meanwhile.
    logging.info(
        "NIfTI slices of %d volumes of %s cached in %s (%d decoded now): %.2f GB, bound %.1f GB "
        "(data.nifti_cache_gb; data.nifti_cache=False turns the cache off)",
        len(first.volumes),
        what,
        files.directory,
        decoded,
        files.total_bytes() / 1e9,
        files.max_bytes / 1e9,
    )
    if uncached:
        logging.warning(
            "NIfTI slice cache %s is full: the records of %d volume-axes of %s decode their "
            "volume (slow); raise data.nifti_cache_gb or free space on its disk",
            files.directory,
            uncached,
            what,
        )


def source_from_config(data_cfg, split: str) -> Source:
    """`NiftiFolderSource` from ``data_cfg``: ``root``, ``axis``, ``resize``, ``min_nonzero``,
    ``filter``, ``val_fraction``, ``split_seed`` (its ``seed``), ``dtype``, ``nifti_cache``
    (its ``slice_cache``) and ``nifti_cache_gb`` (its ``slice_cache_gb``), whose defaults are in
    ``configs/common.py:data_config()``.

    ``axis`` may list several axes ("0,1,2", or a sequence such as (0, 2), which is what the
    command line makes of ``--config.data.axis=0,2``), as SimCLR pre-training on slices along
    every axis: their sources are read as one (`jaxad.data.records.ConcatSource`).
    """
    if not data_cfg.root:
        raise ValueError("data.name='nifti_folder' needs data.root, a folder of NIfTI volumes")
    parts = [_source(data_cfg, split, a) for a in _axes(data_cfg.axis)]
    index_together(parts)  # One decode per volume for all axes, where not cached yet.
    return ConcatSource(parts) if len(parts) > 1 else parts[0]


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
        slice_cache=data_cfg.nifti_cache,
        slice_cache_gb=data_cfg.nifti_cache_gb,
        index=False,
        on_corrupt=data_cfg.get("on_corrupt", "fail") or "fail",
    )
