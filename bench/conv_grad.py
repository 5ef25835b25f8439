r"""Kernel-gradient speed of `jaxad.ops.conv` against XLA's lowering, per layer and per step.

    python bench/conv_grad.py --out=conv_grad.json [--parts=layers,step,pieces,trace]
        [--batches=8,32] [--steps=N] [--steps_32=N] [--reps=N]

Parts (each in its own subprocess, so that memory and the XLA state are its own):
- `layers`: for every distinct conv shape of Lesion2Void at 224 px (U-Net and PatchGAN, batch 8)
  and a few representative ones of a PICARD-style inpainter (dilated 3x3 convs at 64x64 with 128
  channels, 5x5 stride 1 and 2) and a DPA-style autoencoder (3x3 at 64x64 with 128 channels, 4x4
  stride 2), the kernel gradient computed by `jaxad.ops.conv.conv2d(..., fast_kernel_grad=True)`
  ("ours") and by XLA's lowering of `lax.conv_general_dilated`'s gradient ("xla"), side by side:
  seconds (median of `--reps` calls each, alternated), GFLOP/s, `speedup` = xla / ours and
  `auto_uses_ours` (`jaxad.ops.conv.kernel_grad_helps`: which one the default picks). For
  context, XLA's forward pass and input gradient of the same conv. Both compute the same
  function (checked: max relative difference `max_rel_diff`).
- `step`: the full Lesion2Void training step (configs/lesion2void.py, 224 px, widths 64) through
  the library's own `methods.create`, `methods.init_state` and `train.make_train_step`, with
  `config.model.fast_conv_grad` 'auto' (the default: ours on the layers where
  `jaxad.ops.conv.kernel_grad_helps`), True (ours everywhere) and False (XLA's), at each batch of
  `--batches`. Reports seconds per step (median of `--steps` steps after a warm-up; `--steps_32`
  for batches of 32 and more, whose steps take tens of seconds), compile time, XLA's temporaries,
  `speedup` = off / auto and `speedup_on` = off / on.
- `pieces`: the step's parts at batch 8, timed on their own: U-Net and PatchGAN forward (train
  mode), forward + input gradient only (the kernel gradients are then dead code), forward + all
  gradients with the switch off and on; and a 2x2 max-pool, batch norm and 2x2 transposed conv
  at the U-Net's largest sizes.
- `pointwise`: ResNet-50's 1x1 convolutions at 128 px (lesion-based CL's views, batch 32):
  forward and both gradients through XLA's convolution (`fast_kernel_grad=False`) and through
  `conv2d(..., fast_kernel_grad=True)`, which runs them as one matrix product
  (`jaxad.ops.conv.pointwise`); seconds (median of `--reps` alternated calls), `speedup` =
  xla / ours, and the totals over the network's 1x1 layers (each shape times its count).
- `trace`: a `jax.profiler` trace of one training step (batch 8, switch on), its XLA operations
  grouped by network, forward/backward and kind (conv forward, input gradient, kernel gradient,
  transposed conv, batch norm, ...). Two threads run operations concurrently, so each instant is
  split evenly between the operations running then. `unattributed_sec` is traced wall time no
  operation claims: XLA's CPU matrix products (here mostly the kernel gradients' products, inside
  loops) run asynchronously and show up only partly, so take the kernel gradients' total from
  `pieces`.

FLOPs are analytic: 2 x multiply-adds of the convolution (zero padding included), the same for
the forward pass, the input gradient and the kernel gradient. `other_cpus_busy` per part is the
average number of CPUs other processes used meanwhile (see bench/lesion2void.py); timings mean
something only when it is about 0.

Output: one JSON object `{"env", "layers", "step", "pieces", "trace"}`, printed and written to
`--out`. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
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

PARTS = ("layers", "step", "pieces", "trace", "pointwise")

# (name, batch, size, in, out, kernel, stride, dilation, padding per side).
LAYERS = [
    # The Lesion2Void U-Net at 224 px: encoder, decoder (input = skip + upsampled), output.
    ("unet inc/conv1", 8, 224, 3, 64, 3, 1, 1, 1),
    ("unet inc/conv2, up4/conv2", 8, 224, 64, 64, 3, 1, 1, 1),
    ("unet down1/conv1", 8, 112, 64, 128, 3, 1, 1, 1),
    ("unet down1/conv2, up3/conv2", 8, 112, 128, 128, 3, 1, 1, 1),
    ("unet down2/conv1", 8, 56, 128, 256, 3, 1, 1, 1),
    ("unet down2/conv2, up2/conv2", 8, 56, 256, 256, 3, 1, 1, 1),
    ("unet down3/conv1", 8, 28, 256, 512, 3, 1, 1, 1),
    ("unet down3/conv2, up1/conv2", 8, 28, 512, 512, 3, 1, 1, 1),
    ("unet down4/conv1", 8, 14, 512, 1024, 3, 1, 1, 1),
    ("unet down4/conv2", 8, 14, 1024, 1024, 3, 1, 1, 1),
    ("unet up1/conv1", 8, 28, 1024, 512, 3, 1, 1, 1),
    ("unet up2/conv1", 8, 56, 512, 256, 3, 1, 1, 1),
    ("unet up3/conv1", 8, 112, 256, 128, 3, 1, 1, 1),
    ("unet up4/conv1", 8, 224, 128, 64, 3, 1, 1, 1),
    ("unet outc", 8, 224, 64, 3, 1, 1, 1, 0),
    # Its PatchGAN discriminator at 224 px.
    ("patchgan layer0", 8, 224, 3, 64, 4, 2, 1, 1),
    ("patchgan layer1", 8, 112, 64, 128, 4, 2, 1, 1),
    ("patchgan layer2", 8, 56, 128, 256, 4, 2, 1, 1),
    ("patchgan layer3", 8, 28, 256, 512, 4, 1, 1, 1),
    ("patchgan layer4", 8, 27, 512, 1, 4, 1, 1, 1),
    # The reference case.
    ("reference 3x3 128->128 at 112", 8, 112, 128, 128, 3, 1, 1, 1),
    # PICARD-style inpainter: dilated context convs, 5x5 convs.
    ("picard atrous d2", 8, 64, 128, 128, 3, 1, 2, 2),
    ("picard atrous d4", 8, 64, 128, 128, 3, 1, 4, 4),
    ("picard atrous d8", 8, 64, 128, 128, 3, 1, 8, 8),
    ("picard atrous d16", 8, 64, 128, 128, 3, 1, 16, 16),
    ("picard conv1 5x5", 8, 256, 3, 32, 5, 1, 1, 2),
    ("picard 5x5 stride 1", 8, 64, 128, 128, 5, 1, 1, 2),
    ("picard critic 5x5 stride 2", 8, 128, 64, 128, 5, 2, 1, 2),
    ("picard conv2 3x3 stride 2", 8, 256, 32, 64, 3, 2, 1, 1),
    # DPA-style autoencoder.
    ("dpa 3x3 128", 8, 64, 128, 128, 3, 1, 1, 1),
    ("dpa 4x4 stride 2", 8, 64, 128, 128, 4, 2, 1, 1),
]


def _log(msg: str) -> None:
    print(f"[conv_grad] {msg}", file=sys.stderr, flush=True)


def _median_time(fn, *args, reps: int) -> float:
    return statistics.median(l2v_bench._timed(fn, *args)[1] for _ in range(reps))


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def run_layers(opts: dict) -> dict:
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    import jax.numpy as jnp
    import numpy as np

    from jaxad.ops import conv

    rng = np.random.default_rng(0)
    rows = []
    for name, n, size, ci, co, k, stride, dil, pad in LAYERS:
        x = jnp.asarray(rng.standard_normal((n, size, size, ci), np.float32))
        kernel = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32) / (k * ci**0.5))
        args = dict(strides=stride, padding=((pad, pad), (pad, pad)), dilation=dil)

        def fwd(x, kernel, fast=False, args=args):
            return conv.conv2d(x, kernel, **args, fast_kernel_grad=fast)

        y = jax.eval_shape(fwd, x, kernel)
        dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))

        def kernel_grad(x, dy, fast, fwd=fwd, kernel=kernel):
            return jax.vjp(lambda w: fwd(x, w, fast), kernel)[1](dy)[0]

        def input_grad(kernel, dy, fwd=fwd, x=x):
            return jax.vjp(lambda v: fwd(v, kernel), x)[1](dy)[0]

        ours, _ = bench_common.compile_ahead(jax.jit(kernel_grad, static_argnums=2), x, dy, True)
        xla, _ = bench_common.compile_ahead(jax.jit(kernel_grad, static_argnums=2), x, dy, False)
        fwd_c, _ = bench_common.compile_ahead(jax.jit(fwd), x, kernel)
        dx_c, _ = bench_common.compile_ahead(jax.jit(input_grad), kernel, dy)
        a, b = np.asarray(ours(x, dy)), np.asarray(xla(x, dy))
        diff = float(np.abs(a - b).max() / np.abs(b).max())
        times = {"ours": [], "xla": []}
        for _ in range(opts["reps"]):  # Alternated, so that a slow spell hits both.
            times["ours"].append(l2v_bench._timed(ours, x, dy)[1])
            times["xla"].append(l2v_bench._timed(xla, x, dy)[1])
        ho, wo = y.shape[1:3]
        flops = 2.0 * n * ho * wo * ci * co * k * k
        row: dict[str, Any] = {
            "name": name,
            "input_nhwc": [n, size, size, ci],
            "kernel_hwio": [k, k, ci, co],
            "stride": stride,
            "dilation": dil,
            "padding": pad,
            "output_nhwc": list(y.shape),
            "flops": flops,
            "max_rel_diff": diff,
            # What the default ('auto' on CPU) picks for this layer.
            "auto_uses_ours": conv.kernel_grad_helps((k, k, ci, co), y.shape[1:3]),
        }
        for which in ("ours", "xla"):
            sec = statistics.median(times[which])
            row[f"kernel_grad_{which}_sec"] = sec
            row[f"kernel_grad_{which}_gflops_per_sec"] = flops / sec / 1e9
        row["speedup"] = row["kernel_grad_xla_sec"] / row["kernel_grad_ours_sec"]
        for label, fn, fargs in (
            ("forward", fwd_c, (x, kernel)),
            ("input_grad", dx_c, (kernel, dy)),
        ):
            sec = _median_time(fn, *fargs, reps=opts["reps"])
            row[f"{label}_xla_gflops_per_sec"] = flops / sec / 1e9
        _log(
            f"{name}: kernel grad ours {row['kernel_grad_ours_gflops_per_sec']:.0f}, xla "
            f"{row['kernel_grad_xla_gflops_per_sec']:.0f} GFLOP/s (x{row['speedup']:.2f}); "
            f"forward {row['forward_xla_gflops_per_sec']:.0f}, input grad "
            f"{row['input_grad_xla_gflops_per_sec']:.0f}"
        )
        rows.append(row)
        del ours, xla, fwd_c, dx_c
    return {"reps": opts["reps"], "other_cpus_busy": load.cpus(), "rows": rows}


# ---------------------------------------------------------------------------------------------
# Training step
# ---------------------------------------------------------------------------------------------


def _paper_setup(batch: int, fast: bool | str):
    jax = bench_common.setup_jax()
    from jaxad import methods, parallel

    config = l2v_bench._load_config("paper")
    config.batch_size = batch
    config.model.fast_conv_grad = fast
    mesh = parallel.make_mesh()
    method = methods.create(config)
    state = jax.block_until_ready(methods.init_state(method, config, mesh, batch))
    batches = [
        parallel.global_batch(mesh, l2v_bench._synthetic_batch(config, batch, seed))
        for seed in (0, 1)
    ]
    return config, mesh, method, state, batches


def run_step(batch: int, fast: bool | str, steps: int) -> dict:
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    from jaxad import train
    from jaxad.ops import conv

    config, mesh, method, state, batches = _paper_setup(batch, fast)
    assert method.generator.fast_conv_grad == conv.resolve_fast_kernel_grad(fast)
    step_fn = train.make_train_step(method, config, mesh)
    compiled, compile_sec = bench_common.compile_ahead(step_fn, state, batches[0], 1)
    memory = bench_common.memory(compiled)
    times, cpu = [], []
    for i in range(1 + steps):
        (state, metrics), sec, cpu_sec = l2v_bench._timed(compiled, state, batches[i % 2], i + 1)
        times.append(sec)
        cpu.append(cpu_sec)
        _log(f"step batch {batch} fast={fast}: {i + 1}/{1 + steps} {sec:.2f} s")
    return {
        "batch": batch,
        "fast_conv_grad": fast,
        "compile_sec": compile_sec,
        "warmup_sec": times[0],
        "sec_per_step_all": times[1:],
        "sec_per_step": statistics.median(times[1:]),
        "cpu_sec_per_step": statistics.median(cpu[1:]),
        "loss": float(metrics["loss"]),
        "temp_bytes": memory.get("temp_bytes"),
        "peak_rss_bytes": bench_common.peak_rss_bytes(),
        "other_cpus_busy": load.cpus(),
        "jax_backend": jax.default_backend(),
    }


# ---------------------------------------------------------------------------------------------
# Pieces of the step
# ---------------------------------------------------------------------------------------------


def run_pieces(opts: dict) -> dict:
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    import flax.linen as nn
    import jax.numpy as jnp

    from jaxad.models import layers
    from jaxad.models.patchgan import PatchGAN
    from jaxad.models.unet import UNet

    reps = opts["reps"]
    batch = 8
    x = jax.random.normal(jax.random.key(0), (batch, 224, 224, 3))

    def time_fn(fn, *args) -> float:
        compiled, _ = bench_common.compile_ahead(jax.jit(fn), *args)
        l2v_bench._timed(compiled, *args)
        return _median_time(compiled, *args, reps=reps)

    out: dict[str, Any] = {"batch": batch, "image_size": 224, "reps": reps}
    for name, model_cls in (("unet", UNet), ("patchgan", PatchGAN)):
        res = {}
        for fast in (False, True):
            model = model_cls(fast_conv_grad=fast)
            variables = jax.jit(lambda v, m=model: m.init(jax.random.key(1), v, train=False))(x[:1])

            def forward(params, images, model=model, variables=variables):
                y, _ = model.apply(
                    {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
                )
                return y

            def loss(params, images, forward=forward):
                return jnp.mean(forward(params, images) ** 2)

            params = variables["params"]
            if not fast:
                res["forward_sec"] = time_fn(forward, params, x)
                res["forward_input_grad_sec"] = time_fn(jax.grad(loss, argnums=1), params, x)
            key = "forward_all_grads_fast_sec" if fast else "forward_all_grads_xla_sec"
            res[key] = time_fn(jax.grad(loss, argnums=(0, 1)), params, x)
        res["input_grad_sec"] = res["forward_input_grad_sec"] - res["forward_sec"]
        for which in ("xla", "fast"):
            res[f"kernel_grads_{which}_sec"] = (
                res[f"forward_all_grads_{which}_sec"] - res["forward_input_grad_sec"]
            )
        _log(f"pieces {name}: {json.dumps({k: round(v, 3) for k, v in res.items()})}")
        out[name] = res

    # Memory-bound layers at the U-Net's largest sizes: forward + backward of each.
    a = jax.random.normal(jax.random.key(2), (batch, 224, 224, 64))
    b = jax.random.normal(jax.random.key(3), (batch, 112, 112, 128))

    def fwd_bwd(fn, *args):
        return time_fn(jax.grad(lambda *v: jnp.sum(jnp.sin(fn(*v))), argnums=0), *args)

    pool_ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    bn = layers.BatchNorm(use_running_average=False)
    bn_vars = bn.init(jax.random.key(0), a[:1])
    up = layers.ConvTranspose(64, 2, strides=2)
    up_vars = up.init(jax.random.key(0), b[:1])
    out["layers_fwd_bwd_sec"] = {
        "max_pool_2x2 224x224x64 (nn.max_pool)": fwd_bwd(pool_ref, a),
        "max_pool_2x2 224x224x64 (layers.max_pool_2x2)": fwd_bwd(layers.max_pool_2x2, a),
        "batch_norm 224x224x64": fwd_bwd(
            lambda v: bn.apply(bn_vars, v, mutable=["batch_stats"])[0], a
        ),
        "relu 224x224x64": fwd_bwd(jax.nn.relu, a),
        "conv_transpose 2x2 112->224, 128->64": fwd_bwd(lambda v: up.apply(up_vars, v), b),
    }
    _log(f"pieces layers: {json.dumps(out['layers_fwd_bwd_sec'])}")
    out["other_cpus_busy"] = load.cpus()
    return out


# ---------------------------------------------------------------------------------------------
# Profiler trace of one step, grouped by operation kind
# ---------------------------------------------------------------------------------------------

_MODULE = re.compile(r"^(inc|outc|down\d|up\d?|conv\d?|norm\d?|layer\d)$")


def _hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """Instruction name -> (opcode, op_name metadata, result shape), over all computations."""
    info = {}
    pattern = re.compile(r"\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\(")
    for line in hlo_text.splitlines():
        m = pattern.match(line)
        if m:
            op_name = re.search(r'op_name="([^"]*)"', line)
            info[m.group(1)] = (m.group(3), op_name.group(1) if op_name else "", m.group(2))
    return info


def _group(opcode: str, op_name: str, shape: str, batch: int) -> tuple[str, str, str]:
    """(network, forward/backward, kind) of one XLA operation, from its op_name metadata."""
    backward = "transpose(" in op_name
    parts = op_name.split("/")
    prim = parts[-1] if parts else ""
    mods = [p for p in parts if _MODULE.match(p)]
    last = mods[-1] if mods else ""
    net = "unet" if "UNet" in op_name else "patchgan" if "PatchGAN" in op_name else "step"
    if last.startswith("norm"):
        kind = "batch_norm"
    elif last == "up":  # the U-Net's up-convolution
        kind = "conv_transpose"
    elif last.startswith("conv") or last == "outc":
        if prim == "conv_general_dilated":
            activation = shape.startswith(f"f32[{batch},") or shape.startswith(f"bf16[{batch},")
            kind = ("conv_input_grad" if activation else "conv_kernel_grad") if backward else "conv"
        elif backward:
            kind = "conv_kernel_grad"  # the fast path: copies and matrix products
        else:
            kind = "conv (bias, fused ops)"
    elif opcode in ("reduce-window", "select-and-scatter") or "max_pool" in op_name:
        kind = "max_pool"
    elif not op_name:
        kind = "unnamed (XLA-made: e.g. copies, index arrays)"
    else:
        kind = "other: " + prim
    return net, "backward" if backward else "forward", kind


def run_trace(opts: dict) -> dict:
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    from jaxad import train

    batch = 8
    config, mesh, method, state, batches = _paper_setup(batch, True)
    compiled, _ = bench_common.compile_ahead(
        train.make_train_step(method, config, mesh), state, batches[0], 1
    )
    info = _hlo_instructions(compiled.as_text())
    state, _ = jax.block_until_ready(compiled(state, batches[0], 1))
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(compiled(state, batches[1], 2))
    untraced = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            jax.block_until_ready(compiled(state, batches[0], 3))
        (path,) = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        profile = jax.profiler.ProfileData.from_file(path)
    events = []
    for plane in profile.planes:
        for line in plane.lines:
            for ev in line.events:
                op = info.get(ev.name)
                # Loops and calls contain other events: count their bodies, not them.
                if op and op[0] not in ("while", "call", "conditional"):
                    events.append((ev.start_ns, ev.end_ns, ev.name))
    # Split each instant evenly between the operations running then.
    edges = collections.defaultdict(list)
    for start, end, name in events:
        edges[start].append((1, name))
        edges[end].append((-1, name))
    share = collections.Counter()
    running = collections.Counter()
    prev = None
    for t in sorted(edges):
        if prev is not None and running:
            k = sum(running.values())
            for name, c in running.items():
                share[name] += (t - prev) * c / k / 1e9
        for d, name in edges[t]:
            running[name] += d
            if not running[name]:
                del running[name]
        prev = t
    traced = (max(e for _, e, _ in events) - min(s for s, _, _ in events)) / 1e9
    groups = collections.Counter()
    kinds = collections.Counter()
    for name, sec in share.items():
        net, phase, kind = _group(*info[name], batch)
        groups[f"{net} {phase} {kind}"] += sec
        kinds[kind] += sec
    busy = sum(share.values())
    return {
        "batch": batch,
        "fast_conv_grad": True,
        "step_sec_untraced": untraced,
        "traced_span_sec": traced,
        "attributed_sec": busy,
        "unattributed_sec": traced - busy,
        "by_kind_sec": dict(kinds.most_common()),
        "by_group_sec": dict(groups.most_common()),
        "other_cpus_busy": load.cpus(),
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


# ResNet-50's 1x1 convolutions on 32 views of 128 px: (name, count, size, in, out, stride).
POINTWISE = [
    ("layer1 first reduce", 1, 32, 64, 64, 1),
    ("layer1 reduce", 2, 32, 256, 64, 1),
    ("layer1 expand", 3, 32, 64, 256, 1),
    ("layer1 downsample", 1, 32, 64, 256, 1),
    ("layer2 first reduce", 1, 32, 256, 128, 1),
    ("layer2 reduce", 3, 16, 512, 128, 1),
    ("layer2 expand", 4, 16, 128, 512, 1),
    ("layer2 downsample", 1, 32, 256, 512, 2),
    ("layer3 first reduce", 1, 16, 512, 256, 1),
    ("layer3 reduce", 5, 8, 1024, 256, 1),
    ("layer3 expand", 6, 8, 256, 1024, 1),
    ("layer3 downsample", 1, 16, 512, 1024, 2),
    ("layer4 first reduce", 1, 8, 1024, 512, 1),
    ("layer4 reduce", 2, 4, 2048, 512, 1),
    ("layer4 expand", 3, 4, 512, 2048, 1),
    ("layer4 downsample", 1, 8, 1024, 2048, 2),
]


def run_pointwise(opts: dict) -> dict:
    load = bench_common.OtherLoad()
    jax = bench_common.setup_jax()
    import jax.numpy as jnp
    import numpy as np

    from jaxad.ops import conv

    rng = np.random.default_rng(0)
    rows, totals = [], {"xla_sec": 0.0, "ours_sec": 0.0}
    for name, count, size, ci, co, stride in POINTWISE:
        x = jnp.asarray(rng.standard_normal((32, size, size, ci), np.float32))
        kernel = jnp.asarray(rng.standard_normal((1, 1, ci, co), np.float32) / ci**0.5)

        def all_passes(x, kernel, fast, stride=stride):
            def loss(x, kernel):
                y = conv.conv2d(x, kernel, stride, "VALID", fast_kernel_grad=fast, matmul_1x1=True)
                return jnp.sum(y * y)

            return jax.grad(loss, argnums=(0, 1))(x, kernel)

        fns = {
            k: jax.jit(lambda x, w, f=f: all_passes(x, w, f))
            for k, f in (("xla", False), ("ours", True))
        }
        got = {k: fn(x, kernel) for k, fn in fns.items()}  # compile, and check they agree
        diff = max(
            float(jnp.abs(a - b).max() / jnp.abs(b).max())
            for a, b in zip(got["ours"], got["xla"], strict=True)
        )
        times = {k: [] for k in fns}
        for _ in range(opts["reps"]):
            for k, fn in fns.items():
                times[k].append(l2v_bench._timed(fn, x, kernel)[1])
        row = {"name": name, "count": count, "size": size, "in": ci, "out": co, "stride": stride}
        for k in fns:
            row[f"{k}_sec"] = statistics.median(times[k])
            totals[f"{k}_sec"] += count * row[f"{k}_sec"]
        row["speedup"] = row["xla_sec"] / row["ours_sec"]
        row["max_rel_diff"] = diff
        rows.append(row)
        _log(f"pointwise {name}: x{row['speedup']:.2f}")
    totals["speedup"] = totals["xla_sec"] / totals["ours_sec"]
    return {
        "reps": opts["reps"],
        "rows": rows,
        "network_1x1": totals,
        "other_cpus_busy": load.cpus(),
    }


def _spawn(child: str, args: argparse.Namespace) -> dict:
    flags = [f"--reps={args.reps}", f"--steps={args.steps}", f"--steps_32={args.steps_32}"]
    return bench_common.spawn_child(__file__, child, flags)


def _run_child(child: str, args: argparse.Namespace) -> dict:
    if child == "env":
        return bench_common.env()
    if child == "layers":
        return run_layers({"reps": args.reps})
    if child == "pieces":
        return run_pieces({"reps": args.reps})
    if child == "trace":
        return run_trace({})
    if child == "pointwise":
        return run_pointwise({"reps": args.reps})
    batch, fast = child.removeprefix("step:").split(":")
    steps = args.steps_32 if int(batch) >= 32 else args.steps
    setting = {"on": True, "off": False, "auto": "auto"}[fast]
    return run_step(int(batch), setting, steps)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/conv_grad.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", help="where to write the JSON (required)")
    p.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS)
    )
    p.add_argument("--batches", default="8,32", help="training-step batches (default 8,32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per batch below 32 (5)")
    p.add_argument("--steps_32", type=int, default=2, help="timed steps at batch 32 and more (2)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per layer and piece (5)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        p.error(f"--parts: unknown {unknown or args.parts}; use a subset of {','.join(PARTS)}")
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    for name in ("steps", "steps_32", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        result = _run_child(args._child, args)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0

    report: dict[str, Any] = {"env": _spawn("env", args)}
    runs = [("env", report["env"])]  # every child's result, for the checks below
    if "layers" in args.parts:
        report["layers"] = _spawn("layers", args)
        runs.append(("layers", report["layers"]))
    if "step" in args.parts:
        report["step"] = {}
        for batch in args.batches:
            entry = {}
            for switch in ("auto", "on", "off"):
                entry[f"fast_conv_grad_{switch}"] = _spawn(f"step:{batch}:{switch}", args)
                runs.append((f"step {batch} {switch}", entry[f"fast_conv_grad_{switch}"]))
            off = entry["fast_conv_grad_off"]
            for switch, key in (("auto", "speedup"), ("on", "speedup_on")):
                on = entry[f"fast_conv_grad_{switch}"]
                if "sec_per_step" in on and "sec_per_step" in off:
                    entry[key] = off["sec_per_step"] / on["sec_per_step"]
                    _log(f"step batch {batch}: {key} x{entry[key]:.2f}")
            report["step"][str(batch)] = entry
    for part in ("pieces", "trace", "pointwise"):
        if part in args.parts:
            report[part] = _spawn(part, args)
            runs.append((part, report[part]))
    return bench_common.write_report(report, runs, args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
