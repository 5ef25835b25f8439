"""The DR grader's demo config end to end (shortened): validation by kappa, reports."""

from __future__ import annotations

import json

import pytest

from configs import dr_grading as grading_configs
from jaxad import train


@pytest.mark.slow
def test_grader_demo_validates_by_kappa_and_reports_grading_metrics(tmp_path):
    config = grading_configs.get_config("demo")
    config.total_steps = 12
    config.validation.every = 6
    workdir = tmp_path / "run"
    results = train.run(config, str(workdir))
    assert -1.0 <= results["kappa"] <= 1.0 and results["num_graded"] == results["num_images"]
    assert len(results["confusion_matrix"]) == 5
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in logged if "val/kappa" in r]
    assert [r["step"] for r in validations] == [6, 12]
    assert all(r["val/loss"] == -r["val/kappa"] for r in validations)
    assert (workdir / "best").is_dir()
    header = (workdir / "eval" / "scores.csv").read_text().splitlines()[0]
    assert "prediction" in header and "predicted_grade" in header
