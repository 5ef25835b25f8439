"""The tfds side of the fundus dataset builders (EyeQ, EyePACS, IDRiD).

The preprocessing itself (`crop_border`, `crop_box`, `fov_mask`, `circle_mask`, `encode_photo`,
`process_photo`) is in `jaxad.data.fundus`, free of tfds, so that jaxad can fit the same field
of view to a folder's images; it is re-exported here for the builders. This module adds what
only a builder needs: the tfds features of a cropped photo (`photo_features`) and the
processing of many photos on the builder's threads under its `on_corrupt` policy
(`processed_photos`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import tensorflow_datasets as tfds

from data_builders import common

# Re-exported (`as` marks them so): builders call them as `fundus.crop_box` and so on.
from jaxad.data.fundus import circle_mask as circle_mask
from jaxad.data.fundus import crop_border as crop_border
from jaxad.data.fundus import crop_box as crop_box
from jaxad.data.fundus import encode_photo as encode_photo
from jaxad.data.fundus import fov_mask as fov_mask
from jaxad.data.fundus import process_photo as process_photo

_R = TypeVar("_R", bound=Any)  # a record with a `path`


def photo_features(size: int | None, *, grades: bool = True) -> dict[str, Any]:
    """The tfds features of a border-cropped photo: `image`, `fov` and, with `grades`, the DR
    `label` (0 grade 0, 1 grades 1-4) and `grade`. `size` None: photos of any size."""
    hw = (size, size) if size else (None, None)
    features = {
        "image": tfds.features.Image(
            shape=(*hw, 3),
            encoding_format="jpeg",
            doc="Border-cropped fundus photo" + (", Lanczos-resized." if size else "."),
        ),
        "fov": tfds.features.Image(
            shape=(*hw, 1),
            encoding_format="png",
            doc="Field of view, 1 inside the fitted circle and 0 outside.",
        ),
    }
    if grades:
        features["label"] = tfds.features.ClassLabel(
            names=["normal", "dr"], doc="0: DR grade 0, 1: DR grade 1-4."
        )
        features["grade"] = tfds.features.ClassLabel(
            num_classes=5, doc="DR grade (0 none, 1 mild, 2 moderate, 3 severe, 4 proliferative)."
        )
    return features


def processed_photos(
    records: Iterable[_R], size: int, num_workers: int, corrupt: common.CorruptFiles
) -> Iterator[tuple[_R, bytes, bytes]]:
    """(record, JPEG, FOV PNG) of `process_photo(record.path, size)` for each record, in order.

    Photos are processed on `num_workers` threads; an unreadable one goes to `corrupt` (which
    raises, or skips and counts it).
    """

    def process(record: _R) -> tuple[bytes, bytes] | Exception:
        return process_photo(record.path, size)

    for record, result in common.ordered_map(process, records, num_workers):
        if isinstance(result, Exception):
            corrupt.handle(record.path, result)
        else:
            yield record, *result
