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
        ({"drop_largest": -1}, "config.evals.model.drop_largest=-1"),
        ({"drop_largest": 1.5}, "config.evals.model.drop_largest=1.5"),
    ],
)
def test_bad_settings_are_one_line_errors(change, message):
    config = common.get_config()
    config.evals.model = common.anomaly_map_eval(**change)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as e:
        anomaly_map.check(config.evals.model, config, method=None)
    assert "\n" not in str(e.value)


def test_components_score_is_the_fundus_post_processing_on_any_map():
    """'components' equals Lesion2Void's original score (jaxad.ops.fundus_score) on a map whose
    field of view is the original's circle, and the `drop_largest` largest blobs, the place
    where every normal map is high, do not count."""
    from jaxad.ops import fundus_score

    rng = np.random.default_rng(0)
    size, radius = 48, 20
    circle = fundus_score.fov_circle(size, size, radius)
    amap = rng.random((size, size)) ** 4  # a noisy residual with blobs above Otsu
    amap[circle.nonzero()[0][0], circle.nonzero()[1][0]] = 0.0  # its range inside: [0, 1]
    amap[circle.nonzero()[0][-1], circle.nonzero()[1][-1]] = 1.0
    amap[~circle] = 0.5
    for drop in (0, 1, 3):
        want = fundus_score.postprocess_score(
            amap[..., None], channel=0, radius=radius, rank_lo=drop, rank_hi=drop + 70
        )
        got = postprocess.image_scores(amap[None], circle[None], "components", drop_largest=drop)
        assert got[0] == pytest.approx(want, rel=1e-5), drop
    # An optic disc in every image, a small lesion in one: dropping the largest blob leaves
    # the lesion; scoring every blob ranks the images by their discs' brightness.
    maps = np.zeros((2, 32, 32), np.float32)
    maps[0, 4:12, 4:12], maps[1, 20:28, 3:11] = 1.0, 0.9
    maps[1, 20:23, 20:23] = 0.8
    fov = np.ones_like(maps)
    dropped = postprocess.image_scores(maps, fov, "components", drop_largest=1)
    assert dropped[0] == 0.0 and dropped[1] == pytest.approx(9 * 0.8 / 0.9, rel=1e-5)
    kept = postprocess.image_scores(maps, fov, "components", drop_largest=0)
    assert kept[0] == pytest.approx(64.0) and kept[1] == pytest.approx(64 + 9 * 0.8 / 0.9)
    assert postprocess.image_scores(np.ones((1, 8, 8)), fov[:1, :8, :8], "components")[0] == 0


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


def test_normal_stats_from_normal_maps_only():
    rng = np.random.default_rng(0)
    normal = rng.normal(2.0, 1.0, (50, 6, 6))
    normal[:, 0, 0] *= 10.0  # a place where normal maps vary a lot (an optic disc)
    normal[:, 5, 5] = 2.0  # one where they never vary
    stats = postprocess.NormalStats()
    for m in normal:
        stats.add(label=0, amap=m)
    stats.add(label=1, amap=np.full((6, 6), 1e6))  # anomalous images do not count
    assert not stats.wants_overlay(0)
    out = stats.arrays()
    np.testing.assert_allclose(out["mean"], normal.mean(axis=0), rtol=1e-5)
    std = normal.std(axis=0)
    floor = np.median(std)
    np.testing.assert_allclose(out["scale"], np.maximum(std, floor), rtol=1e-5)
    assert out["scale"][5, 5] == pytest.approx(floor, rel=1e-5)  # floored, not 0
    z = postprocess.normalize(normal, out)
    assert abs(z[:, 0, 0].std() - 1.0) < 1e-3  # the varying place damped to unit spread
    with pytest.raises(ValueError, match="no normal image"):
        postprocess.NormalStats().arrays()
    with pytest.raises(ValueError, match=r"maps of \(4, 4\) px but normal statistics of \(6, 6\)"):
        postprocess.normalize(np.zeros((1, 4, 4)), out)


def test_normal_stats_combine_over_processes():
    """Two processes' statistics summed; the one that scored no normal image adds zeros of
    the maps' size, in the same three collective calls."""
    rng = np.random.default_rng(1)
    maps = rng.normal(1.0, 0.5, (5, 4, 4))
    first, empty = postprocess.NormalStats(), postprocess.NormalStats()
    for m in maps[:3]:
        first.add(label=0, amap=m)
    second = postprocess.NormalStats()
    for m in maps[3:]:
        second.add(label=0, amap=m)
    sent = []  # what each process contributes to each collective sum
    empty.combined(lambda x: sent.append(x) or x, (4, 4))
    assert [np.shape(x) for x in sent] == [(1,), (4, 4), (4, 4)]
    assert sent[0][0] == 0 and not sent[1].any() and not sent[2].any()
    sent.clear()
    second.combined(lambda x: sent.append(x) or x, (4, 4))
    out = first.combined(lambda x: x + sent.pop(0), (4, 4))  # process 0's view of the sums
    assert out.count == 5
    np.testing.assert_allclose(out.arrays()["mean"], maps.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out.squares, (maps**2).sum(axis=0), rtol=1e-6)


def test_normalize_settings_are_checked():
    config = common.get_config()
    config.evals.model = common.anomaly_map_eval(normalize="zscore")
    with pytest.raises(ValueError, match="^config.evals.model.normalize='zscore': use one of"):
        anomaly_map.check(config.evals.model, config, method=None)
    config.evals.model = common.anomaly_map_eval(normalize="normal", full_resolution=True)
    with pytest.raises(ValueError, match="normalize='normal' needs full_resolution=False"):
        anomaly_map.check(config.evals.model, config, method=None)


def _fake_split_maps(monkeypatch, maps_by_split):
    """The evaluator's scoring replaced: each split's maps (labels from the dict) in one batch."""
    seen = {}

    def fake_scorer(method, state, mesh, seed):
        return lambda local: {"map": local["raw"], "image_score": local["raw"].max(axis=(1, 2))}

    def fake_accumulate(config, split, mesh, maps_of, acc):
        raw, labels = maps_by_split[split]
        local = {"raw": raw, "fov": np.ones_like(raw)}
        maps, scores = maps_of(local)
        for m, s, y in zip(maps, scores, labels, strict=True):
            acc.add(
                id="x", label=y, grade=0, has_mask=False, score=s, amap=m, mask=0 * m, fov=1 + 0 * m
            )
        seen[split] = maps
        return acc

    monkeypatch.setattr(anomaly_map.core, "batch_scorer", fake_scorer)
    monkeypatch.setattr(anomaly_map.core, "accumulate_batched", fake_accumulate)
    return seen


def test_the_evaluator_normalises_by_the_validation_normals(monkeypatch):
    config = common.get_config()
    config.data.image_size = 8
    config.eval.pixel_metrics = False
    ecfg = common.anomaly_map_eval(normalize="normal", image_score="max", prefix="p/")
    rng = np.random.default_rng(1)
    val = rng.normal(1.0, 0.5, (20, 8, 8)).astype(np.float32)
    val[:, :, :4] *= 5.0  # the left half varies more between normal images
    test = rng.normal(1.0, 0.5, (3, 8, 8)).astype(np.float32)
    seen = _fake_split_maps(monkeypatch, {"validation": (val, [0] * 20), "test": (test, [0, 1, 1])})
    result = anomaly_map.evaluate(ecfg, config, None, None, None)
    stats = postprocess.NormalStats()
    for m in val:
        stats.add(label=0, amap=m)
    expected = stats.arrays()
    np.testing.assert_allclose(seen["test"], postprocess.normalize(test, expected), rtol=1e-5)
    assert [r["score"] for r in result.rows] == pytest.approx(seen["test"].max(axis=(1, 2)))
    saved = result.files[anomaly_map.stats_file(ecfg)]
    assert anomaly_map.stats_file(ecfg) == "pnormal_maps.npz"
    np.testing.assert_allclose(saved["scale"], expected["scale"])
    # No normal validation image: one line that says what to do.
    _fake_split_maps(monkeypatch, {"validation": (val[:2], [1, 1]), "test": (test, [0, 1, 1])})
    with pytest.raises(ValueError, match="needs normal images in split 'validation'"):
        anomaly_map.evaluate(ecfg, config, None, None, None)


def test_reports_write_the_result_files(tmp_path):
    from jaxad.evals import core

    arrays = {"mean": np.ones((4, 4), np.float32), "scale": np.full((4, 4), 2.0, np.float32)}
    result = core.Result({"split": "test"}, [], files={"normal_maps.npz": arrays})
    core.write_reports(str(tmp_path), {"step": 1}, [("", result)])
    with np.load(tmp_path / "normal_maps.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["scale"], arrays["scale"])


def test_predict_reads_the_saved_statistics(tmp_path):
    from jaxad import predict

    config = common.get_config()
    config.evals.model = common.anomaly_map_eval(normalize="normal", smooth_sigma=1.0)
    with pytest.raises(ValueError, match="normal_maps.npz is missing: .* evaluate it first"):
        predict._post_settings(str(tmp_path), config)
    (tmp_path / "eval").mkdir()
    np.savez(tmp_path / "eval" / "normal_maps.npz", mean=np.zeros((3, 3)), scale=np.ones((3, 3)))
    post = predict._post_settings(str(tmp_path), config)
    assert post["sigma"] == 1.0 and post["kind"] == "method"
    np.testing.assert_array_equal(post["normal"]["scale"], np.ones((3, 3)))
    config.evals.model.normalize = "none"
    assert "normal" not in predict._post_settings(str(tmp_path), config)


def test_predict_scores_as_the_evaluation_did():
    """predict's post-processing is the run's own evaluator's, `drop_largest` included; a run
    saved before these options gets the defaults."""
    from jaxad import predict

    config = common.get_config()
    config.evals.model = common.anomaly_map_eval(image_score="components", drop_largest=2)
    post = predict._post_settings("unused", config)
    assert post == {"sigma": 0.0, "kind": "components", "top_k": 0.01, "drop_largest": 2}
    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, 1:5, 1:5], maps[0, 8:11, 8:11], maps[0, 13:15, 13:15] = 1.0, 1.0, 1.0
    _, scores = postprocess.apply(maps, [0.0], np.ones_like(maps), **post)
    assert scores[0] == pytest.approx(4.0)  # the 2 x 2 blob: the two larger ones dropped
    for key in ("image_score", "top_k", "drop_largest"):
        del config.evals.model[key]
    assert anomaly_map.settings(config) == {
        "sigma": 0.0,
        "kind": "method",
        "top_k": 0.01,
        "drop_largest": 1,
    }
