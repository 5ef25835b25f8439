"""Data parallelism: 8 fake CPU devices agree with one, and two processes train together."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

_EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np
    from conftest import fake_batch, tiny_config
    from jaxad import methods, parallel, train

    assert jax.device_count() == 8
    config = tiny_config("unused")
    method = methods.create(config)
    batch = fake_batch()
    out = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        state = methods.init_state(method, config, mesh, 8)
        gb = parallel.global_batch(mesh, batch)
        assert len(gb["image"].sharding.device_set) == n
        state, metrics = train.make_train_step(method, config, mesh)(state, gb, 1)
        leaf = jax.tree.leaves(state)[0]
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == n
        scores = jax.jit(method.score)(state, gb, jax.random.key(0))
        out[n] = jax.device_get((state, metrics, scores["map"]))
    for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[8]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # reduction order differs
    try:
        parallel.local_batch_size(12, parallel.make_mesh())
    except ValueError as e:
        assert "batch_size=12" in str(e) and "8 devices" in str(e), e
    else:
        raise AssertionError("batch 12 on 8 devices was accepted")
    print("EIGHT_DEVICES_OK")
    """
)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_eight_device_step_equals_single_device_step():
    out = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES],
        cwd=ROOT,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "EIGHT_DEVICES_OK" in out.stdout, out.stderr[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together_on_loopback(fundus_root, tmp_path):
    port = _free_port()
    script = ROOT / "tests" / "distributed_worker.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port), str(fundus_root), str(tmp_path)],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, se[-4000:]
    for i, (so, _) in enumerate(outs):
        assert f"PROCESS {i} OF 2 OK" in so
    # The same parameters on both processes; the one-device reference agrees.
    lines = [so.split("MISMATCH ")[1].splitlines()[0] for so, _ in outs]
    assert max(float(line.split()[0]) for line in lines) < 1e-3, lines
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    # Every evaluator gathers to process 0, which alone writes one report of every image.
    assert (tmp_path / "run" / "eval" / "metrics.json").is_file()
    with open(tmp_path / "run" / "eval" / "scores.csv") as f:
        ids = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert (
        len(ids)
        == len(set(ids))
        == json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["num_images"]
    )
    assert not list((tmp_path / "run" / "eval").glob("scores-*"))
