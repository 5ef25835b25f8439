r"""Lesion2Void speed, FLOPs and memory on this machine, against matmul and conv baselines.

    python bench/lesion2void.py --out=bench_l2v.json [--cases=paper,demo] [--steps=N]
        [--score_batch=N] [--score_calls=N] [--score_warmup=N] [--paper_batch=N]

Cases (synthetic random batches; no dataset is read):
- `paper`: configs/lesion2void.py as published: 224 px, U-Net width 64, PatchGAN width 64,
  batch 32 (`--paper_batch`). On a 2-core CPU a step takes about 50 s, so by default only
  2 steps are timed and scoring is timed on one call of 8 images (about 1.5 min); the default
  run takes about 5 minutes there.
- `demo`: configs/lesion2void.py:demo: 128 px, widths 16, batch 16.

Everything goes through the library's own code: `methods.create`, `methods.init_state`,
`train.make_train_step`, `core.make_score_fn`, `parallel.make_mesh` and
`parallel.global_batch`. The jitted functions are compiled ahead of time
(`jitted.lower(...).compile()`), so the compile time is measured on its own and the timed calls
run that same executable. The persistent compilation cache is turned off. Each case runs in its
own subprocess, so its peak RSS is its own; the baselines run in one more subprocess first.

Output: one JSON object `{"env", "baseline", "cases": {"paper", "demo"}}`, printed and written
to `--out`. Per case (train_* for the training step, score_* for `method.score`):
- `*_compile_sec`: trace + lower + XLA compile of the jitted function.
- `train_sec_per_step`: median wall time of `--steps` steps after one warm-up step, each ended
  by `jax.block_until_ready` (input pipeline excluded: batches are already on device);
  `train_images_per_sec` = batch size / that. `train_cpu_sec_per_step` is the CPU time of
  the process's threads over the same steps (median): it hardly changes when other processes
  compete for the CPUs, unlike wall time, so it tells a slow machine from a busy one.
- `score_sec_per_call`: median wall time of `--score_calls` calls of the compiled score function
  (36 test lattices per image, i.e. 36 U-Net forwards), after `score_warmup_calls` untimed
  calls (none for paper: the executable is compiled ahead, so the first call does not
  compile); `score_images_per_sec` = score batch / that; `score_cpu_sec_per_call` is its CPU
  time. `score_postprocess_sec_per_image` is the host-side image score (Otsu and connected
  components) that evaluation adds per image.
- `*_flops`: XLA's count for the compiled function (`compiled.cost_analysis()["flops"]`; a
  multiply-add counts 2). XLA counts the body of a while loop once, and `method.score` loops
  over the lattices in chunks of `l2v.score_chunk` (`lax.map`), so `score_flops` is
  36 x score batch x the XLA count of one U-Net forward per image; the raw count is kept as
  `score_flops_xla_raw` (about score_flops / trips).
- `*_gflops_per_sec`: flops / median time / 1e9, the achieved rate; `*_gflops_vs_matmul` and
  `*_gflops_vs_conv_fwd` divide it by the baselines' rates measured in the same run.
- `*_memory`: `compiled.memory_analysis()` in bytes: arguments, outputs, outputs aliased to
  donated arguments, temporaries (the working set of activations) and generated code (the CPU
  backend reports 0 for it).
- `peak_rss_bytes`: the case process's peak resident set (`resource.getrusage`), which includes
  the Python runtime, both executables and their buffers.
- `other_cpus_busy` (per case and for the baselines): the average number of CPUs that other
  processes used meanwhile (machine busy time from /proc/stat minus this process's). Timings
  are only comparable when it is about 0; the run warns when it is above 0.1.

Baselines (same process layout, same devices): `matmul` is a jitted 2048x2048 @ 2048x2048
float32 product, `conv_fwd` one 3x3 128->128 convolution forward on an 8x112x112x128 NHWC batch
(`lax.conv_general_dilated`, SAME padding); each is the median of `--baseline_reps` timed calls
after a warm-up. They show what fraction of this machine's dense float32 rate the method reaches.
Their `flops` is XLA's count too (`flops_analytic` is 2 x multiply-adds; for the conv XLA leaves
out the zero padding at the border, as it does for the U-Net's convs).

The run is single-process: all local devices form the mesh and batch sizes are global.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common as bench_common  # bench/common.py, next to this script

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "lesion2void.py"
CASES = ("paper", "demo")

# Per-case defaults, chosen so the default run stays under about ten minutes on 2 CPU cores.
DEFAULTS = {
    "paper": {"steps": 2, "score_batch": 8, "score_calls": 1, "score_warmup": 0},
    "demo": {"steps": 10, "score_batch": 16, "score_calls": 3, "score_warmup": 1},
}

MATMUL_N = 2048
CONV_SHAPE = (8, 112, 112, 128)  # NHWC input of the conv baseline; the kernel is 3x3, 128->128.


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Measurements shared by the children
# ---------------------------------------------------------------------------------------------


def _timed(fn, *args) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process's threads) of one blocking call."""
    import jax

    c0, t0 = bench_common.cpu_sec(), time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0, bench_common.cpu_sec() - c0


def run_baseline(reps: int) -> dict:
    """Env block plus the matmul and conv-forward rates of this machine."""
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    import jax.numpy as jnp
    import numpy as np

    def measure(fn, *args) -> dict:
        compiled, _ = bench_common.compile_ahead(jax.jit(fn), *args)
        flops = bench_common.flops(compiled)
        _timed(compiled, *args)  # Warm-up.
        runs = [_timed(compiled, *args)[1:] for _ in range(reps)]
        sec = statistics.median(r[0] for r in runs)
        return {
            "flops": flops,
            "sec": sec,
            "cpu_sec": statistics.median(r[1] for r in runs),
            "gflops_per_sec": flops / sec / 1e9,
        }

    rng = np.random.default_rng(0)
    n = MATMUL_N
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    matmul = measure(lambda x, y: x @ y, a, b)
    matmul.update(shape=f"{n}x{n} @ {n}x{n} float32", flops_analytic=2.0 * n**3)
    _log(f"matmul {matmul['gflops_per_sec']:.1f} GFLOP/s")

    x = jnp.asarray(rng.standard_normal(CONV_SHAPE, np.float32))
    c = CONV_SHAPE[-1]
    w = jnp.asarray(rng.standard_normal((3, 3, c, c), np.float32) * 0.05)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    conv_fwd = measure(conv, x, w)
    bsz, h, wd, _ = CONV_SHAPE
    conv_fwd.update(
        shape=f"{bsz}x{h}x{wd}x{c} NHWC, 3x3 {c}->{c}, SAME, float32",
        flops_analytic=2.0 * bsz * h * wd * c * c * 9,
    )
    _log(f"conv_fwd {conv_fwd['gflops_per_sec']:.1f} GFLOP/s")
    return {
        "env": bench_common.env(),
        "baseline": {
            "reps": reps,
            "other_cpus_busy": load.cpus(),
            "matmul": matmul,
            "conv_fwd": conv_fwd,
        },
        "peak_rss_bytes": bench_common.peak_rss_bytes(),
    }


def _load_config(variant: str):
    spec = importlib.util.spec_from_file_location("_l2v_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None if variant == "paper" else variant)


def _synthetic_batch(config, batch_size: int, seed: int) -> dict:
    """A normalised random batch with the training pipeline's keys and a circular FOV."""
    import numpy as np

    from jaxad import methods

    rng = np.random.default_rng(seed)
    batch = methods.example_batch(config, batch_size)
    s = config.data.image_size
    batch["image"] = rng.standard_normal(batch["image"].shape).astype(np.float32)
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    batch["fov"][:] = (yy**2 + xx**2 <= (0.45 * s) ** 2).astype(np.float32)
    return batch


def _num_params(tree) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(tree)))


def run_case(case: str, opts: dict) -> dict:
    """Times, counts and sizes one config's training step and scoring."""
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    import numpy as np

    from jaxad import methods, parallel, train
    from jaxad.evals import core
    from jaxad.ops import lattice

    config = _load_config(case)
    if case == "paper":
        config.batch_size = opts["paper_batch"]
    mesh = parallel.make_mesh()
    method = methods.create(config)
    local_bs = parallel.local_batch_size(config.batch_size, mesh)
    score_bs = parallel.local_batch_size(opts["score_batch"], mesh, key="score_batch")
    out: dict[str, Any] = {
        "config": "configs/lesion2void.py" + ("" if case == "paper" else f":{case}"),
        "image_size": config.data.image_size,
        "unet_width": config.model.width,
        "disc_width": config.model.disc_width,
        "batch_size": config.batch_size,
        "model_config": json.loads(config.model.to_json_best_effort()),
        "l2v_config": json.loads(config.l2v.to_json_best_effort()),
    }

    # Training step.
    t0 = time.perf_counter()
    state = jax.block_until_ready(methods.init_state(method, config, mesh, local_bs))
    out["init_sec"] = time.perf_counter() - t0
    out["generator_params"] = _num_params(state["g"]["params"])
    out["discriminator_params"] = _num_params(state["d"]["params"])
    batches = [
        parallel.global_batch(mesh, _synthetic_batch(config, local_bs, seed)) for seed in (0, 1)
    ]
    step_fn = train.make_train_step(method, config, mesh)
    compiled, out["train_compile_sec"] = bench_common.compile_ahead(step_fn, state, batches[0], 1)
    out["train_flops"] = bench_common.flops(compiled)
    out["train_memory"] = bench_common.memory(compiled)
    _log(f"{case}: train step compiled in {out['train_compile_sec']:.1f} s")
    times, cpu = [], []
    for i in range(1 + opts["steps"]):
        (state, metrics), sec, cpu_sec = _timed(compiled, state, batches[i % 2], i + 1)
        times.append(sec)
        cpu.append(cpu_sec)
        _log(f"{case}: train step {i + 1}/{1 + opts['steps']} {sec:.2f} s")
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{case}: training loss is {loss}")
    out["train_warmup_sec"] = times[0]
    out["train_steps_timed"] = opts["steps"]
    out["train_sec_per_step_all"] = times[1:]
    out["train_sec_per_step"] = statistics.median(times[1:])
    out["train_cpu_sec_per_step"] = statistics.median(cpu[1:])
    out["train_images_per_sec"] = config.batch_size / out["train_sec_per_step"]
    out["train_gflops_per_sec"] = out["train_flops"] / out["train_sec_per_step"] / 1e9
    del compiled

    # Scoring: the 36 test lattices, through the evaluation path's jitted score function.
    score_fn = core.make_score_fn(method, mesh)
    sbatch = parallel.global_batch(mesh, _synthetic_batch(config, score_bs, 2))
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    compiled, out["score_compile_sec"] = bench_common.compile_ahead(score_fn, state, sbatch, key)
    _log(f"{case}: score compiled in {out['score_compile_sec']:.1f} s")
    n_lattices = int(lattice.test_phases(config.l2v.grid, config.l2v.test_step).shape[0])
    chunk = int(config.l2v.score_chunk)
    variables = {k: state["g"][k] for k in ("params", "batch_stats")}
    forward = jax.jit(lambda v, x: method.generator.apply(v, x, train=False))
    fwd_compiled, _ = bench_common.compile_ahead(forward, variables, sbatch["image"])
    fwd_flops_per_image = bench_common.flops(fwd_compiled) / opts["score_batch"]
    del fwd_compiled
    out["score_batch_size"] = opts["score_batch"]
    out["score_lattices"] = n_lattices
    out["score_chunk"] = chunk
    out["score_flops_xla_raw"] = bench_common.flops(compiled)
    out["score_forward_flops_per_image"] = fwd_flops_per_image
    out["score_flops"] = n_lattices * opts["score_batch"] * fwd_flops_per_image
    out["score_memory"] = bench_common.memory(compiled)
    out["score_loop_trips"] = -(-n_lattices // chunk)
    times, cpu = [], []
    n_calls = opts["score_warmup"] + opts["score_calls"]
    for i in range(n_calls):
        result, sec, cpu_sec = _timed(compiled, state, sbatch, jax.random.fold_in(key, i))
        times.append(sec)
        cpu.append(cpu_sec)
        _log(f"{case}: score call {i + 1}/{n_calls} {sec:.2f} s")
    timed = times[opts["score_warmup"] :]
    out["score_warmup_calls"] = opts["score_warmup"]
    out["score_calls_timed"] = opts["score_calls"]
    out["score_first_call_sec"] = times[0]
    out["score_sec_per_call_all"] = timed
    out["score_sec_per_call"] = statistics.median(timed)
    out["score_cpu_sec_per_call"] = statistics.median(cpu[opts["score_warmup"] :])
    out["score_images_per_sec"] = opts["score_batch"] / out["score_sec_per_call"]
    out["score_gflops_per_sec"] = out["score_flops"] / out["score_sec_per_call"] / 1e9
    host = {k: np.asarray(v) for k, v in result.items()}
    t0 = time.perf_counter()
    method.image_scores(host)
    out["score_postprocess"] = config.score.image_score
    out["score_postprocess_sec_per_image"] = (time.perf_counter() - t0) / opts["score_batch"]
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


# ---------------------------------------------------------------------------------------------
# Driver: one subprocess per measurement, results combined here
# ---------------------------------------------------------------------------------------------


def _case_options(case: str, args: argparse.Namespace) -> dict:
    d = DEFAULTS[case]
    pick = lambda name: d[name] if getattr(args, name) is None else getattr(args, name)
    return {
        "steps": pick("steps"),
        "score_batch": pick("score_batch"),
        "score_calls": pick("score_calls"),
        "score_warmup": pick("score_warmup"),
        "paper_batch": args.paper_batch,
    }


def _spawn(child: str, args: argparse.Namespace) -> dict:
    """Runs `--_child=child` in a fresh interpreter and returns its JSON (or the error)."""
    flags = [f"--paper_batch={args.paper_batch}", f"--baseline_reps={args.baseline_reps}"]
    for name in ("steps", "score_batch", "score_calls", "score_warmup"):
        if getattr(args, name) is not None:
            flags.append(f"--{name}={getattr(args, name)}")
    result = bench_common.spawn_child(__file__, child, flags)
    if "SIGKILL" in result.get("error", ""):
        result["error"] += " (try --paper_batch=16)"
    return result


def _add_ratios(case: dict, baseline: dict) -> None:
    for part in ("train", "score"):
        rate = case.get(f"{part}_gflops_per_sec")
        if rate is None:
            continue
        for name in ("matmul", "conv_fwd"):
            ref = baseline.get(name, {}).get("gflops_per_sec")
            if ref:
                case[f"{part}_gflops_vs_{name}"] = rate / ref


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/lesion2void.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", help="where to write the JSON (required)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: paper,demo")
    p.add_argument("--steps", type=int, help="timed train steps (default: paper 2, demo 10)")
    p.add_argument("--score_batch", type=int, help="score batch (default: paper 8, demo 16)")
    p.add_argument("--score_calls", type=int, help="timed score calls (default: paper 1, demo 3)")
    p.add_argument(
        "--score_warmup", type=int, help="untimed score calls first (default: paper 0, demo 1)"
    )
    p.add_argument("--paper_batch", type=int, default=32, help="paper training batch (32)")
    p.add_argument("--baseline_reps", type=int, default=5, help="timed calls per baseline")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        p.error(f"--cases: unknown {unknown or cases}; use a subset of {','.join(CASES)}")
    args.cases = cases
    for name in ("steps", "score_batch", "score_calls", "paper_batch", "baseline_reps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    if args.score_warmup is not None and args.score_warmup < 0:
        p.error(f"--score_warmup must be at least 0, got {args.score_warmup}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        sys.path.insert(0, str(REPO))  # `import jaxad` from a checkout without `pip install -e`.
        if args._child == "baseline":
            result = run_baseline(args.baseline_reps)
        else:
            result = run_case(args._child, _case_options(args._child, args))
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0

    base = _spawn("baseline", args)
    report = {
        "env": base.get("env", {}),
        "baseline": base.get("baseline", {"error": base.get("error")}),
        "cases": {},
    }
    for case in args.cases:
        result = _spawn(case, args)
        _add_ratios(result, report["baseline"])
        report["cases"][case] = result
    runs = [("baseline", report["baseline"]), *report["cases"].items()]
    return bench_common.write_report(report, runs, args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
