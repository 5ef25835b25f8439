"""A sixth method added through new files only (README, "Adding a method"), run end to end.

The toy method learns the mean training image and scores a pixel by its distance from it. Its
module and config live in a folder outside jaxad; `config.method` names the module by its
dotted path, and the config starts from `configs/common.py` like every experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

METHOD = '''
"""Distance from the mean training image, learnt as a running mean."""

import jax.numpy as jnp

from jaxad.methods.base import Method


class MeanImage(Method):
    def init(self, key, batch):
        return {"step": jnp.zeros((), jnp.int32), "mean": jnp.zeros_like(batch["image"][0])}

    def train_step(self, state, batch, key):
        count = state["step"] + 1
        mean = state["mean"] + (batch["image"].mean(axis=0) - state["mean"]) / count
        loss = jnp.mean(jnp.square(batch["image"] - mean))
        return {"step": count, "mean": mean}, {"loss": loss}

    def score(self, state, batch, key):
        amap = jnp.sqrt(jnp.sum(jnp.square(batch["image"] - state["mean"]), axis=-1))
        return {"map": amap, "score": amap.max(axis=(1, 2))}


def create(config):
    return MeanImage()
'''

CONFIG = """
from configs import common


def get_config():
    c = common.get_config()
    c.method = "toy_methods.mean_image"
    c.data.name = "folder"
    c.data.root = {root!r}
    c.data.image_size = 32
    c.data.mean = (0.5, 0.3, 0.2)
    c.data.std = (0.3, 0.2, 0.1)
    c.data.num_workers = 0
    c.batch_size = 8
    c.total_steps = 6
    c.eval.batch_size = 8
    c.evals.model = common.anomaly_map_eval()
    c.evals.baseline = common.mean_image_eval()
    return c
"""


@pytest.mark.slow
def test_a_toy_method_in_new_files_trains_and_evaluates(fundus_root, tmp_path):
    pkg = tmp_path / "toy_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mean_image.py").write_text(textwrap.dedent(METHOD))
    config = tmp_path / "toy_config.py"
    config.write_text(textwrap.dedent(CONFIG.format(root=str(fundus_root))))
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    cmd = [sys.executable, "-m", "jaxad.main", f"--config={config}", f"--workdir={workdir}"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    # The learnt mean is the mean training image, so the toy method equals the baseline's map.
    assert metrics["pixel_auroc"] == pytest.approx(metrics["baseline/pixel_auroc"], abs=0.02)
    assert metrics["num_images"] == 16
    assert (workdir / "eval" / "scores.csv").exists()
