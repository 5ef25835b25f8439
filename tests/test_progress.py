"""Progress a person can follow: compile lines, ETAs without compile time, loop and demo lines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxad import writers


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(writers.time, "perf_counter", c)
    return c


@pytest.fixture
def lines(monkeypatch):
    out = []
    monkeypatch.setattr(writers, "log_info", lambda msg, *a: out.append(msg % a))
    return out


def test_eta_after_a_resume_leaves_out_the_compilation(clock):
    progress = writers.Progress(total_steps=1000, first_step=500)
    clock.now = 60.0  # The first step after the resume: 60 s of compilation.
    progress.started(501)
    clock.now = 61.0  # Then 10 steps/s.
    rate = progress.update(511)
    assert rate["steps_per_sec"] == pytest.approx(10.0)
    assert rate["eta_sec"] == pytest.approx(48.9)
    assert "ETA 0m48s" in writers.format_progress(511, 1000, {}, 10.0, rate["eta_sec"])


def test_first_window_without_steps_has_no_eta(clock):
    progress = writers.Progress(total_steps=10, first_step=0)
    clock.now = 20.0
    progress.started(1)
    assert math.isinf(progress.update(1)["eta_sec"])  # Unknown, not 20 s per step.
    assert "ETA ?" in writers.format_progress(1, 10, {}, 0.0, math.inf)


def test_count_progress_lines_every_tenth_with_eta(clock, lines):
    progress = writers.CountProgress("scoring split 'test'", 100, quiet_sec=5.0)
    clock.now = 30.0  # The first batch compiled: not part of the rate.
    progress.update(10)
    for done in range(20, 101, 10):
        clock.now += 2.0  # 5 images/s from here on.
        progress.update(done)
    assert lines[0] == "scoring split 'test': 20/100 (20%), ETA 0m16s"
    assert len(lines) == 8  # 20 % ... 90 %; the end is the caller's own line.
    assert lines[-1].startswith("scoring split 'test': 90/100 (90%)")


def test_count_progress_is_quiet_for_quick_loops(clock, lines):
    progress = writers.CountProgress("checking", 50, quiet_sec=5.0)
    for done in range(1, 50):
        clock.now += 0.01
        progress.update(done)
    assert lines == []


def test_count_progress_every_n_seconds(clock, lines):
    progress = writers.CountProgress("scoring", 10_000, every_sec=30.0, quiet_sec=0.0)
    progress.update(1)
    for done in range(2, 200):
        clock.now += 1.0
        progress.update(done)
    assert len(lines) == 6  # one every 30 s over 198 s (less than a tenth is done)


def test_timed_first_call_logs_compilation_once(clock, lines):
    calls = []

    def fn(x):
        calls.append(x)
        clock.now += 12.5
        return x + 1

    timed = writers.timed_first_call(fn, "the training step")
    assert timed(1) == 2 and timed(2) == 3
    assert calls == [1, 2]
    assert lines == ["compiling the training step ...", "compiled the training step in 12.5 s"]


def test_demo_generation_says_where_and_how_long(tmp_path, lines):
    from jaxad.data import demo

    def generate(folder, seed):
        (folder / demo.MARKER).write_text(json.dumps({"seed": seed}))
        return folder

    root = demo.ensure_generated("toy_v1", generate, tmp_path / "toy")
    assert lines[0] == f"generating the toy_v1 demo data in {root} (once) ..."
    assert lines[1].startswith("generated the toy_v1 demo data in ")
    lines.clear()
    demo.ensure_generated("toy_v1", generate, tmp_path / "toy")
    assert lines == []  # Already there: nothing to say.


def test_eval_reports_progress_and_overlays_with_title(tmp_path, lines, monkeypatch):
    """`accumulate_batched` logs its count; the overlay PNG has a title row and a colour bar."""
    import ml_collections
    from PIL import Image

    from jaxad import parallel
    from jaxad.data import pipeline, sources
    from jaxad.evals import core

    batch = {
        "id": np.array(["test/crack/000.png", ""], dtype=object),
        "label": np.array([1, -1]),
        "grade": np.array([-1, -1]),
        "has_mask": np.array([True, False]),
        "mask": np.zeros((2, 16, 16), np.float32),
        "fov": np.ones((2, 16, 16), np.float32),
        "image_uint8": np.zeros((2, 16, 16, 3), np.uint8),
        "valid": np.array([True, False]),
    }
    monkeypatch.setattr(sources, "get_source", lambda data, split: [0])
    monkeypatch.setattr(pipeline, "source_batches", lambda *a, **k: iter([batch]))
    monkeypatch.setattr(parallel, "local_batch_size", lambda *a, **k: 2)
    config = ml_collections.ConfigDict({"eval": {"batch_size": 2}, "data": {}})
    acc = core.MapAccumulator(pixel_metrics=False, num_overlays=2)
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, 4, 4] = 1.0
    core.accumulate_batched(config, "test", None, lambda local: (maps, np.array([0.5, 0])), acc)
    assert any(line.startswith("scored 1 images of split 'test' in") for line in lines)
    result = acc.finish("test")
    core.write_reports(str(tmp_path), {"step": 1}, [("", result)])
    png = tmp_path / "overlays" / "test_crack_000_label1.png"
    panel = np.asarray(Image.open(png))
    assert panel.shape[0] > 128 and panel.shape[1] > 3 * 128  # Enlarged, titled, colour bar.
    assert (panel[:14] < 128).any()  # The title's text.


def test_metric_writer_close_on_a_full_disk_is_a_warning_not_a_traceback(tmp_path, caplog):
    writer = writers.MetricWriter(str(tmp_path), enabled=True)
    writer.write_scalars(1, {"loss": 0.5})

    def full_disk():
        raise OSError(28, "No space left on device")

    writer._tb.close = full_disk
    with caplog.at_level("WARNING", logger="jaxad"):
        writer.close()
    assert "could not finish writing the metrics" in caplog.text
    writer.close()  # closing again is a no-op
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_timed_first_call_keeps_ahead_of_time_lowering():
    import jax
    import jax.numpy as jnp

    fn = writers.timed_first_call(jax.jit(lambda x: 2 * x), "doubling")
    compiled = fn.lower(jnp.ones(3)).compile()
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 2 * np.ones(3))
    np.testing.assert_array_equal(fn(jnp.ones(3)), 2 * np.ones(3))
