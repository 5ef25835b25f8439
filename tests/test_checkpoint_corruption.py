"""Damaged checkpoints and failed saves: one line each, the newest good checkpoint is used.

A truncated file in any part of the latest checkpoint (the parameter arrays, the `_METADATA`
and array-metadata JSON, the data-iterator state `data/process_0-of-1.json`, the step's meta)
is reported in one warning line naming the step directory, and the next older checkpoint is
restored; nothing is deleted. A save that fails (a full disk, injected as OSError(ENOSPC)) is
reported at once in one line naming the step directory and the cause, and the earlier
checkpoints stay as they were.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, tiny_config
from test_train import _main_cmd

from jaxad import checkpoint, train, writers


@pytest.fixture
def warnings_logged():
    """The jaxad warning lines logged during the test."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    writers.logger.addHandler(handler)
    yield lines
    writers.logger.removeHandler(handler)


def _state(step: int) -> dict:
    """A small training state whose every array says which step it is."""
    return {
        "params": {"w": jnp.full((4, 8), float(step)), "b": jnp.full((8,), -float(step))},
        "opt": {"mu": jnp.full((4, 8), step / 10.0), "count": jnp.asarray(step, jnp.int32)},
    }


def _data_iter():
    return iter(grain.MapDataset.range(1000).batch(2).to_iter_dataset())


def _save_run(workdir: str, steps=(1, 2, 3)) -> None:
    """Checkpoints of `steps`; the data iterator has yielded `step` batches at each."""
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    it = _data_iter()
    done = 0
    for step in steps:
        for _ in range(step - done):
            next(it)
        done = step
        ckpt.save(step, _state(step), it, {"step": step})
    ckpt.close()


def _truncate(path: str, size: int | None = None) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


# Each part of a checkpoint, as a file under the step directory.
PARTS = {
    "arrays": lambda d: max(glob.glob(f"{d}/state/d/*"), key=os.path.getsize),
    "array_index": lambda d: f"{d}/state/manifest.ocdbt",
    "_METADATA": lambda d: f"{d}/state/_METADATA",
    "array_metadatas": lambda d: glob.glob(f"{d}/state/array_metadatas/*")[0],
    "data_iterator": lambda d: f"{d}/data/process_0-of-1.json",
    "meta": lambda d: f"{d}/meta/metadata",
}


@pytest.mark.parametrize("size", [None, 0], ids=["half", "empty"])
@pytest.mark.parametrize("part", sorted(PARTS))
def test_damaged_latest_checkpoint_falls_back_with_one_warning(
    tmp_path, warnings_logged, part, size
):
    workdir = str(tmp_path)
    _save_run(workdir)
    step_dir = os.path.join(workdir, "checkpoints", "3")
    _truncate(PARTS[part](step_dir), size)
    files_before = sorted(glob.glob(f"{workdir}/checkpoints/**", recursive=True))

    it = _data_iter()
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    state, meta = ckpt.restore(jax.tree.map(jnp.zeros_like, _state(0)), it)
    ckpt.close()

    assert meta["step"] == 2
    jax.tree.map(np.testing.assert_array_equal, state, _state(2))
    assert int(next(it)[0]) == 4  # the iterator is where step 2 left it (2 batches of 2)
    assert len(warnings_logged) == 1, warnings_logged
    line = warnings_logged[0]
    assert "\n" not in line and f"{step_dir} does not restore" in line
    assert "Traceback" not in line and "tensorstore_spec" not in line
    # Nothing was deleted or moved: a read-only restore leaves the folder as it was.
    assert sorted(glob.glob(f"{workdir}/checkpoints/**", recursive=True)) == files_before


def test_training_sets_unreadable_checkpoints_aside_and_saves_their_steps_again(
    tmp_path, warnings_logged
):
    workdir = str(tmp_path)
    _save_run(workdir)
    _truncate(PARTS["data_iterator"](os.path.join(workdir, "checkpoints", "3")), 0)
    _truncate(PARTS["arrays"](os.path.join(workdir, "checkpoints", "2")))

    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    state, meta = ckpt.restore(_state(0), _data_iter(), set_aside=True)
    assert meta["step"] == 1
    ckpt.save(2, _state(20), None, {"step": 2})  # the steps that were unreadable, saved anew
    ckpt.save(3, _state(30), None, {"step": 3})
    ckpt.close()

    names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert names == ["1", "2", "2.unreadable", "3", "3.unreadable"]
    assert os.path.getsize(f"{workdir}/checkpoints/3.unreadable/data/process_0-of-1.json") == 0
    assert any("3.unreadable" in w for w in warnings_logged)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    state, meta = ckpt.restore(_state(0))
    ckpt.close()
    assert meta["step"] == 3
    jax.tree.map(np.testing.assert_array_equal, state, _state(30))


def test_no_checkpoint_that_restores_is_one_line_naming_the_folder(tmp_path, warnings_logged):
    workdir = str(tmp_path)
    _save_run(workdir, steps=(1, 2))
    for step in (1, 2):
        _truncate(PARTS["_METADATA"](os.path.join(workdir, "checkpoints", str(step))), 0)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    with pytest.raises(checkpoint.CheckpointError) as info:
        ckpt.restore(_state(0), set_aside=True)
    ckpt.close()
    message = str(info.value)
    folder = os.path.join(workdir, "checkpoints")
    assert "\n" not in message
    assert f"no checkpoint in {folder} restores" in message and f"mv {folder}" in message
    assert "_METADATA is empty" in message
    assert len(warnings_logged) == 2  # one line per checkpoint tried
    assert sorted(os.listdir(folder)) == ["1", "2"]  # nothing set aside when none restores


def test_loading_a_run_whose_best_state_is_damaged_takes_the_latest(
    tmp_path, monkeypatch, warnings_logged
):
    import test_checkpoint as runs

    from jaxad import methods

    monkeypatch.setattr(methods, "create", runs.Tiny)
    workdir = runs._make_run(tmp_path / "run", best=(2, runs._state(2)), latest=(4, runs._state(4)))
    _truncate(os.path.join(workdir, "best", "2", "state", "_METADATA"))
    run = checkpoint.load_run(workdir)
    assert (run.source, run.step) == ("latest", 4)
    jax.tree.map(np.testing.assert_array_equal, run.state["net"], runs._state(4)["net"])
    assert len(warnings_logged) == 2  # the damaged step, then the switch to the latest state
    assert os.path.join(workdir, "best", "2") in warnings_logged[0]
    assert "taking the latest state instead" in warnings_logged[1]


def _enospc_in_background(monkeypatch) -> None:
    """Makes the meta item's write (run by Orbax's background commit) fail: a full disk."""

    async def full_disk(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)


def test_failed_background_save_is_reported_at_once_in_one_line(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=3)
    ckpt.save(1, _state(1), None, {"step": 1})
    ckpt.wait()
    _enospc_in_background(monkeypatch)
    ckpt.save(2, _state(2), None, {"step": 2})  # returns at once; the write fails behind it
    with pytest.raises(checkpoint.CheckpointError) as info:
        deadline = time.monotonic() + 60  # a count of calls would race the background thread
        while time.monotonic() < deadline:  # the loop calls check() after every step
            ckpt.check()
            time.sleep(0.001)
    message = str(info.value)
    assert "\n" not in message
    assert os.path.join(workdir, "checkpoints", "2") in message
    assert "No space left on device (errno 28)" in message
    assert "last good checkpoint (step 1) is intact" in message
    monkeypatch.undo()
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=3)
    state, meta = ckpt.restore(_state(0))
    ckpt.close()
    assert meta["step"] == 1
    jax.tree.map(np.testing.assert_array_equal, state, _state(1))


def test_save_that_fails_at_once_names_the_step_directory(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "checkpoints"))

    monkeypatch.setattr(ckpt._manager, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match=r"no earlier checkpoint was saved"):
        ckpt.save(5, _state(5), None, {"step": 5})
    with pytest.raises(checkpoint.CheckpointError) as info:
        ckpt.save(6, _state(6), None, {"step": 6})
    assert str(tmp_path / "checkpoints" / "6") in str(info.value)
    assert "No space left on device (errno 28)" in str(info.value)


def test_full_disk_stops_the_training_loop_with_the_last_good_checkpoint(
    fundus_root, tmp_path, monkeypatch
):
    """The loop's second save (step 4) fails in the background: the run stops before its next
    checkpoint, naming checkpoints/4, and step 2 still restores."""
    calls = {"n": 0}
    real = ocp.JsonCheckpointHandler._save_fn

    async def second_save_fails(self, x, directory):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", second_save_fails)
    config = tiny_config(fundus_root, total_steps=8, log_every=1, **{"eval.enabled": False})
    with pytest.raises(checkpoint.CheckpointError) as info:
        train.run(config, str(tmp_path))
    monkeypatch.undo()
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "4") in message and "errno 28" in message
    assert "(step 2) is intact" in message
    with open(tmp_path / "metrics.jsonl") as f:
        logged = [json.loads(line)["step"] for line in f]
    assert max(logged) <= 6  # stopped at the latest when the next checkpoint was due
    assert sorted(p for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == ["2"]


def _main(*args, inject: str = "") -> subprocess.CompletedProcess:
    """`python -m jaxad.main ARGS`, after running `inject` (e.g. a monkeypatch) in-process."""
    code = (
        "import sys\n"
        f"{inject}\n"
        "from absl import app\n"
        "from jaxad import main\n"
        "sys.argv = ['jaxad'] + sys.argv[1:]\n"
        "app.run(main.main, flags_parser=main.parse_flags)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cli_args(root, workdir, *extra) -> list[str]:
    """test_train's tiny command line (its arguments after `python -m jaxad.main`)."""
    return _main_cmd(root, workdir, "--config.eval.enabled=false", *extra)[3:]


@pytest.mark.slow
def test_command_line_reports_a_full_disk_and_damaged_checkpoints_in_one_line(
    fundus_root, tmp_path
):
    """Through `python -m jaxad.main`: a full disk at the second checkpoint ends the run with
    exit code 2 and one error line; then, every checkpoint damaged, the rerun says which folder
    to move away, also in one line, and deletes nothing."""
    inject = (
        "import errno, os, orbax.checkpoint as ocp\n"
        "real, calls = ocp.JsonCheckpointHandler._save_fn, []\n"
        "async def fn(self, x, d):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return await real(self, x, d)\n"
        "ocp.JsonCheckpointHandler._save_fn = fn\n"
    )
    out = _main(*_cli_args(fundus_root, tmp_path, "--config.total_steps=8"), inject=inject)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("jaxad: error: could not save"), errors
    assert str(tmp_path / "checkpoints" / "4") in errors[0]

    _truncate(PARTS["arrays"](str(tmp_path / "checkpoints" / "2")), 0)
    out = _main(*_cli_args(fundus_root, tmp_path, "--config.total_steps=8"))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxad: error: no checkpoint in") and "mv " in last
    assert sum("does not restore" in line for line in out.stderr.splitlines()) == 1
    assert os.path.isdir(tmp_path / "checkpoints" / "2")


def test_checkpoint_saved_without_a_data_position_restores_with_the_data_from_the_start(
    tmp_path, warnings_logged
):
    # `jaxad.convert` writes step 0 without a data position when the training data is absent.
    workdir = str(tmp_path)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    ckpt.save(0, _state(5), None, {"step": 0})
    ckpt.close()
    it = _data_iter()
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    state, meta = ckpt.restore(jax.tree.map(jnp.zeros_like, _state(0)), it)
    ckpt.close()
    assert meta["step"] == 0 and not warnings_logged
    jax.tree.map(np.testing.assert_array_equal, state, _state(5))
    assert int(next(it)[0]) == 0
