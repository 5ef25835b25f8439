"""Data parallelism: 8 fake CPU devices agree with one (several processes: test_multihost.py)."""

from __future__ import annotations

import os
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
