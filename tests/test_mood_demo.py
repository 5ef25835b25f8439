"""The MOOD demo: the z-score baseline (known answers), the orchestration, the real run (slow)."""

import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from jaxad.data import brain_phantom
from jaxad.mood import demo

# The compute dtype of the demo runs below (`model.dtype`): float32 unless JAXAD_TEST_DTYPE says
# otherwise, e.g. JAXAD_TEST_DTYPE=bfloat16 to check that a demo still beats its baseline in
# bfloat16 (README, "Mixed precision").
DEMO_DTYPE = os.environ.get("JAXAD_TEST_DTYPE", "float32")

# Shrinks the demo configs so that every stage runs in seconds: the point is the plumbing.
TINY_SIMCLR = {
    "batch_size": 8,
    "eval.batch_size": 8,
    "simclr.crop_size": 32,  # VGG19's five poolings need 32
    "model.vgg_width": 4,
    "model.hidden": 16,
    "model.out_dim": 8,
}
TINY_DPA = {
    "batch_size": 8,
    "eval.batch_size": 8,
    "data.image_size": 16,
    "model.nf": 8,
    "model.latent_dim": 8,
    "model.vgg_width": 4,
}


def _write(path: pathlib.Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))


def test_zscore_baseline_known_answer(tmp_path):
    train = [np.full((4, 4, 4), v, np.float32) for v in (0.2, 0.4, 0.6)]
    train[0][0, 0, 0] = train[1][0, 0, 0] = train[2][0, 0, 0] = 0.0  # a background voxel
    for i, x in enumerate(train):
        _write(tmp_path / "train" / f"{i}.nii.gz", x)
    test = np.full((4, 4, 4), 0.4, np.float32)
    test[1, 2, 3] = 0.9
    test[0, 0, 0] = 0.5  # where every training volume is 0
    _write(tmp_path / "test" / "t.nii.gz", test)

    settings = demo.zscore_baseline(
        sorted((tmp_path / "train").iterdir()), [tmp_path / "test" / "t.nii.gz"], tmp_path / "out"
    )
    eps = demo.ZSCORE_EPS
    std = np.std([0.2, 0.4, 0.6])  # population std: 0.1633
    # The largest possible z: the background voxel, mean 0 and std 0 -> 1 / eps.
    assert settings["scale"] == pytest.approx(1.0 / eps, rel=1e-5)
    pixel = nib.load(tmp_path / "out" / "pixel" / "t.nii.gz")
    assert pixel.shape == (4, 4, 4) and pixel.get_data_dtype() == np.float32
    z = pixel.get_fdata()
    assert z[1, 2, 3] == pytest.approx(0.5 / (std + eps) * eps, rel=1e-5)
    assert z[0, 0, 0] == pytest.approx(0.5, rel=1e-5)
    assert z[2, 2, 2] == pytest.approx(0.0, abs=1e-6)
    sample = (tmp_path / "out" / "sample" / "t.nii.gz.txt").read_text()
    assert float(sample) == pytest.approx(z.max(), rel=1e-6)


def test_zscore_baseline_rejects_other_shapes(tmp_path):
    _write(tmp_path / "a.nii.gz", np.zeros((4, 4, 4)))
    _write(tmp_path / "b.nii.gz", np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="shape"):
        demo.voxel_statistics([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])


def test_demo_configs():
    sc = demo.load_config("simclr_vgg19", "demo")
    assert sc.data.name == "demo" and sc.data.demo == "brain" and sc.data.axis == "0,1,2"
    dpa = demo.load_config("dpa", "demo")
    assert dpa.data.name == "demo" and dpa.data.axis == 0
    dpa.dpa.axis = 2
    assert dpa.data.axis == 2  # follows dpa.axis
    for paper, small in ((demo.load_config("dpa", "brain_pixel_axis0"), dpa),):
        assert paper.model.vgg_width == 64 and small.model.vgg_width < 64


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("brain")
    brain_phantom.generate_brain_demo(root, n_train=4, n_test=2, size=32, seed=0)
    workdir = tmp_path_factory.mktemp("demo")
    summary = demo.run_demo(
        workdir,
        steps_scale=1e-9,  # one step per training stage
        data_root=root,
        simclr_overrides=TINY_SIMCLR,
        dpa_overrides=TINY_DPA,
        log=lambda msg: None,
    )
    return workdir, summary


@pytest.mark.slow
def test_every_stage_runs_and_writes_its_files(tiny_demo):
    workdir, summary = tiny_demo
    assert (workdir / "simclr" / "config.json").is_file()
    for a in range(3):
        config = json.loads((workdir / f"dpa_axis{a}" / "config.json").read_text())
        assert config["dpa"]["axis"] == config["data"]["axis"] == a
        assert config["dpa"]["vgg_weights"] == str(workdir / "simclr")
        assert config["total_steps"] == 1
    names = ["test_000.nii.gz", "test_000_anom.nii.gz", "test_001.nii.gz", "test_001_anom.nii.gz"]
    assert sorted(p.name for p in (workdir / "toy").iterdir()) == names
    for method in ("pred", "baseline"):
        assert sorted(p.name for p in (workdir / method / "pixel").iterdir()) == names
        assert sorted(p.name for p in (workdir / method / "sample").iterdir()) == [
            f"{n}.txt" for n in names
        ]
        pixel = nib.load(workdir / method / "pixel" / names[1])
        assert pixel.shape == (32, 32, 32)
        scores = pixel.get_fdata()
        assert 0.0 <= scores.min() and scores.max() <= 1.0 and scores.max() > 0


@pytest.mark.slow
def test_summary_fields(tiny_demo):
    workdir, summary = tiny_demo
    assert json.loads((workdir / "demo_summary.json").read_text()) == summary
    assert list(summary["seconds"]) == list(demo.STAGES)
    for method in ("dpa", "baseline"):
        for task in ("pixel", "sample"):
            result = summary["results"][method][task]
            assert 0.0 <= result["ap"] <= 1.0 and result["n_cases"] == 4
    assert summary["settings"]["volume_size"] == 32
    assert summary["settings"]["min_intensity_sum"] == pytest.approx(4000 / 64)
    assert set(summary["beats_baseline"]) == {"pixel", "sample"}
    table = demo.format_table(summary)
    assert "dpa" in table and "baseline" in table and "wall time" in table


def test_cli_rejects_a_bad_steps_scale(tmp_path, capsys):
    from jaxad.mood.__main__ import main

    assert main(["demo", f"--workdir={tmp_path}", "--steps_scale=0"]) == 2
    assert "steps_scale must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_beats_the_zscore_baseline(tmp_path):
    """The real demo (a few minutes on 2 cores): both APs above the baseline's."""
    dtype = {"model.dtype": DEMO_DTYPE}
    summary = demo.run_demo(
        tmp_path / "demo", simclr_overrides=dtype, dpa_overrides=dtype, log=lambda msg: None
    )
    results = summary["results"]
    for task in ("pixel", "sample"):
        assert results["dpa"][task]["ap"] > results["baseline"][task]["ap"], (task, results)
