"""The procedural chest X-ray demo (jaxad.data.cxr_phantom): layout, masks, determinism, that
anatomy varies between subjects, and that intensity alone finds the anomalies poorly."""

import pathlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score

from configs.common import data_config
from jaxad.data import cxr_phantom, demo, sources

SMALL = dict(n_train=6, n_test_good=3, n_test_anomalous=8, size=96)


def _read(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> pathlib.Path:
    return cxr_phantom.generate_cxr_demo(tmp_path_factory.mktemp("cxr") / "a", seed=0, **SMALL)


def _normals(n: int, split: int, size: int = 128) -> list[cxr_phantom.NormalCXR]:
    rngs = [np.random.default_rng([5, split, i]) for i in range(n)]
    return [cxr_phantom.make_normal_cxr(rng, size) for rng in rngs]


def test_layout_and_counts(small_demo):
    counts = cxr_phantom.anomaly_counts(8)
    assert counts == {"opacity": 6, "effusion": 1, "nodule": 1}
    assert len(list((small_demo / "train" / "good").glob("*.png"))) == 6
    assert len(list((small_demo / "test" / "good").glob("*.png"))) == 3
    assert sorted(p.name for p in (small_demo / "test").iterdir()) == sorted(["good", *counts])
    assert sorted(p.name for p in (small_demo / "ground_truth").iterdir()) == sorted(counts)
    for kind, n in counts.items():
        assert len(list((small_demo / "test" / kind).glob("*.png"))) == n
    assert not (small_demo / "val").exists()
    assert "synthetic" in (small_demo / "README.txt").read_text().lower()
    assert (small_demo / demo.MARKER).is_file()
    for path in small_demo.rglob("*.png"):
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (96, 96), path


def test_anomaly_counts():
    for n in (0, 1, 4, 40, 41):
        counts = cxr_phantom.anomaly_counts(n)
        assert list(counts) == list(cxr_phantom.ANOMALY_TYPES) and sum(counts.values()) == n
    assert cxr_phantom.anomaly_counts(40) == {"opacity": 28, "effusion": 6, "nodule": 6}


def test_masks_exactly_for_anomalous_images(small_demo):
    for kind in cxr_phantom.ANOMALY_TYPES:
        images = sorted((small_demo / "test" / kind).glob("*.png"))
        masks = sorted((small_demo / "ground_truth" / kind).glob("*.png"))
        assert [f"{p.stem}_mask.png" for p in images] == [p.name for p in masks]
        for path in masks:
            mask = _read(path)
            assert mask.shape == (96, 96) and set(np.unique(mask)) == {0, 255}, path
            # A few pixels (a nodule) to a quarter of a lung (an opacity or effusion).
            assert 5 <= (mask > 0).sum() < 0.15 * mask.size, path
    assert not (small_demo / "ground_truth" / "good").exists()


@pytest.mark.parametrize("kind", cxr_phantom.ANOMALY_TYPES)
def test_anomalies_lie_in_the_lungs_and_change_only_them(kind):
    for i in range(4):
        rng = np.random.default_rng([7, i])
        normal = cxr_phantom.make_normal_cxr(rng, 128)
        image, mask = cxr_phantom.add_anomaly(normal, kind, rng)
        assert image.shape == normal.image.shape == (128, 128) and image.dtype == np.uint8
        assert mask.any() and np.all(normal.lung_mask[mask])
        diff = np.abs(image.astype(np.float32) - normal.image)
        assert diff[mask].mean() > 15.0  # visible: tens of grey levels
        assert diff[~mask].mean() < 0.5
        far = ~ndi.binary_dilation(mask, iterations=6)
        assert diff[far].max() <= 1.0  # beyond the soft edge, at most a rounding step
    with pytest.raises(ValueError, match="unknown anomaly type"):
        cxr_phantom.add_anomaly(normal, "fracture", rng)


def test_deterministic_per_seed(tmp_path):
    kw = dict(n_train=2, n_test_good=1, n_test_anomalous=4, size=64)
    a = _files(cxr_phantom.generate_cxr_demo(tmp_path / "a", seed=3, **kw))
    b = _files(cxr_phantom.generate_cxr_demo(tmp_path / "b", seed=3, **kw))
    c = _files(cxr_phantom.generate_cxr_demo(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if "ground_truth" not in k)


def test_morphology_varies_between_subjects():
    """Lung fields move and change shape by several pixels between subjects (128 px)."""
    normals = _normals(24, 0)
    lungs = np.stack([n.lung_mask for n in normals])
    areas = lungs.sum(axis=(1, 2))
    assert areas.min() > 0.1 * 128**2 and areas.max() / areas.min() > 1.3
    for side in range(2):
        centroids = np.array([ndi.center_of_mass(n.lung_alpha[side] >= 0.5) for n in normals])
        assert np.all(centroids.std(axis=0) > 2.0), centroids.std(axis=0)
        assert np.all(np.ptp(centroids, axis=0) > 8.0)
    differ = [(lungs[i] ^ lungs[i + 1]).sum() for i in range(len(lungs) - 1)]
    assert min(differ) > 300, differ
    # Left and right lungs are not mirror images of each other.
    mirrored = [(n.lung_alpha[0] >= 0.5) ^ (n.lung_alpha[1] >= 0.5)[:, ::-1] for n in normals]
    assert min(m.sum() for m in mirrored) > 100


def _gradient(image: np.ndarray) -> float:
    gy, gx = np.gradient(image.astype(np.float32))
    return float(np.hypot(gy, gx).mean())


def test_mean_image_is_blurrier_than_a_subject():
    images = np.stack([n.image for n in _normals(40, 0)]).astype(np.float32)
    single = np.mean([_gradient(x) for x in images])
    assert _gradient(images.mean(axis=0)) < 0.6 * single  # measured: 3.6 vs 7.8


def test_intensity_alone_finds_anomalies_poorly():
    """Pixel AUROC of |x - mean training image| and of raw brightness, over normal and anomalous
    test images. Measured (200 training, 20 normal and 40 anomalous test images): |x - mean|
    0.64 (opacity 0.58, effusion 0.86, nodule 0.69), brightness 0.44."""
    mean = np.mean([n.image for n in _normals(60, 0)], axis=0)
    images = [n.image for n in _normals(10, 1)]
    masks = [np.zeros((128, 128), bool)] * len(images)
    for kind, count in cxr_phantom.anomaly_counts(20).items():
        for i in range(count):
            rng = np.random.default_rng([5, 2 + cxr_phantom.ANOMALY_TYPES.index(kind), i])
            image, mask = cxr_phantom.add_anomaly(cxr_phantom.make_normal_cxr(rng), kind, rng)
            images.append(image)
            masks.append(mask)
    x = np.stack(images).astype(np.float32)
    truth = np.stack(masks).reshape(-1)
    distance = roc_auc_score(truth, np.abs(x - mean).reshape(-1))
    brightness = roc_auc_score(truth, x.reshape(-1))
    assert distance < 0.8 and brightness < 0.65, (distance, brightness)
    # The anomalies are not the brightest structures: heart, mediastinum and bones outshine them.
    assert np.percentile(x.reshape(-1)[truth], 90) < np.percentile(x[:10], 90)


@pytest.fixture
def small_generate(monkeypatch):
    """Replaces the full-size generation by a small one and counts the calls."""
    calls = []
    original = cxr_phantom.generate_cxr_demo

    def generate(root, *, seed=0):
        calls.append(pathlib.Path(root))
        return original(root, seed=seed, n_train=10, n_test_good=2, n_test_anomalous=4, size=64)

    monkeypatch.setattr(cxr_phantom, "generate_cxr_demo", generate)
    return calls


def test_ensure_generates_once_into_the_cache(monkeypatch, tmp_path, small_generate):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path))
    root = cxr_phantom.ensure_cxr_demo()
    assert root == tmp_path / "demo" / "cxr_v2"
    assert (root / demo.MARKER).is_file() and (root / "test" / "opacity" / "000.png").is_file()
    assert cxr_phantom.ensure_cxr_demo() == root
    assert len(small_generate) == 1
    assert sorted(p.name for p in root.parent.iterdir()) == ["cxr_v2"]


def test_read_through_get_source(tmp_path, small_generate):
    cfg = data_config()
    cfg.name, cfg.demo, cfg.root, cfg.channels = "demo", "cxr", str(tmp_path / "cxr"), 1
    test = sources.get_source(cfg, "test")
    assert isinstance(test, sources.FolderSource) and test.root == tmp_path / "cxr"
    # Types in sorted order: effusion, good, nodule, opacity.
    assert len(test) == 6 and list(test.labels) == [1, 0, 0, 1, 1, 1]
    for i in range(len(test)):
        record = test[i]
        assert record["image"].shape == (64, 64, 1) and record["image"].dtype == np.uint8
        assert bool(record["has_mask"]) and record["mask"].any() == bool(record["label"])
    train, val = sources.get_source(cfg, "train"), sources.get_source(cfg, "validation")
    assert (len(train), len(val)) == (9, 1)  # the folder source holds out 10 %
    assert len(small_generate) == 1
