"""Measurement helpers every benchmark script shares (standard library only: the PyTorch runners
import this file too, from another environment).

Each script runs its measurements in child processes (`spawn_child`), so that peak memory, the
XLA state and caches belong to one measurement, and reports how busy the rest of the machine
was meanwhile (`OtherLoad`): timings mean something only when that is about 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time


def _library_timing():
    """jaxad/bench/timing.py, loaded by path: it needs only the standard library at import, so
    the PyTorch runners (another environment, without jaxad) share it too."""
    path = pathlib.Path(__file__).resolve().parents[1] / "jaxad" / "bench" / "timing.py"
    spec = importlib.util.spec_from_file_location("_jaxad_bench_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The load, memory and CPU-time readers of `python -m jaxad.bench speed`.
_timing = _library_timing()
OtherLoad = _timing.OtherLoad
children_cpu_sec = _timing.children_cpu_sec
cpu_sec = _timing.cpu_sec
peak_rss_bytes = _timing.peak_rss_bytes
threads = _timing.threads
env = _timing.env  # where and with what (imports jax; the compilation cache off)
setup_jax = _timing.setup_jax  # jax with the persistent compilation cache off
compile_ahead = _timing.compile_ahead
flops = _timing.flops
memory = _timing.memory


def spawn_child(script: str, child: str, flags: list[str]) -> dict:
    """Runs `python SCRIPT --_child=CHILD --_result=FILE FLAGS...` and returns its JSON result.

    The child writes its result as JSON to FILE. A failed child gives {"error": why}; either way
    the result has `wall_sec`, the child's wall time.
    """
    return _timing.run_child([sys.executable, os.path.abspath(script)], child, flags)


def write_report(report: dict, runs: list[tuple[str, dict]], out: str, log) -> int:
    """Prints `report`, writes it as JSON to `out` and returns the exit code.

    `runs` are (name, result) of every child: those measured while other processes used CPUs
    are named through `log` (their timings are skewed), and any failed child makes the exit
    code 1.
    """
    text = json.dumps(report, indent=2)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    busy = [
        f"{name} {r['other_cpus_busy']}"
        for name, r in runs
        if (r.get("other_cpus_busy") or 0) > 0.1
    ]
    if busy:
        log(f"other processes used CPUs during: {', '.join(busy)}; the timings are skewed")
    failed = [name for name, r in runs if "error" in r]
    if failed:
        log(f"failed: {', '.join(failed)} (see the errors above)")
        return 1
    return 0


# --- shared by the runners that time jaxad against PyTorch (morphaeus.py, lesioncl.py) ---


def timed_call(fn) -> tuple[float, float]:
    """Wall and CPU seconds (this process) of one call of `fn`."""
    c0, t0 = cpu_sec(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_sec() - c0


def serve_parts(load: OtherLoad, info: dict, parts, prepare) -> None:
    """A PyTorch runner's `--serve` loop: one timed call per part name read from stdin.

    Prints {"info": info} first, then one JSON line per request ({"part", "sec", "cpu_sec"});
    the first request of a part builds it with `prepare(part)` (which makes an untimed warm-up
    call). "done" or the end of input ends it, with a last line holding the peak RSS and the
    `other_cpus_busy` that `load` saw.
    """
    print(json.dumps({"info": info}), flush=True)
    prepared = {}
    for line in sys.stdin:
        part = line.strip()
        if part == "done":
            break
        if part not in parts:
            print(json.dumps({"part": part, "error": "unknown part"}), flush=True)
            continue
        if part not in prepared:
            prepared[part] = prepare(part)
        sec, cpu = timed_call(prepared[part])
        print(json.dumps({"part": part, "sec": sec, "cpu_sec": cpu}), flush=True)
    print(
        json.dumps({"peak_rss_bytes": peak_rss_bytes(), "other_cpus_busy": load.cpus()}), flush=True
    )


def run_alternating(calls, bench, make_runner, log) -> tuple[dict | None, float, float | None]:
    """Runs `calls` ([(side, part)], side "jaxad" or "torch") one by one, alternating sides.

    `bench.call(part)` times a jaxad part; `make_runner()` (None: no PyTorch side) starts the
    runner whose `.call(part)` times a PyTorch one. Returns (the runner's report, or
    {"error": ...} if it failed, or None; the wall seconds of the calls; `other_cpus_busy`
    during them: the CPUs other processes used, the runner's own CPU time taken out).
    """
    load, t0, child0 = OtherLoad(), time.perf_counter(), children_cpu_sec()
    runner, torch = None, None
    try:
        runner = make_runner()
        for i, (side, part) in enumerate(calls, start=1):
            sec = (bench if side == "jaxad" else runner).call(part)
            log(f"{i}/{len(calls)} {side} {part}: {sec:.2f} s")
        if runner:
            torch = runner.close()
    except (RuntimeError, OSError, ValueError) as e:
        torch = {"error": str(e)}
        log(f"the PyTorch side failed: {e}")
    finally:
        if runner:
            runner.kill()
    wall = time.perf_counter() - t0
    busy = load.cpus()
    # OtherLoad counts the runner (a child) as another process: take its CPU time out.
    other = None if busy is None else round(max(busy - (children_cpu_sec() - child0) / wall, 0), 2)
    return torch, wall, other


def summary(runs: list[tuple[float, float]]) -> dict:
    """Median wall and CPU seconds of (wall, cpu) calls, and every wall time."""
    return {
        "sec": statistics.median(t for t, _ in runs),
        "cpu_sec": statistics.median(c for _, c in runs),
        "sec_all": [t for t, _ in runs],
        "calls_timed": len(runs),
    }


def tree_cpu_sec() -> float:
    """CPU seconds of this process and all its descendants, live or ended.

    Worker processes (grain's, started through a fork server) are descendants but not always
    children, and a live one is not in RUSAGE_CHILDREN: its time is read from /proc.
    """
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(v) for v in fields[11:15]) / tick  # incl. ended children
    me, total = os.getpid(), 0.0
    for pid in times:
        p = pid
        while p in parent and p != me and p > 1:
            p = parent[p]
        if p == me and pid != me:
            total += times[pid]
    return cpu_sec() + children_cpu_sec() + total


class ServedRunner:
    """A runner subprocess in `--serve` mode (e.g. bench/morphaeus_torch.py under a PyTorch
    Python): one part name per line in, one JSON reply per line out; its first line is
    {"info": ...}, its last, after "done", carries its peak RSS."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.info = self._read()["info"]
        self.times: dict[str, list[tuple[float, float]]] = {}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch runner ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def call(self, part: str) -> float:
        """One timed call of `part` in the runner; its wall seconds."""
        self.proc.stdin.write(part + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"the PyTorch runner: {part}: {reply['error']}")
        self.times.setdefault(part, []).append((reply["sec"], reply["cpu_sec"]))
        return reply["sec"]

    def finish(self, images_per_call: dict[str, int]) -> dict:
        """Ends the runner; its info, peak RSS and per-part summaries, with images/s for the
        parts in `images_per_call`."""
        self.proc.stdin.write("done\n")
        self.proc.stdin.close()
        final = self._read()
        self.proc.wait()
        parts = {}
        for name, runs in self.times.items():
            parts[name] = summary(runs)
            if name in images_per_call:
                parts[name]["batch_size"] = images_per_call[name]
                parts[name]["images_per_sec"] = images_per_call[name] / parts[name]["sec"]
        return {**self.info, "peak_rss_bytes": final["peak_rss_bytes"], "parts": parts}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
