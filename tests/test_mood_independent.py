"""bench/mood_independent.py: subjects from the MNI152 template, and a population that the MOOD
demo pipeline reads as it is."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_bench_script


def _load():
    return load_bench_script("mood_independent")


def test_subjects_vary_and_the_population_is_used_as_it_is(tmp_path):
    datasets = pytest.importorskip("nilearn.datasets")
    nib = pytest.importorskip("nibabel")
    mi = _load()
    template = datasets.load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    template /= template.max()
    a, b = (mi.subject(template, 24, np.random.default_rng(s)) for s in (0, 1))
    again = mi.subject(template, 24, np.random.default_rng(0))
    np.testing.assert_array_equal(a, again)  # deterministic per seed
    assert a.dtype == np.float32 and a.shape == (24,) * 3 and 0 <= a.min() and a.max() <= 1
    assert 0.1 < (a > 0).mean() < 0.5  # a skull-stripped brain in its box
    assert np.abs(a - b).mean() > 0.02  # subjects differ

    from jaxad.data import brain_phantom

    root = tmp_path / "population"
    mi.make_population(root, size=24, n_train=2, n_test=1, seed=3)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz"))
    assert files == ["test/mni_000.nii.gz", "train/mni_000.nii.gz", "train/mni_001.nii.gz"]
    assert nib.load(root / files[0]).shape == (24, 24, 24)
    # The demo pipeline takes the folder as it is (no procedural heads written over it).
    assert brain_phantom.ensure_brain_demo(root, seed=3) == root
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz")) == files


def test_a_population_made_with_other_settings_is_refused(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nilearn.datasets")
    mi = _load()
    root = tmp_path / "out" / "population"
    mi.make_population(root, size=16, n_train=1, n_test=1, seed=0)
    mi.make_population(root, size=16, n_train=1, n_test=1, seed=0)  # the same: kept
    with pytest.raises(ValueError, match="made with size=16: give another --out"):
        mi.make_population(root, size=24, n_train=1, n_test=1, seed=0)
    monkeypatch.setattr("jaxad.mood.demo.run_demo", lambda *a, **k: pytest.fail("ran"))
    argv = ["--out", str(tmp_path / "out"), "--size=16", "--n_train=2", "--n_test=1"]
    assert mi.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "made with n_train=1" in err and len(err.splitlines()) == 1
