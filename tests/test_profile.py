"""`config.profile_steps`: a JAX profiler trace of chosen training steps in workdir/profile."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from configs import common
from jaxad import train


def test_profile_steps_writes_a_trace_of_the_chosen_steps(fundus_root, tmp_path):
    # The window outlasts the run: the trace is closed when the loop ends.
    config = tiny_config(fundus_root, total_steps=3, profile_steps="2,9")
    config.eval.enabled = False
    train.run(config, str(tmp_path))
    traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_off_by_default():
    assert common.get_config().profile_steps == ""


@pytest.mark.parametrize("value", ["", " "])
def test_empty_means_off(value):
    assert train.profile_window(value) is None


def test_window_is_parsed():
    assert train.profile_window("10,15") == (10, 15)
    assert train.profile_window(" 3 , 4 ") == (3, 4)


@pytest.mark.parametrize("value", ["5,5", "6,5", "0,3", "a,b", "1.5,3", "4", "1,2,3"])
def test_bad_window_is_a_one_line_error_naming_the_key(value, tmp_path):
    with pytest.raises(ValueError, match=r"config\.profile_steps") as e:
        train.profile_window(value)
    assert "\n" not in str(e.value)
    config = tiny_config(tmp_path, profile_steps=value)
    with pytest.raises(ValueError, match=r"config\.profile_steps"):
        train.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_trace_covers_steps_n_to_m_minus_1_waiting_for_each(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(train.jax.profiler, "start_trace", lambda d: calls.append(("start", d)))
    monkeypatch.setattr(train.jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    monkeypatch.setattr(train.jax, "block_until_ready", lambda x: calls.append(("wait", x)))
    profiler = train._Profiler((3, 5), str(tmp_path))
    for step in range(1, 8):
        profiler.before(step)
        profiler.after(step, step)
    profiler.stop()
    assert calls == [("start", str(tmp_path / "profile")), ("wait", 3), ("wait", 4), ("stop",)]
