r"""Timing code shared by `python -m jaxad.bench speed` (standard library and jax only).

    from jaxad.bench import timing
    compiled, compile_sec = timing.compile_ahead(jax.jit(f), x)
    result = timing.timed(lambda: compiled(x), calls=3)   # {"sec", "cpu_sec", "sec_all", ...}

Why each piece exists:
- compile apart (`compile_ahead`: `.lower(...).compile()`), then one untimed call, then `calls`
  timed calls, each ended by `jax.block_until_ready`: the first call of an executable pays for
  allocation and thread-pool start-up, and a median of a few calls is robust to one slow call.
- CPU seconds next to wall seconds (`cpu_sec`): a busy machine stretches wall time while CPU
  time barely moves, so the two together tell a slow machine from a busy one.
- `OtherLoad`: how many CPUs other processes kept busy meanwhile (/proc/stat busy time minus
  this process's CPU time, over the wall time); timings compare only when it is about 0.
- `peak_rss_bytes` from `VmHWM`: `getrusage`'s maximum survives `exec`, so a child started by a
  big parent would report the parent's peak.
- XLA's FLOP count (`flops`) and `memory_analysis` (`memory`), and a matmul rate measured in the
  same run (`matmul_baseline`): a case's achieved GFLOP/s divided by the machine's dense float32
  rate measured minutes earlier compares across days and machines, raw seconds do not.
- `spawn_child`: each measurement in its own interpreter, so peak memory and caches are its own.

Keep this module's imports to the standard library (jax is imported inside the functions that
need it): bench/common.py loads it by path, also under the PyTorch environment of the runners
that time the originals, where jaxad is not installed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

MATMUL_N = 2048
MEMORY_FIELDS = {
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started, in bytes (Linux `VmHWM`)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB.


def cpu_sec() -> float:
    """CPU seconds (user + system) of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_sec() -> float:
    """CPU seconds of this process's ended and waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Average number of CPUs that other processes kept busy while this one measured.

    Machine-wide busy time from /proc/stat minus this process's own CPU time (`own_cpu_sec`,
    default `cpu_sec`), over the wall time. `cpus()` is None where /proc/stat does not exist.
    """

    def __init__(self, own_cpu_sec: Callable[[], float] | None = None):
        self._own = own_cpu_sec or cpu_sec
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), busy, self._own()

    def cpus(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self._start, strict=True))
        return round(max(busy - own, 0.0) / wall, 2) if wall > 0 else None


def block(value: Any) -> Any:
    """`jax.block_until_ready` when jax is loaded (a timed call ends when its result exists)."""
    jax = sys.modules.get("jax")
    return jax.block_until_ready(value) if jax is not None else value


def timed(
    fn: Callable[[], Any],
    calls: int,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = cpu_sec,
) -> dict[str, Any]:
    """One untimed call of `fn`, then `calls` timed ones; their medians and every wall time.

    Returns `sec` (median wall seconds), `cpu_sec` (median CPU seconds of this process),
    `sec_all`, `cpu_sec_all`, `first_sec` (the untimed call's wall time), `calls_timed` and
    `output` (the last call's result). `clock` and `cpu_clock` are injectable for tests.
    """
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    t0 = clock()
    block(fn())
    first = clock() - t0
    walls, cpus, out = [], [], None
    for _ in range(calls):
        c0, t0 = cpu_clock(), clock()
        out = block(fn())
        walls.append(clock() - t0)
        cpus.append(cpu_clock() - c0)
    return {
        "sec": statistics.median(walls),
        "cpu_sec": statistics.median(cpus),
        "sec_all": walls,
        "cpu_sec_all": cpus,
        "first_sec": first,
        "calls_timed": calls,
        "output": out,
    }


def compile_ahead(jitted: Any, *args: Any) -> tuple[Any, float]:
    """(`jitted.lower(*args).compile()`, its seconds): compiled apart from the timed calls."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled function (a multiply-add counts 2).

    `cost_analysis()` is a dict in recent jax, a list of dicts (one per program) before. XLA
    counts the body of a while loop (`lax.map`, `scan`, `fori_loop`) once, whatever its trips.
    """
    cost = compiled.cost_analysis()
    if cost is None:
        return 0.0
    if isinstance(cost, (list, tuple)):
        return float(sum((c or {}).get("flops", 0.0) for c in cost))
    return float(cost.get("flops", 0.0))


def memory(compiled: Any) -> dict[str, int]:
    """`compiled.memory_analysis()` in bytes (arguments, outputs, aliases, temporaries, code);
    {} where the backend gives none."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {k: int(getattr(m, attr)) for k, attr in MEMORY_FIELDS.items() if hasattr(m, attr)}


def setup_jax() -> Any:
    """Imports jax with the persistent compilation cache off, so that compile times are real."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    return jax


def matmul_baseline(n: int = MATMUL_N, calls: int = 5) -> dict[str, Any]:
    """This machine's dense float32 rate now: a jitted n x n @ n x n matmul, median of `calls`.

    A method's achieved GFLOP/s over this rate compares across days; its seconds do not.
    """
    jax = setup_jax()
    import jax.numpy as jnp
    import numpy as np

    load = OtherLoad()
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    compiled, compile_sec = compile_ahead(jax.jit(lambda x, y: x @ y), a, b)
    count = flops(compiled)
    run = timed(lambda: compiled(a, b), calls)
    run.pop("output")
    return {
        "shape": f"{n}x{n} @ {n}x{n} float32",
        "flops": count,
        "flops_analytic": 2.0 * n**3,
        "compile_sec": compile_sec,
        **run,
        "gflops_per_sec": count / run["sec"] / 1e9,
        "other_cpus_busy": load.cpus(),
    }


def threads() -> int:
    """The CPUs this process may run on (what XLA's CPU client sizes its thread pool by)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def env() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    jax = setup_jax()
    import flax
    import jaxlib

    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu_model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu_model,
            )
    except OSError:
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "cpu_count": os.cpu_count(),
        "threads": threads(),
        "cpu_model": cpu_model,
        "compilation_cache": False,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def spawn_child(module: str, child: str, flags: list[str]) -> dict[str, Any]:
    """Runs `python -m MODULE --_child=CHILD --_result=FILE FLAGS...`; the JSON it wrote.

    A failed child gives {"error": why}; either way the result has `wall_sec`, the child's wall
    time. The child's stderr (its progress) goes to ours, its stdout nowhere.
    """
    return run_child([sys.executable, "-m", module], child, flags, stdout=subprocess.DEVNULL)


def run_child(
    command: list[str], child: str, flags: list[str], *, stdout: Any = None
) -> dict[str, Any]:
    """Runs `COMMAND --_child=CHILD --_result=FILE FLAGS...` (COMMAND: the interpreter and a
    module or script); the JSON the child wrote to FILE, else {"error": why} (with the text of
    FILE.error when the child left one); `wall_sec` either way."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.json")
        cmd = [*command, f"--_child={child}", f"--_result={result_path}"]
        t0 = time.perf_counter()
        proc = subprocess.run([*cmd, *flags], check=False, stdout=stdout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(result_path):
            why = f"exit code {proc.returncode}"
            if proc.returncode == -9:
                why = "SIGKILL, most likely the out-of-memory killer"
            elif proc.returncode < 0:
                why = f"signal {-proc.returncode}"
            error_path = result_path + ".error"
            if os.path.exists(error_path):
                with open(error_path, encoding="utf-8") as f:
                    why += f": {f.read().strip()}"
            return {"error": f"{child} failed: {why}", "wall_sec": wall}
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    result["wall_sec"] = wall
    return result
