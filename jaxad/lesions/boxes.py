"""Lesion boxes per image: jaxad's box file, LCL's predictions pickle, LCL's filter, IDRiD boxes.

Lesion-based contrastive learning (LCL, MICCAI 2021) cuts its patches around lesion boxes that a
detector predicted offline. jaxad keeps boxes as a dict from image id to a float32 [N, 6] array
of rows (x1, y1, x2, y2, score, class), called `Boxes` here:

- x1, y1, x2, y2: the box's left, top, right and bottom edges in the pixels of the image the id
  names, as floats (0 <= x1 < x2 and 0 <= y1 < y2); the image's left edge is x = 0.
- score: the detector's confidence (a probability in [0, 1] for Faster R-CNN; 1.0 for boxes
  drawn from ground-truth masks or taken from an already filtered list).
- class: an integer lesion class, -1 when unknown. jaxad uses IDRiD's codes: 0 microaneurysm,
  1 haemorrhage, 2 hard exudate, 3 soft exudate.

Box files (`read_boxes`, `write_boxes`) hold the same, as JSON (one image per line)::

    {"format": "jaxad-lesion-boxes", "version": 1, "images": {
     "10_left.jpeg": [[105.5, 211.0, 131.25, 240.0, 0.93, 1], [300.0, 12.5, 320.0, 30.0, 0.81, 2]],
     "10_right.jpeg": []}}

or as CSV, one box per row after the header ``id,x1,y1,x2,y2,score,class``, where an id with
empty fields (``13_left.jpeg,,,,,,``) is an image without boxes. Ids are image paths relative to
a folder (or dataset ids); an image with no boxes is kept (it was looked at and has none), which
is not the same as a missing id (never looked at).

Other sources of boxes:

- `read_lcl_pickle`: the predictions pickle the LCL authors released, or the output of their
  detection script, read without running any code from the file.
- `boxes_from_tfds`: boxes stored in a prepared tfds dataset, e.g. those the `idrid` builder
  derives from IDRiD's lesion masks (the boxes the LCL detector was trained on).
- `jaxad.lesions.candidates`: a detector-free substitute for images without predictions.

`filter_boxes` and `filter_images` reproduce LCL's selection of boxes for the patch dataset.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import pathlib
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

FORMAT = "jaxad-lesion-boxes"
VERSION = 1
CSV_HEADER = ("id", "x1", "y1", "x2", "y2", "score", "class")
# The splits of LCL's predictions pickle.
LCL_SPLITS = ("train", "val")

Boxes = dict[str, np.ndarray]
_LAYOUT = "each box is [x1, y1, x2, y2, score, class] with 0 <= x1 < x2, 0 <= y1 < y2"


class BoxFileError(ValueError):
    """A box file (or pickle) cannot be read; the one-line message names the file and the place."""


class BoxFileNotFoundError(BoxFileError, FileNotFoundError):
    """The box file does not exist."""


def empty_boxes() -> np.ndarray:
    """The [0, 6] float32 array of an image without boxes."""
    return np.zeros((0, 6), np.float32)


def check_boxes(boxes: Any, where: str) -> np.ndarray:
    """`boxes` as a valid float32 [N, 6] array; BoxFileError naming `where` otherwise.

    Valid: finite numbers, 0 <= x1 < x2, 0 <= y1 < y2, an integer class >= -1.
    """
    try:
        arr = np.asarray(boxes, np.float64)
    except (TypeError, ValueError):
        raise BoxFileError(f"{where}: boxes are not numbers; {_LAYOUT}") from None
    if arr.size == 0:
        return empty_boxes()
    if arr.ndim != 2:
        raise BoxFileError(f"{where}: expected a list of boxes, got shape {arr.shape}; {_LAYOUT}")
    if arr.shape[1] != 6:
        raise BoxFileError(f"{where}: a box has {arr.shape[1]} values, expected 6; {_LAYOUT}")
    out = arr.astype(np.float32)  # Validated as stored: a float64 beyond float32 is not finite.
    x1, y1, x2, y2, cls = out[:, 0], out[:, 1], out[:, 2], out[:, 3], out[:, 5]
    problems = [
        (~np.isfinite(out).all(axis=1), f"not a finite number; {_LAYOUT}"),
        ((x1 < 0) | (y1 < 0), f"negative coordinate; fix or drop the box ({_LAYOUT})"),
        (
            (x2 <= x1) | (y2 <= y1),
            f"inverted or empty box (x2 <= x1 or y2 <= y1); fix or drop the box ({_LAYOUT})",
        ),
        ((cls != np.floor(cls)) | (cls < -1), "the class is not an integer >= -1 (-1: unknown)"),
    ]
    for bad, what in problems:
        if bad.any():
            i = int(np.argmax(bad))
            raise BoxFileError(f"{where}, box {i} {[_number(v) for v in arr[i]]}: {what}")
    return out


# ---------------------------------------------------------------------------------------------
# Box files
# ---------------------------------------------------------------------------------------------


def read_boxes(path: str | os.PathLike) -> Boxes:
    """Reads a box file (.json or .csv, see the module docstring) into `Boxes`.

    Raises:
      BoxFileNotFoundError: no such file.
      BoxFileError: the file is malformed (the message names the file and the image, line or
        box, and what is expected).
    """
    path = pathlib.Path(path)
    reader = _reader(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BoxFileNotFoundError(f"box file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise BoxFileError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return reader(path, text)


def write_boxes(path: str | os.PathLike, boxes: Mapping[str, Any]) -> None:
    """Writes `boxes` as a box file, JSON or CSV by the file's suffix (atomically: a reader
    never sees half a file). Each image's boxes are validated as `check_boxes` does."""
    path = pathlib.Path(path)
    _reader(path)  # Refuses an unknown suffix before anything is written.
    checked = {}
    for image_id, arr in boxes.items():
        if not isinstance(image_id, str) or not image_id:
            raise BoxFileError(f"{path}: image id {image_id!r} is not a non-empty string")
        checked[image_id] = check_boxes(arr, f"{path}: image {image_id!r}")
    text = _json_text(checked) if path.suffix.lower() == ".json" else _csv_text(checked)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _reader(path: pathlib.Path) -> Callable[[pathlib.Path, str], Boxes]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _parse_json
    if suffix == ".csv":
        return _parse_csv
    raise BoxFileError(f"{path}: a box file must end in .json or .csv, not {suffix or '(none)'!r}")


def _number(v: float) -> float:
    """A float32 as the shortest float that reads back as it (12.3, not 12.300000190734863)."""
    return float(str(np.float32(v)))


def _row(box: np.ndarray) -> list[float | int]:
    return [_number(v) for v in box[:5]] + [int(box[5])]


def _json_text(boxes: Boxes) -> str:
    lines = [f'{{"format": "{FORMAT}", "version": {VERSION}, "images": {{']
    items = [f" {json.dumps(k)}: {json.dumps([_row(b) for b in v])}" for k, v in boxes.items()]
    lines.append(",\n".join(items))
    lines.append("}}")
    return "\n".join(lines) + "\n"


def _csv_text(boxes: Boxes) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for image_id, arr in boxes.items():
        if len(arr) == 0:
            writer.writerow([image_id] + [""] * 6)
        for box in arr:
            writer.writerow([image_id, *_row(box)])
    return out.getvalue()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def _parse_json(path: pathlib.Path, text: str) -> Boxes:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise BoxFileError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except _DuplicateKey as e:
        raise BoxFileError(f"{path}: key {e.args[0]!r} appears twice; merge its boxes") from None
    expected = f'expected {{"format": "{FORMAT}", "version": {VERSION}, "images": {{...}}}}'
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BoxFileError(f"{path}: not a jaxad lesion box file; {expected}")
    if data.get("version") != VERSION:
        raise BoxFileError(
            f"{path}: box file version {data.get('version')!r}, this jaxad reads version "
            f"{VERSION}; {expected}"
        )
    images = data.get("images")
    if not isinstance(images, dict):
        raise BoxFileError(f"{path}: 'images' is not an object of image id -> boxes; {expected}")
    out = {}
    for image_id, rows in images.items():
        where = f"{path}: image {image_id!r}"
        if not image_id:
            raise BoxFileError(f"{path}: an image id is empty")
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise BoxFileError(f"{where}: expected a list of boxes; {_LAYOUT}")
        for i, row in enumerate(rows):
            if len(row) != 6:
                raise BoxFileError(f"{where}, box {i}: {len(row)} values, expected 6; {_LAYOUT}")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row):
                raise BoxFileError(f"{where}, box {i}: {row} holds a non-number; {_LAYOUT}")
        out[image_id] = check_boxes(rows, where)
    return out


def _parse_csv(path: pathlib.Path, text: str) -> Boxes:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise BoxFileError(f"{path}: not valid CSV ({e})") from None
    header = ",".join(CSV_HEADER)
    if not rows or [c.strip() for c in rows[0]] != list(CSV_HEADER):
        got = ",".join(rows[0]) if rows else "an empty file"
        raise BoxFileError(f"{path}: line 1 must be the header {header}, got {got!r}")
    found: dict[str, list[list[float]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # Blank line.
        where = f"{path}: line {line}"
        if len(row) != len(CSV_HEADER):
            raise BoxFileError(f"{where}: {len(row)} values, expected {len(CSV_HEADER)} ({header})")
        image_id, values = row[0], [c.strip() for c in row[1:]]
        if not image_id:
            raise BoxFileError(f"{where}: the id is empty")
        found.setdefault(image_id, [])
        if all(not v for v in values):
            continue  # An image without boxes.
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise BoxFileError(f"{where}: {values} holds a non-number ({header})") from None
        check_boxes([numbers], f"{where} (image {image_id!r})")
        found[image_id].append(numbers)
    return {k: check_boxes(v, f"{path}: image {k!r}") for k, v in found.items()}


# ---------------------------------------------------------------------------------------------
# LCL's predictions pickle
# ---------------------------------------------------------------------------------------------


class PickledPredictions(NamedTuple):
    """What `read_lcl_pickle` found.

    Attributes:
      boxes: boxes per image id, in the coordinates the pickle holds them in.
      sizes: (width, height) per image id, for the images whose boxes carry their photo's size
        (the detection script's 8-value tuples); the other images are not in it.
    """

    boxes: Boxes
    sizes: dict[str, tuple[int, int]]


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asked for a global that a box pickle never needs (possible code execution)."""


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The numpy globals an array or a numpy scalar pickles with, guarded.

    Detector outputs are numpy, so the boxes in LCL's pickles may be numpy floats (pickled as
    `multiarray.scalar(dtype, bytes)`) or arrays (`multiarray._reconstruct(ndarray, (0,), b'b')`
    followed by `ndarray.__setstate__` with the raw bytes). These build numbers from bytes and
    call nothing else; the guards refuse object dtypes (whose items are other Python objects) and
    make `_reconstruct` allocate only the empty array numpy's own pickles start from, so a
    crafted shape cannot exhaust memory. numpy 2 pickles name `numpy._core`, numpy 1 pickles
    `numpy.core`: both map to the same functions.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2.
        from numpy.core import multiarray

    def scalar(dtype: Any, *args: Any) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise RefusedPickleError("numpy scalar of an object dtype")
        return multiarray.scalar(dtype, *args)

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray or tuple(shape) != (0,):
            raise RefusedPickleError("numpy _reconstruct other than ndarray((0,))")
        return multiarray._reconstruct(subtype, shape, dtype)

    def dtype(spec: Any, *args: Any) -> np.dtype:
        out = np.dtype(spec, *args)
        if out.hasobject:
            raise RefusedPickleError("numpy object dtype")
        return out

    allowed: dict[tuple[str, str], Callable[..., Any]] = {("numpy", "dtype"): dtype}
    allowed[("numpy", "ndarray")] = np.ndarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = scalar
        allowed[(module, "_reconstruct")] = reconstruct
    return allowed


class _BoxUnpickler(pickle.Unpickler):
    """Unpickles only plain data: no global is resolved but numpy's guarded number makers.

    Dicts, lists, tuples, strings and numbers have opcodes of their own in every pickle
    protocol, so they need no global at all; everything else a pickle can name (os.system,
    builtins.eval, any class) is a way to run code and is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _numpy_globals()[(module, name)]
        except KeyError:
            raise RefusedPickleError(f"{module}.{name}") from None


def _load_pickle(path: pathlib.Path) -> Any:
    """The data of a pickle file, through `_BoxUnpickler` only; BoxFileError otherwise."""
    try:
        with open(path, "rb") as f:
            return _BoxUnpickler(f).load()
    except FileNotFoundError:
        raise BoxFileNotFoundError(f"pickle {path} does not exist") from None
    except RefusedPickleError as e:
        raise BoxFileError(
            f"{path}: refused to unpickle {e.args[0]}: a box pickle holds only dicts, lists, "
            "tuples, strings and numbers, and this one asks to import or call something else "
            "(nothing from the file was run); convert it to a box file where it was made"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        raise BoxFileError(f"{path}: not a readable pickle ({message})") from None


def read_lcl_pickle(path: str | os.PathLike, split: str | None = None) -> PickledPredictions:
    """Reads lesion boxes from an LCL predictions pickle, never running code from it.

    Accepted layouts: ``{split: {image id: boxes}}`` (the released ``{'train': {...}, 'val':
    {...}}``) or ``{image id: boxes}``. `split` picks one split; None merges them all (LCL keeps
    every image in one folder, so an id names one photo; an id in two splits with different
    boxes is an error). An image's boxes are a list or tuple of boxes, or a 2-D array, and each
    box is, by its length:

    - 4: (x1, y1, x2, y2), as the released pickle stores the boxes that passed LCL's filter (in
      the pixels of the 512 x 512 resized photo); score 1.0, class -1.
    - 5: (x1, y1, x2, y2, score), a detector's row; class -1.
    - 6: (x1, y1, x2, y2, score, class), as in a jaxad box file.
    - 8: (w, h, x1, y1, x2, y2, score, class), the detection script's raw output, in the pixels
      of the cropped photo. Its (w, h) is the photo's (height, width) (the script's swap, fact
      sheet B10.4), so the photo's true (width, height) is (h, w): `sizes` holds it, and
      `filter_images(..., swap_wh=True)` then rescales as the original did.

    Plain Python values load from any pickle protocol. numpy numbers and arrays (as detector
    output often is) load from protocols 3 and 4, Python 3's defaults; protocols 0-2 spell their
    bytes with `_codecs.encode` and protocol 5 arrays use `numpy...._frombuffer`, which are
    refused like any other global (re-save such a pickle with protocol 4 where it is trusted).

    Raises:
      BoxFileNotFoundError, BoxFileError: a missing, unreadable or refused file, or an
        unexpected layout (the message names the file, and the split, image and box).
    """
    path = pathlib.Path(path)
    data = _load_pickle(path)
    if not isinstance(data, dict):
        raise BoxFileError(
            f"{path}: expected a dict of split or image id -> boxes, got {_kind(data)}"
        )
    if data and all(isinstance(v, dict) for v in data.values()):
        if split is not None:
            if split not in data:
                known = ", ".join(repr(k) for k in data)
                raise BoxFileError(f"{path}: no split {split!r}; the pickle has {known}")
            groups = {split: data[split]}
        else:
            groups = data
    elif split is not None:
        raise BoxFileError(f"{path}: the pickle has no splits, so --split={split} cannot apply")
    else:
        groups = {None: data}

    boxes: Boxes = {}
    sizes: dict[str, tuple[int, int]] = {}
    for group, images in groups.items():
        for image_id, rows in images.items():
            where = f"{path}: " + (f"split {group!r}, " if group is not None else "")
            where += f"image {image_id!r}"
            if not isinstance(image_id, str) or not image_id:
                raise BoxFileError(f"{where}: image ids must be non-empty strings")
            arr, size = _pickled_boxes(rows, where)
            if image_id in boxes and not np.array_equal(boxes[image_id], arr):
                raise BoxFileError(f"{where}: the id is in two splits with different boxes")
            boxes[image_id] = arr
            if size is not None:
                sizes[image_id] = size
    return PickledPredictions(boxes, sizes)


def _kind(x: Any) -> str:
    return type(x).__name__


def _pickled_boxes(rows: Any, where: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """One image's pickled boxes as [N, 6], with the photo's (width, height) if they carry it."""
    if isinstance(rows, np.ndarray):
        rows = list(rows) if rows.ndim == 2 else [rows] if rows.ndim == 1 and rows.size else []
    if not isinstance(rows, list | tuple):
        raise BoxFileError(f"{where}: expected a list of boxes, got {_kind(rows)}")
    out, size = [], None
    for i, row in enumerate(rows):
        if isinstance(row, np.ndarray):
            row = row.tolist()
        if not isinstance(row, list | tuple) or not all(_is_number(v) for v in row):
            raise BoxFileError(f"{where}, box {i}: expected a tuple of numbers, got {row!r}")
        values = [float(v) for v in row]
        if len(values) == 4:
            out.append([*values, 1.0, -1.0])
        elif len(values) == 5:
            out.append([*values, -1.0])
        elif len(values) == 6:
            out.append(values)
        elif len(values) == 8:
            # The script's (w, h) is (height, width): the photo is h wide and w high.
            this = (int(values[1]), int(values[0]))
            if size is not None and this != size:
                raise BoxFileError(f"{where}, box {i}: image size {this} differs from {size}")
            size = this
            out.append(values[2:])
        else:
            raise BoxFileError(
                f"{where}, box {i}: {len(values)} values; expected 4 (x1, y1, x2, y2), 5 (+ "
                "score), 6 (+ class) or 8 (w, h, x1, y1, x2, y2, score, class)"
            )
    return check_boxes(out, where), size


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------
# LCL's filter
# ---------------------------------------------------------------------------------------------


def filter_boxes(
    boxes: np.ndarray,
    image_size_wh: tuple[int, int],
    threshold: float = 0.8,
    target: int = 512,
    max_side: float = 128,
    margin: float = 5,
    *,
    swap_wh: bool = False,
) -> np.ndarray:
    """LCL's selection of one photo's boxes, rescaled to the `target` x `target` resized photo.

    Each box is scaled by target / width in x and target / height in y (coordinates stay
    floats) and kept if all of: width and height <= `max_side`, score > `threshold` (compared
    in float32, as scores are stored), x1 and y1 > `margin`, x2 and y2 < `target - margin`.
    Defaults: the released models' 0.8 (LCL's script says 0.5; 0.7 and 0.8 are the paper's,
    fact sheet B3), 512, 128 and 5 px.

    `swap_wh=True` scales x by target / height and y by target / width instead: LCL's detection
    script took (w, h) from the array's (rows, columns), so the original rescaled with width and
    height swapped (fact sheet B10.4). The default is the correct scaling; the two agree on
    square photos and differ by the aspect ratio (a few percent on cropped fundus photos)
    otherwise.

    Args:
      boxes: [N, 6] (x1, y1, x2, y2, score, class) in the photo's pixels.
      image_size_wh: the photo's (width, height) in pixels.

    Returns:
      float32 [M, 6], M <= N, in the target photo's pixels, in the input's order.
    """
    width, height = image_size_wh
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {image_size_wh} must be positive (width, height)")
    b = np.asarray(boxes, np.float64).reshape(-1, 6).copy()
    sx, sy = (target / height, target / width) if swap_wh else (target / width, target / height)
    b[:, [0, 2]] *= sx
    b[:, [1, 3]] *= sy
    keep = (b[:, 2] - b[:, 0] <= max_side) & (b[:, 3] - b[:, 1] <= max_side)
    # In float32, as the scores are stored: a score written as 0.8 is not above 0.8.
    keep &= b[:, 4].astype(np.float32) > np.float32(threshold)
    keep &= (b[:, 0] > margin) & (b[:, 1] > margin)
    keep &= (b[:, 2] < target - margin) & (b[:, 3] < target - margin)
    return b[keep].astype(np.float32)


def filter_images(
    boxes: Mapping[str, np.ndarray],
    sizes: Mapping[str, tuple[int, int]],
    threshold: float = 0.8,
    target: int = 512,
    max_side: float = 128,
    margin: float = 5,
    *,
    swap_wh: bool = False,
) -> tuple[Boxes, int]:
    """`filter_boxes` on every image; returns (the images with a surviving box, how many not).

    LCL drops an image without a surviving box from its patch dataset (it has nothing to cut a
    patch around); the count is returned so that the caller can say how many were dropped.
    `sizes` maps each id to its photo's (width, height).
    """
    kept: Boxes = {}
    dropped = 0
    for image_id, arr in boxes.items():
        if image_id not in sizes:
            raise ValueError(f"no image size for {image_id!r}: the rescale to {target} needs it")
        out = filter_boxes(
            arr, sizes[image_id], threshold, target, max_side, margin, swap_wh=swap_wh
        )
        if len(out):
            kept[image_id] = out
        else:
            dropped += 1
    return kept, dropped


def image_sizes(folder: str | os.PathLike, ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of each image `folder/<id>`, from its header (Pillow does not decode it)."""
    from PIL import Image

    folder = pathlib.Path(folder)
    out = {}
    for image_id in ids:
        path = folder / image_id
        try:
            with Image.open(path) as img:
                out[image_id] = img.size
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} (id {image_id!r}) does not exist") from None
        except Exception as e:  # Pillow raises several types for a bad file.
            raise ValueError(f"cannot read image {path}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------
# Boxes stored in a tfds dataset
# ---------------------------------------------------------------------------------------------


def boxes_from_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Boxes:
    """The `boxes` feature of a prepared tfds dataset, per example id; score 1, class from
    `box_classes` when the dataset has it (the `idrid` builder does), else -1.

    Reads the array_record files as `tfds.data_source` does (`builder.as_data_source`), without
    decoding the images, and never downloads or builds. Ids are the `id` feature, else
    "<name>/<split>/<index>" as in `jaxad.data.tfds_source`. The `idrid` boxes grow each mask
    contour by one pixel at the top and left, as LCL's script did, so a lesion touching the
    image's top or left edge starts at -1: such edges are clipped to 0.

    Raises:
      jaxad.data.tfds_source.DatasetNotPreparedError: the dataset is not in `data_dir`.
      ValueError: the dataset has no `boxes` feature.
    """
    import tensorflow_datasets as tfds  # Lazily: jaxad does not load tfds at import time.
    from tensorflow_datasets.core import registered

    from jaxad.data.tfds_source import DatasetNotPreparedError, not_prepared_message

    data_dir = os.fspath(data_dir) if data_dir else None
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except registered.DatasetNotFoundError:
        raise DatasetNotPreparedError(not_prepared_message(name, data_dir)) from None
    if not builder.is_prepared():
        raise DatasetNotPreparedError(not_prepared_message(name, data_dir))
    features = builder.info.features
    if "boxes" not in features:
        raise ValueError(
            f"tfds dataset {name!r} has no 'boxes' feature (it has {', '.join(features)})"
        )
    # Only the boxes and ids are read: skip decoding the images and masks.
    skip = {k: tfds.decode.SkipDecoding() for k, f in features.items() if _is_image(tfds, f)}
    source = builder.as_data_source(split, decoders=skip)
    out: Boxes = {}
    for index in range(len(source)):
        ex = source[index]
        raw_id = ex.get("id", f"{name}/{split}/{index}")
        image_id = raw_id.decode("utf-8") if isinstance(raw_id, bytes) else str(raw_id)
        xyxy = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)
        arr = np.zeros((len(xyxy), 6), np.float32)
        arr[:, :4] = np.maximum(xyxy, 0.0)
        arr[:, 4] = 1.0
        arr[:, 5] = np.asarray(ex["box_classes"]).reshape(-1) if "box_classes" in ex else -1
        out[image_id] = check_boxes(arr, f"tfds {name} {split}: example {image_id!r}")
    return out


def _is_image(tfds: Any, feature: Any) -> bool:
    return isinstance(feature, tfds.features.Image)
