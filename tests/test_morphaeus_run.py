"""MorphAEus's demo config end to end (shortened): both networks, every evaluator, the panels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import morphaeus as morphaeus_configs
from jaxad import train


@pytest.mark.slow
def test_demo_config_trains_both_networks_and_reports_every_evaluator(tmp_path):
    config = morphaeus_configs.get_config("demo")
    config.total_steps = 40
    config.morphaeus.steps_per_epoch = 8  # the morph terms on from step 33 (after epoch 3)
    workdir = tmp_path / "run"
    results = train.run(config, str(workdir))
    for prefix in ("", "plain/", "baseline/"):
        for name in ("image_auroc", "fpr_at_tpr95", "pixel_auroc"):
            assert np.isfinite(results[prefix + name]), (prefix, name, results)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "morph_on" in r][-1]
    assert last["morph_on"] == 1.0 and last["smooth"] > 0  # the deformer trained
    panels = sorted((workdir / "eval" / "overlays" / "panels").glob("*.png"))
    assert len(panels) == config.eval.num_overlays
    assert {p.name.split("_label")[1] for p in panels} == {"0.png", "1.png"}
