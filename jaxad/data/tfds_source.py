"""tfds datasets prepared in ``array_record`` format, read without TensorFlow (`TfdsSource`).

tensorflow_datasets is imported only when a `TfdsSource` is made (or the default data_dir is
looked up), so that reading folders and NIfTI volumes never loads it. The datasets come from the
builders of `data_builders/` (`python -m jaxad.data.build`), but their code is not needed here:
tfds reads the metadata written next to the data.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset has not been built in the data_dir; the message says how to build it."""


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
        self.files_dir = str(builder.data_dir)  # the prepared files (`decoded_cache` stamps them)

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
