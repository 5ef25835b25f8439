r"""Each method's training step and scoring at its paper size, timed with the same code.

    python -m jaxad.bench speed --out=speed.json [--methods=lesion2void,picard,...] [--quick]
        [--calls=3] [--batch=N] [--torch_python=PY --original=morphaeus:DIR]

One case per method, at the size of its config's default variant (`configs/<method>.py`, DPA's
`brain_pixel_axis0`, the grader's `finetune`) on synthetic inputs of the pipeline's shapes (no
dataset is read; random weights, as fast as trained ones). Everything goes through the library's
entry points: `methods.create`, `methods.init_state`, `train.make_train_step`,
`evals.core.make_score_fn` (the pre-training methods SimCLR and lesion-based CL have no anomaly
map: their evaluation part is `method.eval_loss`, the validation pass, jitted as the loop jits
it), `parallel.make_mesh` and `parallel.global_batch`. Each jitted function is compiled ahead of
time (`lower(...).compile()`, compilation cache off), so compile seconds are reported apart;
then one untimed call and `--calls` timed calls, median wall and CPU seconds
(`jaxad.bench.timing`). Paper batches do not fit a CPU (LCL's 768): each case has a CPU batch
(`--batch` sets every case's training and scoring batch); `--quick` shrinks images, widths and
batches so that each case takes seconds (for tests; its numbers say nothing about the paper).

Each case runs in its own child process (`python -m jaxad.bench.speed --_child=CASE ...`), so
its peak RSS and compile caches are its own; a jitted 2048 x 2048 float32 matmul runs first in
one more child, and each case's achieved GFLOP/s (XLA's FLOP count over the median seconds) is
reported as a fraction of that rate (`*_vs_matmul`): those ratios compare across days and
machines, the seconds do not. XLA counts a loop body once: the scoring of Lesion2Void (36 test
lattices in chunks) and PICARD (windows and completions in `lax.map`s) is therefore counted on a
second compile whose loops run one trip (`score_flops`; the raw count is `score_flops_xla_raw`).
`other_cpus_busy` is the CPUs other processes used during a case: above 0.1 the run warns.

Output: `--out` (JSON: {"env", "baseline", "cases": {method: {...}}}) and the same path with
`.md`: one table, a row per method. A failed case holds {"error": ...} and the exit code is 1;
bad flags or an unknown method are a one-line error and exit code 2.

`--torch_python=PY --original=morphaeus:DIR` (and/or `--original=lesioncl:` and
`--original=dr_grading:`, which need no checkout): the original PyTorch code's training step and
scoring (lesion-based CL: the step only), run by bench/morphaeus_torch.py or
bench/lesioncl_torch.py (`--serve`, from the checkout's bench/) under PY at the case's batch and
image size after the jaxad case, are added to that case (`original`) with the ratios jaxad
images/s over the original's (`*_vs_original`, > 1: jaxad is faster). jaxad never imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from jaxad.bench import timing

MODULE = "jaxad.bench.speed"
STEPS_PER_EPOCH = 1000  # the epoch schedules' length, so that they read no dataset
WARN_OTHER_CPUS = 0.1
# bench/ is not installed: the PyTorch runners are found next to jaxad/ in a checkout.
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@dataclasses.dataclass(frozen=True)
class Case:
    """A method's benchmark: its config, CPU batches and `--quick` overrides."""

    config: str  # module under configs/
    variant: str | None  # get_config's argument (None: the default variant)
    batch: int  # training batch on CPU (the paper's does not fit)
    score_batch: int  # images per scoring call
    unit: str  # what one batch element is
    pixel_range: tuple[float, float]  # the synthetic images' range (the pipeline's scale)
    overrides: dict[str, Any]  # always: schedules that need no dataset, synthetic boxes
    quick: dict[str, Any]  # --quick: tiny images and widths
    # Settings under which the scoring's loops run one trip, for XLA's FLOP count.
    one_trip: dict[str, Any] = dataclasses.field(default_factory=dict)
    torch_runner: str = ""  # bench/<runner>.py for --original


CASES: dict[str, Case] = {
    "lesion2void": Case(
        config="lesion2void",
        variant=None,
        batch=8,
        score_batch=2,
        unit="image",
        pixel_range=(-2.0, 2.0),  # normalised by the data's statistics
        overrides={},
        quick={
            "data.image_size": 32,
            "model.width": 4,
            "model.disc_width": 4,
            "l2v.grid": 24,
            "l2v.patch": 8,
            "l2v.test_step": 4,
        },
        one_trip={"l2v.score_chunk": 1 << 30},
    ),
    "picard": Case(
        config="picard",
        variant=None,
        batch=4,
        score_batch=4,
        unit="window",
        pixel_range=(-1.0, 1.0),
        overrides={},
        quick={
            "data.crop_size": 32,
            "data.image_size": 32,
            "picard.window_size": 32,
            "picard.box_size": 16,
            "picard.max_delta": 4,
            "picard.num_completions": 2,
            "model.width": 4,
            "model.critic_width": 4,
        },
        one_trip={"picard.sampling": "vmap", "picard.window_batch": 1 << 30},
    ),
    "simclr": Case(
        config="simclr_vgg19",
        variant=None,
        batch=16,
        score_batch=16,
        unit="image",
        pixel_range=(0.0, 1.0),
        overrides={"simclr.steps_per_epoch": STEPS_PER_EPOCH},
        quick={
            "data.image_size": 48,
            "simclr.crop_size": 32,
            "simclr.blur_kernel": 3,
            "model.hidden": 16,
            "model.out_dim": 8,
            "model.pool_size": 1,
            "model.vgg_width": 8,
        },
    ),
    "dpa": Case(
        config="dpa",
        variant="brain_pixel_axis0",
        batch=16,
        score_batch=16,
        unit="slice",
        pixel_range=(-1.0, 1.0),
        overrides={"dpa.vgg_weights": ""},  # a random VGG19 with a fixed seed
        quick={"data.image_size": 16, "model.nf": 4, "model.latent_dim": 4, "model.vgg_width": 8},
    ),
    "morphaeus": Case(
        config="morphaeus",
        variant=None,
        batch=16,
        score_batch=16,
        unit="image",
        pixel_range=(0.0, 1.0),
        overrides={"morphaeus.steps_per_epoch": STEPS_PER_EPOCH, "morphaeus.vgg_weights": ""},
        quick={"data.image_size": 16, "model.widths": (4, 4, 8, 8), "model.vgg_width": 4},
        torch_runner="morphaeus_torch.py",
    ),
    "lesioncl": Case(
        config="lesioncl",
        variant=None,
        batch=16,
        score_batch=16,
        unit="photo",
        pixel_range=(0.0, 1.0),
        # The step cuts the two patches from whole photos (as with data.lesion_pairs=0), on
        # boxes the benchmark draws; the data.boxes value only has to be set.
        overrides={
            "lcl.steps_per_epoch": STEPS_PER_EPOCH,
            "data.lesion_pairs": 0,
            "data.boxes": "synthetic",
        },
        quick={"model.depth": 18, "model.width": 4, "data.image_size": 32, "lcl.patch_size": 16},
        torch_runner="lesioncl_torch.py",
    ),
    "dr_grading": Case(
        config="dr_grading",
        variant="finetune",
        batch=4,
        score_batch=4,
        unit="photo",
        pixel_range=(0.0, 1.0),
        overrides={"grading.steps_per_epoch": STEPS_PER_EPOCH},
        quick={"model.depth": 18, "model.width": 4, "data.image_size": 32},
        torch_runner="lesioncl_torch.py",
    ),
}
QUICK_BATCH = 2
NUM_BOXES = 4


def _log(msg: str) -> None:
    print(f"speed: {msg}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (`speed: error: ...`) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"speed: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m jaxad.bench speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="FILE.json to write (also FILE.md); required")
    p.add_argument("--methods", default=",".join(CASES), help=f"of {','.join(CASES)} (all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests (seconds a case)")
    p.add_argument("--calls", type=int, default=3, help="timed calls per part (3)")
    p.add_argument("--batch", type=int, help="every case's training and scoring batch")
    p.add_argument("--baseline_calls", type=int, default=5, help="timed matmul calls (5)")
    p.add_argument("--torch_python", help="a Python with torch, for --original")
    p.add_argument(
        "--original",
        action="append",
        default=[],
        help="METHOD:DIR, time the original PyTorch code too (morphaeus:<its checkout>, "
        "lesioncl: or dr_grading: with no DIR); repeatable; needs --torch_python",
    )
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_label", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    if args.out and not args.out.endswith(".json"):
        p.error(f"--out must name a .json file, got {args.out!r}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in CASES]
    if unknown:
        p.error(f"unknown method {', '.join(unknown)}; use any of {','.join(CASES)}")
    if not names:
        p.error("--methods is empty")
    args.methods = list(dict.fromkeys(names))
    for name in ("calls", "batch", "baseline_calls"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    args.originals = _originals(p, args)
    return args


def _originals(p: _Parser, args: argparse.Namespace) -> dict[str, str]:
    """{method: checkout dir} of `--original`; errors for what cannot run."""
    originals: dict[str, str] = {}
    for spec in args.original:
        method, _, where = spec.partition(":")
        if method not in CASES or not CASES[method].torch_runner:
            runnable = ",".join(m for m, c in CASES.items() if c.torch_runner)
            p.error(f"--original={spec}: no original runner for {method!r}; use one of {runnable}")
        if method == "morphaeus" and not (where and os.path.isdir(where)):
            p.error(f"--original={spec}: give the original's checkout, morphaeus:DIR")
        originals[method] = where
    if originals and not args.torch_python:
        p.error("--original needs --torch_python=PY (a Python with torch)")
    if args.torch_python and not originals:
        p.error("--torch_python needs --original=METHOD:DIR")
    if originals and not (BENCH_DIR / "common.py").is_file():
        p.error(f"--original: the PyTorch runners are not in {BENCH_DIR} (a jaxad checkout's)")
    return originals


# ---------------------------------------------------------------------------------------------
# A case, in its child process
# ---------------------------------------------------------------------------------------------


def build_config(name: str, quick: bool, batch: int | None):
    """The case's config: default variant, the benchmark's overrides (and `--quick`'s)."""
    from jaxad import run_config

    case = CASES[name]
    config = importlib.import_module(f"configs.{case.config}").get_config(case.variant)
    config = run_config.override(config, case.overrides)
    if quick:
        config = run_config.override(config, case.quick)
    train_bs, score_bs = case.batch, case.score_batch
    if quick:
        train_bs = score_bs = QUICK_BATCH
    if batch is not None:
        train_bs = score_bs = batch
    config.batch_size = train_bs
    config.eval.batch_size = score_bs
    return config


def synthetic_batch(name: str, config, n: int, seed: int) -> dict:
    """A random batch with the keys and shapes of the method's training pipeline."""
    import numpy as np

    from jaxad import methods

    case = CASES[name]
    rng = np.random.default_rng(seed)
    batch = methods.example_batch(config, n)
    low, high = case.pixel_range
    batch["image"] = rng.uniform(low, high, batch["image"].shape).astype(np.float32)
    s = batch["image"].shape[1]
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    batch["fov"][:] = (yy**2 + xx**2 <= (0.45 * s) ** 2).astype(np.float32)
    batch["grade"] = rng.integers(0, 5, size=(n,)).astype(np.int32)
    if name == "lesioncl":  # lesion boxes of 4-12 % of the side (20-60 px at 512)
        k = int(config.data.max_boxes)
        side = rng.uniform(0.04 * s, 0.12 * s, size=(n, k, 2))
        corner = rng.uniform(0, s - 0.12 * s, size=side.shape)
        batch["boxes"] = np.concatenate([corner, corner + side], axis=-1).astype(np.float32)
        batch["num_boxes"] = np.full((n,), NUM_BOXES, np.int32)
    return batch


def _score_jit(method, mesh):
    """The evaluation part: `method.score` as evaluation jits it, else `method.eval_loss` as
    validation does (pre-training methods)."""
    from jaxad import methods, parallel
    from jaxad.evals import core

    if methods.provides(method, "score"):
        return core.make_score_fn(method, mesh), "method.score"
    return methods.jit(
        method, method.eval_loss, out_shardings=parallel.batch_sharded(mesh)
    ), "eval_loss"


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Builds, compiles and times one method's training step and scoring."""
    load = timing.OtherLoad()
    jax = timing.setup_jax()
    import numpy as np

    from jaxad import methods, parallel, run_config, train

    case = CASES[name]
    label = f"{args._label} {name}".strip()
    config = build_config(name, args.quick, args.batch)
    mesh = parallel.make_mesh()
    method = methods.create(config)
    train_bs = parallel.local_batch_size(config.batch_size, mesh)
    score_bs = parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    out: dict[str, Any] = {
        "method": name,
        "config": f"configs/{case.config}.py",
        "variant": case.variant or "paper",  # every config's default variant is 'paper'
        "quick": bool(args.quick),
        "image_size": int(config.data.crop_size or config.data.image_size),
        "unit": case.unit,
        "batch": int(config.batch_size),
        "score_batch": int(config.eval.batch_size),
        "calls": args.calls,
    }

    _log(f"{label}: initialising ...")
    t0 = time.perf_counter()
    state = jax.block_until_ready(methods.init_state(method, config, mesh, train_bs))
    out["init_sec"] = time.perf_counter() - t0
    # Elements of the whole training state: parameters, statistics and optimiser state.
    out["state_elements"] = int(sum(x.size for x in jax.tree.leaves(state)))

    # Training step: the state is donated, so each call threads it on.
    batches = [
        parallel.global_batch(mesh, synthetic_batch(name, config, train_bs, seed))
        for seed in (0, 1)
    ]
    _log(f"{label}: compiling the training step ...")
    compiled, out["train_compile_sec"] = timing.compile_ahead(
        train.make_train_step(method, config, mesh), state, batches[0], 1
    )
    out["train_flops"] = timing.flops(compiled)
    out["train_memory"] = timing.memory(compiled)
    holder = {"state": state, "step": 1}
    del state

    def step():
        holder["state"], metrics = compiled(
            holder["state"], batches[holder["step"] % 2], holder["step"]
        )
        holder["step"] += 1
        return metrics

    _log(f"{label}: timing the training step ({args.calls} calls after 1) ...")
    run = timing.timed(step, args.calls)
    loss = float(run.pop("output")["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{name}: the training loss is {loss}")
    out["train_loss"] = loss
    _put(out, "train", run, int(config.batch_size))
    del compiled

    # Scoring.
    score_fn, out["score_part"] = _score_jit(method, mesh)
    sbatch = parallel.global_batch(mesh, synthetic_batch(name, config, score_bs, 2))
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    state = holder["state"]
    _log(f"{label}: compiling {out['score_part']} ...")
    compiled, out["score_compile_sec"] = timing.compile_ahead(score_fn, state, sbatch, key)
    out["score_flops_xla_raw"] = timing.flops(compiled)
    out["score_memory"] = timing.memory(compiled)
    if case.one_trip:
        # XLA counts a loop body once: count again with every loop running one trip.
        counting = run_config.override(config.copy_and_resolve_references(), case.one_trip)
        count_fn, _ = _score_jit(methods.create(counting), mesh)
        out["score_flops"] = timing.flops(count_fn.lower(state, sbatch, key).compile())
        out["score_flops_counted_with"] = case.one_trip
    else:
        out["score_flops"] = out["score_flops_xla_raw"]
    _log(f"{label}: timing {out['score_part']} ({args.calls} calls after 1) ...")
    run = timing.timed(lambda: compiled(state, sbatch, key), args.calls)
    run.pop("output")
    _put(out, "score", run, int(config.eval.batch_size))
    out["peak_rss_bytes"] = timing.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    if name == "lesioncl":
        out["patch_size"] = int(config.lcl.patch_size)
    out["model_config"] = json.loads(config.model.to_json_best_effort())
    return out


def _put(out: dict, part: str, run: dict, images: int) -> None:
    """A timed part's numbers under `part_*`."""
    out[f"{part}_sec"] = run["sec"]
    out[f"{part}_cpu_sec"] = run["cpu_sec"]
    out[f"{part}_sec_all"] = run["sec_all"]
    out[f"{part}_first_call_sec"] = run["first_sec"]
    out[f"{part}_images_per_sec"] = images / run["sec"]


def add_rates(case: dict, baseline: dict) -> None:
    """Achieved GFLOP/s per part and its fraction of the matmul rate measured in the run."""
    ref = (baseline.get("matmul") or {}).get("gflops_per_sec")
    for part in ("train", "score"):
        if f"{part}_sec" not in case:
            continue
        case[f"{part}_gflops"] = case[f"{part}_flops"] / 1e9
        rate = case[f"{part}_flops"] / case[f"{part}_sec"] / 1e9
        case[f"{part}_gflops_per_sec"] = rate
        case[f"{part}_vs_matmul"] = rate / ref if ref else None


# ---------------------------------------------------------------------------------------------
# The original PyTorch code (optional)
# ---------------------------------------------------------------------------------------------

# method -> (runner parts: training, scoring)
TORCH_PARTS = {
    "morphaeus": ("train_morph_vgg_frozen", "score_no_grad"),
    "lesioncl": ("lcl_train", None),
    "dr_grading": ("grade_train", "grade_score"),
}


def run_original(name: str, where: str, result: dict, args: argparse.Namespace) -> dict:
    """The original's training step (and scoring) at the case's batch, `--calls` each."""
    runner = BENCH_DIR / CASES[name].torch_runner
    batch, score_batch = result["batch"], result["score_batch"]
    cmd = [args.torch_python, str(runner), "--serve", f"--threads={timing.threads()}"]
    if name == "morphaeus":
        cmd += [f"--original={where}", f"--batch={batch}", f"--score_batch={score_batch}"]
        cmd.append(f"--image_size={result['image_size']}")
    else:
        size = result["image_size"]
        cmd += [
            f"--lcl_batch={batch}",
            f"--grade_batch={batch}",
            f"--score_batch={score_batch}",
            f"--image_size={size}",
        ]
        # The runner checks its patch against the photo also when it times grading only.
        patch = result["patch_size"] if name == "lesioncl" else min(128, size // 2)
        cmd.append(f"--patch_size={patch}")
    train_part, score_part = TORCH_PARTS[name]
    parts = [p for p in (train_part, score_part) if p]
    load = timing.OtherLoad(own_cpu_sec=timing.children_cpu_sec)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # The runner builds a part on its first request and warms it up untimed: every reply
        # is a timed call.
        requests = "".join(f"{p}\n" for p in parts for _ in range(args.calls)) + "done\n"
        stdout, _ = proc.communicate(requests, timeout=3600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]
    if proc.returncode != 0 or not lines or "info" not in lines[0]:
        return {"error": f"the PyTorch runner {runner.name} failed (exit code {proc.returncode})"}
    times: dict[str, list[float]] = {p: [] for p in parts}
    cpus: dict[str, list[float]] = {p: [] for p in parts}
    for reply in lines[1:]:
        if "error" in reply:
            return {"error": f"the PyTorch runner: {reply['part']}: {reply['error']}"}
        if "part" in reply:
            times[reply["part"]].append(reply["sec"])
            cpus[reply["part"]].append(reply["cpu_sec"])
    original: dict[str, Any] = {"runner": f"bench/{runner.name}", "info": lines[0]["info"]}
    for part, key, images in (("train", train_part, batch), ("score", score_part, score_batch)):
        if not key:
            continue
        timed_runs = times[key]
        original[f"{part}_part"] = key
        original[f"{part}_sec"] = statistics.median(timed_runs)
        original[f"{part}_cpu_sec"] = statistics.median(cpus[key])
        original[f"{part}_sec_all"] = timed_runs
        original[f"{part}_images_per_sec"] = images / original[f"{part}_sec"]
        if f"{part}_images_per_sec" in result:
            result[f"{part}_vs_original"] = (
                result[f"{part}_images_per_sec"] / original[f"{part}_images_per_sec"]
            )
    original["peak_rss_bytes"] = lines[-1].get("peak_rss_bytes")
    original["other_cpus_busy"] = load.cpus()
    return original


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _child_flags(args: argparse.Namespace) -> list[str]:
    flags = [f"--calls={args.calls}", f"--baseline_calls={args.baseline_calls}"]
    if args.quick:
        flags.append("--quick")
    if args.batch is not None:
        flags.append(f"--batch={args.batch}")
    return flags


def _run_child(args: argparse.Namespace) -> int:
    """A child: the baseline or one case, its JSON to `--_result` (an error to FILE.error)."""
    try:
        if args._child == "baseline":
            result = {
                "env": timing.env(),
                "matmul": timing.matmul_baseline(calls=args.baseline_calls),
            }
            result["peak_rss_bytes"] = timing.peak_rss_bytes()
        else:
            result = run_case(args._child, args)
    except Exception as e:  # the parent reports it as this case's error
        with open(args._result + ".error", "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    with open(args._result, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    """One table, a row per method."""
    env, base = report.get("env", {}), report.get("baseline", {})
    matmul = (base.get("matmul") or {}).get("gflops_per_sec")
    lines = [
        "# jaxad speed: training step and scoring per method",
        "",
        f"{env.get('date_utc', '?')} UTC, jax {env.get('jax', '?')}, backend "
        f"{env.get('backend', '?')}, {env.get('device_count', '?')} device(s), "
        f"{env.get('threads', '?')} of {env.get('cpu_count', '?')} CPUs "
        f"({env.get('cpu_model', '')}), load average {env.get('load_avg_1m', '?')}. "
        f"Matmul baseline (2048² float32, same run): {_fmt(matmul, '.1f')} GFLOP/s.",
        "",
        "The ratios `×mm` (achieved GFLOP/s as a fraction of the matmul rate measured in the same "
        "run) are what compare across days and machines; seconds and images/s hold only for "
        "this machine at this moment. Times are medians of timed calls after one untimed call, "
        "compile apart; `other CPUs` is the CPUs other processes used meanwhile (above 0.1 the "
        "times are skewed). Batches are CPU batches, not the papers'.",
        "",
        "| method | config | px | batch train/score | compile s train/score | train s/step "
        "| train CPU s | train img/s | score part | score s | score img/s | GFLOP step/score "
        "| GFLOP/s train/score | ×mm train/score | peak RSS GB | temp MB train/score "
        "| other CPUs |",
        "|" + "---|" * 17,
    ]
    for name, c in report.get("cases", {}).items():
        if "error" in c:
            lines.append(f"| {name} | error: {c['error']} |" + " |" * 15)
            continue
        temp = [(c.get(f"{p}_memory") or {}).get("temp_bytes") for p in ("train", "score")]
        row = [
            name,
            f"{c['config']}:{c['variant']}" + (" (quick)" if c.get("quick") else ""),
            str(c["image_size"]),
            f"{c['batch']}/{c['score_batch']} {c['unit']}s",
            f"{c['train_compile_sec']:.1f}/{c['score_compile_sec']:.1f}",
            f"{c['train_sec']:.3g}",
            f"{c['train_cpu_sec']:.3g}",
            f"{c['train_images_per_sec']:.3g}",
            c["score_part"],
            f"{c['score_sec']:.3g}",
            f"{c['score_images_per_sec']:.3g}",
            f"{c['train_gflops']:.3g}/{c['score_gflops']:.3g}",
            f"{c['train_gflops_per_sec']:.3g}/{c['score_gflops_per_sec']:.3g}",
            f"{_fmt(c.get('train_vs_matmul'), '.3f')}/{_fmt(c.get('score_vs_matmul'), '.3f')}",
            f"{c['peak_rss_bytes'] / 1e9:.2f}",
            "/".join(_fmt(t and t / 1e6, ".0f") for t in temp),
            _fmt(c.get("other_cpus_busy"), ".2f"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    originals = {n: c["original"] for n, c in report.get("cases", {}).items() if "original" in c}
    if originals:
        lines += [
            "",
            "Against the original PyTorch code (same batch, same machine, run after):",
            "",
        ]
        if report.get("settings", {}).get("quick"):
            lines += [
                "With --quick the originals keep their own networks (only image sizes and "
                "batches follow), so these ratios mean nothing.",
                "",
            ]
        lines += ["| method | runner | train s | ×jaxad/original train | score s | ×score |"]
        lines += ["|---|---|---|---|---|---|"]
        for name, o in originals.items():
            c = report["cases"][name]
            if "error" in o:
                lines.append(f"| {name} | error: {o['error']} | | | | |")
                continue
            lines.append(
                f"| {name} | {o['runner']} | {_fmt(o.get('train_sec'), '.3g')} "
                f"| {_fmt(c.get('train_vs_original'), '.2f')} | {_fmt(o.get('score_sec'), '.3g')} "
                f"| {_fmt(c.get('score_vs_original'), '.2f')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args._child:
        return _run_child(args)
    t_start = time.perf_counter()
    n = len(args.methods)
    _log(f"baseline: a 2048x2048 float32 matmul, {args.baseline_calls} calls ...")
    base = timing.spawn_child(MODULE, "baseline", _child_flags(args))
    baseline = base.get("matmul") or {"error": base.get("error", "no result")}
    report: dict[str, Any] = {"env": base.get("env", {}), "baseline": {"matmul": baseline}}
    if "error" not in baseline:
        _log(f"baseline: {baseline['gflops_per_sec']:.1f} GFLOP/s")
    report["cases"] = {}
    for i, name in enumerate(args.methods, start=1):
        label = f"{i}/{n}"
        _log(f"{label} {name}: starting its process ...")
        result = timing.spawn_child(MODULE, name, [*_child_flags(args), f"--_label={label}"])
        if "error" in result:
            _log(f"{label} {name}: {result['error']}")
        else:
            add_rates(result, report["baseline"])
            _log(
                f"{label} {name}: train {result['train_sec']:.3g} s/step, "
                f"score {result['score_sec']:.3g} s, {result['wall_sec']:.0f} s in all"
            )
            if name in args.originals:
                _log(f"{label} {name}: the original PyTorch code ...")
                result["original"] = run_original(name, args.originals[name], result, args)
        report["cases"][name] = result
    report["settings"] = {
        "methods": args.methods,
        "quick": args.quick,
        "calls": args.calls,
        "batch": args.batch,
        "wall_sec": time.perf_counter() - t_start,
    }
    return _write(report, args.out)


def _write(report: dict, out: str) -> int:
    """FILE.json and FILE.md; exit code 1 if any part failed."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    md_path = os.path.splitext(out)[0] + ".md"
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown(report))
    _log(f"wrote {out} and {md_path}")
    runs = [("baseline", report["baseline"]["matmul"]), *report["cases"].items()]
    busy = [
        f"{name} {r['other_cpus_busy']}"
        for name, r in runs
        if (r.get("other_cpus_busy") or 0) > WARN_OTHER_CPUS
    ]
    if busy:
        _log(f"other processes used CPUs during: {', '.join(busy)}; the timings are skewed")
    failed = [name for name, r in runs if "error" in r]
    failed += [
        f"{n} (original)" for n, r in report["cases"].items() if "error" in r.get("original", {})
    ]
    if failed:
        _log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
