"""The shared training loop end to end: reports, eval mode, resume, preemption, NaN, errors."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config

from jaxad import checkpoint, methods, parallel, train

# The compute dtype of the demo runs below (`model.dtype`): float32 unless JAXAD_TEST_DTYPE says
# otherwise, e.g. JAXAD_TEST_DTYPE=bfloat16 to check that a demo still beats its baseline in
# bfloat16 (README, "Mixed precision").
DEMO_DTYPE = os.environ.get("JAXAD_TEST_DTYPE", "float32")


def _params(workdir, config, step=None):
    """The generator parameters saved in `workdir` at `step` (default latest), as numpy."""
    mesh = parallel.make_mesh()
    method = methods.create(config)
    state = methods.init_state(method, config, mesh, config.batch_size)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=10)
    state, meta = ckpt.restore(state, step=step)
    ckpt.close()
    return jax.tree.map(np.asarray, state["g"]["params"]), meta["step"]


@pytest.mark.slow
def test_demo_config_trains_evaluates_and_writes_reports(fundus_root, tmp_path):
    config = tiny_config(fundus_root)
    results = train.run(config, str(tmp_path))
    expected = {"image_auroc", "image_auprc", "f1_max", "pixel_auroc", "pixel_auprc", "best_dice"}
    assert expected <= results.keys()
    assert {f"baseline/{k}" for k in expected} <= results.keys()
    assert results["num_images"] == 16 and results["step"] == 4
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["image_auroc"] == pytest.approx(results["image_auroc"])
    with open(tmp_path / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert {int(r["label"]) for r in rows} == {0, 1}
    assert all(np.isfinite(float(r["score"])) for r in rows)
    assert all(np.isfinite(float(r["baseline/score"])) for r in rows)
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 4
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    train_lines = [json.loads(x) for x in lines if "loss" in json.loads(x)]
    assert [x["step"] for x in train_lines] == [2, 4]
    assert all(np.isfinite(x["loss"]) and x["steps_per_sec"] > 0 for x in train_lines)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "lesion2void"

    # mode=eval scores the latest checkpoint again and gets the same numbers.
    again = train.run(tiny_config(fundus_root, mode="eval"), str(tmp_path))
    assert again["step"] == 4
    assert again["image_auroc"] == pytest.approx(results["image_auroc"])
    assert again["pixel_auroc"] == pytest.approx(results["pixel_auroc"])


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(fundus_root, tmp_path):
    """Stopping at step 2 and resuming to 4 gives the very parameters of a straight 4-step run:
    the data iterator position and the per-step keys are restored."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.run(tiny_config(fundus_root, total_steps=4, **{"eval.enabled": False}), str(straight))
    train.run(tiny_config(fundus_root, total_steps=2, **{"eval.enabled": False}), str(interrupted))
    p2, step2 = _params(str(interrupted), tiny_config(fundus_root))
    assert step2 == 2
    train.run(tiny_config(fundus_root, total_steps=4, **{"eval.enabled": False}), str(interrupted))
    a, step_a = _params(str(straight), tiny_config(fundus_root))
    b, step_b = _params(str(interrupted), tiny_config(fundus_root))
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # And training did move the parameters between steps 2 and 4.
    assert any(
        not np.allclose(x, y) for x, y in zip(jax.tree.leaves(p2), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(fundus_root, tmp_path):
    train.run(tiny_config(fundus_root, total_steps=2, **{"eval.enabled": False}), str(tmp_path))
    before, _ = _params(str(tmp_path), tiny_config(fundus_root))
    # A huge learning rate sends the parameters to inf after step 3, so step 4's loss is not finite.
    bad = tiny_config(fundus_root, total_steps=6, log_every=1, **{"optim.learning_rate": 1e38})
    with pytest.raises(FloatingPointError, match=r"at step \d.*step 2\) is intact"):
        train.run(bad, str(tmp_path))
    after, step = _params(str(tmp_path), tiny_config(fundus_root))
    assert step == 2
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(x, y)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def _run(cmd: list, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _jaxad_main(*args) -> list:
    return [sys.executable, "-m", "jaxad.main", *args]


def _main_cmd(root, workdir, *extra):
    """The tiny config's command line (see conftest.tiny_config) for a subprocess run."""
    return _jaxad_main(
        "--config=configs/lesion2void.py:demo",
        f"--workdir={workdir}",
        "--config.data.name=folder",
        f"--config.data.root={root}",
        "--config.data.image_size=32",
        "--config.model.width=4",
        "--config.model.disc_width=4",
        "--config.batch_size=8",
        "--config.eval.batch_size=8",
        "--config.log_every=1",
        "--config.checkpoint_every=2",
        "--config.l2v.score_chunk=36",
        *extra,
    )


def _wait_for_checkpoint(workdir: pathlib.Path, proc, timeout=240.0) -> None:
    deadline = time.time() + timeout
    ckpts = workdir / "checkpoints"
    while time.time() < deadline:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(fundus_root, tmp_path):
    proc = subprocess.Popen(
        _main_cmd(fundus_root, tmp_path, "--config.total_steps=100000"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(tmp_path, proc)
    proc.kill()
    proc.communicate()
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    last = saved[-1]
    out = _run(_main_cmd(fundus_root, tmp_path, f"--config.total_steps={last + 2}"), 600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {last}" in out.stderr
    assert f"step {last + 2}/{last + 2}" in out.stderr
    assert f"step {last}/" not in out.stderr  # nothing before the checkpoint was redone


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(fundus_root, tmp_path):
    proc = subprocess.Popen(
        _main_cmd(
            fundus_root, tmp_path, "--config.total_steps=100000", "--config.checkpoint_every=1000"
        ),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    metrics = tmp_path / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped at step" in err
    step = int(err.split("stopped at step ")[1].split(";")[0])
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == [step]  # saved on SIGTERM although checkpoint_every is 1000


def test_unknown_config_key_is_one_clear_line(tmp_path):
    out = _run(
        _jaxad_main(
            "--config=configs/lesion2void.py:demo",
            f"--workdir={tmp_path}",
            "--config.data.imagesize=64",
        )
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.imagesize" in lines[0] and "image_size" in lines[0]


def test_missing_folder_is_a_clear_error(tmp_path):
    out = _run(_main_cmd(tmp_path / "nowhere", tmp_path / "w"))
    assert out.returncode == 2
    assert str(tmp_path / "nowhere") in out.stderr.strip().splitlines()[-1]


def test_unprepared_eyeq_names_the_build_command_and_demo(tmp_path):
    out = _run(
        _jaxad_main(
            "--config=configs/lesion2void.py",
            f"--workdir={tmp_path / 'w'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
        )
    )
    assert out.returncode == 2
    msg = out.stderr.strip().splitlines()[-1]
    assert "python -m jaxad.data.build eyeq" in msg and ":demo" in msg
    assert "data_builders/eyeq/README.md" in msg


@pytest.mark.slow
def test_predict_writes_maps_overlays_and_scores(fundus_root, tmp_path):
    from PIL import Image

    from jaxad import predict

    train.run(tiny_config(fundus_root, total_steps=2, **{"eval.enabled": False}), str(tmp_path))
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    rgb = np.asarray(Image.open(fundus_root / "test" / "haemorrhage" / "000.png"))
    Image.fromarray(rgb).save(inputs / "a.png")
    Image.fromarray(rgb[:50, :40]).convert("L").save(inputs / "sub" / "b.jpg")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    path = predict.predict(str(tmp_path), str(inputs), str(out))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["a.png", "sub/b.jpg"]
    assert all(np.isfinite(float(r["score"])) for r in rows)
    assert np.load(out / "a.npy").shape == (64, 64)
    assert np.load(out / "sub" / "b.npy").shape == (50, 40)  # maps come back at image size
    assert (out / "a.png").is_file() and (out / "sub" / "b.png").is_file()

    # The run's evaluator post-processing is prediction's too: smoothed maps, their maximum.
    from jaxad.evals import postprocess

    small = tmp_path / "small"  # at the model's 32 px, so that no resizing comes in between
    small.mkdir()
    Image.fromarray(rgb).resize((32, 32)).save(small / "c.png")
    predict.predict(str(tmp_path), str(small), str(tmp_path / "raw"))
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["evals"]["model"].update(smooth_sigma=2.0, image_score="max")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    path = predict.predict(str(tmp_path), str(small), str(tmp_path / "smoothed"))
    with open(path) as f:
        score = float(next(csv.DictReader(f))["score"])
    raw, smoothed = (np.load(tmp_path / d / "c.npy") for d in ("raw", "smoothed"))
    np.testing.assert_allclose(smoothed, postprocess.smooth(raw, 2.0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(smoothed, raw)
    assert score == pytest.approx(float(smoothed.max()), rel=1e-5)


def test_corrupt_image_is_reported_by_path(fundus_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(fundus_root, root)
    bad = root / "train" / "good" / "000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = _run(_main_cmd(root, tmp_path / "w", "--config.total_steps=50"))
    assert out.returncode != 0
    assert str(bad) in out.stderr


@pytest.mark.slow
def test_demo_beats_the_trivial_baseline(tmp_path_factory, tmp_path):
    """configs/lesion2void.py:demo with half its steps: Lesion2Void's image and pixel AUROCs
    beat the per-pixel distance from the mean training image, computed in the same evaluation."""
    from configs import lesion2void
    from jaxad.data import demo

    config = lesion2void.get_config("demo")
    config.data.root = str(demo.ensure_fundus_demo(tmp_path_factory.mktemp("demo") / "fundus"))
    config.total_steps = 200
    config.checkpoint_every = 0
    config.model.dtype = DEMO_DTYPE
    results = train.run(config, str(tmp_path))
    assert results["num_images"] == 120
    assert results["pixel_auroc"] > results["baseline/pixel_auroc"] + 0.03
    assert results["image_auroc"] > results["baseline/image_auroc"]
