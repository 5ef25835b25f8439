"""The grading evaluator (`jaxad.evals.grading`): thresholds, kappa, and a run on fake data."""

import csv
import json

import ml_collections
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from jaxad import evals, parallel
from jaxad.data import pipeline, records, sources
from jaxad.evals.grading import grades_from_regression, grading_metrics
from jaxad.methods.base import Method


def test_half_integer_thresholds():
    pred = [-0.6, -0.5, 0.0, 0.49, 0.5, 1.49999, 1.5, 2.7, 3.49, 3.5, 9.0, float("nan")]
    assert grades_from_regression(pred).tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 0]
    # Round half up and clip, as PYCLS's "largest i with pred >= t_i" gives.
    x = np.random.default_rng(0).uniform(-3, 8, 1000)
    np.testing.assert_array_equal(grades_from_regression(x), np.clip(np.floor(x + 0.5), 0, 4))
    assert grades_from_regression(np.zeros((2, 3))).shape == (2, 3)
    assert grades_from_regression([0.2, 0.9], thresholds=(-1, 1)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="ascending"):
        grades_from_regression(0.0, thresholds=(0.5, -0.5, 1.5))


def test_metrics_against_sklearn():
    rng = np.random.default_rng(1)
    grades = rng.integers(0, 5, 200)
    preds = grades + rng.normal(0, 1.2, 200)
    got = grading_metrics(grades, preds)
    predicted = np.clip(np.floor(preds + 0.5), 0, 4).astype(int)
    assert got["kappa"] == pytest.approx(
        cohen_kappa_score(grades, predicted, weights="quadratic"), abs=1e-12
    )
    assert got["accuracy"] == pytest.approx(np.mean(grades == predicted))
    assert got["mse"] == pytest.approx(np.mean((preds - grades) ** 2))
    cm = confusion_matrix(grades, predicted, labels=range(5))
    assert got["confusion_matrix"] == cm.tolist()
    for g in range(5):
        assert got[f"recall_grade{g}"] == pytest.approx(cm[g, g] / cm[g].sum())
    # The kappa of PYCLS's formula (quadratic weights on the normalised confusion matrix).
    o = cm / cm.sum()
    e = np.outer(o.sum(1), o.sum(0))
    w = 1 - np.subtract.outer(np.arange(5), np.arange(5)) ** 2 / 16
    assert got["kappa"] == pytest.approx(((w * o).sum() - (w * e).sum()) / (1 - (w * e).sum()))
    # A grade absent from the truth has no recall; one grade everywhere has no kappa.
    sparse = grading_metrics(np.array([0, 0, 2]), np.array([0.1, 1.2, 2.2]))
    assert np.isnan(sparse["recall_grade1"]) and sparse["recall_grade0"] == 0.5
    assert np.isnan(grading_metrics(np.zeros(3, int), np.zeros(3))["kappa"])
    assert grading_metrics(np.zeros(0, int), np.zeros(0))["num_graded"] == 0


class BrightnessGrader(Method):
    """A fake grading method: the prediction is an affine function of the image's mean."""

    def score(self, state, batch, key):
        return {"grade_pred": batch["image"].mean(axis=(1, 2, 3)) * 2.0 + 2.0}


def _graded_source(n=13, size=12, seed=0):
    """Records whose brightness rises with the grade (noisy), two of them ungraded."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        grade = int(rng.integers(0, 5)) if i < n - 2 else -1
        level = 30 + 45 * max(grade, 0) + rng.normal(0, 25)
        image = np.clip(rng.normal(level, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        zeros = np.zeros((size, size), np.uint8)
        recs.append(
            records.record(
                image, zeros, int(grade > 0), False, f"img{i}.png", zeros + 1, grade=grade
            )
        )
    return recs


@pytest.fixture
def config(tmp_path, monkeypatch):
    from conftest import tiny_config

    recs = _graded_source()
    monkeypatch.setitem(sources.SOURCES, "fake_graded", lambda data_cfg, split: recs)
    c = tiny_config(tmp_path)
    c.data.name = "fake_graded"
    c.data.image_size = 12
    c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    c.eval.batch_size = 4
    c.evals = ml_collections.ConfigDict()
    c.evals.grading = ml_collections.ConfigDict(
        dict(type="grading", prefix="", split="", output="grade_pred")
    )
    return c


def test_grading_evaluator_end_to_end(config, tmp_path):
    mesh = parallel.make_mesh()
    workdir = tmp_path / "run"
    results = evals.run(config, str(workdir), BrightnessGrader(), None, mesh, step=5)
    batches = list(pipeline.eval_batches(config.data, "test", local_batch_size=4))
    valid = np.concatenate([b["valid"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[valid]
    grades = np.concatenate([b["grade"] for b in batches])[valid]
    preds = images.mean(axis=(1, 2, 3)) * 2.0 + 2.0
    graded = grades >= 0
    predicted = np.clip(np.floor(preds + 0.5), 0, 4).astype(int)
    assert results["num_images"] == 13 and results["num_graded"] == 11
    assert results["kappa"] == pytest.approx(
        cohen_kappa_score(grades[graded], predicted[graded], weights="quadratic", labels=range(5)),
        abs=1e-6,
    )
    assert results["accuracy"] == pytest.approx(np.mean(grades[graded] == predicted[graded]))
    assert results["confusion_matrix"] == (
        confusion_matrix(grades[graded], predicted[graded], labels=range(5)).tolist()
    )
    # metrics.json keeps the matrix; the logged scalars leave it out.
    saved = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert saved["confusion_matrix"] == results["confusion_matrix"] and saved["step"] == 5
    scalars = evals.scalars(results)
    assert "eval/kappa" in scalars and "eval/confusion_matrix" not in scalars
    with open(workdir / "eval" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13
    assert list(rows[0]) == ["id", "label", "grade", "has_mask", "prediction", "predicted_grade"]
    by_id = {r["id"]: r for r in rows}
    ids = np.concatenate([b["id"] for b in batches])[valid]
    for i, p, g in zip(ids, preds, predicted, strict=True):
        assert float(by_id[i]["prediction"]) == pytest.approx(p, rel=1e-5, abs=1e-5)
        assert int(by_id[i]["predicted_grade"]) == g


def test_grading_config_errors(config, tmp_path):
    with pytest.raises(ValueError, match="has no score"):
        evals.check(config, Method())
    config.evals.grading.thresholds = (0.5, 0.0)
    with pytest.raises(ValueError, match="ascending"):
        evals.check(config, BrightnessGrader())
    del config.evals.grading["thresholds"]
    config.evals.grading.output = "grade"
    with pytest.raises(ValueError, match="not 'grade'"):
        evals.run(
            config, str(tmp_path / "r"), BrightnessGrader(), None, parallel.make_mesh(), step=0
        )
