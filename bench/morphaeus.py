r"""MorphAEus speed: jaxad's training step and scoring against the original PyTorch code.

    python bench/morphaeus.py --out=morphaeus.json                       # jaxad only
    python bench/morphaeus.py --out=morphaeus.json \
        --torch_python=/work/torchvenv/bin/python --original=/tmp/morphaeus_orig
        [--batch=64] [--steps=3] [--score_batch=64] [--score_calls=3] [--threads=N]
        [--torch_parts=train_morph,train_morph_vgg_frozen,...]

The paper's network and losses as `configs/morphaeus.py` has them by default (128 px grey
images, widths 16..256 over 7 levels, the deformer, VGG19 width 64 for the perceptual loss with
random weights, which are as fast as ImageNet ones; BatchNorm 'frozen' as the original), batch
64, on random uniform [0, 1] images; no dataset is read. jaxad runs in this process through the
library's own entry points (`methods.create`, `methods.init_state`, `train.make_train_step`,
`evals.core.make_score_fn`, `parallel.make_mesh`, `parallel.global_batch`); every jitted
function is compiled ahead of time (`lower(...).compile()`, compilation cache off), so each part
reports its compile time apart and the timed calls run that executable. Each part is the median
of `--steps` timed calls (`--score_calls` for scoring) after one untimed warm-up call, each ended
by `jax.block_until_ready`; wall and CPU seconds (`cpu_sec`: this process's, all threads).

jaxad parts:
- `train_morph`: the training step after the warm-up (the state's step is set to epoch 11 with
  `morphaeus.steps_per_epoch` = 1000, so every timed step has the NCC and smoothness terms on);
- `train_warmup`: the same executable with the step in epoch 0 (morph terms off);
- `score`: `method.score` (the map |x - warped prior| and its mean) on `--score_batch` images;
- `train_no_deform`: the training step compiled with `jaxad.ops.deform.integrate_velocity`
  replaced by the identity and `deform.warp` by `image + 1e-3 * disp[..., :1]` (patched in this
  process only, for that compile: elementwise, so the flow keeps its place in the graph and
  everything else, the NCC and the deformer's backward pass included, is unchanged);
- `deform_ops`: the deformation ops alone at the step's shapes, forward and backward, as the
  model runs them: `integrate_velocity` of [v, -v] (one loop over 2 x batch fields, 7 squarings)
  and the two warps (prior by exp(v), input by exp(-v)), jitted `value_and_grad` of a random
  linear function of both warped images with respect to v and the prior (v ~ N(0, 1) pixels).

Warp share (`warp_share`): the share of the post-warm-up step spent in the warp and velocity
integration, two ways: `isolated` = deform_ops seconds / train_morph seconds (the ops alone, as
XLA compiles them on their own), and `subtracted` = 1 - train_no_deform / train_morph (what the
step loses without them, fusion with their neighbours included). The two agree when the ops
neither fuse with nor compete against the rest of the step.

The original (`--torch_python` and `--original`, both or neither): `bench/morphaeus_torch.py`
runs under that Python (an environment with torch and torchvision; jaxad never imports torch),
importing the model and loss classes of the original's checkout at `--original`; its docstring
says what each of its parts times and how the original is made to run on the CPU. Its torch uses
as many threads (`torch.set_num_threads`) as this process's XLA CPU client uses cores: the CPUs
this process may run on (`os.sched_getaffinity`), reported as `env.threads`; `--threads=N`
first restricts this process, and so the runner, to N of them (1: no parallel region waits for
a descheduled thread, which makes the comparison far less sensitive to other jobs' load).
The runner stays up (`--serve`) and the two sides' calls alternate one by one, so that other
jobs' load falls on both alike: after jaxad's compilation, `--steps` cycles of jaxad
train_morph, torch train_morph, jaxad train_warmup, torch train_morph_vgg_frozen, jaxad
train_no_deform, torch train_warmup; then `--steps` cycles of the two `deform_ops`; then
`--score_calls` cycles of jaxad score, torch score, torch score_no_grad. A part's first call is
an untimed warm-up.

Ratios (`ratios`, jaxad images/s / PyTorch images/s, > 1: jaxad is faster):
- `train_morph`: against the original step as it runs (VGG19 weights differentiated too);
- `train_morph_vs_vgg_frozen`: against the original with its VGG19 frozen (what jaxad computes);
- `train_warmup`, `score` (against the original evaluator's forward, autograd recording),
  `score_vs_no_grad` (against `torch.no_grad()`), `deform_ops` (seconds ratio, PyTorch / jaxad).

Output: one JSON object `{"env", "settings", "jaxad", "torch", "ratios", "warp_share"}`, printed
and written to `--out` (`torch.warp_share` is the original's, `isolated` only unless
`--torch_parts` has train_no_deform). `other_cpus_busy`: the CPUs that processes other than this
one and its runner used during the timed calls; the run warns when it is above 0.1: then trust the
ratios (both sides saw the same load) and the CPU seconds more than the wall seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common as bench_common  # bench/common.py, next to this script
import morphaeus_torch  # its part names only: it imports torch only when run

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "morphaeus.py"
RUNNER = Path(__file__).resolve().parent / "morphaeus_torch.py"
JAXAD_PARTS = ("train_morph", "train_warmup", "train_no_deform", "deform_ops", "score")
STEPS_PER_EPOCH = 1000  # any number above the steps timed: the warm-up state stays in epoch 0


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _load_config(batch: int):
    spec = importlib.util.spec_from_file_location("_morphaeus_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = batch
    config.morphaeus.steps_per_epoch = STEPS_PER_EPOCH
    return config


def _compile(jitted, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


class JaxadBench:
    """jaxad's MorphAEus, built and compiled once; `call(part)` times one call of a part."""

    def __init__(self, batch: int, score_batch: int):
        import jax
        import numpy as np

        jax.config.update("jax_enable_compilation_cache", False)
        from jaxad import methods, parallel, train
        from jaxad.evals import core

        self.jax, self.batch, self.score_batch = jax, batch, score_batch
        self.config = config = _load_config(batch)
        self.mesh = mesh = parallel.make_mesh()
        self.method = method = methods.create(config)
        local_bs = parallel.local_batch_size(batch, mesh)
        score_bs = parallel.local_batch_size(score_batch, mesh, key="score_batch")
        self.repl = parallel.replicated(mesh)
        self.info: dict[str, Any] = {"compile_sec": {}}

        t0 = time.perf_counter()
        self.state = jax.block_until_ready(methods.init_state(method, config, mesh, local_bs))
        self.info["init_sec"] = time.perf_counter() - t0
        self.info["params"] = int(sum(x.size for x in jax.tree.leaves(self.state["net"]["params"])))
        self.info["vgg_params"] = int(
            sum(x.size for x in jax.tree.leaves(self.state["vgg"]["params"]))
        )
        rng = np.random.default_rng(0)

        def batch_of(n: int) -> dict:
            local = methods.example_batch(config, n)
            local["image"] = rng.uniform(size=local["image"].shape).astype(np.float32)
            return parallel.global_batch(mesh, local)

        self.batch_data = batch_of(local_bs)
        self.score_data = batch_of(score_bs)

        self.step_fn = self._compile("train", train.make_train_step(method, config, mesh))
        self.score_key = jax.random.fold_in(jax.random.key(config.seed), 2)
        self.score_fn, self.info["compile_sec"]["score"] = _compile(
            core.make_score_fn(method, mesh), self.state, self.score_data, self.score_key
        )
        self._compile_deform_ops()
        self.no_deform_fn = self._compile_no_deform(train.make_train_step)
        self.times: dict[str, list[tuple[float, float]]] = {}
        self._counter = itertools.count()

    def _compile(self, name: str, jitted) -> Any:
        compiled, self.info["compile_sec"][name] = _compile(jitted, self.state, self.batch_data, 1)
        _log(f"jaxad: {name} compiled in {self.info['compile_sec'][name]:.1f} s")
        return compiled

    def _compile_no_deform(self, make_train_step: Callable) -> Any:
        """The training step with the integration and the warps replaced by elementwise ops."""
        from jaxad.ops import deform

        saved = deform.integrate_velocity, deform.warp
        deform.integrate_velocity = lambda v, steps=7: v
        deform.warp = lambda image, disp: image + 1e-3 * disp[..., :1].astype(image.dtype)
        try:
            jitted = make_train_step(self.method, self.config, self.mesh)
            return self._compile("train_no_deform", jitted)
        finally:
            deform.integrate_velocity, deform.warp = saved

    def _compile_deform_ops(self) -> None:
        """Forward and backward of integrate_velocity([v, -v]) and the two warps."""
        jax = self.jax
        import jax.numpy as jnp

        from jaxad.ops import deform

        b, s = self.batch, self.config.data.image_size
        keys = jax.random.split(jax.random.key(0), 4)
        self.deform_args = (
            jax.random.normal(keys[0], (b, s, s, 2)),  # v, in pixels
            jax.random.uniform(keys[1], (b, s, s, 1)),  # the prior
            self.batch_data["image"],
            jax.random.normal(keys[2], (b, s, s, 1)),  # cotangents of the two warped images
            jax.random.normal(keys[3], (b, s, s, 1)),
        )

        def loss(v, prior, x, g1, g2):
            phi, phi_inverse = jnp.split(deform.integrate_velocity(jnp.concatenate([v, -v])), 2)
            warped, reversed_x = deform.warp(prior, phi), deform.warp(x, phi_inverse)
            return jnp.sum(warped * g1) + jnp.sum(reversed_x * g2)

        jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        self.deform_fn, self.info["compile_sec"]["deform_ops"] = _compile(jitted, *self.deform_args)

    def _set_step(self, step: int) -> None:
        step_array = self.jax.device_put(self.jax.numpy.int32(step), self.repl)
        self.state = {**self.state, "step": step_array}

    def _callable(self, part: str) -> Callable[[], Any]:
        """A call of `part`; the training parts first set the state's step (morph on or off)."""
        if part == "deform_ops":
            return lambda: self.deform_fn(*self.deform_args)
        if part == "score":
            return lambda: self.score_fn(self.state, self.score_data, self.score_key)
        compiled = self.no_deform_fn if part == "train_no_deform" else self.step_fn
        morph_step = (self.config.morphaeus.warmup_epochs + 1) * STEPS_PER_EPOCH
        step = 0 if part == "train_warmup" else morph_step

        def call():
            self._set_step(step)
            self.state, metrics = compiled(self.state, self.batch_data, next(self._counter))
            return metrics

        return call

    def call(self, part: str) -> float:
        """One timed call of `part` (after an untimed one, the first time); its wall seconds."""
        jax, fn = self.jax, self._callable(part)
        if part not in self.times:
            jax.block_until_ready(fn())
            self.times[part] = []
        c0, t0 = bench_common.cpu_sec(), time.perf_counter()
        jax.block_until_ready(fn())
        sec = time.perf_counter() - t0
        self.times[part].append((sec, bench_common.cpu_sec() - c0))
        return sec

    def result(self) -> dict:
        parts = {}
        for name, runs in self.times.items():
            parts[name] = bench_common.summary(runs)
            if name.startswith("train") or name == "score":
                n_images = self.score_batch if name == "score" else self.batch
                parts[name]["batch_size"] = n_images
                parts[name]["images_per_sec"] = n_images / parts[name]["sec"]
        return {**self.info, "parts": parts}


class TorchRunner(bench_common.ServedRunner):
    """bench/morphaeus_torch.py --serve under `--torch_python`: one timed call per `call`."""

    def __init__(self, args: argparse.Namespace):
        cmd = [
            args.torch_python,
            str(RUNNER),
            "--serve",
            f"--original={args.original}",
            f"--batch={args.batch}",
            f"--score_batch={args.score_batch}",
            f"--threads={bench_common.threads()}",
        ]
        super().__init__(cmd)
        self.score_batch = args.score_batch

    def close(self) -> dict:
        """Ends the runner; its info, peak RSS and per-part summaries."""
        train = [name for name in self.times if name.startswith("train")]
        images = {name: self.info["batch_size"] for name in train}
        images.update({name: self.score_batch for name in self.times if name.startswith("score")})
        return self.finish(images)


def _ratios(jaxad: dict, torch: dict) -> dict:
    j, t = jaxad["parts"], torch.get("parts", {})

    def rate(a: dict, name_a: str, b: dict, name_b: str) -> float | None:
        if name_a in a and name_b in b:
            return a[name_a]["images_per_sec"] / b[name_b]["images_per_sec"]
        return None

    ratios = {
        "train_morph": rate(j, "train_morph", t, "train_morph"),
        "train_morph_vs_vgg_frozen": rate(j, "train_morph", t, "train_morph_vgg_frozen"),
        "train_warmup": rate(j, "train_warmup", t, "train_warmup"),
        "score": rate(j, "score", t, "score"),
        "score_vs_no_grad": rate(j, "score", t, "score_no_grad"),
    }
    if "deform_ops" in j and "deform_ops" in t:
        ratios["deform_ops"] = t["deform_ops"]["sec"] / j["deform_ops"]["sec"]
    return {k: v for k, v in ratios.items() if v is not None}


def _warp_share(parts: dict) -> dict:
    step = parts.get("train_morph", {}).get("sec")
    if not step:
        return {}
    share = {}
    if "deform_ops" in parts:
        share["isolated"] = parts["deform_ops"]["sec"] / step
    if "train_no_deform" in parts:
        share["subtracted"] = 1 - parts["train_no_deform"]["sec"] / step
    return share


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/morphaeus.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="where to write the JSON")
    p.add_argument("--batch", type=int, default=64, help="training batch (64)")
    p.add_argument("--steps", type=int, default=3, help="timed calls per training part (3)")
    p.add_argument("--score_batch", type=int, default=64, help="scoring batch (64)")
    p.add_argument("--score_calls", type=int, default=3, help="timed scoring calls (3)")
    p.add_argument(
        "--threads",
        type=int,
        help="run both sides on the first N of this process's CPUs (default: all of them)",
    )
    p.add_argument("--torch_python", help="Python with torch + torchvision, for the original")
    p.add_argument("--original", help="checkout of ci-ber/MorphAEus (with --torch_python)")
    p.add_argument(
        "--torch_parts",
        default=",".join(morphaeus_torch.DEFAULT_PARTS),
        help=f"the original's parts, of {','.join(morphaeus_torch.PARTS)} (default: all but "
        "train_no_deform)",
    )
    args = p.parse_args(argv)
    if bool(args.torch_python) != bool(args.original):
        p.error("give both --torch_python and --original, or neither")
    if args.original and not (Path(args.original) / "model_zoo" / "morphaeus.py").exists():
        p.error(f"--original={args.original}: no model_zoo/morphaeus.py there")
    args.torch_parts = [x.strip() for x in args.torch_parts.split(",") if x.strip()]
    unknown = sorted(set(args.torch_parts) - set(morphaeus_torch.PARTS))
    if unknown:
        p.error(f"--torch_parts: unknown {unknown}")
    for name in ("batch", "steps", "score_batch", "score_calls", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def _schedule(args: argparse.Namespace, torch_parts: list[str]) -> list[tuple[str, str]]:
    """(side, part) calls in order: per group, `n` cycles alternating jaxad's and torch's parts.

    Groups: training (`--steps` cycles), the deformation ops (`--steps`), scoring
    (`--score_calls`). A cycle is jaxad's first part, torch's first, jaxad's second, ...
    """
    groups = [
        (args.steps, JAXAD_PARTS[:3], [p for p in torch_parts if p.startswith("train")]),
        (args.steps, ["deform_ops"], [p for p in torch_parts if p == "deform_ops"]),
        (args.score_calls, ["score"], [p for p in torch_parts if p.startswith("score")]),
    ]
    calls = []
    for n, jaxad_parts, torch_group in groups:
        cycle = []
        for j, t in itertools.zip_longest(jaxad_parts, torch_group):
            cycle += [("jaxad", j)] if j else []
            cycle += [("torch", t)] if t else []
        calls += cycle * n
    return calls


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        # Before jax is imported: XLA sizes its CPU thread pool by this affinity, and the runner
        # inherits it (and gets --threads for torch.set_num_threads).
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    sys.path.insert(0, str(REPO))  # `import jaxad` from a checkout without `pip install -e`.
    bench = JaxadBench(args.batch, args.score_batch)
    torch_parts = args.torch_parts if args.torch_python else []
    calls = _schedule(args, torch_parts)
    torch, wall, other = bench_common.run_alternating(
        calls, bench, lambda: TorchRunner(args) if args.torch_python else None, _log
    )
    jaxad = bench.result()
    jaxad["other_cpus_busy"] = other
    jaxad["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    report: dict[str, Any] = {
        "env": bench_common.env(),
        "settings": {
            "config": "configs/morphaeus.py",
            "image_size": bench.config.data.image_size,
            "widths": list(bench.config.model.widths),
            "vgg_width": bench.config.model.vgg_width,
            "vgg_weights": "random",
            "bn_mode": bench.config.morphaeus.bn_mode,
            "batch": args.batch,
            "score_batch": args.score_batch,
            "steps": args.steps,
            "score_calls": args.score_calls,
            "torch_parts": torch_parts,
            "wall_sec": wall,
        },
        "jaxad": jaxad,
        "warp_share": _warp_share(jaxad["parts"]),
    }
    runs = [("jaxad", jaxad)]
    if torch is not None:
        if "error" not in torch:
            torch["other_cpus_busy"] = other
            torch["warp_share"] = _warp_share(torch["parts"])
            report["ratios"] = _ratios(jaxad, torch)
        report["torch"] = torch
        runs.append(("torch", torch))
    return bench_common.write_report(report, runs, args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
