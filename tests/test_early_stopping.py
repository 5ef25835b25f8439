"""Validation and early stopping in the shared loop, with a fake method of known losses."""

import csv
import json

import jax.numpy as jnp
import pytest

from jaxad import checkpoint, methods, train
from jaxad.methods.base import Method

# Each test runs the training loop (with a fake method): the end-to-end tier.
pytestmark = pytest.mark.slow


class CountingMethod(Method):
    """w grows by 1 per step; the validation loss |w - 3| is best after step 3."""

    def init(self, key, batch):
        return {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((), jnp.float32)}

    def train_step(self, state, batch, key):
        new = {"step": state["step"] + 1, "w": state["w"] + 1.0}
        return new, {"loss": new["w"]}

    def eval_loss(self, state, batch, key):
        return jnp.abs(state["w"] - 3.0) * jnp.ones(batch["image"].shape[0])

    def score(self, state, batch, key):
        b, h, w = batch["image"].shape[:3]
        return {"map": jnp.zeros((b, h, w)), "score": jnp.full((b,), state["w"])}

    def image_scores(self, outputs):
        return outputs["score"]

    def inference_state(self, state):
        return state


def _config(fundus_root, **validation):
    from conftest import tiny_config

    c = tiny_config(fundus_root, total_steps=12, checkpoint_every=4, log_every=2)
    c.data.val_split = "train"
    c.validation = dict(every=1, patience=2, min_delta=0.0)
    c.validation.update(validation)
    return c


def _image_scores(workdir):
    with open(workdir / "eval" / "scores.csv", newline="") as f:
        return {float(row["score"]) for row in csv.DictReader(f)}


def test_stops_early_and_evaluates_the_best_state(fundus_root, tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "create", lambda config: CountingMethod())
    workdir = tmp_path / "run"
    results = train.run(_config(fundus_root), str(workdir))
    # Best at step 3; steps 4, 5 and 6 bring no gain, so training stops at step 6 and the
    # evaluation scores the state of step 3 (image score = w = 3).
    assert results["step"] == 3 and _image_scores(workdir) == {3.0}
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "val/loss" in x] == [1, 2, 3, 4, 5, 6]
    best = checkpoint.Checkpointer(str(workdir), every_steps=0, keep=1, name="best")
    assert best.latest_step() == 3
    best.close()


def test_min_delta_without_patience_runs_to_the_end(fundus_root, tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "create", lambda config: CountingMethod())
    # A gain must exceed 2.5: after step 1 (loss 2) none does; with no patience training runs
    # all 12 steps, then evaluates the best state (step 1, w = 1).
    workdir = tmp_path / "run"
    results = train.run(_config(fundus_root, patience=0, min_delta=2.5), str(workdir))
    assert results["step"] == 1 and _image_scores(workdir) == {1.0}


def test_off_without_eval_loss(fundus_root, tmp_path, monkeypatch):
    attrs = {k: v for k, v in vars(CountingMethod).items() if k != "eval_loss"}
    no_eval_loss = type("NoEvalLoss", (Method,), attrs)
    monkeypatch.setattr(methods, "create", lambda config: no_eval_loss())
    results = train.run(_config(fundus_root), str(tmp_path / "run"))
    assert results["step"] == 12
    assert not (tmp_path / "run" / "best").exists()


def test_no_evaluation_when_disabled(fundus_root, tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "create", lambda config: CountingMethod())
    config = _config(fundus_root)
    config.eval.enabled = False
    results = train.run(config, str(tmp_path / "run"))
    assert results == {"step": 3, "best_val_loss": 0.0, "best_step": 3}  # the best state
    assert not (tmp_path / "run" / "eval").exists()
