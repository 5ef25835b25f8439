"""What every builder of `data_builders/` shares: raw-file checks, corrupt-file policy, splits.

Every builder is a `ManualBuilder`: a `tfds.core.GeneratorBasedBuilder` over files the user
downloaded by hand, with two options that `python -m jaxad.data.build` passes through:

- `num_workers`: threads that decode and preprocess raw files (`ordered_map`);
- `on_corrupt`: what an unreadable raw image does. 'fail' (the default) stops the build with the
  file's path; 'skip' leaves the example out, logs each path and, at the end of every split, the
  count (`CorruptFiles`). Either way nothing is dropped silently.

Errors about the raw files are one line naming the file, followed by the builder's expected
layout (`require_file`, `read_csv`), so a user sees at once what is missing and where it goes.

The seeded hash splits (`hash_rank`, `hash_split`, `hash_splits`) live in `jaxad.data.splits`,
which reads data without tfds; they are re-exported here for the builders.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

# Re-exported (`as` marks them so): builders call them as `common.hash_split` and so on.
from jaxad.data.splits import hash_rank as hash_rank
from jaxad.data.splits import hash_split as hash_split
from jaxad.data.splits import hash_splits as hash_splits

_T = TypeVar("_T")
_R = TypeVar("_R")

ON_CORRUPT = ("fail", "skip")


class RawDataError(ValueError):
    """A raw file is missing, malformed or unreadable; the message names it."""


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the manual-download builders: `num_workers` and `on_corrupt` options."""

    def __init__(
        self, *, num_workers: int | None = None, on_corrupt: str = "fail", **kwargs: Any
    ) -> None:
        """`num_workers` threads preprocess files (default: the CPU count, at most 16);
        `on_corrupt` is 'fail' or 'skip' (see the module docstring)."""
        super().__init__(**kwargs)
        self._num_workers = num_workers or min(16, os.cpu_count() or 1)
        self._corrupt = CorruptFiles(on_corrupt)


class CorruptFiles:
    """Applies the `on_corrupt` policy to unreadable raw files and counts the skipped ones."""

    def __init__(self, policy: str = "fail") -> None:
        if policy not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={policy!r}: use one of {', '.join(ON_CORRUPT)}.")
        self.policy = policy
        self.skipped: list[str] = []

    def handle(self, path: os.PathLike | str, error: Exception) -> None:
        """Raises `RawDataError` naming `path` ('fail'), or records and logs it ('skip')."""
        message = f"Cannot read {path}: {error}"
        if self.policy == "fail":
            raise RawDataError(
                f"{message} (re-download the file, or build with --on_corrupt=skip to leave it out)"
            ) from error
        self.skipped.append(os.fspath(path))
        logging.warning("Skipping corrupt file (on_corrupt='skip'): %s", message)

    def report(self, split: str) -> None:
        """Logs how many files of `split` were skipped (call at the end of each split)."""
        if self.skipped:
            logging.warning(
                "%s: skipped %d corrupt file(s), e.g. %s", split, len(self.skipped), self.skipped[0]
            )
        self.skipped = []


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A raw file that failed to decode, returned (not raised) by a worker for `CorruptFiles`."""

    path: epath.Path
    error: Exception


def require_file(path: epath.PathLike, what: str, layout: str) -> epath.Path:
    """Returns `path` if it exists, else raises FileNotFoundError naming it and the layout."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}\n{layout}")
    return path


def require_listed_files(
    folder: epath.Path, paths: Sequence[epath.Path], listing: str, layout: str, *, what: str
) -> None:
    """Fails before any decoding if `folder` (named `what`) or one of `paths` in it is missing.

    `paths` are the photos that the file named `listing` lists; the error names the first missing
    one and counts them all, followed by the layout.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder}\n{layout}")
    present = {p.name for p in folder.iterdir()}
    absent = [p for p in paths if p.name not in present]
    if absent:
        # A missing photo usually means an incompletely extracted (multi-part) archive.
        raise FileNotFoundError(
            f"Image not found: {absent[0]} ({len(absent)} of the {len(paths)} photos listed "
            f"in {listing} are missing from {folder}).\n{layout}"
        )


def read_csv(
    path: epath.PathLike, columns: Sequence[str], layout: str, *, what: str = "CSV file"
) -> list[dict[str, str]]:
    """Rows of a CSV file that must have `columns` (others are kept), as dicts of strings.

    Raises:
      FileNotFoundError: the file is missing (naming it and the layout).
      RawDataError: a column is missing (naming the file, the columns found and those expected).
    """
    path = require_file(path, what, layout)
    # utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark.
    with path.open(encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in columns if c not in header]
        if missing:
            raise RawDataError(
                f"{path} lacks the column(s) {missing}; its header is {header}, expected at least "
                f"{list(columns)}."
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def parse_int(value: str, path: epath.PathLike, line: int, column: str) -> int:
    """int(value), or RawDataError naming the file, line and column."""
    return _parse(lambda v: int(float(v)), value, path, line, column)


def parse_float(value: str, path: epath.PathLike, line: int, column: str) -> float:
    """float(value), or RawDataError naming the file, line and column."""
    return _parse(float, value, path, line, column)


def _parse(
    convert: Callable[[str], _R], value: str, path: epath.PathLike, line: int, column: str
) -> _R:
    try:
        return convert(value)
    except ValueError:
        raise RawDataError(f"{path}:{line}: column {column!r} is not a number: {value!r}") from None


def ordered_map(
    fn: Callable[[_T], _R], items: Iterable[_T], num_workers: int
) -> Iterator[tuple[_T, _R]]:
    """Yields (item, fn(item)) in order, computing up to 4 * num_workers results ahead.

    Threads suffice: decoding and resizing run in Pillow's, numpy's and pydicom's C code without
    the GIL, and the bounded look-ahead keeps memory to a few items however large the input.
    """
    if num_workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = concurrent.futures.ThreadPoolExecutor(num_workers)
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= 4 * num_workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 or uint16 [H, W] / [H, W, 1] / [H, W, 3] array (lossless)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def box_mask(height: int, width: int, boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """uint8 [height, width] mask, 1 inside any (x, y, w, h) box (pixels, clipped to the image)."""
    mask = np.zeros((height, width), np.uint8)
    for x, y, w, h in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        mask[y0:y1, x0:x1] = 1
    return mask
