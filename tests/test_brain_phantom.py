"""The procedural brain population: determinism, range, anatomy, variation, files, speed."""

import time

import nibabel as nib
import numpy as np
import pytest

from jaxad.data import brain_phantom as bp
from jaxad.data import demo


def _subject(i: int, size: int = 32, split: str = "train", seed: int = 0) -> np.ndarray:
    return bp.brain_volume(bp._rng(seed, split, i), size)


def test_shape_range_and_background():
    v = _subject(0, 40)
    assert v.shape == (40, 40, 40) and v.dtype == np.float32
    assert v.min() == 0.0 and v.max() <= 1.0
    # A head in the middle of the field of view, zeros (not noise) around it.
    assert 0.15 < (v > 0).mean() < 0.4
    assert v[20, 20, 20] > 0
    for corner in (v[:3, :3, :3], v[-3:, -3:, -3:], v[:3, -3:, :3]):
        assert not corner.any()


def test_deterministic_and_independent_of_other_subjects():
    np.testing.assert_array_equal(_subject(3), _subject(3))
    assert not np.array_equal(_subject(3), _subject(3, seed=1))
    assert not np.array_equal(_subject(3), _subject(3, split="test"))


def test_tissue_classes():
    """T1-like: white matter, grey matter and dark CSF/skull each fill a good part of the head."""
    head = np.concatenate([_subject(i)[_subject(i) > 0] for i in range(3)])
    assert ((head > 0.6) & (head < 0.9)).mean() > 0.12  # white matter (0.72)
    assert ((head > 0.38) & (head < 0.58)).mean() > 0.12  # grey matter, scalp (0.48, 0.58)
    assert (head < 0.2).mean() > 0.15  # CSF and skull (0.12, 0.08)


def test_subjects_differ_so_a_voxel_statistic_is_imperfect():
    vols = np.stack([_subject(i) for i in range(12)])
    either = (vols[0] > 0) | (vols[1] > 0)
    assert np.abs(vols[0] - vols[1])[either].mean() > 0.1
    # The population is not registered: a held-out normal subject has heavy-tailed z-scores
    # (a Gaussian would put 0.27 % of the voxels beyond 3).
    mean, std = vols[:10].mean(0), vols[:10].std(0)
    for held_out in vols[10:]:
        z = np.abs(held_out - mean) / (std + 1e-3)
        assert (z[held_out > 0] > 3).mean() > 0.02


def test_speed():
    bp.brain_volume(np.random.default_rng(0), 64)
    best = np.inf
    for i in range(2):
        t0 = time.perf_counter()
        bp.brain_volume(np.random.default_rng(i), 64)
        best = min(best, time.perf_counter() - t0)
    assert best < 1.0  # about 0.2 s on an idle core


def test_write_population(tmp_path):
    paths = bp.write_population(tmp_path / "pop", 3, size=32, seed=0, split="test")
    assert [p.name for p in paths] == ["test_000.nii.gz", "test_001.nii.gz", "test_002.nii.gz"]
    img = nib.load(paths[1])
    assert img.shape == (32, 32, 32)
    np.testing.assert_allclose(np.diag(img.affine)[:3], 8.0)  # 256 mm / 32 voxels
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), _subject(1, split="test"))
    # Subject i does not depend on how many are written.
    more = bp.write_population(tmp_path / "more", 5, size=32, seed=0, split="test")
    np.testing.assert_array_equal(nib.load(more[1]).get_fdata(), img.get_fdata())
    with pytest.raises(ValueError, match="split"):
        bp.write_population(tmp_path / "bad", 1, split="val")


def test_ensure_generates_once(tmp_path, monkeypatch):
    calls = []
    original = bp.generate_brain_demo

    def small(root, *, seed):
        calls.append(seed)
        return original(root, n_train=2, n_test=1, size=24, seed=seed)

    monkeypatch.setattr(bp, "generate_brain_demo", small)
    first = bp.ensure_brain_demo(tmp_path / "b")
    second = bp.ensure_brain_demo(tmp_path / "b")
    assert first == second and calls == [0]
    assert (first / demo.MARKER).exists()
    assert sorted(p.name for p in (first / "train").iterdir()) == [
        "train_000.nii.gz",
        "train_001.nii.gz",
    ]
    assert [p.name for p in (first / "test").iterdir()] == ["test_000.nii.gz"]
