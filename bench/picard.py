r"""PICARD's sampling throughput (vmap, lax.map, Python loop over M) and window skipping.

    python bench/picard.py --out=picard.json [--window_batches=1,4,8,32] [--calls=N]
        [--parts=vmapped,map,loop,dense,skip] [--dense_batch=N] [--dense_calls=N]
        [--crop=512x640] [--image=2000x2500] [--skip_image=768x1024] [--skip_batch=1]
        [--skip_stride=N] [--skip_full=2457x1996]
    python bench/picard.py --out=picard_smoke.json --smoke      # tiny model, checks the script

Model: configs/picard.py as published (generator width 32, 3,596,162 parameters; local critic
width 32; 256 px windows with the centred 128 px box blanked; M = 10 completions per window;
stride 32; the config's metrics MCD_image and MCD_feature), with random but fixed weights from
`method.init` (throughput does not depend on training). Windows and images are uniform noise
in the networks' [-1, 1] range (unit scale for `dense_map`). `--smoke`: the same with width 4
(critic width 4), 64 px windows, a 32 px box and M = 3, window batches 1,4, a 128 x 160 crop
and a 1000 x 1250 extrapolation target; it runs in under a minute and only checks the script.
`method.init` runs once, in the first child, which saves the parameters for the others.

Parts (each window batch and each part in its own subprocess, `bench/common.spawn_child`, so
that peak memory and the XLA state are its own):
- `vmapped`: `Picard.window_scores` with `picard.sampling='vmap'` (what 'auto' runs on GPU
  and TPU): one compiled call completes `window_batch` windows M times each (a `vmap` over
  windows of a `vmap` over the M dropout keys: one generator pass on window_batch x M samples)
  and computes their MCDs.
- `map`: the same scorer with `picard.sampling='map'` (what 'auto' runs on CPU): a `lax.map`
  over the M completions inside the compiled call, M generator passes on window_batch samples.
  `sampler[window_batch]` then holds `map_speedup` = vmapped / map seconds per call (and
  `map_cpu_speedup`, the same for CPU seconds), both from this run, and
  `map_max_abs_score_diff` (same keys: an error above 1e-3 of the largest score).
- `loop`: the same model driven one completion per call: a Python loop over m = 0 .. M - 1
  calling a jitted single-completion function (the generator with `sample=True` on the same
  `window_batch` windows, each window with its m-th dropout key, i.e. the keys the vmapped
  scorer uses), then one jitted distance function on the M completions. Same keys, same
  windows, so the scores are the vmapped scorer's (`max_abs_score_diff`); what differs is M
  generator passes on window_batch samples instead of one on window_batch x M.
- `dense`: `Picard.dense_map` on a unit-scale `--crop` image (default 512 x 640: a 9 x 13 grid
  of 117 windows at stride 32) at `--dense_batch` windows per call (default: the window batch
  with the lowest `sec_per_window` of the vmapped part, else the largest of
  `--window_batches`); the result is extrapolated to an `--image` (default 2000 x 2500, a DBT
  view's size: 55 x 71 = 3,905 windows), which takes hours on a 2-core CPU and is not run
  whole.

Every function is compiled ahead of time (`jitted.lower(...).compile()`), so compile time is
measured on its own and the timed calls run that executable; the persistent compilation cache
is off. Each timed call ends with `jax.block_until_ready`; one untimed warm-up call comes first.

Output: one JSON object `{"env", "setup", "sampler", "best_window_batch", "dense", "skip"}`,
printed and written to `--out`.
- `env`: versions, backend, CPU (as bench/lesion2void.py).
- `setup`: the config (`smoke`, window, box, M, stride, widths, dropout layers, metrics), the
  parameter counts `generator_params`, `local_critic_params` and `init_sec` (`method.init`).
- `sampler[window_batch]`: `vmapped` and `loop` (the children's results) and
  `speedup` = loop `sec_per_call` / vmapped `sec_per_call` (both measured in this run, same
  window batch); `max_abs_score_diff`: the largest difference between their scores (same keys,
  so only the summation order may differ between batch sizes; above 1e-3 of the largest score
  the run reports an error).
  Per child:
  - `completions_per_call` = window_batch x M.
  - `compile_sec`: trace + lower + XLA compile (for `loop`: the single-completion and the
    distance function together).
  - `first_call_sec`: the untimed warm-up call; `sec_per_call_all`: every timed call;
    `sec_per_call`: their median (`--calls` of them); `cpu_sec_per_call`: the CPU time of the
    process's threads over the same calls (median): unlike wall time it hardly changes when
    other processes compete for the CPUs. For `loop` a call is the whole loop: M
    single-completion calls and the distance call.
  - `completions_per_sec` = completions_per_call / sec_per_call; `sec_per_window` =
    sec_per_call / window_batch (M completions and the MCDs of one window).
  - `memory` (`vmapped`; `loop`: `single_memory` and `distance_memory`):
    `compiled.memory_analysis()` in bytes: arguments, outputs, aliased outputs, temporaries
    (the activations' working set) and generated code.
  - `xla_flops_per_call` (`vmapped`): XLA's FLOP count of the compiled scorer (a multiply-add
    counts 2) and `xla_gflops_per_sec` = that / sec_per_call / 1e9, the rate achieved.
  - `peak_rss_bytes`: the child process's peak resident set (model, executables, buffers).
  - `other_cpus_busy`: average number of CPUs other processes used meanwhile (/proc/stat);
    timings are comparable only when it is about 0, and the run warns above 0.1.
- `best_window_batch`: the vmapped window batch with the lowest `sec_per_window`.
- `dense`: `window_batch`; `crop` [H, W], `crop_grid` [rows, cols], `crop_windows`,
  `crop_chunks` (compiled calls: ceil(windows / window_batch), the last one padded);
  `compile_sec` of the chunk function; `warmup_sec` (one chunk call); `sec_all`, `sec` (median
  of `--dense_calls` calls of `dense_map` on the crop: cutting windows on the host, the
  compiled chunk calls, placing the map), `cpu_sec`; `crop_sec_per_window` = sec /
  crop_windows; `place_crop_sec`, `place_image_sec`: `jaxad.ops.heatmap.place` alone on a grid
  of random scores at the crop's and at the image's size; `image`, `image_grid`,
  `image_windows`, `image_chunks`; `image_sec_extrapolated`, an extrapolation, not a
  measurement: (sec - place_crop_sec) / crop_chunks x image_chunks + place_image_sec, i.e.
  seconds per computed window times the image's 3,905 windows rounded up to whole chunks, plus
  the full-size placement; `image_min_extrapolated` = that / 60. Memory: `chunk_memory`
  (`memory_analysis()` of the chunk executable, installed as the method's scorer so that
  `dense_map` runs exactly it), `peak_rss_after_warmup_bytes` (after compiling and one chunk
  call) and `peak_rss_bytes` (after the `dense_map` calls): device memory is bounded by one
  chunk, not by the image, so the two differ only by host arrays of the image's size (the
  image, its map; tens of MB at 2000 x 2500); `map_shape`,
  `map_finite` (False is reported as an error); `other_cpus_busy`.
- `skip`: `dense_map` on a DBT-like `--skip_image` (`dbt_like_image`: phantom texture in a half
  ellipse against the left border, exactly 0 outside) with `picard.ignore_black_regions`
  False and True, one compiled scorer for both (`--skip_batch` windows per call; sampling as
  'auto' resolves), calls alternated (`--dense_calls` each): `grid`, `windows`,
  `skipped_windows`, `skipped_share`, `background_share` (pixels), `chunks`,
  `chunks_skipping`; `sec_all`, `sec_skipping` (medians; `_all` lists), `cpu_sec_*`;
  `speedup` = sec_all / sec_skipping and `cpu_speedup`; `computed_windows_max_abs_diff`
  (the computed windows' scores with and without skipping: an error above 1e-3 of the largest
  score) and `skipped_windows_max_abs_value` (must be 0). `--skip_stride` (default: the
  config's 32) spaces the timed windows further apart, so that a paper-size model finishes on
  a large view (the time per window does not depend on the stride). `full_view`: the same
  layout at a DBT view's full size (`--skip_full`) and the config's stride, windows counted,
  not timed: `windows`, `skipped_windows`, `skipped_share`, and `cpu_sec_all_extrapolated` /
  `cpu_sec_skipping_extrapolated` = the timed CPU seconds per computed window x its windows /
  computed windows (an extrapolation, not a measurement).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import common as bench_common  # noqa: E402  (bench/common.py)
import lesion2void as l2v_bench  # noqa: E402  (bench/lesion2void.py: shared measurement helpers)

CONFIG_FILE = REPO / "configs" / "picard.py"
PARTS = ("vmapped", "map", "loop", "dense", "skip")
# The loop and the vmapped scorer compute the same scores; batch sizes may only reassociate sums.
SCORE_RTOL = 1e-3
DEFAULTS = {
    "paper": {
        "window_batches": "1,4,8,32",
        "calls": 3,
        "dense_calls": 1,
        "crop": "512x640",
        "image": "2000x2500",
        "skip_image": "768x1024",
        "skip_batch": 1,
        "skip_stride": 0,
        "skip_full": "2457x1996",
    },
    "smoke": {
        "window_batches": "1,4",
        "calls": 3,
        "dense_calls": 3,
        "crop": "128x160",
        "image": "1000x1250",
        "skip_image": "128x192",
        "skip_batch": 4,
        "skip_stride": 0,
        "skip_full": "256x384",
    },
}


def _log(msg: str) -> None:
    print(f"[picard] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Model and inputs shared by the children
# ---------------------------------------------------------------------------------------------


def load_config(smoke: bool):
    """configs/picard.py (paper settings); `smoke` shrinks the model, windows and M."""
    spec = importlib.util.spec_from_file_location("_picard_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if smoke:
        config.model.width = 4
        config.model.critic_width = 4
        config.picard.window_size = 64
        config.picard.box_size = 32
        config.picard.max_delta = 8
        config.picard.num_completions = 3
    return config


def init_params(config) -> dict:
    """{"g", "d_local"}: the scoring state from `method.init` with the config's seed."""
    jax = l2v_bench._setup_jax()

    from jaxad import methods

    state = methods.create(config).init(jax.random.fold_in(jax.random.key(config.seed), 0), None)
    return {"g": state["g"], "d_local": state["d_local"]}


def _setup(config, window_batch: int, params_file: str | None):
    """(method, scoring params, windows [B, S, S, C] uniform in [-1, 1], scoring key).

    The parameters are read from `params_file` (written once by the `env` child: `init` runs
    eagerly and takes several seconds) or, without one, initialised here.
    """
    jax = l2v_bench._setup_jax()
    import flax.serialization
    import numpy as np

    from jaxad import methods

    config.picard.window_batch = window_batch
    method = methods.create(config)
    if params_file and os.path.exists(params_file):
        with open(params_file, "rb") as f:
            params = jax.device_put(flax.serialization.msgpack_restore(f.read()))
    else:
        params = init_params(config)
    rng = np.random.default_rng(config.seed)
    shape = (window_batch, method.window, method.window, method.channels)
    windows = jax.device_put(rng.uniform(-1.0, 1.0, shape).astype(np.float32))
    return method, params, windows, jax.random.fold_in(jax.random.key(config.seed), 1)


def _timed_calls(fn, calls: int) -> dict:
    """One untimed warm-up call, then `calls` timed ones: their times and the last output."""
    _, first, _ = l2v_bench._timed(fn)
    runs = [l2v_bench._timed(fn) for _ in range(calls)]
    return {
        "first_call_sec": first,
        "sec_per_call_all": [r[1] for r in runs],
        "sec_per_call": statistics.median(r[1] for r in runs),
        "cpu_sec_per_call": statistics.median(r[2] for r in runs),
        "output": runs[-1][0],
    }


def _throughput(out: dict, window_batch: int, m: int) -> None:
    out["completions_per_call"] = window_batch * m
    out["completions_per_sec"] = window_batch * m / out["sec_per_call"]
    out["sec_per_window"] = out["sec_per_call"] / window_batch


def _scores_json(scores: dict) -> dict[str, list[float]]:
    import numpy as np

    return {k: np.asarray(v, np.float64).tolist() for k, v in scores.items()}


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------


def run_env(smoke: bool, params_file: str | None) -> dict:
    """Versions and machine, the model's settings and parameter counts; saves the parameters."""
    env = l2v_bench._env()
    import flax.serialization
    import jax

    from jaxad import methods

    config = load_config(smoke)
    method = methods.create(config)
    t0 = time.perf_counter()
    params = jax.block_until_ready(init_params(config))
    init_sec = time.perf_counter() - t0
    if params_file:
        with open(params_file, "wb") as f:
            f.write(flax.serialization.msgpack_serialize(jax.device_get(params)))
    count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))  # noqa: E731
    cfg = config.picard
    setup = {
        "config": "configs/picard.py" + (" (smoke: width 4, 64 px windows, M 3)" if smoke else ""),
        "smoke": smoke,
        "window_size": cfg.window_size,
        "box_size": cfg.box_size,
        "num_completions": cfg.num_completions,
        "stride": cfg.stride,
        "width": config.model.width,
        "critic_width": config.model.critic_width,
        "drop_rate": cfg.drop_rate,
        "dropout_layers": cfg.dropout_layers,
        "metrics": list(method.metrics),
        "placement": cfg.placement,
        "generator_params": count(params["g"]),
        "local_critic_params": count(params["d_local"]),
        "init_sec": init_sec,
    }
    return {"env": env, "setup": setup}


def run_vmapped(
    smoke: bool, window_batch: int, calls: int, params_file: str | None, sampling: str = "vmap"
) -> dict:
    """Times `Picard.window_scores` with `picard.sampling`: window_batch x M completions and
    their MCDs per call ('vmap': one generator pass; 'map': a `lax.map` of M passes)."""
    load = bench_common.OtherLoad()
    config = load_config(smoke)
    config.picard.sampling = sampling
    method, params, windows, key = _setup(config, window_batch, params_file)
    import numpy as np

    first = np.uint32(0)
    compiled, compile_sec = l2v_bench._compile(method.window_scores, params, windows, key, first)
    _log(f"{sampling} {window_batch}: compiled in {compile_sec:.1f} s")
    out: dict[str, Any] = {"window_batch": window_batch, "compile_sec": compile_sec}
    out["sampling"] = sampling
    out["memory"] = l2v_bench._memory(compiled)
    if sampling == "vmap":  # XLA counts a `lax.map` body once, not M times
        out["xla_flops_per_call"] = l2v_bench._flops(compiled)
    timing = _timed_calls(lambda: compiled(params, windows, key, first), calls)
    out["scores"] = _scores_json(timing.pop("output"))
    out.update(timing)
    _throughput(out, window_batch, method.num_completions)
    if "xla_flops_per_call" in out:
        out["xla_gflops_per_sec"] = out["xla_flops_per_call"] / out["sec_per_call"] / 1e9
    _log(f"{sampling} {window_batch}: {out['sec_per_call']:.2f} s per call")
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


def loop_functions(method):
    """(single, distances): one completion of every window per call, and the window scores.

    `single(g_params, windows, key, first_index, m)` -> [N, S, S, C], the m-th completion of
    each window with the m-th of the keys `split(fold_in(key, first_index + i), M)` that
    `Picard.window_scores` gives window i; `distances(d_params, windows, completions)` turns
    the list of M completions into {metric: [N]} as `Picard.window_scores` does.
    """
    import jax
    import jax.numpy as jnp

    from jaxad.methods import picard
    from jaxad.models.picard import compose

    total = method.num_completions
    mask = jnp.asarray(method.test_mask())
    lo, hi = (method.window - method.box) // 2, (method.window + method.box) // 2

    def single(g_params, windows, key, first_index, m):
        keys = picard.window_keys(key, first_index, windows.shape[0])
        keys = jax.vmap(lambda k: jax.random.split(k, total)[m])(keys)
        masked = windows * (1.0 - mask)

        def one(x, k):
            _, x2 = method.generator.apply(
                {"params": g_params}, x[None], mask[None], sample=True, rngs={"dropout": k}
            )
            return compose(x, x2[0], mask)

        return jax.vmap(one)(masked, keys)

    def distances(d_params, windows, completions):
        centres = jnp.stack(completions, axis=1)[:, :, lo:hi, lo:hi]
        truth = windows[:, lo:hi, lo:hi]
        n, m = centres.shape[:2]
        norm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=-1))  # noqa: E731
        dist = {}
        if any(k.endswith("_image") for k in method.metrics):
            dist["image"] = norm((truth[:, None] - centres).reshape(n, m, -1))
        if any(k.endswith("_feature") for k in method.metrics):

            def features(v):
                f = method.local_critic.apply({"params": d_params}, v, method="features")
                return f.reshape(v.shape[0], -1)

            f_centres = features(centres.reshape(n * m, *centres.shape[2:])).reshape(n, m, -1)
            dist["feature"] = norm(features(truth)[:, None] - f_centres)
        return {
            metric: picard.reduce_distances(dist[metric.split("_")[1]], metric.split("_")[0])
            for metric in method.metrics
        }

    return jax.jit(single), jax.jit(distances)


def run_loop(smoke: bool, window_batch: int, calls: int, params_file: str | None) -> dict:
    """Times the same scores computed by a Python loop of M single-completion calls."""
    load = bench_common.OtherLoad()
    config = load_config(smoke)
    method, params, windows, key = _setup(config, window_batch, params_file)
    import jax
    import numpy as np

    single, distances = loop_functions(method)
    g, d = params["g"]["params"], params["d_local"]["params"]
    first = np.uint32(0)
    t0 = time.perf_counter()
    single_c = single.lower(g, windows, key, first, np.int32(0)).compile()
    shapes = [jax.ShapeDtypeStruct(windows.shape, windows.dtype)] * method.num_completions
    distances_c = distances.lower(d, windows, shapes).compile()
    compile_sec = time.perf_counter() - t0
    _log(f"loop {window_batch}: compiled in {compile_sec:.1f} s")

    def sample():
        completions = [single_c(g, windows, key, first, np.int32(m)) for m in range(len(shapes))]
        return distances_c(d, windows, completions)

    out: dict[str, Any] = {"window_batch": window_batch, "compile_sec": compile_sec}
    out["single_memory"] = l2v_bench._memory(single_c)
    out["distance_memory"] = l2v_bench._memory(distances_c)
    timing = _timed_calls(sample, calls)
    out["scores"] = _scores_json(timing.pop("output"))
    out.update(timing)
    _throughput(out, window_batch, method.num_completions)
    _log(f"loop {window_batch}: {out['sec_per_call']:.2f} s per call")
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


def run_dense(
    smoke: bool,
    window_batch: int,
    calls: int,
    crop: tuple,
    image: tuple,
    params_file: str | None,
) -> dict:
    """Times `Picard.dense_map` on a crop and extrapolates to the full image."""
    load = bench_common.OtherLoad()
    config = load_config(smoke)
    method, params, windows, key = _setup(config, window_batch, params_file)
    import numpy as np

    from jaxad.ops import heatmap

    first = np.arange(window_batch, dtype=np.uint32)
    compiled, compile_sec = l2v_bench._compile(method.window_scores_at, params, windows, key, first)
    # `grid_scores` calls the instance's scorer with these argument shapes: run exactly this
    # executable, so that `chunk_memory` describes what `dense_map` runs.
    method.window_scores_at = compiled
    out: dict[str, Any] = {"window_batch": window_batch, "compile_sec": compile_sec}
    out["sampling"] = method.sampling
    out["stride"] = int(config.picard.stride)
    out["chunk_memory"] = l2v_bench._memory(compiled)
    _, out["warmup_sec"], _ = l2v_bench._timed(lambda: compiled(params, windows, key, first))
    out["peak_rss_after_warmup_bytes"] = bench_common.peak_rss_bytes()

    rng = np.random.default_rng(config.seed)
    picture = rng.uniform(0.0, 1.0, (*crop, method.channels)).astype(np.float32)
    rows, cols = method.grid(*crop)
    out["crop"] = list(crop)
    out["crop_grid"] = [int(rows.size), int(cols.size)]
    out["crop_windows"] = int(rows.size * cols.size)
    out["crop_chunks"] = math.ceil(out["crop_windows"] / window_batch)
    times, cpu = [], []
    for i in range(calls):
        heat, sec, cpu_sec = l2v_bench._timed(lambda: method.dense_map(params, picture, key))
        times.append(sec)
        cpu.append(cpu_sec)
        _log(f"dense {window_batch}: call {i + 1}/{calls} {sec:.2f} s")
    out["sec_all"] = times
    out["sec"] = statistics.median(times)
    out["cpu_sec"] = statistics.median(cpu)
    out["crop_sec_per_window"] = out["sec"] / out["crop_windows"]
    out["map_shape"] = list(np.shape(heat))
    out["map_finite"] = bool(np.isfinite(heat).all())
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()

    def place_sec(height: int, width: int) -> float:
        r, c = method.grid(height, width)
        grid = rng.uniform(0.0, 1.0, (r.size, c.size)).astype(np.float32)
        t0 = time.perf_counter()
        heatmap.place(
            grid,
            height,
            width,
            method.window,
            method.stride,
            method.cfg.placement,
            cover_border=method.cfg.cover_border,
        )
        return time.perf_counter() - t0

    out["place_crop_sec"] = place_sec(*crop)
    out["place_image_sec"] = place_sec(*image)
    rows, cols = method.grid(*image)
    out["image"] = list(image)
    out["image_grid"] = [int(rows.size), int(cols.size)]
    out["image_windows"] = int(rows.size * cols.size)
    out["image_chunks"] = math.ceil(out["image_windows"] / window_batch)
    per_chunk = max(out["sec"] - out["place_crop_sec"], 0.0) / out["crop_chunks"]
    out["image_sec_extrapolated"] = per_chunk * out["image_chunks"] + out["place_image_sec"]
    out["image_min_extrapolated"] = out["image_sec_extrapolated"] / 60.0
    out["other_cpus_busy"] = load.cpus()
    return out


def dbt_like_image(rng, height: int, width: int):
    """(unit-scale [H, W, 1] image, background [H, W] bool): a DBT view's layout.

    A phantom texture (`jaxad.data.phantom.normal_image`, kept in [0.02, 1]) inside a half
    ellipse against the left border (the breast at the chest wall, semi-axes 0.48 H and 0.8 W),
    exactly 0 outside: the background the original's `ignore_black_regions` skips.
    """
    import numpy as np

    from jaxad.data import phantom

    texture = phantom.normal_image(rng, max(height, width))[0][:height, :width]
    r, c = np.mgrid[:height, :width]
    inside = ((r - (height - 1) / 2) / (0.48 * height)) ** 2 + (c / (0.8 * width)) ** 2 <= 1
    image = np.where(inside, np.clip(texture, 0.02, 1.0), 0.0).astype(np.float32)
    return image[..., None], ~inside


def run_skip(
    smoke: bool,
    window_batch: int,
    calls: int,
    size: tuple,
    params_file: str | None,
    stride: int = 0,
    full: tuple = (),
) -> dict:
    """Times `dense_map` on a DBT-like image with and without `ignore_black_regions`."""
    load = bench_common.OtherLoad()
    config = load_config(smoke)
    config_stride = int(config.picard.stride)
    if stride:
        config.picard.stride = stride
    method, params, windows, key = _setup(config, window_batch, params_file)
    import numpy as np

    from jaxad import methods
    from jaxad.methods import picard

    config.picard.ignore_black_regions = True
    skipping = methods.create(config)
    indices = np.arange(window_batch, dtype=np.uint32)
    compiled, compile_sec = l2v_bench._compile(
        method.window_scores_at, params, windows, key, indices
    )
    method.window_scores_at = skipping.window_scores_at = compiled  # one executable for both
    l2v_bench._timed(lambda: compiled(params, windows, key, indices))
    image, background = dbt_like_image(np.random.default_rng(config.seed), *size)
    rows, cols = method.grid(*size)
    black = picard.black_windows(image, rows, cols, method.window)
    out: dict[str, Any] = {"window_batch": window_batch, "compile_sec": compile_sec}
    out["sampling"] = method.sampling
    out["stride"] = int(config.picard.stride)
    out["image"] = list(size)
    out["grid"] = [int(rows.size), int(cols.size)]
    out["windows"] = int(black.size)
    out["skipped_windows"] = int(black.sum())
    out["skipped_share"] = float(black.mean())
    out["background_share"] = float(background.mean())
    out["chunks"] = math.ceil(black.size / window_batch)
    out["chunks_skipping"] = math.ceil((black.size - black.sum()) / window_batch)
    times: dict[str, list] = {"all": [], "skipping": []}
    cpu: dict[str, list] = {"all": [], "skipping": []}
    maps = {}
    for i in range(calls):  # alternated, so that a change of load hits both alike
        for name, m in (("all", method), ("skipping", skipping)):
            maps[name], sec, cpu_sec = l2v_bench._timed(lambda m=m: m.dense_map(params, image, key))
            times[name].append(sec)
            cpu[name].append(cpu_sec)
            _log(f"skip: {name} call {i + 1}/{calls} {sec:.2f} s")
    for name in times:
        out[f"sec_{name}_all"] = times[name]
        out[f"sec_{name}"] = statistics.median(times[name])
        out[f"cpu_sec_{name}"] = statistics.median(cpu[name])
    out["speedup"] = out["sec_all"] / out["sec_skipping"]
    out["cpu_speedup"] = out["cpu_sec_all"] / out["cpu_sec_skipping"]
    # The computed windows score as without skipping: the maps agree where no skipped window
    # reaches (the cubic interpolation spreads a skipped window's 0 up to two grid cells).
    grid_all = method.grid_scores(params, image, key)[method.image_metric]
    grid_skip = skipping.grid_scores(params, image, key)[method.image_metric]
    out["computed_windows_max_abs_diff"] = float(np.abs(grid_all - grid_skip)[~black].max())
    out["computed_windows_max_abs_score"] = float(np.abs(grid_all[~black]).max(initial=0.0))
    out["skipped_windows_max_abs_value"] = float(np.abs(grid_skip[black]).max(initial=0.0))
    if full:
        config.picard.stride = config_stride
        big, _ = dbt_like_image(np.random.default_rng(config.seed), *full)
        full_rows, full_cols = methods.create(config).grid(*full)
        full_black = picard.black_windows(big, full_rows, full_cols, method.window)
        # CPU seconds per computed window: less skewed than wall time by other processes.
        per_all = out["cpu_sec_all"] / black.size
        per_skip = out["cpu_sec_skipping"] / max(int(black.size - black.sum()), 1)
        n_full, n_skip = int(full_black.size), int(full_black.sum())
        out["full_view"] = {
            "image": list(full),
            "stride": config_stride,
            "windows": n_full,
            "skipped_windows": n_skip,
            "skipped_share": n_skip / n_full,
            "cpu_sec_all_extrapolated": per_all * n_full,
            "cpu_sec_skipping_extrapolated": per_skip * (n_full - n_skip),
        }
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


# ---------------------------------------------------------------------------------------------
# Driver: one subprocess per measurement, results combined here
# ---------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/picard.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="where to write the JSON (required)")
    p.add_argument("--smoke", action="store_true", help="tiny model, to check the script")
    p.add_argument("--parts", default=",".join(PARTS), help="subset of " + ",".join(PARTS))
    p.add_argument("--window_batches", help="windows per call (default 1,4,8,32; smoke 1,4)")
    p.add_argument("--calls", type=int, help="timed calls per window batch (default 3)")
    p.add_argument("--dense_batch", type=int, help="window batch of dense (default: the best)")
    p.add_argument("--dense_calls", type=int, help="timed dense_map calls (default 1; smoke 3)")
    p.add_argument("--crop", help="dense_map image, HxW (default 512x640; smoke 128x160)")
    p.add_argument("--image", help="extrapolation target, HxW (default 2000x2500; smoke 1000x1250)")
    p.add_argument("--skip_image", help="DBT-like image of skip, HxW (default 768x1024)")
    p.add_argument("--skip_batch", type=int, help="window batch of skip (default 1; smoke 4)")
    p.add_argument("--skip_stride", type=int, help="stride of skip's timed windows (0: config)")
    p.add_argument("--skip_full", help="full DBT view size of skip's window count, HxW")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    defaults = DEFAULTS["smoke" if args.smoke else "paper"]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        p.error(f"--parts: unknown {unknown or args.parts}; use a subset of {','.join(PARTS)}")
    try:
        args.window_batches = [int(b) for b in args.window_batches.split(",") if b.strip()]
        args.crop, args.image = _size(args.crop), _size(args.image)
        args.skip_image = _size(args.skip_image)
        args.skip_full = _size(args.skip_full)
    except ValueError as e:
        p.error(f"--window_batches, --crop, --image: {e}")
    if not args.window_batches or min(args.window_batches) < 1:
        p.error("--window_batches must be positive integers")
    for name in ("calls", "dense_calls", "dense_batch", "skip_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    return args


def _flags(args: argparse.Namespace, params_file: str) -> list[str]:
    crop, image = "x".join(map(str, args.crop)), "x".join(map(str, args.image))
    flags = [f"--calls={args.calls}", f"--dense_calls={args.dense_calls}"]
    flags.append(f"--_params={params_file}")
    flags += [f"--crop={crop}", f"--image={image}", f"--skip_batch={args.skip_batch}"]
    flags.append("--skip_image=" + "x".join(map(str, args.skip_image)))
    flags.append("--skip_full=" + "x".join(map(str, args.skip_full)))
    flags.append(f"--skip_stride={args.skip_stride}")
    return flags + (["--smoke"] if args.smoke else [])


def _run_child(child: str, args: argparse.Namespace) -> dict:
    if child == "env":
        return run_env(args.smoke, args._params)
    part, batch = child.split(":")
    if part == "vmapped":
        return run_vmapped(args.smoke, int(batch), args.calls, args._params)
    if part == "map":
        return run_vmapped(args.smoke, int(batch), args.calls, args._params, sampling="map")
    if part == "skip":
        size = args.skip_image
        return run_skip(
            args.smoke,
            int(batch),
            args.dense_calls,
            size,
            args._params,
            stride=args.skip_stride,
            full=args.skip_full,
        )
    if part == "loop":
        return run_loop(args.smoke, int(batch), args.calls, args._params)
    return run_dense(args.smoke, int(batch), args.dense_calls, args.crop, args.image, args._params)


def _compare_scores(a: dict, b: dict) -> tuple[float, float]:
    """(largest |a - b| over all metrics and windows, largest |a|) of two children's scores."""
    pairs = [
        (x, y) for k in a["scores"] for x, y in zip(a["scores"][k], b["scores"][k], strict=True)
    ]
    return max(abs(x - y) for x, y in pairs), max(abs(x) for x, _ in pairs)


def _score_check(vmapped: dict, other: dict, name: str) -> tuple[str, float]:
    """(an error message, or '' within SCORE_RTOL; the largest score difference) of the child
    `other` (`name`) against the vmapped child."""
    diff, scale = _compare_scores(vmapped, other)
    if diff <= SCORE_RTOL * max(scale, 1.0):
        return "", diff
    return f"the {name}'s scores differ from the vmapped ones by {diff:.3g}", diff


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        result = _run_child(args._child, args)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        flags = _flags(args, os.path.join(tmp, "params.msgpack"))
        report, runs = _measure(
            args, lambda child: bench_common.spawn_child(__file__, child, flags)
        )
    return bench_common.write_report(report, runs, args.out, _log)


def _measure(args: argparse.Namespace, spawn) -> tuple[dict, list]:
    """Runs the children in order: `env` (which saves the parameters), sampler parts, dense."""
    first = spawn("env")
    report: dict[str, Any] = {
        "env": first.get("env", {"error": first.get("error")}),
        "setup": first.get("setup", {}),
        "sampler": {},
    }
    runs = [("env", first)]
    for batch in args.window_batches:
        entry: dict[str, Any] = {}
        for part in ("vmapped", "map", "loop"):
            if part in args.parts:
                entry[part] = spawn(f"{part}:{batch}")
                runs.append((f"{part} {batch}", entry[part]))
        vmapped, loop = entry.get("vmapped", {}), entry.get("loop", {})
        mapped = entry.get("map", {})
        if "sec_per_call" in vmapped and "sec_per_call" in mapped:
            entry["map_speedup"] = vmapped["sec_per_call"] / mapped["sec_per_call"]
            entry["map_cpu_speedup"] = vmapped["cpu_sec_per_call"] / mapped["cpu_sec_per_call"]
            error, entry["map_max_abs_score_diff"] = _score_check(vmapped, mapped, "map")
            _log(f"window batch {batch}: map x{entry['map_speedup']:.2f} against vmap")
            if error:
                entry["error"] = error
                runs.append((f"map scores {batch}", entry))
        if "sec_per_call" in vmapped and "sec_per_call" in loop:
            entry["speedup"] = loop["sec_per_call"] / vmapped["sec_per_call"]
            error, entry["max_abs_score_diff"] = _score_check(vmapped, loop, "loop")
            _log(f"window batch {batch}: speedup x{entry['speedup']:.2f}")
            if error:
                entry["error"] = error
                runs.append((f"scores {batch}", entry))
        for result in (vmapped, loop, mapped):
            result.pop("scores", None)
        report["sampler"][str(batch)] = entry
    timed = {
        int(b): e["vmapped"]["sec_per_window"]
        for b, e in report["sampler"].items()
        if "sec_per_window" in e.get("vmapped", {})
    }
    report["best_window_batch"] = min(timed, key=timed.get) if timed else None
    if "dense" in args.parts:
        batch = args.dense_batch or report["best_window_batch"] or max(args.window_batches)
        report["dense"] = dense = spawn(f"dense:{batch}")
        if dense.get("map_finite") is False:
            dense["error"] = "the dense map is not finite"
        runs.append(("dense", dense))
    if "skip" in args.parts:
        report["skip"] = skip = spawn(f"skip:{args.skip_batch}")
        scale = max(skip.get("computed_windows_max_abs_score", 0.0), 1.0)
        if skip.get("computed_windows_max_abs_diff", 0.0) > SCORE_RTOL * scale:
            skip["error"] = "skipping changed the computed windows' scores"
        if skip.get("skipped_windows_max_abs_value", 0.0) != 0.0:
            skip["error"] = "skipped windows do not score 0"
        runs.append(("skip", skip))
    return report, runs


if __name__ == "__main__":
    sys.exit(main())
