"""Map post-processing (`jaxad.evals.postprocess`) and its use by the anomaly_map evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from configs import common
from jaxad.evals import anomaly_map, postprocess


def test_smooth_is_a_normalised_gaussian_per_map():
    maps = np.zeros((2, 31, 31), np.float32)
    maps[0, 15, 15] = 1.0
    maps[1] = 3.0
    out = postprocess.smooth(maps, 2.0)
    assert out.shape == maps.shape
    assert out[0].sum() == pytest.approx(1.0, abs=1e-5)  # mass kept, nothing leaks across maps
    np.testing.assert_allclose(out[1], 3.0, rtol=1e-6)
    # The impulse response is a Gaussian of sigma 2: its profile falls by exp(-1/8) per pixel.
    assert out[0, 15, 16] / out[0, 15, 15] == pytest.approx(np.exp(-1 / 8), rel=1e-3)
    np.testing.assert_array_equal(postprocess.smooth(maps, 0.0), maps)
    assert postprocess.smooth(maps[0], 1.0).shape == (31, 31)  # one [H, W] map too


def test_image_scores_over_the_field_of_view():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 20, 20)).astype(np.float32)
    fov = np.zeros((3, 20, 20))
    fov[:, 5:15, 5:15] = 1
    fov[2] = 0  # an empty field of view counts every pixel
    maps[0, 0, 0] = 99.0  # outside the field of view: not seen
    inside = [maps[0][5:15, 5:15], maps[1][5:15, 5:15], maps[2]]
    np.testing.assert_allclose(
        postprocess.image_scores(maps, fov, "max"), [v.max() for v in inside], rtol=1e-6
    )
    np.testing.assert_allclose(
        postprocess.image_scores(maps, fov, "mean"), [v.mean() for v in inside], rtol=1e-5
    )
    top = postprocess.image_scores(maps, fov, "topk_mean", top_k=0.05)
    expected = [np.sort(v.ravel())[-round(0.05 * v.size) :].mean() for v in inside]
    np.testing.assert_allclose(top, expected, rtol=1e-5)
    # top_k below one pixel still takes the maximum.
    tiny = postprocess.image_scores(maps, fov, "topk_mean", top_k=1e-6)
    np.testing.assert_allclose(tiny, [v.max() for v in inside], rtol=1e-6)


def test_apply_keeps_the_method_by_default():
    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    scores = np.array([7.0, -1.0])
    out_maps, out_scores = postprocess.apply(maps, scores, np.ones_like(maps))
    np.testing.assert_array_equal(out_maps, maps)
    np.testing.assert_array_equal(out_scores, scores)
    _, mx = postprocess.apply(maps, scores, np.ones_like(maps), kind="max")
    np.testing.assert_array_equal(mx, [15, 31])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"smooth_sigma": -1.0}, "config.evals.model.smooth_sigma=-1.0"),
        ({"image_score": "p99"}, "config.evals.model.image_score='p99'"),
        ({"top_k": 0.0}, "config.evals.model.top_k=0.0"),
    ],
)
def test_bad_settings_are_one_line_errors(change, message):
    config = common.get_config()
    config.evals.model = common.anomaly_map_eval(**change)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as e:
        anomaly_map.check(config.evals.model, config, method=None)
    assert "\n" not in str(e.value)


def test_the_evaluator_uses_the_settings(monkeypatch):
    """The batched path hands the smoothed maps and the chosen scores to the metrics."""
    config = common.get_config()
    ecfg = common.anomaly_map_eval(smooth_sigma=1.0, image_score="max")
    seen = {}
    raw = np.zeros((2, 9, 9), np.float32)
    raw[:, 4, 4] = 1.0
    local = {"fov": np.ones((2, 9, 9), np.float32)}

    def fake_scorer(method, state, mesh, seed):
        return lambda batch: {"map": raw, "image_score": np.array([5.0, 6.0])}

    def fake_accumulate(config, split, mesh, maps_of, acc):
        seen["maps"], seen["scores"] = maps_of(local)
        return acc

    monkeypatch.setattr(anomaly_map.core, "batch_scorer", fake_scorer)
    monkeypatch.setattr(anomaly_map.core, "accumulate_batched", fake_accumulate)
    monkeypatch.setattr(anomaly_map.core.MapAccumulator, "finish", lambda self, split: None)
    anomaly_map.evaluate(ecfg, config, None, None, None)
    np.testing.assert_allclose(seen["maps"], postprocess.smooth(raw, 1.0))
    np.testing.assert_allclose(seen["scores"], seen["maps"].max(axis=(1, 2)))
    assert seen["scores"][0] < 0.2  # the smoothed peak, not the method's 5.0
