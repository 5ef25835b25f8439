"""Tests for the generated fundus demo dataset (jaxad.data.demo)."""

import functools
import os
import pathlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from jaxad.data import demo

SMALL = dict(n_train=3, n_test_good=2, n_test_per_type=2)


def _read(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> pathlib.Path:
    return demo.generate_fundus_demo(tmp_path_factory.mktemp("demo") / "fundus", seed=0, **SMALL)


def test_layout(small_demo):
    root = small_demo
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (root / "test" / "good").iterdir()) == ["000.png", "001.png"]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(("good", *demo.LESION_TYPES))
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(demo.LESION_TYPES)
    assert not (root / "ground_truth" / "good").exists()
    assert "synthetic" in (root / "README.txt").read_text().lower()
    assert (root / demo.MARKER).is_file()


def test_images_are_rgb_uint8(small_demo):
    for path in small_demo.rglob("*.png"):
        if path.parent.parent.name == "ground_truth":
            continue
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (256, 256), path
        img = _read(path)
        assert img.dtype == np.uint8
        assert img[0, 0].max() == 0 and img[-1, -1].max() == 0, "black border expected"


def test_masks_match_lesion_images_and_lie_in_fov(small_demo):
    for kind in demo.LESION_TYPES:
        images = sorted((small_demo / "test" / kind).glob("*.png"))
        masks = sorted((small_demo / "ground_truth" / kind).glob("*.png"))
        assert [f"{p.stem}_mask.png" for p in images] == [p.name for p in masks]
        for img_path, mask_path in zip(images, masks, strict=True):
            mask = _read(mask_path)
            assert mask.shape == (256, 256) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            # Inside the FOV with room to spare: lesions never touch the black border.
            fov = ndi.binary_erosion(_read(img_path).max(axis=-1) > 15, iterations=2)
            assert np.all(fov[mask > 0]), mask_path


def test_deterministic_per_seed(tmp_path):
    kwargs = dict(n_train=2, n_test_good=1, n_test_per_type=1, lesion_types=("exudate",))
    a = _files(demo.generate_fundus_demo(tmp_path / "a", seed=3, **kwargs))
    b = _files(demo.generate_fundus_demo(tmp_path / "b", seed=3, **kwargs))
    c = _files(demo.generate_fundus_demo(tmp_path / "c", seed=4, **kwargs))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)


def test_normal_images_differ(small_demo):
    images = [_read(p).astype(np.float32) for p in sorted(small_demo.rglob("good/*.png"))]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 5.0


@pytest.mark.parametrize("kind", demo.LESION_TYPES)
def test_lesions_change_only_the_masked_pixels(kind):
    rng = np.random.default_rng(7)
    normal = demo.make_normal_fundus(rng, size=256)
    image, mask = demo.add_lesions(normal, kind, rng)
    assert image.shape == normal.image.shape and image.dtype == np.uint8
    assert mask.any() and np.all(normal.fov[mask])
    diff = np.abs(image.astype(np.float32) - normal.image).mean(axis=-1)
    assert diff[mask].mean() > 15.0
    assert diff[~mask].mean() < 0.5
    # Beyond the soft edge (a few pixels at the feathered end of a flame) nothing changes.
    far = ndi.distance_transform_edt(~mask) > 6
    assert np.all(diff[far] == 0)


def test_unknown_lesion_type():
    normal = demo.make_normal_fundus(np.random.default_rng(0), size=64)
    with pytest.raises(ValueError, match="unknown lesion type"):
        demo.add_lesions(normal, "drusen", np.random.default_rng(0))


@pytest.fixture
def counted_generate(monkeypatch):
    """Replaces the full-size generation by a small one and counts the calls."""
    calls = []
    original = demo.generate_fundus_demo

    def generate(root, *, seed=0, **kwargs):
        calls.append(pathlib.Path(root))
        return original(root, seed=seed, n_train=1, n_test_good=1, n_test_per_type=1)

    monkeypatch.setattr(demo, "generate_fundus_demo", generate)
    return calls


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path))
    assert demo.default_root() == tmp_path / "demo" / "fundus_v1"
    monkeypatch.delenv("JAXAD_DATA_DIR")
    assert demo.default_root() == pathlib.Path.home() / ".cache" / "jaxad" / "demo" / "fundus_v1"


def test_ensure_generates_once(monkeypatch, tmp_path, counted_generate):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path))
    root = demo.ensure_fundus_demo()
    assert root == tmp_path / "demo" / "fundus_v1"
    assert (root / demo.MARKER).is_file() and (root / "test" / "exudate" / "000.png").is_file()
    stamp = (root / demo.MARKER).stat().st_mtime_ns
    assert demo.ensure_fundus_demo() == root
    assert len(counted_generate) == 1
    assert (root / demo.MARKER).stat().st_mtime_ns == stamp
    # Generation ran in a sibling temporary folder that is gone now.
    assert sorted(p.name for p in root.parent.iterdir()) == ["fundus_v1"]


def test_ensure_refuses_another_seed(tmp_path, counted_generate):
    demo.ensure_fundus_demo(tmp_path / "d", seed=0)
    with pytest.raises(ValueError, match="seed"):
        demo.ensure_fundus_demo(tmp_path / "d", seed=1)


def test_ensure_redoes_incomplete_root(tmp_path, counted_generate):
    root = tmp_path / "fundus"
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "000.png").write_bytes(b"truncated")
    demo.ensure_fundus_demo(root)
    assert len(counted_generate) == 1
    assert (root / demo.MARKER).is_file()
    assert _read(root / "train" / "good" / "000.png").shape == (256, 256, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fundus"]


def test_ensure_removes_stale_temp_but_not_live_one(tmp_path, counted_generate):
    stale = tmp_path / ".fundus.tmp-123-dead"
    live = tmp_path / ".fundus.tmp-456-live"
    for d in (stale, live):
        (d / "train" / "good").mkdir(parents=True)
    old = os.stat(stale).st_mtime - 2 * 3600
    os.utime(stale, (old, old))
    demo.ensure_fundus_demo(tmp_path / "fundus")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "fundus" / demo.MARKER).is_file()


def test_ensure_concurrent_writer_wins(monkeypatch, tmp_path):
    """If another process completes the root while this one generates, this copy is dropped."""
    root = tmp_path / "fundus"
    original = demo.generate_fundus_demo
    small = functools.partial(original, n_train=1, n_test_good=1, n_test_per_type=1)

    def generate(path, *, seed=0):
        small(root, seed=seed)  # the other process
        (root / "winner").write_text("")
        return small(path, seed=seed)

    monkeypatch.setattr(demo, "generate_fundus_demo", generate)
    assert demo.ensure_fundus_demo(root) == root
    assert (root / "winner").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fundus"]
