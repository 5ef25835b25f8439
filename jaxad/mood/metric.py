"""The MOOD challenge's official metric, computed exactly and in constant memory.

The organisers' evaluation (MIC-DKFZ/mood, ``scripts/evalresults.py``) reads, for every file name
in the label folder (sorted), the label and the prediction of the same name, and computes
scikit-learn's step-wise average precision ONCE over all cases pooled:

- pixel task: label = NIfTI data -> ``rint`` -> int -> clip to [0, 1] -> ``== 1``; prediction =
  ``get_fdata(dtype=np.float16)`` (see `read_prediction`), clipped to [0, 1]. A prediction that
  is missing, unreadable or not exactly the label's shape counts as all zeros.
- sample task: label = int of the first line of ``<name>.nii.gz.txt``; prediction = float of the
  first line of the prediction's file of the same name, clipped to [0, 1]; missing or unreadable
  -> 0.0.

Because the pixel predictions are float16 in [0, 1] (15,361 distinct values), a histogram of
positives and negatives per value (`jaxad.metrics.Float16Histogram`) gives scikit-learn's AP
exactly without concatenating or sorting the 10^8-10^9 voxels of a test set. Per case, the AP is
also reported (mean over the cases with anomalous voxels), and the pooled AUROC and best Dice.

Where the official script has no sound answer, this module differs and says so:

- Label files that cannot be read are skipped with a printed message by the official script;
  here they raise (`skip_bad_labels=True` skips them and lists them in the summary).
- Labels must be 3-D volumes (every MOOD label is); a 2-D file in the label folder means a wrong
  folder, which the official script would silently score.
- A NaN prediction makes the official script crash inside scikit-learn; here the error names
  the file.
- Files whose names are not NIfTI (pixel task) or ``.txt`` (sample task) are ignored and listed;
  the official script fails to read them and skips them, which gives the same AP.
- Values that do not fit int64 (|x| >= 2^63, inf) convert to INT64_MIN on x86, the official
  evaluation's platform, so such labels count as normal here too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import warnings
import zlib
from typing import Any

import numpy as np

from jaxad.metrics import Float16Histogram

TASKS = ("pixel", "sample")
MODES = ("pooled", "cases")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Voxels per histogram update: bounds the int64 temporaries of np.bincount to 32 MB.
_CHUNK = 1 << 22
_INT64_LIMIT = 2.0**63


class LabelError(ValueError):
    """A label file cannot be used; the message names it."""


def is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _load_errors() -> tuple[type[BaseException], ...]:
    import nibabel as nib

    return (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


# ---------------------------------------------------------------------------------------------
# Reading files as the official evaluation does
# ---------------------------------------------------------------------------------------------


def read_label(path: str | os.PathLike) -> np.ndarray:
    """bool voxel labels: ``clip(int(rint(x)), 0, 1) == 1``, i.e. ``1 <= rint(x) < 2^63``.

    Integer data and float32 data without scaling are read as stored (float64, the official
    ``get_fdata()``, would hold the same values, so ``rint`` agrees), saving the 8 bytes per
    voxel of a float64 copy; scaled data go through ``get_fdata()`` as in the official script.

    Raises:
      LabelError: unreadable, or not a 3-D volume.
    """
    import nibabel as nib

    try:
        img = nib.load(os.fspath(path))
        if len(img.shape) != 3:
            raise LabelError(f"label {path} is not a 3-D volume (shape {img.shape})")
        proxy = img.dataobj
        unscaled = getattr(proxy, "slope", 1.0) == 1.0 and getattr(proxy, "inter", 0.0) == 0.0
        dtype = np.dtype(img.get_data_dtype())
        if unscaled and (dtype.kind in "iub" or dtype in (np.float32, np.float64)):
            data = np.asarray(proxy)
        else:
            data = img.get_fdata(caching="unchanged")
    except LabelError:
        raise
    except _load_errors() as e:
        raise LabelError(f"cannot read label {path}: {e}") from e
    if data.dtype.kind in "iub":
        return data >= 1
    with np.errstate(invalid="ignore"):
        r = np.rint(data)
        return (r >= 1) & (r < _INT64_LIMIT)  # NaN compares False: INT64_MIN -> 0, as official.


def read_prediction(
    path: str | os.PathLike, shape: tuple[int, ...]
) -> tuple[np.ndarray | None, str]:
    """The official reading of a pixel prediction: float16 data clipped to [0, 1], or None.

    The organisers call nibabel's ``get_fdata(dtype=np.float16)``, and so does this function.
    That does not compute in float16: nibabel applies the header's scaling (``x * slope +
    inter``) in at least float32 (float64 for scaled integers) and then rounds ONCE to float16,
    round-half-to-even: three significant digits, values below 2^-25 become 0, below 2^-14
    subnormal, and |x| >= 65520 becomes +-inf (then 1 or 0 after the clip). NaN stays NaN.

    Returns:
      (scores, status): scores float16 in [0, 1] with `shape`, status "ok"; or (None, reason)
      when the file is missing, unreadable or of another shape, which the official evaluation
      scores as all zeros.
    """
    import nibabel as nib

    path = pathlib.Path(path)
    if not path.is_file():
        return None, "missing"
    try:
        img = nib.load(os.fspath(path))
        if tuple(img.shape) != tuple(shape):
            return None, f"shape {tuple(img.shape)} != label shape {tuple(shape)}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # Overflow to inf is the semantics.
            data = img.get_fdata(dtype=np.float16, caching="unchanged")
    except _load_errors() as e:
        return None, f"unreadable: {e}"
    if data.shape != tuple(shape):  # A header whose shape differs from the data it yields.
        return None, f"shape {data.shape} != label shape {tuple(shape)}"
    return data, "ok"


def _first_line(path: pathlib.Path) -> str:
    with open(path) as f:
        return f.readline()


def read_sample_label(path: str | os.PathLike) -> int:
    """int of the first line (Python's ``int``, as the official script); must be 0 or 1."""
    path = pathlib.Path(path)
    try:
        label = int(_first_line(path))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LabelError(
            f"cannot read a sample label (an int on the first line) from {path}: {e}"
        ) from e
    if label not in (0, 1):
        # The official script passes it on to scikit-learn, which then fails.
        raise LabelError(f"sample label {path} is {label}, not 0 or 1")
    return label


def read_sample_prediction(path: str | os.PathLike) -> tuple[float, str]:
    """float of the first line clipped to [0, 1], or (0.0, reason) if missing or unreadable."""
    path = pathlib.Path(path)
    if not path.is_file():
        return 0.0, "missing"
    try:
        value = float(_first_line(path))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return 0.0, f"unreadable: {e}"
    if math.isnan(value):
        raise ValueError(f"prediction {path} is NaN, which the official evaluation cannot score")
    return float(np.clip(value, 0.0, 1.0)), "ok"


# ---------------------------------------------------------------------------------------------
# Average precision from counts
# ---------------------------------------------------------------------------------------------


def average_precision(hist: Float16Histogram) -> float:
    """scikit-learn's ``average_precision_score`` of the histogram's (float16) scores.

    Includes scikit-learn's answers when a class is absent: 0.0 without positives (it warns),
    1.0 without negatives.
    """
    n_neg, n_pos = hist.counts.sum(axis=1)
    if n_pos == 0:
        return 0.0
    if n_neg == 0:
        return 1.0
    return hist.metrics()["pixel_auprc"]


def _flat_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays flattened in the same element order, without a copy when possible."""
    order = "F" if a.flags.f_contiguous and b.flags.f_contiguous else "C"
    return a.reshape(-1, order=order), b.reshape(-1, order=order)


def case_histogram(
    scores: np.ndarray | None, labels: np.ndarray, name: str = ""
) -> Float16Histogram:
    """Histogram of one case: `scores` (None: all zeros) clipped to [0, 1] against `labels`."""
    hist = Float16Histogram()
    if scores is None:
        n_pos = int(np.count_nonzero(labels))
        key = Float16Histogram.keys(np.zeros(1, np.float16))[0]
        hist.counts[1, key] += n_pos
        hist.counts[0, key] += labels.size - n_pos
        return hist
    flat_scores, flat_labels = _flat_pair(scores, labels)
    for start in range(0, flat_scores.size, _CHUNK):
        chunk = np.clip(flat_scores[start : start + _CHUNK], 0, 1)
        try:
            hist.update(chunk, flat_labels[start : start + _CHUNK])
        except ValueError as e:
            raise ValueError(
                f"prediction {name} contains NaN, which the official evaluation cannot score"
            ) from e
    return hist


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Listing:
    names: list[str]  # label file names that are scored, sorted
    ignored: list[str]  # other entries of the label folder


def _list_labels(label_dir: pathlib.Path, task: str) -> _Listing:
    if not label_dir.is_dir():
        raise FileNotFoundError(f"label folder {label_dir} does not exist")
    names, ignored = [], []
    for name in sorted(os.listdir(label_dir)):
        usable = (label_dir / name).is_file() and not name.startswith(".")
        if usable and (is_nifti(name) if task == "pixel" else name.endswith(".txt")):
            names.append(name)
        else:
            ignored.append(name)
    if not names:
        what = "NIfTI (.nii.gz, .nii)" if task == "pixel" else "sample label (<name>.nii.gz.txt)"
        raise ValueError(f"no {what} files in label folder {label_dir}")
    return _Listing(names, ignored)


def resolve_label_dir(label_dir: str | os.PathLike, task: str) -> pathlib.Path:
    """`label_dir`, or its `task` subfolder when given the organisers' ``toy_label`` folder."""
    label_dir = pathlib.Path(label_dir).expanduser()
    sub = label_dir / task
    if sub.is_dir() and not any(
        (label_dir / n).is_file() and not n.startswith(".") for n in os.listdir(label_dir)
    ):
        return sub
    return label_dir


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def evaluate_pixel(
    pred_dir: str | os.PathLike, label_dir: str | os.PathLike, *, skip_bad_labels: bool = False
) -> dict[str, Any]:
    """The official pixel-level AP (pooled) plus per-case APs, pooled AUROC and best Dice."""
    pred_dir, label_dir = pathlib.Path(pred_dir), resolve_label_dir(label_dir, "pixel")
    listing = _list_labels(label_dir, "pixel")
    pooled = Float16Histogram()
    cases, skipped = [], []
    for name in listing.names:
        try:
            labels = read_label(label_dir / name)
        except LabelError as e:
            if not skip_bad_labels:
                raise
            skipped.append({"name": name, "reason": str(e)})
            continue
        scores, status = read_prediction(pred_dir / name, labels.shape)
        hist = case_histogram(scores, labels, str(pred_dir / name))
        del scores
        pooled.merge(hist)
        n_pos = int(hist.counts[1].sum())
        cases.append(
            {
                "name": name,
                "prediction": status,
                "voxels": int(labels.size),
                "positives": n_pos,
                "ap": average_precision(hist) if n_pos else None,
            }
        )
    if not cases:
        raise ValueError(f"no label in {label_dir} could be read (all skipped)")
    case_aps = [c["ap"] for c in cases if c["ap"] is not None]
    extra = pooled.metrics()
    return {
        "task": "pixel",
        "ap_pooled": average_precision(pooled),
        "ap_cases_mean": float(np.mean(case_aps)) if case_aps else None,
        "n_cases_with_positives": len(case_aps),
        "auroc_pooled": _nan_to_none(extra["pixel_auroc"]),
        "best_dice_pooled": _nan_to_none(extra["best_dice"]),
        **_summary_counts(cases, listing, skipped, pred_dir, label_dir),
    }


def evaluate_sample(
    pred_dir: str | os.PathLike, label_dir: str | os.PathLike, *, skip_bad_labels: bool = False
) -> dict[str, Any]:
    """The official sample-level AP (scikit-learn on the case scores) plus the AUROC."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    pred_dir, label_dir = pathlib.Path(pred_dir), resolve_label_dir(label_dir, "sample")
    listing = _list_labels(label_dir, "sample")
    cases, skipped = [], []
    for name in listing.names:
        try:
            label = read_sample_label(label_dir / name)
        except LabelError as e:
            if not skip_bad_labels:
                raise
            skipped.append({"name": name, "reason": str(e)})
            continue
        score, status = read_sample_prediction(pred_dir / name)
        cases.append({"name": name, "prediction": status, "label": label, "score": score})
    if not cases:
        raise ValueError(f"no label in {label_dir} could be read (all skipped)")
    labels = np.array([c["label"] for c in cases])
    scores = np.array([c["score"] for c in cases])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No positive class found": AP is 0.
        ap = float(average_precision_score(labels, scores))
    both = 0 < labels.sum() < labels.size
    return {
        "task": "sample",
        "ap_pooled": ap,
        "auroc": float(roc_auc_score(labels, scores)) if both else None,
        **_summary_counts(cases, listing, skipped, pred_dir, label_dir),
    }


def _summary_counts(cases, listing, skipped, pred_dir, label_dir) -> dict[str, Any]:
    return {
        "n_cases": len(cases),
        "n_missing": sum(c["prediction"] == "missing" for c in cases),
        "n_invalid": sum(c["prediction"] not in ("ok", "missing") for c in cases),
        "pred_dir": str(pred_dir),
        "label_dir": str(label_dir),
        "cases": cases,
        "ignored": listing.ignored,
        "skipped": skipped,
    }


def evaluate(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    *,
    task: str = "pixel",
    mode: str = "pooled",
    skip_bad_labels: bool = False,
) -> dict[str, Any]:
    """Scores a prediction folder against a label folder; returns a JSON-able summary.

    Args:
      pred_dir: predictions named as the labels (pixel: NIfTI; sample: ``<name>.nii.gz.txt``).
      label_dir: the labels (e.g. ``toy_label/pixel``; ``toy_label`` itself is accepted and its
        `task` subfolder used).
      task: "pixel" or "sample".
      mode: which number is the summary's ``score``: "pooled" (the official AP over all voxels
        of all cases) or "cases" (the mean per-case AP over cases with anomalous voxels; pixel
        task only).
      skip_bad_labels: skip unreadable label files as the official script does, instead of
        raising.

    Returns:
      dict with ``score``, ``ap_pooled``, per-case entries under ``cases`` (status of each
      prediction: "ok", "missing" or why it is invalid), counts, and ``ignored`` / ``skipped``
      label-folder entries.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "cases" and task != "pixel":
        raise ValueError("mode 'cases' (mean per-case AP) needs the pixel task")
    pred_path = pathlib.Path(pred_dir).expanduser()
    if not pred_path.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_path} does not exist")
    fn = evaluate_pixel if task == "pixel" else evaluate_sample
    summary = fn(pred_path, label_dir, skip_bad_labels=skip_bad_labels)
    score = summary["ap_pooled"] if mode == "pooled" else summary["ap_cases_mean"]
    return {"score": score, "mode": mode, **summary}
