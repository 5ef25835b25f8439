"""The phantom demo: layout, determinism, masks, and that intensity alone finds masses poorly."""

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from jaxad.data import demo, phantom


def test_layout_masks_and_determinism(tmp_path):
    kw = dict(n_train=3, n_test_good=2, n_test_mass=4, size=96)
    root = phantom.generate_phantom_demo(tmp_path / "a", **kw)
    assert len(list((root / "train" / "good").glob("*.png"))) == 3
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    masses = sorted((root / "test" / "mass").glob("*.png"))
    assert len(masses) == 4
    for path in masses:
        image = np.asarray(Image.open(path))
        mask = np.asarray(Image.open(root / "ground_truth" / "mass" / f"{path.stem}_mask.png"))
        assert image.shape == mask.shape == (96, 96) and image.dtype == np.uint8
        assert 0.005 < (mask > 0).mean() < 0.06  # one blob, a few percent of the image
    again = phantom.generate_phantom_demo(tmp_path / "b", **kw)
    for path in masses:
        other = again / "test" / "mass" / path.name
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other)))


def test_intensity_is_a_weak_cue():
    """The z-score baseline sees a little brightness, far from a clean separation."""
    rng = np.random.default_rng(0)
    truth, values = [], []
    for _ in range(8):
        image, mask = phantom.add_mass(rng, *phantom.normal_image(rng, 128))
        truth.append(mask.reshape(-1))
        values.append(np.abs(image - 0.5).reshape(-1))
    auroc = roc_auc_score(np.concatenate(truth), np.concatenate(values))
    assert 0.35 < auroc < 0.75


def test_ensure_generates_once(tmp_path, monkeypatch):
    calls = []
    original = phantom.generate_phantom_demo

    def fake_generate(root, *, seed):
        calls.append(seed)
        return original(root, n_train=1, n_test_good=1, n_test_mass=1, size=64, seed=seed)

    monkeypatch.setattr(phantom, "generate_phantom_demo", fake_generate)
    first = phantom.ensure_phantom_demo(tmp_path / "p")
    second = phantom.ensure_phantom_demo(tmp_path / "p")
    assert first == second and calls == [0]
    assert (first / demo.MARKER).exists()
