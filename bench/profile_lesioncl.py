r"""Where a lesion-based CL or DR grading step spends its time: a `jax.profiler` trace, by op kind.

    python bench/profile_lesioncl.py --out=profile.json [--part=lcl_train_no_aug] [--steps=2]
        [--lcl_batch=16] [--grade_batch=4] [--threads=N]

Builds the part as `bench/lesioncl.py` does (same shapes, the library's entry points, compiled
ahead of time), runs it once untraced and `--steps` times under `jax.profiler.trace` (the
Perfetto trace, no TensorBoard plugin needed), and sums the trace's XLA thunks per step. Each
thunk is put in one kind by what its HLO computes (the compiled module's text):

- `convolution`, `matrix product`: library kernels (fusions holding a convolution / a dot);
- `reduce-window`: pooling and its derivative (select-and-scatter: reduce-windows, scatters);
- `reduction`: other reductions (batch norm's statistics and gradients);
- `transpose or copy`: layout changes (a kernel transposed for the input gradient, an
  activation laid out for XLA's kernel gradient);
- `elementwise`: the rest (batch norm applied, ReLU, their derivatives, the optimiser).

Thunks of one step can run side by side on several threads, so their sum can exceed the step's
wall time; the shares are what to read. JSON: the step's wall seconds (median of the traced
steps), milliseconds per step by kind and the `--top` slowest thunks with their output shapes.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common as bench_common  # noqa: E402
import lesioncl  # noqa: E402

PARTS = ("lcl_train", "lcl_train_no_aug", "grade_train", "grade_train_no_aug", "grade_score")
KINDS = (
    "convolution",
    "matrix product",
    "reduce-window",
    "reduction",
    "transpose or copy",
    "elementwise",
)
# Trace events of the runtime and of Python, not of the compiled program.
_RUNTIME = (
    "ThunkExecutor",
    "SlinkyThreadPool",
    "ThreadpoolListener",
    "$",
    "PjitFunction",
    "CommonPjRt",
    "Parse",
    "Handle ",
    "Wait for",
    "Allocate",
    "PythonRefManager",
    "end: ",
)


_SHAPE = r"\([^()]*\)|\S+"  # an HLO value's shape: a tuple of shapes, or one


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (output shape, the ops it computes: its own and its callees')."""
    bodies: dict[str, str] = {}
    for m in re.finditer(r"^(?:ENTRY )?%(\S+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S | re.M):
        bodies[m.group(1)] = m.group(2)
    out = {}
    for m in re.finditer(rf"^\s*(?:ROOT )?%(\S+) = ({_SHAPE}) ([\w-]+)\(([^\n]*)", hlo_text, re.M):
        name, shape, op, rest = m.groups()
        called = re.search(r"calls=%([\w.-]+)", rest)
        body = bodies.get(called[1], "") if called else ""
        out[name] = (shape, " ".join([op, *re.findall(rf"= (?:{_SHAPE}) ([\w-]+)\(", body)]))
    return out


def kind(name: str, ops: str) -> str:
    """The KINDS entry of a thunk named `name` computing `ops`."""
    words = set(ops.split())
    if "convolution" in words:
        return "convolution"
    if words & {"dot", "dot_general"}:
        return "matrix product"
    if words & {"reduce-window", "select-and-scatter", "scatter"}:
        return "reduce-window"
    if "reduce" in words:
        return "reduction"
    if name.startswith(("transpose", "copy")) or words <= {"copy", "transpose", "bitcast"}:
        return "transpose or copy"
    return "elementwise"


def summarize(events: list[dict], hlo: dict[str, tuple[str, str]], steps: int, top: int) -> dict:
    """Milliseconds per step by kind, and the slowest thunks, from Perfetto trace events."""
    per_thunk: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_RUNTIME):
            per_thunk[e["name"]] += e.get("dur", 0) / 1e3 / steps
    by_kind = dict.fromkeys(KINDS, 0.0)
    for name, ms in per_thunk.items():
        shape, ops = hlo.get(name, ("?", name))
        by_kind[kind(name, ops)] += ms
    slowest = [
        {"thunk": n, "ms": round(ms, 2), "shape": hlo.get(n, ("?", ""))[0]}
        for n, ms in per_thunk.most_common(top)
    ]
    total = sum(by_kind.values())
    return {
        "thunk_ms_per_step": round(total, 1),
        "ms_per_step": {k: round(v, 2) for k, v in by_kind.items()},
        "share": {k: round(v / total, 3) for k, v in by_kind.items()} if total else {},
        "slowest": slowest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/profile_lesioncl.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--part", choices=PARTS, default="lcl_train_no_aug")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lcl_batch", type=int, default=16)
    parser.add_argument("--grade_batch", type=int, default=4)
    parser.add_argument("--score_batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="restrict to N CPUs first")
    args = parser.parse_args(argv)
    if args.threads:  # before jax is imported: XLA sizes its thread pool by the affinity
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    import jax

    texts: list[str] = []
    compile_ahead = lesioncl._compile

    def keep_text(jitted, *a):
        compiled, sec = compile_ahead(jitted, *a)
        texts.append(compiled.as_text())
        return compiled, sec

    lesioncl._compile = keep_text
    group = "lcl" if args.part.startswith("lcl") else "grade"
    bench = lesioncl.JaxadBench(argparse.Namespace(**{**vars(args), "groups": group}))
    call = bench.fns[args.part]
    jax.block_until_ready(call())
    # The group's parts compile in GROUPS' order, each its own module (names repeat across them).
    hlo = instructions(texts[lesioncl.GROUPS[group][0].index(args.part)])
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                t0 = time.perf_counter()
                jax.block_until_ready(call())
                walls.append(time.perf_counter() - t0)
        trace = next(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    result = {
        "part": args.part,
        "env": bench_common.env(),
        "step_seconds": round(statistics.median(walls), 3),
        **summarize(events, hlo, args.steps, args.top),
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("part", "step_seconds", "ms_per_step")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
