"""The command lines' help, their one-line errors (exit code 2) and their warnings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest
from conftest import ROOT

from jaxad import run_config


def _run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- jaxad.main and jaxad.predict -----------------------------------------------------------


def test_help_exits_0():
    for module in ("jaxad.main", "jaxad.predict"):
        out = _run(module, "--help")
        assert out.returncode == 0, out.stderr
        assert "--workdir" in out.stdout
    from jaxad.data import build
    from jaxad.mood import __main__ as mood

    for main in (mood.main, build.main):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0


def test_show_config_and_config_lookup_from_another_directory(tmp_path):
    out = _run(
        "jaxad.main",
        "--config=configs/lesion2void.py:demo",
        "--show_config",
        "--config.model.width=8",
        cwd=tmp_path,  # No configs/ here: the installed configs are read.
    )
    assert out.returncode == 0, out.stderr
    assert "method: lesion2void" in out.stdout and "  width: 8" in out.stdout
    missing = _run("jaxad.main", "--config=configs/nope.py", f"--workdir={tmp_path}", cwd=tmp_path)
    assert missing.returncode == 2
    line = _one_line(missing.stderr)
    assert "configs/nope.py not found" in line and "lesion2void.py" in line


def test_typo_after_another_override_names_the_wrong_key():
    out = _run(
        "jaxad.main",
        "--config=configs/lesion2void.py:demo",
        "--workdir=/nonexistent",
        "--config.batch_size=4",
        "--config.modell.width=8",
        "--config.log_every=3",
    )
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert "unknown config key --config.modell.width" in line
    assert "did you mean --config.model.width?" in line


def test_changed_model_in_a_finished_workdir_is_one_line(tmp_path):
    from configs import lesion2void

    workdir = tmp_path / "run"
    run_config.save(lesion2void.get_config("demo"), str(workdir))
    (workdir / "checkpoints" / "100").mkdir(parents=True)
    before = (workdir / "config.json").read_text()
    out = _run(
        "jaxad.main",
        "--config=configs/lesion2void.py:demo",
        f"--workdir={workdir}",
        "--config.model.width=8",
        "--config.total_steps=7",
    )
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert "model.width 16 -> 8" in line and "total_steps" not in line
    assert (workdir / "config.json").read_text() == before


def test_predict_skips_an_image_smaller_than_the_window_with_a_warning(tmp_path, caplog):
    from jaxad import predict, writers

    images = [np.zeros((8, 8, 3), np.uint8), np.full((20, 24, 3), 128, np.uint8)]
    src = [{"id": f"img{i}.png", "image": im} for i, im in enumerate(images)]
    method = types.SimpleNamespace(
        window=16, dense_map=lambda state, image, key: np.ones(image.shape[:2], np.float32)
    )
    config = ml_collections.ConfigDict({"seed": 0, "data": {"channels": 3}})
    handler = caplog.handler if not writers.logger.propagate else logging.NullHandler()
    writers.logger.addHandler(handler)  # After writers.setup_logging, it does not propagate.
    try:
        rows = predict._predict_full_resolution(config, method, None, src, str(tmp_path), {})
    finally:
        writers.logger.removeHandler(handler)
    assert rows == [("img1.png", 1.0)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["skipped img0.png: 8x8 is smaller than the model's 16x16 window"]
    assert np.load(tmp_path / "img1.npy").shape == (20, 24)
    with pytest.raises(ValueError, match="every image .* window"):
        predict._predict_full_resolution(config, method, None, src[:1], str(tmp_path), {})


# --- jaxad.mood -----------------------------------------------------------------------------


def test_mood_predict_with_a_run_of_another_method(tmp_path, capsys):
    from jaxad.mood import __main__ as mood

    run = tmp_path / "l2v"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "lesion2void", "model": {}}))
    (tmp_path / "in").mkdir()
    argv = ["predict", "--task=sample", f"--input={tmp_path / 'in'}", f"--output={tmp_path}/o"]
    assert mood.main([*argv, f"--models={run}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{run} is a run of method 'lesion2void', not a DPA axis model" in line

    from jaxad.mood import inference

    loaded = types.SimpleNamespace(
        workdir=str(run), config=ml_collections.ConfigDict({"method": "lesion2void"}), state={}
    )
    with pytest.raises(inference.InputError, match="not a DPA model"):
        inference.axis_model(loaded)


def test_mood_evaluate_warns_about_each_invalid_prediction(tmp_path, capsys):
    import nibabel as nib

    from jaxad.mood import __main__ as mood

    def save(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))

    labels, preds = tmp_path / "label", tmp_path / "pred"
    label = np.zeros((4, 5, 6), np.float32)
    label[1:3, 1:3, 1:3] = 1
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        save(labels / name, label)
    save(preds / "a.nii.gz", label * 0.9)
    save(preds / "b.nii.gz", np.zeros((4, 5, 7), np.float32))  # Another shape.
    assert mood.main(["evaluate", f"--pred={preds}", f"--label={labels}"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["n_invalid"] == 1 and summary["n_missing"] == 1
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2
    assert f"prediction {preds / 'b.nii.gz'} is shape (4, 5, 7)" in warnings[0]
    assert f"prediction {preds / 'c.nii.gz'} is missing" in warnings[1]
    assert all("warning" in w and "scored as all zeros" in w for w in warnings)


# --- jaxad.data.build -----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "empty", "partial"])
def test_build_with_a_bad_manual_dir_names_the_file_and_the_layout(case, tmp_path, capsys):
    from jaxad.data import build

    manual = tmp_path / "raw"
    if case != "missing":
        manual.mkdir()
    if case == "partial":  # The test labels and photos, but not the training labels.
        (manual / "train").mkdir()
        (manual / "Label_EyeQ_test.csv").write_text(",image,quality,DR_grade\n")
    with pytest.raises(SystemExit) as e:
        build.main(["eyeq", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    first, *rest = err.strip().splitlines()
    assert first.startswith("python -m jaxad.data.build: error: ")
    assert "data_builders/eyeq/README.md" in first
    expected = {
        "missing": f"manual_dir {manual} does not exist",
        "empty": f"manual_dir {manual} is empty",
        "partial": f"EyeQ label file not found: {manual / 'Label_EyeQ_train.csv'}",
    }[case]
    assert expected in first
    assert rest[0].startswith("Expected manual_dir layout") and "Traceback" not in err
