r"""What bfloat16 compute (`config.model.dtype`) costs or gains per method on this machine.

    python bench/precision.py --out=precision.json [--methods=lesion2void,picard,...]
        [--size=demo|tiny] [--steps=N] [--parts=steps,conv]

Parts (each method, and the conv part, in its own subprocess):
- `steps`: one training step of each method (its `:demo` config, or `--size=tiny`: the tiny
  sizes of tests/test_precision.py) on a synthetic batch, built once with `model.dtype`
  'float32' and once with 'bfloat16' in the same process, both compiled first, then timed
  alternately (`--steps` calls each, median), so both see the same machine state. Reports
  seconds per step, compile time, XLA's temporaries and `speedup` = float32 / bfloat16
  (above 1: bfloat16 is faster). `model.fast_conv_grad` stays at its default ('auto').
- `conv`: `jaxad.ops.conv.conv2d`'s kernel gradient by matrix products (`fast_kernel_grad`)
  against XLA's, in float32 and bfloat16, on a few U-Net and PICARD conv shapes: seconds,
  `speedup` of bfloat16 over float32 for each path, and the bfloat16 gradients' relative error
  against the float32 ones (both paths), which says the fast path works in bfloat16.

`other_cpus_busy` is the average number of CPUs other processes used meanwhile
(bench/common.py): the timings mean something only when it is about 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import common as bench_common  # noqa: E402  (bench/common.py)

METHODS = ("lesion2void", "picard", "simclr", "dpa", "morphaeus", "lesioncl", "dr_grading")
DTYPES = ("float32", "bfloat16")

# Test-sized overrides (tests/test_precision.py) for `--size=tiny`.
TINY = {
    "lesion2void": {"data.image_size": 32, "model.width": 4, "model.disc_width": 4},
    "picard": {
        "data.crop_size": 32,
        "data.image_size": 32,
        "picard.window_size": 32,
        "picard.box_size": 16,
        "picard.max_delta": 4,
        "model.width": 4,
        "model.critic_width": 4,
    },
    "simclr": {"model.hidden": 16, "model.out_dim": 8, "model.vgg_width": 8},
    "dpa": {"data.image_size": 16, "model.nf": 4, "model.latent_dim": 4, "model.vgg_width": 8},
    "morphaeus": {"model.vgg_width": 4, "model.widths": (4, 4, 8, 8), "data.image_size": 16},
    "lesioncl": {"model.width": 4, "data.image_size": 32, "lcl.patch_size": 16},
    "dr_grading": {"model.width": 4, "data.image_size": 32},
}


def _log(msg: str) -> None:
    print(f"[precision] {msg}", file=sys.stderr, flush=True)


def _config(name: str, size: str, dtype: str):
    """The method's demo config (with `size` overrides and `dtype`), and its training size."""
    import importlib

    module = {"simclr": "simclr_vgg19"}.get(name, name)
    config = importlib.import_module(f"configs.{module}").get_config("demo")
    overrides = {"model.dtype": dtype, **(TINY[name] if size == "tiny" else {})}
    if name == "dpa":
        overrides["dpa.vgg_weights"] = ""
    from jaxad import run_config

    return run_config.override(config, overrides)


def _batch(name: str, config) -> dict:
    """A synthetic training batch with the keys and shapes the method's pipeline gives."""
    import numpy as np

    n = int(config.batch_size)
    s = int(config.picard.window_size if name == "picard" else config.data.image_size)
    c = int(config.data.channels)
    rng = np.random.default_rng(0)
    low = -1.0 if name in ("picard", "dpa") else 0.0
    boxes = np.zeros((n, 3, 4), np.float32)
    boxes[:, 0] = np.asarray([10, 12, 14, 15]) * s / 32
    return {
        "image": rng.uniform(low, 1.0, (n, s, s, c)).astype(np.float32),
        "fov": np.ones((n, s, s), np.float32),
        "mask": np.zeros((n, s, s), np.float32),
        "label": np.zeros(n, np.int32),
        "grade": np.arange(n, dtype=np.int32) % 5,
        "boxes": boxes,
        "num_boxes": np.ones(n, np.int32),
        "valid": np.ones(n, bool),
    }


def run_steps(name: str, size: str, steps: int) -> dict:
    """Both dtypes of one method, compiled in turn, then timed alternately."""
    import jax
    import jax.numpy as jnp

    from jaxad import methods

    jax.config.update("jax_enable_compilation_cache", False)  # real compile times
    load = bench_common.OtherLoad()
    built = {}
    for dtype in DTYPES:
        config = _config(name, size, dtype)
        method = methods.create(config)
        batch = {k: jnp.asarray(v) for k, v in _batch(name, config).items()}
        state = jax.block_until_ready(jax.jit(method.init)(jax.random.key(0), batch))
        t0 = time.perf_counter()
        compiled = jax.jit(method.train_step).lower(state, batch, jax.random.key(1)).compile()
        compile_sec = time.perf_counter() - t0
        memory = compiled.memory_analysis()
        # A warm-up call (not timed); the state is not donated, so it can be reused.
        jax.block_until_ready(compiled(state, batch, jax.random.key(1)))
        built[dtype] = (compiled, state, batch)
        _log(f"{name} {dtype}: compiled in {compile_sec:.1f} s")
        built[dtype + "_info"] = {
            "compile_sec": compile_sec,
            "temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0)),
            "batch_shape": list(batch["image"].shape),
        }
    runs: dict[str, list] = {d: [] for d in DTYPES}
    losses: dict[str, float] = {}
    for i in range(steps):
        for dtype in DTYPES if i % 2 == 0 else DTYPES[::-1]:
            compiled, state, batch = built[dtype]
            key = jax.random.key(2 + i)
            out = {}

            def call(compiled=compiled, state=state, batch=batch, key=key, out=out):
                out["m"] = jax.block_until_ready(compiled(state, batch, key))[1]

            runs[dtype].append(bench_common.timed_call(call))
            losses[dtype] = float(out["m"]["loss"])
    result: dict[str, Any] = {"method": name, "size": size}
    for dtype in DTYPES:
        result[dtype] = {
            **built[dtype + "_info"],
            **bench_common.summary(runs[dtype]),
            "loss": losses[dtype],
        }
    result["speedup"] = result["float32"]["sec"] / result["bfloat16"]["sec"]
    result["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    result["other_cpus_busy"] = load.cpus()
    return result


# (name, batch, height, width, in channels, out channels, kernel, stride, dilation)
CONV_SHAPES = (
    ("unet_3x3_64_at_112", 8, 112, 112, 64, 64, 3, 1, 1),
    ("unet_3x3_128_at_56", 8, 56, 56, 128, 128, 3, 1, 1),
    ("unet_rgb_first_at_224", 8, 224, 224, 3, 64, 3, 1, 1),
    ("picard_dilated_3x3_128_at_64", 16, 64, 64, 128, 128, 3, 1, 4),
    ("picard_5x5_s2_64_at_128", 16, 128, 128, 32, 64, 5, 2, 1),
)


def _conv_loss(conv2d, stride: int, pad, dil: int, fast: bool, kernel, x):
    """Half the squared norm of a conv's output (float32), whose kernel gradient is timed."""
    y = conv2d(x, kernel, (stride,) * 2, pad, (dil,) * 2, fast_kernel_grad=fast)
    return (y.astype("float32") ** 2).sum() * 0.5


def _ready(fn, *args):
    return fn(*args).block_until_ready()


def run_conv(reps: int) -> dict:
    """Kernel gradients of single convs: ours / XLA's, float32 / bfloat16."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxad.ops import conv

    load = bench_common.OtherLoad()
    rows = []
    for name, n, h, w, ci, co, k, stride, dil in CONV_SHAPES:
        rng = np.random.default_rng(0)
        x32 = jnp.asarray(rng.normal(size=(n, h, w, ci)), jnp.float32)
        k32 = jnp.asarray(rng.normal(size=(k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
        pad = [(dil * (k - 1) // 2,) * 2] * 2
        fns, grads = {}, {}
        for dtype in DTYPES:
            x, kern = x32.astype(dtype), k32.astype(dtype)
            for fast in (True, False):
                loss = functools.partial(_conv_loss, conv.conv2d, stride, pad, dil, fast)
                grad = jax.jit(jax.grad(loss)).lower(kern, x).compile()
                grads[dtype, fast] = np.asarray(grad(kern, x), np.float32)
                fns[dtype, fast] = (grad, kern, x)
        times: dict = {key: [] for key in fns}
        for _ in range(reps):
            for key, (fn, kern, x) in fns.items():
                times[key].append(bench_common.timed_call(functools.partial(_ready, fn, kern, x)))
        sec = {key: statistics.median(t for t, _ in v) for key, v in times.items()}
        ref = grads["float32", False]
        err = {
            fast: float(np.linalg.norm(grads["bfloat16", fast] - ref) / np.linalg.norm(ref))
            for fast in (True, False)
        }
        row = {
            "shape": name,
            "ours_f32_sec": sec["float32", True],
            "ours_bf16_sec": sec["bfloat16", True],
            "xla_f32_sec": sec["float32", False],
            "xla_bf16_sec": sec["bfloat16", False],
            "ours_bf16_speedup": sec["float32", True] / sec["bfloat16", True],
            "xla_bf16_speedup": sec["float32", False] / sec["bfloat16", False],
            "ours_over_xla_bf16": sec["bfloat16", False] / sec["bfloat16", True],
            "ours_bf16_rel_err": err[True],
            "xla_bf16_rel_err": err[False],
            "ours_f32_vs_xla_f32_rel_err": float(
                np.linalg.norm(grads["float32", True] - ref) / np.linalg.norm(ref)
            ),
            "auto_uses_ours": conv.kernel_grad_helps((k, k, ci, co), (h // stride, w // stride)),
        }
        _log(json.dumps(row))
        rows.append(row)
    return {"rows": rows, "other_cpus_busy": load.cpus()}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="precision.json")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--size", default="demo", choices=("demo", "tiny"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--parts", default="steps,conv")
    p.add_argument("--_child", default="", help=argparse.SUPPRESS)
    p.add_argument("--_result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown --methods {sorted(unknown)}; use any of {','.join(METHODS)}")
    return args


def _flags(args) -> list[str]:
    return [f"--size={args.size}", f"--steps={args.steps}", f"--reps={args.reps}"]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        if args._child == "env":
            result = bench_common.env()
        elif args._child == "conv":
            result = run_conv(args.reps)
        else:
            result = run_steps(args._child.split(":", 1)[1], args.size, args.steps)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0
    report: dict[str, Any] = {"env": bench_common.spawn_child(__file__, "env", [])}
    runs = [("env", report["env"])]
    if "steps" in args.parts:
        report["steps"] = {}
        for name in args.methods:
            result = bench_common.spawn_child(__file__, f"steps:{name}", _flags(args))
            report["steps"][name] = result
            runs.append((name, result))
            if "speedup" in result:
                _log(f"{name}: bfloat16 speedup x{result['speedup']:.2f}")
    if "conv" in args.parts:
        report["conv"] = bench_common.spawn_child(__file__, "conv", _flags(args))
        runs.append(("conv", report["conv"]))
    return bench_common.write_report(report, runs, args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
