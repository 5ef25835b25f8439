"""The field of view of images that do not store one (``data.fov``).

Folders and image lists have no field-of-view mask; fundus photos need one, since the black
border around the retina must count neither in the loss nor in the pixel metrics. Computing it
per image here, with the algorithm the fundus builders store (`jaxad.data.fundus`), keeps a
folder of photos and the tfds datasets of the same photos alike.
"""

from __future__ import annotations

import os

import numpy as np

from jaxad.data.records import ImageReadError

FOV_KINDS = ("ones", "eyeq", "circle")


def check_fov_kind(kind: str) -> None:
    """Raises ValueError unless `kind` is one of `FOV_KINDS` (so a typo fails before reading)."""
    if kind not in FOV_KINDS:
        raise ValueError(f"data.fov={kind!r} is not one of {', '.join(FOV_KINDS)}")


def field_of_view(image: np.ndarray, kind: str, path: os.PathLike | str = "") -> np.ndarray:
    """The field of view of an image without a stored one: uint8 [H, W] in {0, 1}.

    `ones`: everything; `eyeq`: EyeQ's fitted-circle algorithm (what the EyeQ builder stores);
    `circle`: the centred circle of Lesion2Void's preprocessing (radius 250/512 of the size).

    Raises:
      ImageReadError: `eyeq` finds no field of view in the image (the message names `path`).
    """
    h, w = image.shape[:2]
    if kind == "ones":
        return np.ones((h, w), np.uint8)
    from jaxad.data import fundus  # Fundus-specific (scipy): imported only when asked for.

    if kind == "circle":
        return fundus.circle_mask(h, w)
    try:
        return fundus.fov_mask(image[..., 0] if image.shape[-1] == 1 else image)
    except ValueError as e:
        raise ImageReadError(f"no field of view found in {path}: {e}") from e
