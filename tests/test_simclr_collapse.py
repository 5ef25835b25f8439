"""SimCLR's collapse: the detector in the loop, the spread metric, and training on real anatomy."""

from __future__ import annotations

import logging
import math

import jax
import ml_collections
import numpy as np
import pytest

from jaxad import collapse

LEVEL = math.log(2 * 32 - 1)  # NT-Xent of identical embeddings, batch 32


def test_spread_is_one_on_the_sphere_and_zero_when_collapsed():
    z = jax.random.normal(jax.random.key(0), (4096, 16))
    assert float(collapse.embedding_spread(z)) == pytest.approx(1.0, abs=0.02)
    same = np.tile(np.arange(1.0, 17.0), (64, 1)) * np.linspace(0.5, 2.0, 64)[:, None]
    assert float(collapse.embedding_spread(same)) == pytest.approx(0.0, abs=1e-5)


def test_warns_once_after_patience_collapsed_logged_steps(caplog):
    d = collapse.Detector(LEVEL, patience=3)
    losses = [4.0, LEVEL, LEVEL * 1.009, LEVEL * 0.995, LEVEL, LEVEL, LEVEL]
    with caplog.at_level(logging.WARNING, logger="jaxad"):
        out = [d.update(25 * i, {"loss": v, "spread": 0.5}) for i, v in enumerate(losses, 1)]
    assert [m is not None for m in out] == [False, False, False, True, False, False, False]
    assert "step 100" in out[3] and "collapsed" in out[3] and f"{LEVEL:.4g}" in out[3]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


def test_a_falling_loss_resets_the_count():
    d = collapse.Detector(LEVEL, patience=3)
    for v in [LEVEL, LEVEL, 3.9, LEVEL, LEVEL, 3.8, LEVEL * 1.02, LEVEL * 0.98]:
        assert d.update(1, {"loss": v}) is None


def test_spread_alone_marks_a_step_collapsed():
    d = collapse.Detector(LEVEL, patience=2, min_spread=0.01)
    assert d.update(1, {"loss": 3.5, "spread": 0.003}) is None
    assert d.update(2, {"loss": 3.5, "spread": 0.001}) is not None


def test_off_without_a_level_or_with_patience_zero():
    for d in (collapse.Detector(None), collapse.Detector(LEVEL, patience=0)):
        assert not d.enabled
        assert all(d.update(i, {"loss": LEVEL}) is None for i in range(10))


def test_for_method_reads_the_level_and_config_collapse():
    class Contrastive:
        def collapse_level(self):
            return LEVEL

    c = ml_collections.ConfigDict({"collapse": {"patience": 7}})
    d = collapse.Detector.for_method(Contrastive(), c)
    assert d.level == LEVEL and d.patience == 7 and d.rel_tol == collapse.DEFAULTS["rel_tol"]
    assert d.update(1, {"loss": LEVEL}) is None  # a default hint: another seed
    assert "another config.seed" in [d.update(i, {"loss": LEVEL}) for i in range(2, 8)][-1]

    class Hinted(Contrastive):
        def collapse_hint(self):
            return "try the other head"

    d = collapse.Detector.for_method(
        Hinted(), ml_collections.ConfigDict({"collapse": {"patience": 1}})
    )
    assert d.update(1, {"loss": LEVEL}).endswith("useless: try the other head.")
    assert not collapse.Detector.for_method(object(), ml_collections.ConfigDict()).enabled


def test_simclr_level_is_log_2b_minus_1_and_config_has_the_settings():
    from configs import simclr_vgg19
    from jaxad.methods import simclr

    for variant in (None, "demo"):
        c = simclr_vgg19.get_config(variant)
        level = simclr.SimCLR(c).collapse_level()
        assert level == pytest.approx(math.log(2 * c.batch_size - 1))
        assert "head_norm=batch" in simclr.SimCLR(c).collapse_hint()
        c.model.head_norm = "batch"
        assert "head_norm" not in simclr.SimCLR(c).collapse_hint()
        assert set(c.collapse.to_dict()) == set(collapse.DEFAULTS)


# ----------------------------------------------------------------------------- real anatomy


def write_mni_volumes(root, n: int = 16, size: int = 48, seed: int = 0) -> None:
    """`n` brain MRI volumes of `size`^3 from nilearn's MNI152 template (a real T1 brain, skull
    stripped: about 20 % of voxels non-zero), intensities in [0, 1], each with its own small
    affine and smooth elastic warp, gamma and noise inside the brain, as `.nii.gz`."""
    nib = pytest.importorskip("nibabel")
    datasets = pytest.importorskip("nilearn.datasets")
    from scipy import ndimage

    template = datasets.load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    template /= template.max()
    template[template < 0.01] = 0.0  # The 2 mm template's resampling halo around the brain.
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3, dtype=np.float32).reshape(3, -1) - (size - 1) / 2
    to_template = np.asarray(template.shape, np.float32)[:, None] / size
    for i in range(n):
        angles = np.deg2rad(rng.uniform(-5, 5, 3))
        rot = np.eye(3)
        for axis, a in enumerate(angles):
            r = np.eye(3)
            j, k = [x for x in range(3) if x != axis]
            r[j, j] = r[k, k] = np.cos(a)
            r[j, k], r[k, j] = -np.sin(a), np.sin(a)
            rot = rot @ r
        q = rot @ (grid / rng.uniform(0.95, 1.05, (3, 1))) + (size - 1) / 2
        q += rng.uniform(-2, 2, (3, 1))
        warp = rng.normal(0.0, 1.5, (3, 4, 4, 4))
        q += np.stack([ndimage.zoom(w, size / 4, order=1) for w in warp]).reshape(3, -1)
        v = ndimage.map_coordinates(template, (q + 0.5) * to_template - 0.5, order=1)
        v = np.clip(v.reshape((size,) * 3), 0.0, 1.0) ** rng.uniform(0.8, 1.25)
        brain = v > 0
        v[brain] += rng.normal(0.0, 0.01, int(brain.sum()))
        v = np.where(brain, np.clip(v, 0.0, 1.0), 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(v, np.eye(4)), str(root / f"sub{i:02d}.nii.gz"))


def train_demo_simclr(tmp_path, monkeypatch, caplog, root, steps: int, **overrides) -> list:
    """configs/simclr_vgg19.py:demo on the NIfTI volumes in `root` through the loop for `steps`
    steps (logged every 10, collapse patience 2); returns the logged training rows, and checks
    that the loop logged no collapse warning."""
    import json

    from configs import simclr_vgg19
    from jaxad import run_config, train

    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "cache"))
    c = simclr_vgg19.get_config("demo")
    c.data.name = "nifti_folder"
    c.data.root = str(root)
    c.data.resize = 0
    c.data.num_workers = 0
    c.total_steps = steps
    c.log_every = 10
    c.validation.every = 0
    c.checkpoint_every = steps
    c.collapse.patience = 2
    run_config.override(c, overrides)
    with caplog.at_level(logging.WARNING, logger="jaxad"):
        train.run(c, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    logged = [r for r in rows if "spread" in r]
    assert logged[-1]["step"] == steps
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]
    return logged


@pytest.mark.slow
def test_demo_simclr_loss_falls_on_real_anatomy(tmp_path, monkeypatch, caplog):
    """configs/simclr_vgg19.py:demo on 16 MNI152 volumes (48^3) through the loop: the logged
    loss ends below log(2B - 1), the embeddings spread, and the loop logs no collapse. (Seed 0:
    some initialisations of the demo's small network stay collapsed, see the README.)"""
    root = tmp_path / "volumes"
    root.mkdir()
    write_mni_volumes(root)
    logged = train_demo_simclr(tmp_path, monkeypatch, caplog, root, 60)
    tail = [r["loss"] for r in logged[-3:]]
    assert max(tail) < 0.97 * LEVEL, tail
    assert min(r["spread"] for r in logged[-3:]) > 0.1


def write_rigid_mni_volumes(root, n: int = 16, size: int = 128, seed: int = 1) -> None:
    """`n` volumes of `size`^3 from nilearn's 1 mm MNI152 template (about 16 % of voxels
    non-zero), each only rotated (+-5 degrees in one plane) and scaled (+-5 %), no noise: data
    on which the fork's head collapses from seed 0 (the README's SimCLR section)."""
    nib = pytest.importorskip("nibabel")
    datasets = pytest.importorskip("nilearn.datasets")
    from scipy import ndimage

    template = datasets.load_mni152_template(resolution=1).get_fdata().astype(np.float32)
    template /= template.max()
    template[template < 0.01] = 0.0
    rng = np.random.default_rng(seed)
    for i in range(n):
        zoom = size / max(template.shape) * rng.uniform(0.95, 1.05)
        turned = ndimage.rotate(template, rng.uniform(-5, 5), axes=(0, 1), reshape=False, order=1)
        v = ndimage.zoom(turned, zoom, order=1)
        out = np.zeros((size,) * 3, np.float32)
        k = [min(size, s) for s in v.shape]
        o = [(size - s) // 2 for s in k]
        out[o[0] : o[0] + k[0], o[1] : o[1] + k[1], o[2] : o[2] + k[2]] = v[: k[0], : k[1], : k[2]]
        nib.save(
            nib.Nifti1Image(np.clip(out, 0.0, 1.0), np.eye(4)), str(root / f"sub{i:02d}.nii.gz")
        )


@pytest.mark.slow
def test_batch_normalised_head_does_not_collapse_where_the_forks_head_does(
    tmp_path, monkeypatch, caplog
):
    """The issue's setting (16 real-template 128^3 volumes, slices with >= 1000 brain pixels,
    the demo config) with model.head_norm='batch': the embeddings stay spread at every logged
    step and the loss falls below log(2B - 1). With the fork's head this seed collapses within
    5 steps on these volumes (measured; not asserted: where a run falls is platform-numerics
    dependent)."""
    root = tmp_path / "volumes"
    root.mkdir()
    write_rigid_mni_volumes(root)
    overrides = {"data.min_nonzero": 1000, "model.head_norm": "batch"}
    logged = train_demo_simclr(tmp_path, monkeypatch, caplog, root, 100, **overrides)
    assert min(r["spread"] for r in logged) > 0.1, [r["spread"] for r in logged]
    late = [r["loss"] for r in logged if r["step"] >= 50]
    assert np.mean(late) < 0.99 * LEVEL, late
