"""Disease grading by regression, scored by quadratic weighted kappa (evaluator type `grading`).

For methods whose `score` returns a per-image regression output (default `grade_pred` [B], or
[B, 1] as a one-unit fc gives it) trained by MSE against the grades 0-4, as LCL's downstream
network (PYCLS) is. Predictions become grades with the half-integer thresholds
[-0.5, 0.5, 1.5, 2.5, 3.5] (`grades_from_regression`: the largest i with pred >= t_i, i.e.
rounded to the nearest grade and clipped to [0, 4]), and are compared with each image's `grade`.

Config keys: `type="grading"`, `prefix`, `split` ('' = eval.split, else data.test_split),
`output` (the name in `score`'s outputs; default "grade_pred") and optionally `thresholds`
(ascending, one per grade; default the half-integers, which PYCLS keeps).

Metrics, over the images with a grade 0..K-1 (K thresholds; others are scored and written, not
counted): `kappa` (quadratic weighted, sklearn's `cohen_kappa_score`, grades 0..K-1),
`accuracy`, `mse` of the raw predictions, `recall_grade{g}` (NaN for a grade absent from the
split), `confusion_matrix` (K x K nested list, rows = truth, columns = prediction; not a
scalar, so `jaxad.evals.scalars` leaves it out of the logged scalars), `num_images` (scored)
and `num_graded`. Rows of scores.csv: `prediction` and `predicted_grade` beside id, label,
grade. Every process scores its share of the split in global batches; every process gets the
same metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from jaxad import parallel, writers
from jaxad.data import pipeline, sources
from jaxad.evals import core
from jaxad.methods import base

# PYCLS's regression thresholds for the five diabetic-retinopathy grades.
THRESHOLDS: tuple[float, ...] = (-0.5, 0.5, 1.5, 2.5, 3.5)
DEFAULT_OUTPUT = "grade_pred"


def grades_from_regression(pred: Any, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Grades (int64, same shape) of regression outputs: the largest i with pred >= t_i.

    Below t_0 gives 0, as does NaN (it compares false), as in PYCLS. With the default
    thresholds this is round-half-up to an integer, clipped to [0, 4].
    """
    t = np.asarray(thresholds, np.float64)
    if t.ndim != 1 or t.size < 2 or np.any(np.diff(t) <= 0):
        raise ValueError(f"thresholds must be strictly ascending, one per grade: {thresholds}")
    p = np.asarray(pred, np.float64)
    return np.maximum((p[..., None] >= t).sum(axis=-1) - 1, 0).astype(np.int64)


def _settings(ecfg: ml_collections.ConfigDict) -> tuple[str, tuple[float, ...]]:
    output = ecfg.get("output", DEFAULT_OUTPUT) or DEFAULT_OUTPUT
    thresholds = tuple(float(t) for t in (ecfg.get("thresholds", None) or THRESHOLDS))
    return str(output), thresholds


def check(ecfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, method) -> None:
    _, thresholds = _settings(ecfg)
    grades_from_regression(0.0, thresholds)  # raises on bad thresholds
    if not base.provides(method, "score"):
        raise ValueError(
            f"method {config.method!r} has no score: evaluator type 'grading' needs its "
            "per-image regression output."
        )


def grading_metrics(
    grades: np.ndarray, preds: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """Kappa, accuracy, MSE, per-grade recall and confusion matrix of true grades [N] and
    regression outputs [N] (see the module docstring)."""
    k = len(thresholds)
    grades = np.asarray(grades, np.int64)
    preds = np.asarray(preds, np.float64)
    predicted = grades_from_regression(preds, thresholds)
    out: dict[str, Any] = {"num_graded": int(grades.size)}
    if grades.size == 0:
        out.update(kappa=float("nan"), accuracy=float("nan"), mse=float("nan"))
        out.update({f"recall_grade{g}": float("nan") for g in range(k)})
        out["confusion_matrix"] = np.zeros((k, k), np.int64).tolist()
        return out
    labels = list(range(k))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # A single grade in both truth and prediction leaves kappa undefined: sklearn gives NaN
        # (older versions with a RuntimeWarning, newer with an UndefinedMetricWarning).
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = cohen_kappa_score(grades, predicted, labels=labels, weights="quadratic")
    cm = confusion_matrix(grades, predicted, labels=labels)
    per_grade = cm.sum(axis=1)
    out["kappa"] = float(kappa)
    out["accuracy"] = float(np.mean(grades == predicted))
    out["mse"] = float(np.mean((preds - grades) ** 2))
    for g in range(k):
        recall = cm[g, g] / per_grade[g] if per_grade[g] else float("nan")
        out[f"recall_grade{g}"] = float(recall)
    out["confusion_matrix"] = cm.astype(int).tolist()
    return out


def _predictions(out: dict[str, Any], output: str, n: int, mesh) -> np.ndarray:
    if output not in out:
        raise ValueError(
            f"the method's score returned {sorted(out)}, not {output!r}: set the grading "
            "evaluator's output to the name of its regression output."
        )
    pred = core.local_rows(out[output], mesh)
    if pred.size != n:
        raise ValueError(
            f"score output {output!r} has shape {pred.shape}; expected one value per image "
            f"([{n}] or [{n}, 1])."
        )
    return pred.reshape(n).astype(np.float64)


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = core.eval_split(config, ecfg)
    output, thresholds = _settings(ecfg)
    score_fn = core.make_score_fn(method, mesh)
    # The keys `core.batch_scorer` uses, so that a stochastic score is the same in every
    # evaluator.
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    local_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    rows: list[dict[str, Any]] = []
    src = sources.get_source(config.data, split)
    progress = writers.CountProgress(f"grading split {split!r}", core.local_count(len(src)))
    batches = pipeline.source_batches(src, config.data, local_batch_size=local_bs)
    for i, local in enumerate(batches):
        if i:
            progress.update(len(rows))
        core.check_stop()
        out = score_fn(state, parallel.global_batch(mesh, local), jax.random.fold_in(key, i))
        pred = _predictions(out, output, len(local["valid"]), mesh)
        predicted = grades_from_regression(pred, thresholds)
        for j in np.flatnonzero(local["valid"]):
            rows.append(
                {
                    "id": str(local["id"][j]),
                    "label": int(local["label"][j]),
                    "grade": int(local["grade"][j]),
                    "has_mask": bool(local["has_mask"][j]),
                    "prediction": float(pred[j]),
                    "predicted_grade": int(predicted[j]),
                }
            )
    core.log_scored(progress, len(rows), split)
    rows = core.gather_rows(rows)
    graded = [r for r in rows if 0 <= r["grade"] < len(thresholds)]
    metrics: dict[str, Any] = {"split": split, "num_images": len(rows)}
    metrics.update(
        grading_metrics(
            np.array([r["grade"] for r in graded], np.int64),
            np.array([r["prediction"] for r in graded], np.float64),
            thresholds,
        )
    )
    return core.Result(metrics, rows)
