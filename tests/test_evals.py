"""Evaluators (`jaxad.evals`): fake methods with known maps, both scoring paths, the reports."""

import csv
import json
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxad import evals, parallel
from jaxad.data import sources
from jaxad.methods.base import Method


class BrightnessMethod(Method):
    """A fake dense method: the map is the image's brightness, rounded to float16's grid."""

    def __init__(self):
        self.shapes = []

    def dense_map(self, state, image, key):
        self.shapes.append(image.shape)
        return image.mean(axis=-1).astype(np.float16).astype(np.float32)


def _folder(root, rng):
    """Normal images of several sizes; test images with a bright square marked by a mask."""
    sizes = [(40, 56), (48, 48), (33, 70)]
    for split in ("train", "test"):
        (root / split / "good").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            img = rng.integers(40, 160, (h, w), dtype=np.uint8)
            Image.fromarray(img).save(root / split / "good" / f"{i}.png")
    (root / "test" / "mass").mkdir()
    (root / "ground_truth" / "mass").mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(40, 160, (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 10 + i : 22 + i] = 255
        img[mask > 0] = np.clip(img[mask > 0].astype(int) + 60, 0, 255)
        Image.fromarray(img).save(root / "test" / "mass" / f"{i}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "mass" / f"{i}_mask.png")
    return root


@pytest.fixture
def config(tmp_path):
    from conftest import tiny_config

    from configs import common

    root = _folder(tmp_path / "data", np.random.default_rng(0))
    c = tiny_config(root)
    c.data.channels = 1
    c.data.mean, c.data.std = (0.5,), (0.5,)
    c.data.fov = "ones"
    c.evals.model.full_resolution = True
    c.evals.baseline = common.zscore_eval(full_resolution=True)
    c.eval.pixel_metrics = True
    c.eval.num_overlays = 2
    return c


def test_dense_evaluation_matches_direct_metrics(config, tmp_path):
    method = BrightnessMethod()
    workdir = tmp_path / "run"
    results = evals.run(config, str(workdir), method, None, None, step=7)
    # Every test image was scored at its own size, one at a time.
    assert sorted(s[:2] for s in method.shapes) == sorted([(40, 56), (48, 48), (33, 70)] * 2)
    src = sources.get_source(config.data, "test")
    recs = [src[i] for i in range(len(src))]
    maps = [r["image"][..., 0].astype(np.float32) / 255 for r in recs]
    maps = [m.astype(np.float16).astype(np.float64) for m in maps]
    truth = np.concatenate([(r["mask"] > 0).reshape(-1) for r in recs])
    pooled = np.concatenate([m.reshape(-1) for m in maps])
    assert results["pixel_auroc"] == pytest.approx(roc_auc_score(truth, pooled), abs=1e-12)
    assert results["pixel_auprc"] == pytest.approx(
        average_precision_score(truth, pooled), abs=1e-12
    )
    per_image = [
        roc_auc_score(r["mask"].reshape(-1) > 0, m.reshape(-1))
        for r, m in zip(recs, maps, strict=True)
        if r["mask"].any()
    ]
    assert results["pixel_auroc_per_image"] == pytest.approx(np.mean(per_image), abs=1e-12)
    scores = [m.max() for m in maps]
    labels = [int(r["label"]) for r in recs]
    assert results["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert results["num_images"] == 6 and results["step"] == 7
    # The baseline (intensity z-score) is computed too, and the reports are written.
    assert 0.5 < results["baseline/pixel_auroc"] <= 1.0
    saved = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert saved["pixel_auroc"] == results["pixel_auroc"]
    with open(workdir / "eval" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["id", "label", "grade", "has_mask", "score", "pixel_auroc"]
    assert "baseline/score" in rows[0] and len(rows) == 6
    by_id = {r["id"]: r for r in rows}
    assert float(by_id["test/mass/0.png"]["score"]) == pytest.approx(scores[3], rel=1e-5)
    assert len(list((workdir / "eval" / "overlays").glob("*.png"))) == 2


def test_dense_map_of_the_wrong_shape_is_an_error(config, tmp_path):
    class Wrong(BrightnessMethod):
        def dense_map(self, state, image, key):
            return np.zeros((3, 3), np.float32)

    with pytest.raises(ValueError, match="anomaly map has shape"):
        evals.run(config, str(tmp_path / "run"), Wrong(), None, None, step=0)


class MeanBrightness(Method):
    """A fake batched method: the map is the normalised image's mean over channels."""

    def score(self, state, batch, key):
        amap = batch["image"].mean(axis=-1)
        return {"map": amap, "score": amap.max(axis=(1, 2))}


def test_resized_evaluation_matches_direct_metrics(config, tmp_path):
    """The resized path streams the same exact float16 metrics as sklearn on all pixels."""
    from configs import common

    config.evals.model.full_resolution = False
    config.evals.baseline = common.mean_image_eval()
    config.evals.zscore = common.zscore_eval(prefix="zscore/")
    config.data.image_size = 24
    config.eval.batch_size = 4
    mesh = parallel.make_mesh()
    results = evals.run(config, str(tmp_path / "run"), MeanBrightness(), None, mesh, step=3)
    from jaxad.data import pipeline

    batches = list(pipeline.eval_batches(config.data, "test", local_batch_size=4))
    valid = np.concatenate([b["valid"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[valid]
    masks = np.concatenate([b["mask"] for b in batches])[valid] > 0.5
    labels = np.concatenate([b["label"] for b in batches])[valid]
    maps = images.mean(-1).astype(np.float16).astype(np.float64)
    assert results["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.reshape(-1), maps.reshape(-1)), abs=1e-12
    )
    assert results["pixel_auprc"] == pytest.approx(
        average_precision_score(masks.reshape(-1), maps.reshape(-1)), abs=1e-12
    )
    scores = images.mean(-1).max(axis=(1, 2))
    assert results["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    # Both baselines, each under its own prefix; the mean image one scores the map's mean.
    train = np.concatenate(
        [
            b["image"][b["valid"]]
            for b in pipeline.eval_batches(config.data, "train", local_batch_size=4)
        ]
    )
    base = np.sqrt(np.square(images - train.mean(0)).sum(-1))
    assert results["baseline/image_auroc"] == pytest.approx(
        roc_auc_score(labels, base.reshape(len(base), -1).mean(1))
    )
    assert 0.5 < results["zscore/pixel_auroc"] <= 1.0
    assert results["num_images"] == 6 and results["baseline/num_images"] == 6
    with open(tmp_path / "run" / "eval" / "scores.csv", newline="") as f:
        header = next(csv.reader(f))
    assert {"score", "baseline/score", "zscore/score"} <= set(header)


def test_config_errors_are_found_before_training(config):
    from configs import common

    config.evals.model.full_resolution = False
    config.evals.model.type = "anomaly_mapp"
    with pytest.raises(ValueError, match="evals.model.type='anomaly_mapp' is not one of"):
        evals.check(config, MeanBrightness())
    config.evals.model.type = "anomaly_map"
    config.evals.other = common.mean_image_eval()
    with pytest.raises(ValueError, match="same prefix 'baseline/'"):
        evals.check(config, MeanBrightness())
    del config.evals["other"]
    with pytest.raises(ValueError, match="has no score"):
        evals.check(config, Method())  # a method without maps (e.g. pre-training)
    config.evals = {}
    evals.check(config, Method())  # which declares no map evaluation


def test_a_non_map_evaluator_from_its_own_module(config, tmp_path, monkeypatch):
    """An evaluator type is one module; one outside jaxad is named by its dotted path."""
    (tmp_path / "my_evals").mkdir()
    (tmp_path / "my_evals" / "__init__.py").write_text("")
    (tmp_path / "my_evals" / "counting.py").write_text(
        textwrap.dedent(
            """
            from jaxad.evals import core

            def check(ecfg, config, method):
                pass

            def evaluate(ecfg, config, method, state, mesh):
                rows = [dict(id=f"img{i}", label=i % 2, grade=-1, has_mask=False, pred=i)
                        for i in range(3)]
                return core.Result({"kappa": 0.25}, rows)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import ml_collections

    config.evals = {}
    config.evals.grading = ml_collections.ConfigDict(dict(type="my_evals.counting", prefix="g/"))
    results = evals.run(config, str(tmp_path / "run"), Method(), None, None, step=1)
    assert results["g/kappa"] == 0.25
    with open(tmp_path / "run" / "eval" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["g/pred"] for r in rows] == ["0", "1", "2"]


class TwoMaps(MeanBrightness):
    """Returns a second map (its negative) under its own name, as a variant would."""

    def score(self, state, batch, key):
        out = super().score(state, batch, key)
        return {**out, "neg": -out["map"], "neg_score": -out["score"]}


def test_an_evaluator_per_split_and_per_output(config, tmp_path):
    """Each evaluator scores its own split ('a+b' reads both) and its own map of `score`."""
    from configs import common

    config.data.image_size = 24
    config.eval.batch_size = 4
    config.evals = {}
    config.evals.model = common.anomaly_map_eval()
    config.evals.both = common.anomaly_map_eval(prefix="both/", split="train+test")
    config.evals.neg = common.anomaly_map_eval(prefix="neg/", output="neg")
    results = evals.run(
        config, str(tmp_path / "run"), TwoMaps(), None, parallel.make_mesh(), step=0
    )
    assert results["num_images"] == 6 and results["split"] == "test"
    assert results["both/num_images"] == 2 + 6 and results["both/split"] == "train+test"
    assert results["neg/image_auroc"] == pytest.approx(1 - results["image_auroc"])


class CountsTraces(TwoMaps):
    """Counts how often `score` is traced, i.e. compiled."""

    def __init__(self):
        self.traces = 0

    def score(self, state, batch, key):
        self.traces += 1
        return super().score(state, batch, key)


def test_evaluators_share_one_compiled_score(config, tmp_path):
    """Every evaluator of a run and normalize='normal''s pass over the validation normals use
    one jitted `score`: it is traced once, not once per evaluator."""
    from configs import common

    config.data.image_size = 24
    config.eval.batch_size = 4
    config.data.val_split = "train"
    config.evals = {}
    config.evals.model = common.anomaly_map_eval()
    config.evals.norm = common.anomaly_map_eval(prefix="norm/", normalize="normal")
    config.evals.neg = common.anomaly_map_eval(prefix="neg/", output="neg")
    method = CountsTraces()
    results = evals.run(config, str(tmp_path / "run"), method, None, parallel.make_mesh(), step=0)
    assert results["norm/num_images"] == results["num_images"] == 6
    assert method.traces == 1
    evals.run(config, str(tmp_path / "run"), method, None, parallel.make_mesh(), step=1)
    assert method.traces == 1  # a later evaluation of the same run compiles nothing
