"""MorphAEus's demo config end to end, against the plain autoencoder and the mean-image baseline.

The demo as a user runs it (procedural chest X-rays, `jaxad.data.cxr_phantom`), then the same
config on a population from another generator (`deformed_phantom`: the Shepp-Logan phantom under
random warps), so that the result is not a property of one generator. What is asserted is what
held over the seeds measured (README, "MorphAEus"): the image AUROC above both others', the FPR
at 95 % TPR below both others' on the demo (with its top-5 % image score, in float32), and the
FPR at 99 % TPR below the plain autoencoder's on the warped phantoms.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from deformed_phantom import write as write_deformed_phantom

from configs import morphaeus as morphaeus_configs
from jaxad import train

# The compute dtype of the demo runs below (`model.dtype`): float32 unless JAXAD_TEST_DTYPE says
# otherwise, e.g. JAXAD_TEST_DTYPE=bfloat16 to check that a demo still beats its baseline in
# bfloat16 (README, "Mixed precision").
DEMO_DTYPE = os.environ.get("JAXAD_TEST_DTYPE", "float32")


def _auroc_above_plain_and_baseline(results: dict) -> None:
    print({k: round(v, 4) for k, v in results.items() if "auroc" in k or "fpr" in k})
    for prefix in ("plain/", "baseline/"):
        assert results["image_auroc"] > results[prefix + "image_auroc"], (prefix, results)


@pytest.mark.slow
def test_demo_beats_the_plain_autoencoder_and_the_baseline(tmp_path):
    config = morphaeus_configs.get_config("demo")
    config.model.dtype = DEMO_DTYPE
    workdir = tmp_path / "run"
    results = train.run(config, str(workdir))
    _auroc_above_plain_and_baseline(results)
    assert results["fpr_at_tpr95"] < results["baseline/fpr_at_tpr95"]
    assert results["fpr_at_tpr95"] < results["plain/fpr_at_tpr95"]
    for prefix in ("", "plain/", "baseline/"):
        assert np.isfinite(results[prefix + "pixel_auroc"]), (prefix, results)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "morph_on" in r][-1]
    assert last["morph_on"] == 1.0 and last["smooth"] > 0  # the deformer trained
    panels = sorted((workdir / "eval" / "overlays" / "panels").glob("*.png"))
    assert len(panels) == config.eval.num_overlays
    assert {p.name.split("_label")[1] for p in panels} == {"0.png", "1.png"}


@pytest.mark.slow
def test_demo_config_beats_the_plain_autoencoder_on_another_generator(tmp_path):
    config = morphaeus_configs.get_config("demo")
    config.model.dtype = DEMO_DTYPE
    config.data.name = "folder"
    config.data.root = str(write_deformed_phantom(tmp_path / "data", size=64, test=100))
    results = train.run(config, str(tmp_path / "run"))
    _auroc_above_plain_and_baseline(results)
    assert results["fpr_at_tpr99"] < results["plain/fpr_at_tpr99"]
