"""Decision thresholds (`jaxad.evals.threshold`) and `jaxad.predict`'s decisions from them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from configs import common
from jaxad import metrics
from jaxad.evals import threshold


def test_image_threshold_is_f1_optimal_with_both_classes():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = rng.normal(size=300) + 1.2 * labels
    t, rule = threshold.image_threshold(scores, labels, 0.99)
    assert rule == "f1"

    def f1(cut):
        pred = scores >= cut
        return 2 * (pred & (labels == 1)).sum() / (pred.sum() + labels.sum())

    assert f1(t) == pytest.approx(max(f1(c) for c in scores))


def test_image_threshold_from_normal_scores_alone():
    scores = np.arange(200, dtype=float)
    t, rule = threshold.image_threshold(scores, np.zeros(200, int), 0.95)
    assert (t, rule) == (189.0, "normal_quantile 0.95")  # 190 of 200 at or below


def test_calibrate_puts_the_threshold_at_one_half():
    np.testing.assert_allclose(
        threshold.calibrate([2.0, 4.0, 100.0, -50.0], 2.0, 0.0, 4.0),
        [
            0.5,
            1.0,
            1.0,
            0.0,
        ],
    )
    assert threshold.calibrate(3.0, 2.0, 0.0, 4.0) == pytest.approx(0.75)


def test_histogram_thresholds_match_direct_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20000).astype(np.float32)
    y = rng.random(20000) < 0.1
    x[y] += 1.5
    x = x.astype(np.float16).astype(np.float32)  # the histogram's resolution
    hist = metrics.Float16Histogram().update(x, y)
    keys = metrics.Float16Histogram.keys(x)
    assert [metrics.Float16Histogram.value(k) for k in keys[:500]] == list(x[:500])
    t = hist.best_dice_threshold()
    pred = x >= t
    dice = 2 * (pred & y).sum() / (pred.sum() + y.sum())
    assert dice == pytest.approx(hist.metrics()["best_dice"])
    assert hist.quantile(0.99) == np.quantile(x[~y], 0.99, method="inverted_cdf")
    assert np.isnan(metrics.Float16Histogram().best_dice_threshold())


def test_check_needs_maps_and_a_fraction():
    config = common.get_config()
    config.evals.threshold = common.threshold_eval()
    with pytest.raises(ValueError, match="needs an 'anomaly_map' evaluator"):
        threshold.check(config.evals.threshold, config, None)
    config.evals.threshold.normal_quantile = 1.5
    with pytest.raises(ValueError, match="normal_quantile=1.5"):
        threshold.check(config.evals.threshold, config, None)


@pytest.mark.slow
def test_predict_writes_decisions_from_the_saved_thresholds(fundus_root, tmp_path):
    from jaxad import predict, train

    config = tiny_config(fundus_root, total_steps=2)
    # Maps normalised by the normal validation maps: the thresholds and predict use them too.
    config.evals.model = common.anomaly_map_eval(normalize="normal", image_score="max")
    config.evals.threshold = common.threshold_eval(normal_quantile=0.9)
    results = train.run(config, str(tmp_path))
    # The validation split (held-out normal training images) has no anomalies: quantile rules.
    assert results["threshold/image_rule"] == "normal_quantile 0.9"
    assert results["threshold/pixel_rule"] == "normal_quantile 0.9"
    assert results["threshold/split"] == "validation" and results["threshold/num_images"] >= 3
    t = results["threshold/image_threshold"]
    assert results["threshold/image_score_min"] <= t <= results["threshold/image_score_max"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for kind in ("good", "haemorrhage"):
        image = np.asarray(Image.open(fundus_root / "test" / kind / "000.png"))
        Image.fromarray(image).save(inputs / f"{kind}.png")
    out = tmp_path / "out"
    with open(predict.predict(str(tmp_path), str(inputs), str(out))) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["good.png", "haemorrhage.png"]
    for r in rows:
        score, calibrated = float(r["score"]), float(r["calibrated_score"])
        assert int(r["anomalous"]) == int(score >= t)
        assert (calibrated >= 0.5) == (score >= t) and 0 <= calibrated <= 1
        stem = r["path"].removesuffix(".png")
        mask = np.asarray(Image.open(out / f"{stem}_anomalous.png"))
        amap = np.load(out / f"{stem}.npy")
        np.testing.assert_array_equal(mask > 0, amap >= results["threshold/pixel_threshold"])

    # predict normalised its maps by the statistics the evaluation saved: the same model's
    # raw maps (normalize off in the saved config) give them back.
    import json

    from jaxad.evals import postprocess

    with np.load(tmp_path / "eval" / "normal_maps.npz", allow_pickle=False) as z:
        stats = {k: z[k] for k in ("mean", "scale")}
    small = tmp_path / "small"  # at the model's size, so that no resizing comes in between
    small.mkdir()
    size = config.data.image_size
    Image.open(inputs / "good.png").resize((size, size)).save(small / "c.png")
    predict.predict(str(tmp_path), str(small), str(tmp_path / "normalised"))
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["evals"]["model"]["normalize"] = "none"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    predict.predict(str(tmp_path), str(small), str(tmp_path / "raw"))
    raw, normalised = (np.load(tmp_path / d / "c.npy") for d in ("raw", "normalised"))
    expected = postprocess.normalize(raw, stats)
    np.testing.assert_allclose(normalised, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(normalised, raw)
