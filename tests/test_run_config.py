"""A run's identity: which config changes a rerun in the same workdir may make, and the history."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_config

from jaxad import run_config, train


def _workdir(tmp_path, config, *, checkpoint: bool = True):
    """A workdir as a run leaves it: config.json and (optionally) a checkpoint folder."""
    workdir = tmp_path / "run"
    run_config.save(config, str(workdir))
    if checkpoint:
        (workdir / "checkpoints" / "4").mkdir(parents=True)
    return workdir


def test_rule_blocks_identity_keys_and_allows_the_rest():
    saved = {"method": "a", "model": {"width": 64}, "total_steps": 10, "evals": {}, "seed": 0}
    new = {
        "method": "a",
        "model": {"width": 8},
        "total_steps": 20,
        "evals": {"zscore": {"type": "zscore"}},
        "seed": 1,
        "extra": {"key": 1},  # A key an older run did not have.
    }
    changes = run_config.differences(saved, new)
    keys = [k for k, _, _ in changes]
    assert keys == ["evals.zscore.type", "extra.key", "model.width", "seed", "total_steps"]
    blocked = run_config.blocking(changes)
    assert [k for k, _, _ in blocked] == ["model.width", "seed"]
    assert run_config.describe(blocked) == "model.width 64 -> 8, seed 0 -> 1"
    allowed = ("log_every", "eval.batch_size", "validation.every", "data.root", "optim.b1")
    allowed += ("model.fast_conv_grad", "model.cpu_ynnpack")
    for key in allowed:
        assert run_config.resumable(key), key
    for key in ("method", "model.nf", "l2v.grid", "batch_size", "data.image_size", "picard.stride"):
        assert not run_config.resumable(key), key


def test_shape_change_stops_before_writing_and_names_both_values(tmp_path):
    workdir = _workdir(tmp_path, tiny_config(tmp_path))
    before = (workdir / "config.json").read_text()
    listing = sorted(os.listdir(workdir))
    changed = tiny_config(tmp_path, **{"model.width": 8, "total_steps": 9})
    with pytest.raises(run_config.ConfigChangeError) as e:
        train.run(changed, str(workdir))  # The loop's first act: nothing else runs.
    msg = str(e.value)
    assert "\n" not in msg and "model.width 4 -> 8" in msg and "total_steps" not in msg
    assert f"--config.init_from.workdir={workdir}" in msg
    assert (workdir / "config.json").read_text() == before
    assert sorted(os.listdir(workdir)) == listing


def test_method_change_is_refused_too(tmp_path):
    workdir = _workdir(tmp_path, tiny_config(tmp_path))
    other = tiny_config(tmp_path)
    other.method = "morphaeus"
    with pytest.raises(run_config.ConfigChangeError, match='method "lesion2void" -> '):
        run_config.check(other, str(workdir))


def test_allowed_changes_resume_and_keep_the_history(tmp_path):
    first = tiny_config(tmp_path, total_steps=4)
    workdir = _workdir(tmp_path, first)
    longer = tiny_config(tmp_path, total_steps=8, log_every=1, **{"eval.enabled": False})
    changes = run_config.check(longer, str(workdir))
    assert {k for k, _, _ in changes} == {"total_steps", "log_every", "eval.enabled"}
    assert run_config.save(longer, str(workdir)) == changes
    assert json.loads((workdir / "config.json").read_text())["total_steps"] == 8
    kept = workdir / "config_history" / "config.1.json"
    assert json.loads(kept.read_text()) == run_config.as_json(first)
    # The same config again: nothing to keep. Another change: the next number.
    assert run_config.save(longer, str(workdir)) == []
    assert sorted(os.listdir(workdir / "config_history")) == ["config.1.json"]
    run_config.save(tiny_config(tmp_path, total_steps=12), str(workdir))
    assert sorted(os.listdir(workdir / "config_history")) == ["config.1.json", "config.2.json"]


def test_without_saved_state_any_change_is_allowed(tmp_path):
    workdir = _workdir(tmp_path, tiny_config(tmp_path), checkpoint=False)
    (workdir / "checkpoints").mkdir()  # An empty folder, as a start that died early leaves.
    changed = tiny_config(tmp_path, **{"model.width": 8})
    assert [k for k, _, _ in run_config.check(changed, str(workdir))] == ["model.width"]
    assert run_config.check(changed, str(tmp_path / "fresh")) == []


def test_unreadable_saved_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*config.json"):
        run_config.check(tiny_config(tmp_path), str(tmp_path))


@pytest.mark.slow
def test_rerun_with_a_changed_model_leaves_the_run_usable(fundus_root, tmp_path):
    """A real run: the refused rerun changes nothing; a longer rerun resumes it."""
    from jaxad import checkpoint

    off = {"eval.enabled": False}
    train.run(tiny_config(fundus_root, total_steps=2, **off), str(tmp_path))
    with pytest.raises(run_config.ConfigChangeError, match="model.width 4 -> 8"):
        wider = tiny_config(fundus_root, total_steps=2, **off, **{"model.width": 8})
        train.run(wider, str(tmp_path))
    assert checkpoint.load_run(str(tmp_path)).step == 2  # The original run still loads.
    train.run(tiny_config(fundus_root, total_steps=3, **off), str(tmp_path))
    assert checkpoint.load_run(str(tmp_path)).step == 3
    assert (tmp_path / "config_history" / "config.1.json").is_file()


def test_override_sets_dotted_keys_and_names_an_unknown_one():
    import ml_collections

    from jaxad import run_config

    config = ml_collections.ConfigDict({"model": {"width": 4}, "seed": 0})
    assert run_config.override(config, {"model.width": 8, "seed": 3}) is config
    assert config.model.width == 8 and config.seed == 3
    with pytest.raises(KeyError, match="no config key model.depth"):
        run_config.override(config, {"model.depth": 18})
    run_config.override(config, {"model.depth": 18}, strict=False)
    assert config.model.depth == 18
