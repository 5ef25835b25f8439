"""bench/profile_lesioncl.py: thunks of a real trace summed by what their HLO computes."""

from __future__ import annotations

import gzip
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
from conftest import load_bench_script


def _load():
    return load_bench_script("profile_lesioncl")


def test_kinds_of_a_traced_conv_pool_and_norm(tmp_path):
    prof = _load()

    def f(x, k):
        y = jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return (y - y.mean(axis=(0, 1, 2))).sum()

    x, k = jnp.ones((4, 32, 32, 8)), jnp.ones((3, 3, 8, 16))
    compiled = jax.jit(jax.grad(f, argnums=1)).lower(x, k).compile()
    hlo = prof.instructions(compiled.as_text())
    assert hlo and all(isinstance(shape, str) for shape, _ in hlo.values())
    jax.block_until_ready(compiled(x, k))
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        jax.block_until_ready(compiled(x, k))
    events = json.load(gzip.open(next(tmp_path.rglob("perfetto_trace.json.gz"))))
    events = events["traceEvents"] if isinstance(events, dict) else events
    got = prof.summarize(events, hlo, steps=1, top=3)
    assert set(got["ms_per_step"]) == set(prof.KINDS)
    assert got["ms_per_step"]["convolution"] > 0
    assert got["ms_per_step"]["reduce-window"] > 0  # the pool's derivative
    assert abs(sum(got["share"].values()) - 1) < 0.01
    assert len(got["slowest"]) == 3 and all(s["shape"] != "?" for s in got["slowest"])


def test_kind_rules():
    prof = _load()
    assert prof.kind("ynn_fusion.3", "fusion convolution add") == "convolution"
    assert prof.kind("ynn_fusion.4", "fusion dot") == "matrix product"
    assert prof.kind("wrapped_reduce-window.1", "fusion reduce-window") == "reduce-window"
    assert prof.kind("ynn_fusion.5", "fusion multiply reduce") == "reduction"
    assert prof.kind("transpose_copy_fusion.2", "fusion copy transpose") == "transpose or copy"
    assert prof.kind("add_select_fusion", "fusion add select compare") == "elementwise"
