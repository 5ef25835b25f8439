"""`python -m jaxad.bench speed` and its timing helpers (jaxad.bench.timing).

    pytest tests/test_bench_speed.py

The end-to-end test runs the command at `--quick` sizes on two cheap methods and checks the JSON
and the Markdown table it writes; the rest checks bad input and the helpers on toy functions
(a fake clock for the medians, a jitted matmul for XLA's FLOP count).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from jaxad.bench import speed, timing

ROOT = Path(__file__).resolve().parents[1]
E2E_METHODS = ("dpa", "simclr")  # cheap; one scores with method.score, one with eval_loss


def _run(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxad.bench", "speed", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_json_and_table(tmp_path):
    out = tmp_path / "x.json"
    proc = _run(
        "--quick",
        f"--methods={','.join(E2E_METHODS)}",
        "--calls=2",
        "--baseline_calls=2",
        f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Progress per case on stderr.
    assert "speed: 1/2 dpa: compiling" in proc.stderr
    assert "speed: 2/2 simclr: compiling" in proc.stderr

    report = json.loads(out.read_text())
    assert set(report) >= {"env", "baseline", "cases"}
    env = report["env"]
    for key in ("date_utc", "jax", "jaxlib", "flax", "backend", "device_count", "cpu_count"):
        assert key in env, key
    assert env["backend"] == "cpu" and env["device_count"] >= 1
    matmul = report["baseline"]["matmul"]
    assert _positive(matmul["gflops_per_sec"]) and _positive(matmul["sec"])
    assert matmul["flops"] == pytest.approx(2 * 2048**3, rel=0.05)

    assert list(report["cases"]) == list(E2E_METHODS)
    for name, case in report["cases"].items():
        assert "error" not in case, case
        assert case["method"] == name and case["quick"] is True
        assert case["batch"] == case["score_batch"] == speed.QUICK_BATCH
        assert isinstance(case["image_size"], int) and case["image_size"] > 0
        assert case["score_part"] == ("eval_loss" if name == "simclr" else "method.score")
        for key in (
            "train_compile_sec",
            "score_compile_sec",
            "train_sec",
            "train_cpu_sec",
            "train_images_per_sec",
            "score_sec",
            "score_images_per_sec",
            "train_flops",
            "score_flops",
            "train_gflops_per_sec",
            "score_gflops_per_sec",
            "train_vs_matmul",
            "score_vs_matmul",
            "peak_rss_bytes",
        ):
            assert _positive(case[key]), (name, key, case.get(key))
        assert len(case["train_sec_all"]) == len(case["score_sec_all"]) == 2
        assert case["train_sec"] == pytest.approx(statistics.median(case["train_sec_all"]))
        assert case["score_sec"] == pytest.approx(statistics.median(case["score_sec_all"]))
        assert case["train_images_per_sec"] == pytest.approx(case["batch"] / case["train_sec"])
        rate = case["train_flops"] / case["train_sec"] / 1e9
        assert case["train_vs_matmul"] == pytest.approx(rate / matmul["gflops_per_sec"])
        assert isinstance(case["train_memory"].get("temp_bytes", 0), int)
        assert case["other_cpus_busy"] is None or case["other_cpus_busy"] >= 0
        assert math.isfinite(case["train_loss"])

    table = [line for line in (tmp_path / "x.md").read_text().splitlines() if line.startswith("|")]
    header, separator, *rows = table
    assert "method" in header and "train s/step" in header and "×mm" in header
    assert set(separator) <= set("|-")
    assert [row.split("|")[1].strip() for row in rows] == list(E2E_METHODS)
    cells = header.count("|")
    assert all(row.count("|") == cells for row in rows)
    assert "compare across days" in (tmp_path / "x.md").read_text()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--methods=dpa,nosuch"], "nosuch"),
        (["--calls=0"], "--calls"),
        (["--bogus=1"], "--bogus"),
        (["--methods=picard", "--original=picard:/tmp"], "picard"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, flags, named):
    out = tmp_path / "x.json"
    proc = _run(*flags, f"--out={out}", timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0] and lines[0].startswith("speed: error:")
    assert not out.exists()


def test_out_is_required():
    with pytest.raises(SystemExit) as e:
        speed.main(["--methods=dpa"])
    assert e.value.code == 2


def test_timed_medians_with_a_fake_clock():
    # Wall clock: the untimed call takes 10 s, then calls of 3, 1, 2 s; CPU: 0.5, 4, 1.
    ticks = iter([0.0, 10.0, 10.0, 13.0, 13.0, 14.0, 14.0, 16.0])
    cpu_ticks = iter([0.0, 0.5, 0.5, 4.5, 4.5, 5.5])
    calls = []
    result = timing.timed(
        lambda: calls.append(1) or len(calls),
        calls=3,
        clock=lambda: next(ticks),
        cpu_clock=lambda: next(cpu_ticks),
    )
    assert len(calls) == 4  # one untimed call first
    assert result["first_sec"] == 10.0
    assert result["sec_all"] == [3.0, 1.0, 2.0]
    assert result["sec"] == 2.0
    assert result["cpu_sec_all"] == [0.5, 4.0, 1.0]
    assert result["cpu_sec"] == 1.0
    assert result["calls_timed"] == 3
    assert result["output"] == 4
    with pytest.raises(ValueError, match="calls"):
        timing.timed(lambda: None, calls=0)


def test_flops_of_a_jitted_matmul_and_memory():
    import jax
    import jax.numpy as jnp

    n = 128
    x = jnp.ones((n, n), jnp.float32)
    compiled, sec = timing.compile_ahead(jax.jit(lambda a, b: a @ b), x, x)
    assert sec > 0
    assert timing.flops(compiled) == pytest.approx(2 * n**3, rel=0.02)
    mem = timing.memory(compiled)
    assert mem["argument_bytes"] == 2 * n * n * 4
    assert mem["output_bytes"] == n * n * 4
    result = timing.timed(lambda: compiled(x, x), calls=2)
    assert float(result["output"][0, 0]) == n
    assert all(t > 0 for t in result["sec_all"])


def test_flops_and_memory_of_other_shapes_of_analysis():
    as_list = types.SimpleNamespace(cost_analysis=lambda: [{"flops": 3.0}, {"flops": 4.0}, {}])
    assert timing.flops(as_list) == 7.0
    assert timing.flops(types.SimpleNamespace(cost_analysis=lambda: {"flops": 5.0})) == 5.0
    assert timing.memory(types.SimpleNamespace(memory_analysis=lambda: None)) == {}


def test_peak_rss_and_other_load():
    with open("/proc/self/status", encoding="utf-8") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert timing.peak_rss_bytes() >= rss > 0
    load = timing.OtherLoad()
    # Some CPU time of our own, over a window long enough that /proc/stat's 10 ms ticks do not
    # swamp it (a 20 ms window read 2.83 other CPUs on 2).
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        sum(i * i for i in range(20_000))
    other = load.cpus()
    assert other is None or 0 <= other <= os.cpu_count()
    assert timing.cpu_sec() > 0


def test_every_case_builds_its_config_with_the_stated_batches():
    for name, case in speed.CASES.items():
        config = speed.build_config(name, quick=False, batch=None)
        assert config.method == name
        assert (config.batch_size, config.eval.batch_size) == (case.batch, case.score_batch)
        quick = speed.build_config(name, quick=True, batch=None)
        assert quick.batch_size == speed.QUICK_BATCH
        size = lambda c: c.data.crop_size or c.data.image_size  # noqa: E731
        assert size(quick) < size(config), name
        assert speed.build_config(name, quick=True, batch=6).eval.batch_size == 6
    assert speed.build_config("dpa", False, None).dpa.vgg_weights == ""
    assert speed.build_config("lesioncl", False, None).data.lesion_pairs == 0


def test_rates_table_and_exit_code_of_a_failed_case(tmp_path):
    case = {
        "method": "dpa",
        "config": "configs/dpa.py",
        "variant": "brain_pixel_axis0",
        "image_size": 128,
        "unit": "slice",
        "batch": 16,
        "score_batch": 16,
        "train_compile_sec": 10.0,
        "score_compile_sec": 2.0,
        "train_sec": 2.0,
        "train_cpu_sec": 3.9,
        "train_images_per_sec": 8.0,
        "score_part": "method.score",
        "score_sec": 0.5,
        "score_images_per_sec": 32.0,
        "train_flops": 100e9,
        "score_flops": 10e9,
        "peak_rss_bytes": 2e9,
        "other_cpus_busy": 0.0,
    }
    speed.add_rates(case, {"matmul": {"gflops_per_sec": 100.0}})
    assert case["train_gflops_per_sec"] == 50.0 and case["train_vs_matmul"] == 0.5
    assert case["score_gflops_per_sec"] == 20.0 and case["score_vs_matmul"] == 0.2
    report = {
        "env": {"jax": "x"},
        "baseline": {"matmul": {"gflops_per_sec": 100.0}},
        "cases": {"dpa": case, "picard": {"error": "picard failed: exit code 1"}},
    }
    out = tmp_path / "r.json"
    assert speed._write(report, str(out)) == 1
    rows = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("|")]
    assert len(rows) == 4
    assert "| dpa |" in rows[2] and "0.500/0.200" in rows[2]
    assert rows[3].startswith("| picard | error: picard failed")
    del report["cases"]["picard"]
    assert speed._write(report, str(out)) == 0


def test_a_failing_child_gives_its_error():
    result = timing.spawn_child("jaxad.bench.speed", "no_such_case", ["--quick"])
    assert result["error"].startswith("no_such_case failed: exit code 1: KeyError")
    assert result["wall_sec"] > 0
