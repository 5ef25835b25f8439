"""SIGTERM at any moment: the process ends within seconds, keeping what there is to keep.

Before the first training step (data, restoring, compiling) it ends at once, with its data
workers and without a checkpoint (nothing is newer than the last one); during training it saves
the current state (`test_train.test_sigterm_saves_a_checkpoint_and_exits_cleanly`); during an
evaluation it leaves the evaluation between two batches, and the rerun of the same command
performs that evaluation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, tiny_config
from test_train import _env, _main_cmd, _run

from jaxad import train


def _start(cmd: list) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _sigterm_on(proc: subprocess.Popen, text: str, timeout: float = 240) -> tuple[str, float]:
    """Sends SIGTERM once a stderr line contains `text`; returns (all of stderr, send time)."""
    lines, sent = [], None
    deadline = time.time() + timeout
    for line in proc.stderr:
        lines.append(line)
        if sent is None and text in line:
            proc.send_signal(signal.SIGTERM)
            sent = time.time()
        assert time.time() < deadline, "".join(lines)[-3000:]
    proc.wait(timeout=60)
    assert sent is not None, f"no line with {text!r}:\n" + "".join(lines)[-3000:]
    return "".join(lines), sent


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


_WATCHED = """
import sys, time
from jaxad import train

class NoCheckpoints:
    pass

preemption = train._Preemption(NoCheckpoints())
if sys.argv[1] == "armed":
    preemption.arm()
print("waiting", flush=True)
if sys.argv[1] == "armed":
    while not preemption.requested():
        time.sleep(0.01)
    print("stop requested", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("armed", [False, True], ids=["before_training", "training"])
def test_sigterm_handling_ends_the_process_when_nothing_is_left_to_save(armed):
    """Before the first step one SIGTERM ends the process (code 143, as the signal's default
    would, but with the data workers); once training runs the first one is a request to stop
    that the loop serves, and a second one ends the process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHED, "armed" if armed else "unarmed"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "waiting\n", proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    if armed:
        assert proc.stdout.readline() == "stop requested\n"
        assert proc.poll() is None  # still running: the loop saves, then returns
        proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 5
    assert proc.returncode == 143, err[-3000:]
    expected = "second SIGTERM received" if armed else "nothing newer than a checkpoint"
    assert expected in err


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_stops_it_and_the_rerun_evaluates(
    fundus_root, tmp_path
):
    cmd = _main_cmd(fundus_root, tmp_path, "--config.total_steps=2")
    proc = _start(cmd)
    err, sent = _sigterm_on(proc, "evaluating step 2")
    took = time.time() - sent
    assert proc.returncode == 0, err[-3000:]
    assert took < 10, f"{took:.1f} s after SIGTERM:\n{err[-3000:]}"
    assert "stopped at step 2 during the final evaluation" in err
    assert "eval at step" not in err
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert not (tmp_path / "eval" / "metrics.json").exists()

    out = _run(cmd, 600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step 2" in out.stderr and "eval at step 2:" in out.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["step"] == 2


@pytest.mark.slow
def test_sigterm_while_compiling_ends_at_once_with_the_data_workers(fundus_root, tmp_path):
    """No step has run: nothing to save, so the process ends in a moment (code 143), and the
    grain worker processes end with it instead of lingering."""
    cmd = _main_cmd(fundus_root, tmp_path, "--config.total_steps=50", "--config.data.num_workers=1")
    proc = _start(cmd)
    children: list[int] = []
    lines, sent = [], None
    for line in proc.stderr:
        lines.append(line)
        if sent is None and "compiling the training step" in line:
            children = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            sent = time.time()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert sent is not None, err[-3000:]
    assert time.time() - sent < 5, err[-3000:]
    assert proc.returncode == 143, err[-3000:]
    assert "nothing newer than a checkpoint" in err
    assert children, "the data workers had not started"
    deadline = time.time() + 10
    while any(map(_running, children)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, children)), "worker processes outlived the run"
    steps = tmp_path / "checkpoints"
    assert not steps.exists() or not [p for p in steps.iterdir() if p.name.isdigit()]


@pytest.mark.slow
def test_sigterm_during_a_periodic_evaluation_saves_and_the_rerun_evaluates_first(
    fundus_root, tmp_path, monkeypatch
):
    """The evaluation of step 2 (of 4, every 2) receives SIGTERM: the run saves step 2 and
    stops; the rerun evaluates step 2 before training on, then step 4."""
    from jaxad.evals import anomaly_map

    evaluate = anomaly_map.evaluate

    def sigterm_then_evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    overrides = dict(total_steps=4, eval_every=2, checkpoint_every=1000, log_every=1)
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(anomaly_map, "evaluate", sigterm_then_evaluate)
    assert train.run(tiny_config(fundus_root, **overrides), str(tmp_path)) == {
        "preempted_at_step": 2
    }
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == handler  # the run put it back
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta == {"step": 2, "evaluated_step": 0}
    assert not (tmp_path / "eval" / "metrics.json").exists()

    results = train.run(tiny_config(fundus_root, **overrides), str(tmp_path))
    assert results["step"] == 4
    with open(tmp_path / "metrics.jsonl") as f:
        evaluated = [r["step"] for r in map(json.loads, f) if "eval/step" in r]
    assert evaluated == [2, 4]


@pytest.mark.slow
def test_early_stopped_run_interrupted_in_its_evaluation_evaluates_on_rerun(
    fundus_root, tmp_path, monkeypatch
):
    """Early stopping ends training at step 6 (best step 3); SIGTERM in the final evaluation
    stops it. The rerun trains no further and evaluates the best state."""
    from test_early_stopping import CountingMethod, _config, _image_scores

    from jaxad import methods
    from jaxad.evals import anomaly_map

    evaluate = anomaly_map.evaluate

    def sigterm_then_evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(methods, "create", lambda config: CountingMethod())
    monkeypatch.setattr(anomaly_map, "evaluate", sigterm_then_evaluate)
    workdir = tmp_path / "run"
    assert train.run(_config(fundus_root), str(workdir)) == {"preempted_at_step": 6}
    assert not (workdir / "eval").exists()
    monkeypatch.setattr(anomaly_map, "evaluate", evaluate)
    results = train.run(_config(fundus_root), str(workdir))
    assert results["step"] == 3 and _image_scores(workdir) == {3.0}
    with open(workdir / "metrics.jsonl") as f:
        trained = [r["step"] for r in map(json.loads, f) if "loss" in r]
    assert max(trained) == 6  # the rerun did not train on
