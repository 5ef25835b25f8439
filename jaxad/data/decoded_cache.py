"""Decoded training images, kept on local disk so that each is decoded once per machine.

A TPU host feeds its chips from a few CPU cores; lesion-based CL's and MorphAEus's steps cost so
little per image that decoding the image for every step is more than a v5e-8 host's cores can do
(bench/README.md, pipeline). `DecodedCache` wraps a training source: the first read of a record
decodes it, resizes it to ``data.image_size`` exactly as the pipeline does
(`transforms.resize_record`: uint8 image, nearest mask, soft FOV) and writes the result into
memory-mapped arrays, one per field and split; every later read is a view into them, so a
pipeline that cuts small patches touches only their rows. Records keep ``image``, ``mask``,
``fov`` (float32, the same values: the soft FOV is k / 255 and kept as k), ``label``, ``grade``
and, with lesion boxes, ``boxes`` / ``num_boxes``; with ``maps=False`` (lesion-based CL's host
pairs, which read neither) no mask or FOV. Records come out marked ``resized``, so that the
pipeline does not resize them again. Only 8-bit images are kept (float slices have their own
cache, `jaxad.data.nifti`).

The files live under ``$JAXAD_DATA_DIR/decoded`` (else ``~/.cache/jaxad/decoded``), named by a
hash of what defines the records: the data config's source keys, the split, the number of
records, the sizes and modification times of the files behind them (folder images, a tfds
dataset's prepared files) and of the box file, and the image size: rebuilt or edited data is
decoded afresh.
Worker processes share them: each opens the arrays itself, fills the slots it reads, and marks a
slot done only after its image is written, so a killed process leaves at most a slot that is
decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from absl import logging

from jaxad.data import transforms

VERSION = 1
_KEYS = ("name", "tfds_name", "data_dir", "root", "demo", "label_fraction", "label_fraction_seed")
_BOX_KEYS = ("boxes", "box_threshold", "box_max_side", "box_margin", "box_swap_wh", "max_boxes")


def cache_dir() -> str:
    base = os.environ.get("JAXAD_DATA_DIR") or os.path.join("~", ".cache", "jaxad")
    return os.path.join(os.path.expanduser(base), "decoded")


def _file_stamp(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def _files(src: Any) -> set[str]:
    """The files behind a source (folder images, a tfds dataset's prepared files), through its
    wrappers (boxes, label fractions, concatenated splits); none for generated sources."""
    from jaxad.data import lesion_boxes

    out: set[str] = set()
    for part in getattr(src, "parts", None) or [src]:
        while hasattr(part, "source"):
            part = part.source
        files = lesion_boxes.record_files(part)
        if files is not None:
            out.update(str(f) for f in files)
        files_dir = getattr(part, "files_dir", "")
        if files_dir and os.path.isdir(files_dir):
            out.update(os.path.join(files_dir, f) for f in os.listdir(files_dir))
    return out


def fingerprint(src: Any, data_cfg, split: str) -> str:
    """A hash of what defines the split's decoded records (see the module docstring)."""
    from jaxad.data import lesion_boxes

    what: dict[str, Any] = {
        "version": VERSION,
        "split": split,
        "records": len(src),
        "size": int(data_cfg.image_size),
        "channels": int(data_cfg.channels),
        **{k: str(data_cfg.get(k, "")) for k in _KEYS},
        **{k: str(data_cfg.get(k, "")) for k in _BOX_KEYS},
    }
    boxes = str(data_cfg.get("boxes", ""))
    if boxes and boxes != lesion_boxes.CANDIDATES:
        what["box_file"] = _file_stamp(boxes)
    what["files"] = [_file_stamp(f) for f in sorted(_files(src))]
    text = json.dumps(what, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class DecodedCache:
    """A source whose records are decoded once, resized to ``size`` and kept on disk (uint8)."""

    def __init__(
        self, src: Any, data_cfg, split: str, *, maps: bool = True, directory: str | None = None
    ):
        self._src = src
        self.maps = maps
        self.size = int(data_cfg.image_size)
        self.channels = int(data_cfg.channels)
        self.max_boxes = int(data_cfg.get("max_boxes", 0)) if data_cfg.get("boxes", "") else 0
        self.prefix = os.path.join(directory or cache_dir(), fingerprint(src, data_cfg, split))
        self._arrays: dict[str, np.memmap] | None = None
        if len(src) and not self._first_done():  # before any worker starts: one clear error
            self._check_dtype(0, np.asarray(src[0]["image"]).dtype)

    def _first_done(self) -> bool:
        """Whether record 0 is already kept (then it was 8-bit, and nothing is decoded)."""
        try:
            with open(f"{self.prefix}.done", "rb") as f:
                return f.read(1) == b"\x01"
        except OSError:
            return False

    def _check_dtype(self, index: int, dtype: np.dtype) -> None:
        if dtype != np.uint8:
            raise ValueError(
                f"data.decoded_cache keeps 8-bit images, but record {index} of {self._src!r} is "
                f"{dtype}: set data.decoded_cache=False"
            )

    def __len__(self) -> int:
        return len(self._src)

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes open the arrays themselves.
        return {**self.__dict__, "_arrays": None}

    def _fields(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        n, s, c, k = len(self._src), self.size, self.channels, self.max_boxes
        fields = {
            "image": ((n, s, s, c), np.uint8),
            "label": ((n,), np.int32),
            "grade": ((n,), np.int32),
            "done": ((n,), np.uint8),
        }
        if self.maps:
            fields.update(mask=((n, s, s), np.uint8), fov=((n, s, s), np.uint8))
        if k:
            fields.update(boxes=((n, k, 4), np.float32), num_boxes=((n,), np.int32))
        return fields

    def _open(self) -> dict[str, np.memmap]:
        if self._arrays is None:
            os.makedirs(os.path.dirname(self.prefix), exist_ok=True)
            arrays = {}
            for name, (shape, dtype) in self._fields().items():
                path = f"{self.prefix}.{name}"
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                # Created at full length, sparse (zeros, nothing done), by whichever process
                # comes first; opening an existing file never truncates it.
                with open(path, "ab") as f:
                    if f.tell() < nbytes:
                        f.truncate(nbytes)
                arrays[name] = np.memmap(path, dtype=dtype, mode="r+", shape=shape)
            self._arrays = arrays
            logging.info(
                "decoded training images: %d of %d at %s.* (%.1f GB when all are read)",
                int(np.count_nonzero(arrays["done"])),
                len(self._src),
                self.prefix,
                arrays["image"].nbytes / 1e9,
            )
        return self._arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        arrays = self._open()
        if not arrays["done"][index]:
            rec = self._src[index]
            image = np.asarray(rec["image"])
            self._check_dtype(index, image.dtype)
            image = transforms.to_channels(image, self.channels)
            if self.maps:
                rec = transforms.resize_record(dict(rec, image=image), self.size)
                arrays["mask"][index] = rec["mask"]
                arrays["fov"][index] = np.rint(rec["fov"] * np.float32(255.0)).astype(np.uint8)
                arrays["image"][index] = rec["image"]
            else:
                arrays["image"][index] = transforms.resize_image(image, self.size)
            arrays["label"][index] = rec["label"]
            arrays["grade"][index] = rec["grade"]
            if self.max_boxes:
                arrays["boxes"][index] = rec["boxes"]
                arrays["num_boxes"][index] = rec["num_boxes"]
            arrays["done"][index] = 1  # after the image: a reader never sees half of one
        out = {
            "image": arrays["image"][index],
            "label": np.int32(arrays["label"][index]),
            "grade": np.int32(arrays["grade"][index]),
            "resized": True,
        }
        if self.maps:
            out["mask"] = np.asarray(arrays["mask"][index])
            out["fov"] = arrays["fov"][index].astype(np.float32) / np.float32(255.0)
        if self.max_boxes:
            out["boxes"] = np.asarray(arrays["boxes"][index])
            out["num_boxes"] = np.int32(arrays["num_boxes"][index])
        return out

    def __repr__(self) -> str:
        return f"DecodedCache({self._src!r}, size={self.size}, prefix={self.prefix!r})"
