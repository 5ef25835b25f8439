"""Full-resolution evaluation (`jaxad.evaluate_dense`) with a fake method of known maps."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxad import evaluate
from jaxad.data import sources


class BrightnessMethod:
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

    root = _folder(tmp_path / "data", np.random.default_rng(0))
    c = tiny_config(root)
    c.data.channels = 1
    c.data.mean, c.data.std = (0.5,), (0.5,)
    c.data.fov = "ones"
    c.eval.dense = True
    c.eval.pixel_metrics = True
    c.eval.num_overlays = 2
    return c


def test_dense_evaluation_matches_direct_metrics(config, tmp_path):
    method = BrightnessMethod()
    workdir = tmp_path / "run"
    results = evaluate.evaluate(config, str(workdir), method, None, None, step=7)
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
    lines = (workdir / "eval" / "scores.csv").read_text().splitlines()
    assert lines[0].startswith("id,label,grade,score,baseline_score") and len(lines) == 7
    assert len(list((workdir / "eval" / "overlays").glob("*.png"))) == 2


def test_dense_map_of_the_wrong_shape_is_an_error(config, tmp_path):
    class Wrong(BrightnessMethod):
        def dense_map(self, state, image, key):
            return np.zeros((3, 3), np.float32)

    with pytest.raises(ValueError, match="dense_map gave"):
        evaluate.evaluate(config, str(tmp_path / "run"), Wrong(), None, None, step=0)
