"""Finished runs: load_run (best or latest), transfer_weights and apply_init_from.

Runs are made without the training loop: a state saved with `checkpoint.Checkpointer` in
`workdir/checkpoints` (latest) and/or `workdir/best`, next to the run's `config.json`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from jaxad import checkpoint, methods, parallel
from jaxad.methods.base import Method


class Tiny(Method):
    """A network, its statistics and an optimiser state, with shapes from the config."""

    def __init__(self, config):
        self.width = int(config.model.width)

    def init(self, key, batch):
        del batch
        w = jax.random.normal(key, (3, self.width))
        return {
            "step": jnp.zeros((), jnp.int32),
            "net": {
                "params": {"w": w, "b": jnp.zeros((self.width,))},
                "stats": {"n": jnp.zeros((self.width,))},
            },
            "opt": {"mu": jnp.zeros((3, self.width))},
        }

    def train_step(self, state, batch, key):
        raise NotImplementedError

    def inference_state(self, state):
        return {"step": state["step"], "net": state["net"]}


class Hooked(Tiny):
    """Names a run of its own (`init_runs`) and takes what it wants from runs (`init_from`)."""

    def __init__(self, config, own_run=""):
        super().__init__(config)
        self.own_run = own_run
        self.seen = []

    def init_runs(self):
        return [self.own_run]

    def init_from(self, state, run):
        self.seen.append((run.workdir, run.source, run.step))
        return {**state, "net": {**state["net"], "stats": {"n": state["net"]["stats"]["n"] + 1}}}


def _config(width=2, **init_from):
    from configs import common

    c = common.get_config()
    c.method = "tiny"
    c.data.image_size = 8
    c.data.channels = 1
    c.model.width = width
    c.init_from.update(init_from)
    return c


@pytest.fixture(autouse=True)
def _tiny_methods(monkeypatch):
    monkeypatch.setattr(methods, "create", Tiny)


def _state(seed: int, width: int = 2) -> dict:
    state = Tiny(_config(width)).init(jax.random.key(seed), None)
    state["step"] = jnp.asarray(seed, jnp.int32)
    state["net"]["stats"] = {"n": jnp.full((width,), float(seed))}
    state["opt"] = {"mu": jnp.full((3, width), float(seed))}
    return state


def _save(workdir: str, source: str, step: int, state: dict) -> None:
    ckpt = checkpoint.Checkpointer(
        workdir, every_steps=1, keep=3, async_save=False, name=checkpoint.FOLDERS[source]
    )
    ckpt.save(step, state, None, {"step": step})
    ckpt.close()


def _make_run(path, width=2, best=None, latest=None) -> str:
    """A run directory: config.json, and (step, state) in `best` and/or `latest`."""
    workdir = str(path)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(_config(width).to_json_best_effort(indent=2))
    for source, saved in (("best", best), ("latest", latest)):
        if saved is not None:
            _save(workdir, source, *saved)
    return workdir


def _assert_tree_equal(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ----------------------------------------------------------------------------- load_run


def test_load_run_prefers_best_and_falls_back_to_latest(tmp_path):
    best, latest = _state(2), _state(4)
    workdir = _make_run(tmp_path / "run", best=(2, best), latest=(4, latest))
    run = checkpoint.load_run(workdir)
    assert (run.workdir, run.source, run.step) == (workdir, "best", 2)
    assert isinstance(run.method, Tiny) and run.config.model.width == 2
    assert set(run.state) == {"step", "net"}  # the method's inference state
    _assert_tree_equal(run.state["net"], best["net"])
    leaf = run.state["net"]["params"]["w"]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == jax.device_count()

    import shutil

    shutil.rmtree(os.path.join(workdir, "best"))
    run = checkpoint.load_run(workdir)
    assert (run.source, run.step) == ("latest", 4)
    _assert_tree_equal(run.state["net"], latest["net"])


def test_prefer_latest_and_its_fallback_to_best(tmp_path):
    both = _make_run(tmp_path / "both", best=(2, _state(2)), latest=(4, _state(4)))
    run = checkpoint.load_run(both, prefer="latest")
    assert (run.source, run.step) == ("latest", 4)
    _assert_tree_equal(run.state["net"], _state(4)["net"])
    only_best = _make_run(tmp_path / "only_best", best=(2, _state(2)))
    run = checkpoint.load_run(only_best, prefer="latest")
    assert (run.source, run.step) == ("best", 2)
    with pytest.raises(ValueError, match="prefer='newest' is not one of"):
        checkpoint.load_run(both, prefer="newest")


def test_load_run_onto_one_local_device(tmp_path):
    workdir = _make_run(tmp_path / "run", latest=(4, _state(4)))
    device = jax.local_devices()[0]
    run = checkpoint.load_run(workdir, mesh=parallel.make_mesh([device]))
    for leaf in jax.tree.leaves(run.state):
        assert leaf.sharding.device_set == {device}
    _assert_tree_equal(run.state["net"], _state(4)["net"])


def test_missing_workdir_config_and_checkpoint_are_one_line_errors(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing not found: give the workdir") as e:
        checkpoint.load_run(missing)
    assert "\n" not in str(e.value) and not os.path.exists(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json not found: is .* a jaxad run"):
        checkpoint.load_run(str(empty))
    untrained = _make_run(tmp_path / "untrained")
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints or .*best") as e:
        checkpoint.load_run(untrained)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(untrained)) == ["config.json"]  # looking created nothing


def test_load_config_reads_what_the_run_saved(tmp_path):
    workdir = _make_run(tmp_path / "run", width=5)
    config = checkpoint.load_config(workdir)
    assert (config.method, config.model.width, config.init_from.prefer) == ("tiny", 5, "best")


# ----------------------------------------------------------------------------- transfer_weights


def test_transfer_weights_takes_matching_arrays_only():
    mesh = parallel.make_mesh()
    target = jax.device_put(_state(1), parallel.replicated(mesh))
    source = _state(7)
    source["net"]["params"]["b"] = jnp.ones((5,))  # another shape: kept
    source["net"]["stats"]["n"] = jnp.full((2,), 7, jnp.int32)  # another dtype: kept
    source["net"]["params"]["extra"] = jnp.ones((2,))  # not in the target: ignored
    out = checkpoint.transfer_weights(target, source)
    assert jax.tree.structure(out) == jax.tree.structure(target)
    np.testing.assert_array_equal(out["net"]["params"]["w"], source["net"]["params"]["w"])
    np.testing.assert_array_equal(out["net"]["params"]["b"], target["net"]["params"]["b"])
    np.testing.assert_array_equal(out["net"]["stats"]["n"], 1.0)
    # The optimiser state and the step start afresh.
    np.testing.assert_array_equal(out["opt"]["mu"], target["opt"]["mu"])
    assert int(out["step"]) == 1
    for new, old in zip(jax.tree.leaves(out), jax.tree.leaves(target), strict=True):
        assert new.sharding == old.sharding


def test_transfer_weights_with_nothing_in_common_names_both_trees():
    target = _state(1)
    with pytest.raises(ValueError, match=r"run \(top-level keys: g\) .* state \(top-level keys: "):
        checkpoint.transfer_weights(target, {"g": {"params": {"w": jnp.ones((3, 2))}}})
    # Only optimiser states and step in common: still nothing to take.
    with pytest.raises(ValueError, match="optimiser states and step are never taken"):
        checkpoint.transfer_weights(target, {"step": target["step"], "opt": target["opt"]})


# ----------------------------------------------------------------------------- apply_init_from


def test_apply_init_from_transfers_the_preferred_state(tmp_path):
    source = _make_run(tmp_path / "source", best=(2, _state(2)), latest=(4, _state(4)))
    mesh = parallel.make_mesh()
    fresh = methods.init_state(Tiny(_config()), _config(), mesh, 1)
    # Nothing named: the state is returned as it is.
    assert checkpoint.apply_init_from(_config(), Tiny(_config()), fresh, mesh) is fresh
    for prefer, seed in (("best", 2), ("latest", 4)):
        config = _config(workdir=source, prefer=prefer)
        state = checkpoint.apply_init_from(config, Tiny(config), fresh, mesh)
        _assert_tree_equal(state["net"], _state(seed)["net"])
        np.testing.assert_array_equal(state["opt"]["mu"], fresh["opt"]["mu"])
        assert int(state["step"]) == 0
    wider = _make_run(tmp_path / "wider", width=3, latest=(4, _state(4, width=3)))
    config = _config(workdir=wider)
    with pytest.raises(ValueError, match="init_from .*wider: no array of the run"):
        checkpoint.apply_init_from(config, Tiny(config), fresh, mesh)


def test_apply_init_from_calls_the_methods_hook_for_its_runs_then_the_configs(tmp_path):
    own = _make_run(tmp_path / "own", best=(2, _state(2)))
    other = _make_run(tmp_path / "other", latest=(4, _state(4)))
    config = _config(workdir=other)
    method = Hooked(config, own_run=own)
    mesh = parallel.make_mesh()
    fresh = methods.init_state(method, config, mesh, 1)
    state = checkpoint.apply_init_from(config, method, fresh, mesh)
    assert method.seen == [(own, "best", 2), (other, "latest", 4)]
    np.testing.assert_array_equal(state["net"]["stats"]["n"], 2.0)  # each run: the hook
    _assert_tree_equal(state["net"]["params"], fresh["net"]["params"])  # no transfer


def test_methods_never_import_the_loop_or_the_checkpoints():
    code = (
        "import sys, jaxad.methods\n"
        "for name in jaxad.methods.available():\n"
        "    __import__(f'jaxad.methods.{name}')\n"
        "bad = {'jaxad.train', 'jaxad.checkpoint'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_config_saved_before_a_key_existed_reads_with_the_defaults(tmp_path):
    """Runs saved by an earlier jaxad load: missing keys take the base config's defaults."""
    import json

    old = {"method": "picard", "data": {"name": "demo", "image_size": 64}, "eval": {"dense": True}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = checkpoint.load_config(str(tmp_path))
    assert config.data.image_size == 64 and config.data.crop_size == 0
    assert config.init_from.prefer == "best" and config.validation.every == 0
    assert config.evals.model.type == "anomaly_map" and config.evals.model.full_resolution
