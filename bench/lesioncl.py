r"""Lesion-based CL pre-training and DR grading speed: jaxad against PyTorch, same run.

    python bench/lesioncl.py --out=lesioncl.json                          # jaxad only
    python bench/lesioncl.py --out=lesioncl.json --torch_python=/work/torchvenv/bin/python
        [--lcl_batch=16] [--grade_batch=4] [--score_batch=4] [--steps=3] [--threads=N]
        [--groups=lcl,grade]

Two jaxad methods as their configs have them by default, with random weights (as fast as
ImageNet ones) on random inputs (no dataset is read):
- `configs/lesioncl.py` ('paper'): ResNet-50 + the 2048-2048-128 head, two 128 px patches around
  a lesion box of each 512 px photo, LCL's augmentations on device, NT-Xent (SupCon without
  labels) at τ 0.07 over the 2B views in one forward pass, SGD 0.02 Nesterov with weight decay
  5e-4; batch `--lcl_batch` photos (2 x that many views). The photos are uniform [0, 1], each
  with 4 random 20-60 px boxes (`boxes`, `num_boxes`, as `jaxad.data.lesion_boxes` gives them).
- `configs/dr_grading.py` ('finetune'): ResNet-50 with one output, MSE, SGD 1e-3 Nesterov with
  weight decay 5e-4, the grading augmentations on device; 512 px photos, batch `--grade_batch`;
  inference (`method.score`: normalisation and the eval-mode forward) at `--score_batch`.
Both through the library's entry points (`methods.create`, `methods.init_state`,
`train.make_train_step`, `evals.core.make_score_fn`, `parallel.make_mesh`,
`parallel.global_batch`), `model.fast_conv_grad` as configured ('auto'), every jitted function
compiled ahead of time (`lower(...).compile()`, compilation cache off; compile times reported
apart). `lcl.steps_per_epoch` and `grading.steps_per_epoch` are set to 1000 so that the
schedules need no dataset.

jaxad parts (median of `--steps` timed calls after one untimed call, each ended by
`jax.block_until_ready`; wall and CPU seconds of this process, all threads):
- `lcl_train`: the pre-training step as the library runs it: patch cutting and augmentation of
  the 2B views on device, forward, loss, backward, SGD;
- `lcl_train_no_aug`: the same step compiled with `lesion_augment.lesion_pairs` replaced by two
  fixed 128 px crops and `lesion_augment.views` by the normalisation alone (patched in this
  process, for that compile only): what the PyTorch step computes;
- `lcl_aug`: the patch cutting and augmentation alone (`method.pairs` and two
  `lesion_augment.views`, jitted);
- `grade_train`, `grade_train_no_aug`: the grading step, with its augmentation and with
  `lesion_augment.views` replaced by the normalisation alone;
- `grade_score`: `method.score` on `--score_batch` photos.

The PyTorch side (`--torch_python`): `bench/lesioncl_torch.py` runs under that Python (an
environment with torch and torchvision; jaxad never imports torch); its docstring says what each of
its parts computes (torchvision ResNet-50, the same heads, losses and optimisers, NCHW float32; its
training steps take ready-made normalised inputs, no augmentation; `lcl_aug` makes the views on the
host one image at a time with `torchvision.transforms.v2`). Its torch uses as many threads
(`torch.set_num_threads`) as this process's XLA CPU client uses cores: the CPUs this process may run
on, reported as `env.threads`; `--threads=N` first restricts this process, and so the runner, to N
of them (1: no parallel region waits for a descheduled thread; with another job keeping one of 2
cores busy, PyTorch's steps ran 2-3x slower on 2 threads than on 1, XLA's did not, so use
`--threads=1` on a shared machine). The runner stays up (`--serve`) and the two sides' calls
alternate one by one, so that other jobs' load falls on both alike: after jaxad's compilation, per
group, `--steps` cycles of jaxad lcl_train, torch lcl_train, jaxad lcl_train_no_aug, torch lcl_aug,
jaxad lcl_aug; then `--steps` cycles of jaxad grade_train, torch grade_train, jaxad
grade_train_no_aug, torch grade_score, jaxad grade_score. A part's first call is untimed.

Ratios (`ratios`, jaxad images/s / PyTorch images/s, > 1: jaxad is faster; images are photos,
so a pre-training image is two views):
- `lcl_train`: jaxad's step with its augmentation against PyTorch's without;
- `lcl_train_no_aug`: both without augmentation (like for like);
- `lcl_train_vs_torch_with_aug`: jaxad's step with augmentation against PyTorch's step plus its
  host augmentation in series (`lcl_train` + `lcl_aug` seconds);
- `lcl_aug`: the augmentations alone (jaxad on all its cores, PyTorch on one thread as in one
  `DataLoader` worker);
- `grade_train` (jaxad with augmentation), `grade_train_no_aug`, `grade_score`.

Output: one JSON object `{"env", "settings", "jaxad", "torch", "ratios"}`, printed and written
to `--out`. `other_cpus_busy`: the CPUs that processes other than this one and its runner used
during the timed calls; the run warns when it is above 0.1: then trust the ratios (both sides saw
the same load) and the CPU seconds more than the wall seconds.
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
import lesioncl_torch  # its part names only: it imports torch only when run

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "lesioncl_torch.py"
GROUPS = {
    "lcl": (("lcl_train", "lcl_train_no_aug", "lcl_aug"), ("lcl_train", "lcl_aug")),
    "grade": (
        ("grade_train", "grade_train_no_aug", "grade_score"),
        ("grade_train", "grade_score"),
    ),
}
STEPS_PER_EPOCH = 1000  # the schedules' epoch length, so that they read no dataset
NUM_BOXES = 4


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _load_config(name: str, batch: int):
    spec = importlib.util.spec_from_file_location(f"_{name}_config", REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = batch
    return config


def _compile(jitted, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


class _Patched:
    """Replaces attributes of a module for the duration of a `with` block."""

    def __init__(self, module: Any, **replacements: Any):
        self.module, self.replacements, self.saved = module, replacements, {}

    def __enter__(self):
        for name, value in self.replacements.items():
            self.saved[name] = getattr(self.module, name)
            setattr(self.module, name, value)

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(self.module, name, value)


class JaxadBench:
    """jaxad's two methods, built and compiled once; `call(part)` times one call of a part."""

    def __init__(self, args: argparse.Namespace):
        import jax
        import numpy as np

        jax.config.update("jax_enable_compilation_cache", False)
        from jaxad import methods, parallel, train
        from jaxad.evals import core
        from jaxad.ops import lesion_augment

        self.jax, self.np, self.args = jax, np, args
        self.methods, self.parallel, self.train, self.core = methods, parallel, train, core
        self.lesion_augment = lesion_augment
        self.mesh = parallel.make_mesh()
        self.rng = np.random.default_rng(0)
        self.info: dict[str, Any] = {"compile_sec": {}, "params": {}}
        self.fns: dict[str, Callable[[], Any]] = {}
        self.images_per_call: dict[str, int] = {}
        self.times: dict[str, list[tuple[float, float]]] = {}
        self._counter = itertools.count()
        self.states: dict[str, Any] = {}
        self.configs: dict[str, Any] = {}
        if "lcl" in args.groups:
            self._build_lcl()
        if "grade" in args.groups:
            self._build_grade()

    # --- building ------------------------------------------------------------------------------
    def _state(self, group: str, method, config, local_bs: int) -> None:
        jax = self.jax
        t0 = time.perf_counter()
        state = jax.block_until_ready(self.methods.init_state(method, config, self.mesh, local_bs))
        self.info[f"{group}_init_sec"] = time.perf_counter() - t0
        self.info["params"][group] = int(
            sum(x.size for x in jax.tree.leaves(state["net"]["params"]))
        )
        self.states[group] = state

    def _photos(self, config, n: int) -> dict:
        local = self.methods.example_batch(config, n)
        local["image"] = self.rng.uniform(size=local["image"].shape).astype(self.np.float32)
        local["grade"] = self.rng.integers(0, 5, size=(n,)).astype(self.np.int32)
        return local

    def _step(self, group: str, name: str, method, config, batch: dict) -> None:
        """Compiles `train.make_train_step` now (patches in force apply) as part `name`."""
        jitted = self.train.make_train_step(method, config, self.mesh)
        compiled, sec = _compile(jitted, self.states[group], batch, 1)
        self.info["compile_sec"][name] = sec
        _log(f"jaxad: {name} compiled in {sec:.1f} s")

        def call():
            self.states[group], metrics = compiled(self.states[group], batch, next(self._counter))
            return metrics

        self.fns[name] = call
        self.images_per_call[name] = batch["image"].shape[0]

    def _normalize_only(self):
        normalize = self.lesion_augment.normalize
        return lambda key, images, settings=self.lesion_augment.LCL: normalize(
            images.astype("float32"), settings
        )

    def _build_lcl(self) -> None:
        np, jax, la = self.np, self.jax, self.lesion_augment
        config = _load_config("lesioncl.py", self.args.lcl_batch)
        config.data.boxes = "boxes.json"  # any value: the benchmark gives the boxes itself
        config.data.lesion_pairs = 0  # the step cuts the patches from whole photos, timed
        config.lcl.steps_per_epoch = STEPS_PER_EPOCH
        self.configs["lcl"] = config
        method = self.methods.create(config)
        local_bs = self.parallel.local_batch_size(self.args.lcl_batch, self.mesh)
        self._state("lcl", method, config, local_bs)
        local = self._photos(config, local_bs)
        size = config.data.image_size
        side = self.rng.uniform(20, 60, size=(local_bs, int(config.data.max_boxes), 2))
        corner = self.rng.uniform(0, size - 60, size=side.shape)
        local["boxes"] = np.concatenate([corner, corner + side], axis=-1).astype(np.float32)
        local["num_boxes"] = np.full((local_bs,), NUM_BOXES, np.int32)
        batch = self.parallel.global_batch(self.mesh, local)
        self._step("lcl", "lcl_train", method, config, batch)
        p = int(config.lcl.patch_size)

        def fixed_pairs(key, images, boxes, num_boxes, size=p):
            del key, boxes, num_boxes
            return images[:, :size, :size], images[:, size : 2 * size, size : 2 * size]

        with _Patched(la, lesion_pairs=fixed_pairs, views=self._normalize_only()):
            self._step("lcl", "lcl_train_no_aug", method, config, batch)

        def augment(key, batch):
            k_pair, k1, k2 = jax.random.split(key, 3)
            p1, p2 = method.pairs(k_pair, batch)
            return jax.numpy.concatenate(
                [la.views(k1, p1, method.aug), la.views(k2, p2, method.aug)]
            )

        key = jax.random.key(0)
        aug_fn, self.info["compile_sec"]["lcl_aug"] = _compile(jax.jit(augment), key, batch)
        self.fns["lcl_aug"] = lambda: aug_fn(jax.random.fold_in(key, next(self._counter)), batch)
        self.images_per_call["lcl_aug"] = local_bs

    def _build_grade(self) -> None:
        jax = self.jax
        config = _load_config("dr_grading.py", self.args.grade_batch)
        config.grading.steps_per_epoch = STEPS_PER_EPOCH
        config.eval.batch_size = self.args.score_batch
        self.configs["grade"] = config
        method = self.methods.create(config)
        local_bs = self.parallel.local_batch_size(self.args.grade_batch, self.mesh)
        self._state("grade", method, config, local_bs)
        batch = self.parallel.global_batch(self.mesh, self._photos(config, local_bs))
        self._step("grade", "grade_train", method, config, batch)
        with _Patched(self.lesion_augment, views=self._normalize_only()):
            self._step("grade", "grade_train_no_aug", method, config, batch)
        score_bs = self.parallel.local_batch_size(
            self.args.score_batch, self.mesh, key="score_batch"
        )
        score_data = self.parallel.global_batch(self.mesh, self._photos(config, score_bs))
        key = jax.random.key(2)
        score_fn, self.info["compile_sec"]["grade_score"] = _compile(
            self.core.make_score_fn(method, self.mesh), self.states["grade"], score_data, key
        )
        self.fns["grade_score"] = lambda: score_fn(self.states["grade"], score_data, key)
        self.images_per_call["grade_score"] = score_bs

    # --- timing --------------------------------------------------------------------------------
    def call(self, part: str) -> float:
        """One timed call of `part` (after an untimed one, the first time); its wall seconds."""
        jax, fn = self.jax, self.fns[part]
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
            parts[name]["batch_size"] = self.images_per_call[name]
            parts[name]["images_per_sec"] = self.images_per_call[name] / parts[name]["sec"]
        return {**self.info, "parts": parts}


class TorchRunner(bench_common.ServedRunner):
    """bench/lesioncl_torch.py --serve under `--torch_python`: one timed call per `call`."""

    def __init__(self, args: argparse.Namespace, patch_size: int, image_size: int):
        cmd = [
            args.torch_python,
            str(RUNNER),
            "--serve",
            f"--lcl_batch={args.lcl_batch}",
            f"--grade_batch={args.grade_batch}",
            f"--score_batch={args.score_batch}",
            f"--patch_size={patch_size}",
            f"--image_size={image_size}",
            f"--threads={bench_common.threads()}",
        ]
        super().__init__(cmd)
        self.images = {
            "lcl_train": args.lcl_batch,
            "lcl_aug": args.lcl_batch,
            "grade_train": args.grade_batch,
            "grade_score": args.score_batch,
        }

    def close(self) -> dict:
        """Ends the runner; its info, peak RSS and per-part summaries."""
        return self.finish(self.images)


def _ratios(jaxad: dict, torch: dict) -> dict:
    j, t = jaxad["parts"], torch.get("parts", {})

    def rate(name_a: str, name_b: str) -> float | None:
        if name_a in j and name_b in t:
            return j[name_a]["images_per_sec"] / t[name_b]["images_per_sec"]
        return None

    ratios = {
        "lcl_train": rate("lcl_train", "lcl_train"),
        "lcl_train_no_aug": rate("lcl_train_no_aug", "lcl_train"),
        "lcl_aug": rate("lcl_aug", "lcl_aug"),
        "grade_train": rate("grade_train", "grade_train"),
        "grade_train_no_aug": rate("grade_train_no_aug", "grade_train"),
        "grade_score": rate("grade_score", "grade_score"),
    }
    if "lcl_train" in j and "lcl_train" in t and "lcl_aug" in t:
        torch_sec = t["lcl_train"]["sec"] + t["lcl_aug"]["sec"]
        ratios["lcl_train_vs_torch_with_aug"] = torch_sec / j["lcl_train"]["sec"]
    return {k: v for k, v in ratios.items() if v is not None}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/lesioncl.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="where to write the JSON")
    p.add_argument("--lcl_batch", type=int, default=16, help="pre-training photos (16: 32 views)")
    p.add_argument("--grade_batch", type=int, default=4, help="grading training batch (4)")
    p.add_argument("--score_batch", type=int, default=4, help="grading inference batch (4)")
    p.add_argument("--steps", type=int, default=3, help="timed calls per part (3)")
    p.add_argument("--groups", default="lcl,grade", help="of lcl,grade (both)")
    p.add_argument(
        "--threads",
        type=int,
        help="run both sides on the first N of this process's CPUs (default: all of them)",
    )
    p.add_argument("--torch_python", help="Python with torch + torchvision, for the PyTorch side")
    args = p.parse_args(argv)
    args.groups = [x.strip() for x in args.groups.split(",") if x.strip()]
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown or not args.groups:
        p.error(f"--groups: unknown {unknown}; use a subset of {','.join(GROUPS)}")
    for name in ("lcl_batch", "grade_batch", "score_batch", "steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def _schedule(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(side, part) calls in order: per group, `--steps` cycles alternating the two sides."""
    calls = []
    for group in args.groups:
        jaxad_parts, torch_parts = GROUPS[group]
        torch_parts = torch_parts if args.torch_python else ()
        assert set(torch_parts) <= set(lesioncl_torch.PARTS)
        cycle = []
        for j, t in itertools.zip_longest(jaxad_parts, torch_parts):
            cycle += [("jaxad", j)] if j else []
            cycle += [("torch", t)] if t else []
        calls += cycle * args.steps
    return calls


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        # Before jax is imported: XLA sizes its CPU thread pool by this affinity, and the runner
        # inherits it (and gets --threads for torch.set_num_threads).
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    sys.path.insert(0, str(REPO))  # `import jaxad` from a checkout without `pip install -e`.
    t_start = time.perf_counter()
    bench = JaxadBench(args)
    calls = _schedule(args)
    cfg = next(iter(bench.configs.values()))
    patch = int(bench.configs["lcl"].lcl.patch_size) if "lcl" in bench.configs else 128
    torch, wall, other = bench_common.run_alternating(
        calls,
        bench,
        lambda: TorchRunner(args, patch, int(cfg.data.image_size)) if args.torch_python else None,
        _log,
    )
    jaxad = bench.result()
    jaxad["other_cpus_busy"] = other
    jaxad["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    settings: dict[str, Any] = {
        "groups": args.groups,
        "steps": args.steps,
        "weights": "random",
        "timed_wall_sec": wall,
        "total_wall_sec": time.perf_counter() - t_start,
    }
    if "lcl" in bench.configs:
        c = bench.configs["lcl"]
        settings["lcl"] = {
            "config": "configs/lesioncl.py (paper)",
            "batch": args.lcl_batch,
            "views": 2 * args.lcl_batch,
            "image_size": c.data.image_size,
            "patch_size": c.lcl.patch_size,
            "depth": c.model.depth,
            "head": [2048, 2048, int(c.model.head_features)],
            "temperature": c.lcl.temperature,
            "fast_conv_grad": str(c.model.fast_conv_grad),
        }
    if "grade" in bench.configs:
        c = bench.configs["grade"]
        settings["grade"] = {
            "config": "configs/dr_grading.py (finetune)",
            "batch": args.grade_batch,
            "score_batch": args.score_batch,
            "image_size": c.data.image_size,
            "depth": c.model.depth,
            "fast_conv_grad": str(c.model.fast_conv_grad),
        }
    report: dict[str, Any] = {"env": bench_common.env(), "settings": settings, "jaxad": jaxad}
    runs = [("jaxad", jaxad)]
    if torch is not None:
        if "error" not in torch:
            torch["other_cpus_busy"] = other
            report["ratios"] = _ratios(jaxad, torch)
        report["torch"] = torch
        runs.append(("torch", torch))
    return bench_common.write_report(report, runs, args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
