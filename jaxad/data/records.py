"""jaxad's common record, the error every reader raises, and the concatenation of sources.

The base of the data sources: each source module (`folder`, `tfds_source`, `nifti`) imports
this one and none imports another, so that they stay free of import cycles.

Every source has ``__len__`` and ``__getitem__`` (so grain can read it with
``grain.MapDataset.source``) and returns, per example, a dict of numpy values *before* resizing:

=========  ====================  ==============================================================
key        type                  meaning
=========  ====================  ==============================================================
image      uint8 [H, W, C]       C is 1 or 3; uint16 or float32 for data with more than 8 bits
                                 (tfds datasets storing them, NIfTI slices), read in unit scale
                                 by `jaxad.data.transforms`
mask       uint8 [H, W]          ground-truth anomaly mask in {0, 1}; zeros when there is none
fov        uint8 [H, W]          field of view in {0, 1}; ones when unknown
label      int32                 0 normal, 1 anomalous, -1 unknown
grade      int32                 disease grade, -1 when there is none
has_mask   bool                  whether ``mask`` is a real ground truth (see each source)
id         str                   file path (relative to the folder root) or image id
=========  ====================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Source(Protocol):
    """A random-access source of common records (what grain's ``MapDataset.source`` reads)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class ImageReadError(OSError):
    """An image, mask or volume file could not be decoded; the message names the file."""


def record(
    image: np.ndarray,
    mask: np.ndarray,
    label: int,
    has_mask: bool,
    rel: str,
    fov: np.ndarray,
    grade: int = -1,
) -> dict[str, Any]:
    """The common record (see the module docstring), with the dtypes every source gives it."""
    return {
        "image": image,
        "mask": mask,
        "fov": fov,
        "label": np.int32(label),
        "grade": np.int32(grade),
        "has_mask": np.bool_(has_mask),
        "id": rel,
    }


class ConcatSource:
    """Several sources read as one, in order (e.g. the slices along every axis for SimCLR)."""

    def __init__(self, parts: Sequence[Source]):
        if not parts:
            raise ValueError("ConcatSource needs at least one source")
        self.parts = list(parts)
        self._ends = np.cumsum([len(p) for p in self.parts])

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


# ---------------------------------------------------------------------------------------------
# Bad files: what `data.on_corrupt` does with them
# ---------------------------------------------------------------------------------------------

# Stop before training naming every bad file, or leave the bad files out (counted in the log and
# in eval/metrics.json). Folder images (`jaxad.data.folder`) and NIfTI volumes
# (`jaxad.data.nifti`) are checked when their source is made.
ON_CORRUPT = ("fail", "skip")


class BadFilesError(ValueError):
    """Files that cannot be used (`bad`: one message per file, naming it)."""

    def __init__(self, what: str, bad: list[str]):
        self.bad = list(bad)
        super().__init__(
            f"{what} are bad: {_listed(self.bad)}; replace or remove them, or set "
            "data.on_corrupt='skip' to leave them out."
        )


def _listed(bad: list[str]) -> str:
    more = f"; and {len(bad) - 3} more (listed above)" if len(bad) > 3 else ""
    return "; ".join(bad[:3]) + more


# The files left out (under 'skip') this process has already reported.
_REPORTED: set[tuple[str, tuple[str, ...]]] = set()


def apply_on_corrupt(
    bad: list[str], on_corrupt: str, what: str, *, total: int, kind: str = "image file"
) -> bool:
    """Applies `data.on_corrupt` to the `bad` files (`kind`s) of `what` (one message each).

    'fail' raises one `BadFilesError` (a ValueError) naming the bad files (every one is also
    logged); 'skip' logs them and returns False, to say they must be left out (a ValueError
    if that leaves nothing). Returns True when none is bad.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"data.on_corrupt={on_corrupt!r}: use one of {', '.join(ON_CORRUPT)}.")
    if not bad:
        return True
    from jaxad import writers  # Imported here: it loads jax, which reading files needs not.

    if on_corrupt == "skip" and len(bad) < total:
        if (what, tuple(bad)) in _REPORTED:  # A source made again: said once is enough.
            return False
        _REPORTED.add((what, tuple(bad)))
    for message in bad:
        writers.logger.warning("bad %s: %s", kind, message)
    if on_corrupt == "fail":
        raise BadFilesError(f"{len(bad)} of the {total} {kind}s of {what}", bad)
    if len(bad) == total:
        raise ValueError(f"every {kind} of {what} is bad ({_listed(bad)}): none is left to read.")
    writers.log_info(
        "leaving out %d of the %d %ss of %s (data.on_corrupt='skip')", len(bad), total, kind, what
    )
    return False
