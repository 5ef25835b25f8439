"""Tests for jaxad.metrics: hand-computed values, sklearn parity and brute-force best Dice / F1."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxad import metrics


def brute_force_max_f1(labels, scores):
    """Max over every binarisation `score >= t` of 2TP / (2TP + FP + FN), from raw counts."""
    labels = np.asarray(labels, bool).ravel()
    scores = np.asarray(scores).ravel()
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


class TestImageMetrics:
    def test_hand_computed(self):
        out = metrics.image_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        # Positive/negative pairs ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4) of 4.
        assert out["image_auroc"] == pytest.approx(0.75)
        # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3.
        assert out["image_auprc"] == pytest.approx(5 / 6)
        # Best threshold 0.35: P = 2/3, R = 1, F1 = 0.8.
        assert out["f1_max"] == pytest.approx(0.8)
        # Catching both anomalies (TPR 1 >= 95 %) takes the threshold 0.35: 1 of 2 normals above.
        assert out["fpr_at_tpr95"] == out["fpr_at_tpr99"] == pytest.approx(0.5)

    def test_fpr_at_tpr_by_brute_force(self):
        rng = np.random.default_rng(1)
        labels = rng.random(300) < 0.4
        scores = np.round(rng.normal(size=300) + 1.5 * labels, 1)
        out = metrics.image_metrics(scores, labels.astype(int))
        for level, key in ((0.95, "fpr_at_tpr95"), (0.99, "fpr_at_tpr99")):
            # The highest threshold that flags at least `level` of the anomalous images.
            best = max(t for t in np.unique(scores) if np.mean(scores[labels] >= t) >= level)
            assert out[key] == pytest.approx(np.mean(scores[~labels] >= best))

    def test_matches_sklearn_and_brute_force(self):
        rng = np.random.default_rng(0)
        labels = rng.random(200) < 0.3
        scores = np.round(rng.normal(size=200) + labels, 1)  # rounded: many ties
        out = metrics.image_metrics(scores, labels.astype(int))
        assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert out["image_auprc"] == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )
        assert out["f1_max"] == pytest.approx(brute_force_max_f1(labels, scores), abs=1e-12)

    def test_nonzero_labels_are_anomalous(self):
        a = metrics.image_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 3, 1])
        b = metrics.image_metrics([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        assert a == b

    @pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
    def test_one_class_gives_nan(self, labels):
        out = metrics.image_metrics([0.1, 0.2, 0.3], labels)
        assert set(out) == {"image_auroc", "image_auprc", "f1_max", "fpr_at_tpr95", "fpr_at_tpr99"}
        assert all(math.isnan(v) for v in out.values())

    def test_length_mismatch(self):
        with pytest.raises(ValueError):
            metrics.image_metrics([0.1, 0.2], [0, 1, 1])


class TestPixelMetrics:
    maps = np.array([[[0.9, 0.6], [0.2, 0.1]]])
    masks = np.array([[[1, 0], [1, 0]]])

    def test_hand_computed(self):
        out = metrics.pixel_metrics(self.maps, self.masks)
        # Pairs: 0.9 > 0.6, 0.9 > 0.1, 0.2 > 0.1 right; 0.2 < 0.6 wrong.
        assert out["pixel_auroc"] == pytest.approx(0.75)
        # Ranked 0.9 (+), 0.6 (-), 0.2 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3.
        assert out["pixel_auprc"] == pytest.approx(5 / 6)
        # Threshold 0.2: TP 2, FP 1, FN 0 -> Dice 4/5.
        assert out["best_dice"] == pytest.approx(0.8)

    def test_valid_restricts_pixels(self):
        valid = np.array([[[1, 0], [1, 1]]])  # drops the 0.6 false alarm
        out = metrics.pixel_metrics(self.maps, self.masks, valid=valid)
        assert out["pixel_auroc"] == pytest.approx(1.0)
        assert out["best_dice"] == pytest.approx(1.0)

    def test_shared_fov_and_channel_axis(self):
        rng = np.random.default_rng(1)
        maps = rng.random((3, 8, 8))
        masks = rng.random((3, 8, 8, 1)) < 0.2
        fov = np.zeros((8, 8))
        fov[1:7, 1:7] = 1.0
        out = metrics.pixel_metrics(maps, masks, valid=fov)
        keep = np.broadcast_to(fov > 0.5, maps.shape)
        truth, scores = masks[..., 0][keep], maps[keep]
        assert out["pixel_auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
        assert out["pixel_auprc"] == pytest.approx(
            average_precision_score(truth, scores), abs=1e-12
        )

    def test_best_dice_equals_brute_force(self):
        rng = np.random.default_rng(2)
        masks = rng.random((4, 10, 10)) < 0.15
        maps = np.round(rng.random((4, 10, 10)) + 0.5 * masks, 2)
        out = metrics.pixel_metrics(maps, masks.astype(np.uint8) * 255)
        assert out["best_dice"] == pytest.approx(brute_force_max_f1(masks, maps), abs=1e-12)
        assert out["pixel_auroc"] == pytest.approx(
            roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
        )

    def test_subsample(self):
        rng = np.random.default_rng(3)
        masks = rng.random((10, 32, 32)) < 0.1
        maps = rng.random((10, 32, 32)) + 0.5 * masks
        exact = metrics.pixel_metrics(maps, masks)
        assert metrics.pixel_metrics(maps, masks, max_pixels=maps.size) == exact
        sub = metrics.pixel_metrics(maps, masks, max_pixels=4000, seed=5)
        assert sub == metrics.pixel_metrics(maps, masks, max_pixels=4000, seed=5)
        assert sub != metrics.pixel_metrics(maps, masks, max_pixels=4000, seed=6)
        for key in exact:
            assert sub[key] == pytest.approx(exact[key], abs=0.05)

    def test_no_lesion_pixels_gives_nan(self):
        out = metrics.pixel_metrics(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4)))
        assert all(math.isnan(v) for v in out.values())

    def test_shape_mismatch(self):
        with pytest.raises(ValueError):
            metrics.pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_grade_aurocs_hand_computed():
    scores = [0.1, 0.3, 0.2, 0.4, 0.05, 0.5]
    grades = [0, 0, 1, 2, 2, 4]
    out = metrics.grade_aurocs(scores, grades)
    assert set(out) == {
        "auroc_grade0_vs_1",
        "auroc_grade0_vs_2",
        "auroc_grade0_vs_4",
        "auroc_grade0_vs_all",
    }
    assert out["auroc_grade0_vs_1"] == pytest.approx(0.5)  # 0.2 beats 0.1, not 0.3
    assert out["auroc_grade0_vs_2"] == pytest.approx(0.5)  # 0.4 beats both, 0.05 neither
    assert out["auroc_grade0_vs_4"] == pytest.approx(1.0)
    assert out["auroc_grade0_vs_all"] == pytest.approx(5 / 8)


def test_grade_aurocs_without_negatives():
    out = metrics.grade_aurocs([0.1, 0.2], [1, 2])
    assert all(math.isnan(v) for v in out.values())
    assert math.isnan(metrics.grade_aurocs([0.1, 0.2], [0, 0])["auroc_grade0_vs_all"])


class TestTrivialBaseline:
    def make(self):
        train = np.full((5, 16, 16, 3), 0.2, np.float32)
        test = np.full((2, 16, 16, 3), 0.2, np.float32)
        test[1, 4:8, 6:10] = 1.0  # a bright square
        mask = np.zeros((2, 16, 16), bool)
        mask[1, 4:8, 6:10] = True
        return train, test, mask

    def test_bright_square(self):
        train, test, mask = self.make()
        maps, scores = metrics.trivial_baseline(train, test)
        assert maps.shape == (2, 16, 16) and scores.shape == (2,)
        expected = np.where(mask, 0.8 * np.sqrt(3.0), 0.0)
        np.testing.assert_allclose(maps, expected, atol=1e-6)
        np.testing.assert_allclose(scores, expected.mean(axis=(1, 2)), atol=1e-6)
        assert metrics.pixel_metrics(maps, mask)["pixel_auroc"] == 1.0

    def test_streaming_equals_in_memory(self):
        rng = np.random.default_rng(0)
        train = rng.random((9, 8, 8, 3)).astype(np.float32)
        test = rng.random((2, 8, 8, 3)).astype(np.float32)
        maps, scores = metrics.trivial_baseline(train, test)
        acc = metrics.MeanImage()
        for start in range(0, 9, 4):
            acc.update(train[start : start + 4])
        assert acc.count == 9
        np.testing.assert_allclose(acc.total, train.astype(np.float64).sum(axis=0), atol=1e-12)
        np.testing.assert_allclose(acc.mean, train.astype(np.float64).mean(axis=0), atol=1e-12)
        for source in (acc, (train[i : i + 2] for i in range(0, 9, 2))):
            maps2, scores2 = metrics.trivial_baseline(source, test)
            np.testing.assert_allclose(maps2, maps, atol=1e-6)
            np.testing.assert_allclose(scores2, scores, atol=1e-9)

    def test_errors(self):
        with pytest.raises(ValueError):
            _ = metrics.MeanImage().mean
        with pytest.raises(ValueError):
            _ = metrics.MeanImage().total
        with pytest.raises(ValueError):
            metrics.MeanImage().update(np.zeros((1, 4, 4, 3))).update(np.zeros((1, 4, 5, 3)))
        with pytest.raises(ValueError):
            metrics.trivial_baseline(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 1)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float16_histogram_equals_sklearn_on_rounded_scores(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    labels = rng.random(n) < 0.1
    # Scores over many magnitudes and signs, with ties, as distances or log-likelihoods give.
    scores = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n) + labels * 0.5
    scores[: n // 10] = np.round(scores[: n // 10], 1)
    scores[0], scores[1] = -0.0, 0.0
    valid = rng.random(n) < 0.9
    hist = metrics.Float16Histogram()
    for part in np.array_split(np.arange(n), 3):  # streamed in pieces
        hist.update(scores[part], labels[part], valid=valid[part])
    got = hist.metrics()
    rounded = scores.astype(np.float16).astype(np.float64)[valid]
    want = metrics.pixel_metrics(rounded, labels[valid])
    for key in ("pixel_auroc", "pixel_auprc", "best_dice"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_float16_histogram_merge_and_degenerate_cases():
    a = metrics.Float16Histogram().update(np.array([0.1, 0.2]), np.array([0, 1]))
    b = metrics.Float16Histogram().update(np.array([0.3, 0.05]), np.array([1, 0]))
    assert a.merge(b).metrics()["pixel_auroc"] == 1.0
    only_normal = metrics.Float16Histogram().update(np.ones((4, 4)), np.zeros((4, 4)))
    assert np.isnan(only_normal.metrics()["pixel_auroc"])
    with pytest.raises(ValueError, match="NaN"):
        metrics.Float16Histogram().update(np.array([np.nan]), np.array([1]))
    keys = metrics.Float16Histogram.keys(np.array([-np.inf, -2.0, -1e-7, 0.0, 1e-7, 3.0, np.inf]))
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
