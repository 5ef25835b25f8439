"""Metric writing (JSONL and TensorBoard) and the progress lines, on process 0 only.

`clu.metric_writers` imports TensorFlow, which jaxad does not depend on, so scalars go to a JSONL
file (one object per step, easy to load with pandas) and to TensorBoard event files written by
tensorboardX.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import numpy as np

from jaxad import paths

# A run whose workdir is on Cloud Storage uploads its metrics at most this often (and at every
# flush and at the end).
SYNC_EVERY_SEC = 30.0


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/` (process 0 only)."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        """A `gs://` workdir gets its files written to a local folder and uploaded (`flush`)."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        self._mirror: paths.LocalMirror | None = None
        if not self.enabled:
            return
        paths.makedirs(workdir)
        if paths.is_remote(workdir):  # No appends on Cloud Storage: write locally, upload.
            self._mirror = paths.LocalMirror(workdir)
            self._mirror.pull("metrics.jsonl")
            workdir = self._mirror.local
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # Imported lazily: only process 0 needs it.

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._synced = time.monotonic()

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        if self._mirror is not None and time.monotonic() - self._synced >= SYNC_EVERY_SEC:
            self.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Adds an HWC uint8 image to TensorBoard (e.g. an anomaly-map overlay)."""
        if self.enabled:
            self._tb.add_image(tag, image, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()
            if self._mirror is not None:
                self._mirror.sync()
                self._synced = time.monotonic()

    def close(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        try:  # A full disk must not turn the run's own one-line error into a traceback.
            self._jsonl.close()
            self._tb.close()
            if self._mirror is not None:
                self._mirror.close()
        except OSError as e:
            logger.warning("could not finish writing the metrics (%s: %s).", type(e).__name__, e)


def _to_float(v: Any) -> float:
    return float(np.asarray(v))


class Progress:
    """Steps/s and ETA over the last logging window, for the progress line.

    The first step after a start or a resume compiles the training step, which can take longer
    than many steps: call `started(step)` once it has run, and the rate and ETA then count step
    times only (until the next window exists, the ETA is unknown rather than inflated).
    """

    def __init__(self, total_steps: int, first_step: int):
        self.total_steps = total_steps
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def started(self, step: int) -> None:
        """Marks `step` (the first after start or resume, compile included) as done."""
        self._last_step, self._last_time = step, time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.total_steps - step) / rate if rate > 0 else math.inf
        return {"steps_per_sec": rate, "eta_sec": eta}


class CountProgress:
    """`<what>: 120/500 (24%), ETA 0m31s` lines for a long loop over a known number of items.

    A line is logged when another tenth of the items is done or `every_sec` seconds have passed
    since the last line, but never in the first `quiet_sec` seconds (a quick loop stays silent;
    its caller logs the total and `elapsed()`). The ETA counts from the first `update`: the
    first item often includes a compilation, which the later ones do not repeat.
    """

    def __init__(self, what: str, total: int, *, every_sec: float = 30.0, quiet_sec: float = 5.0):
        self.what, self.total = what, max(int(total), 0)
        self.every_sec, self.quiet_sec = every_sec, quiet_sec
        self.start = self._last_line = time.perf_counter()
        self._first: tuple[int, float] | None = None
        self._next_tenth = 1

    def update(self, done: int) -> None:
        """`done` items (of `total`) are finished."""
        now = time.perf_counter()
        if self._first is None:
            self._first = (done, now)
            return
        tenth = 10 * done // max(self.total, 1)
        due = tenth >= self._next_tenth or now - self._last_line >= self.every_sec
        if not due or now - self.start < self.quiet_sec or done >= self.total:
            return
        self._next_tenth = tenth + 1
        self._last_line = now
        log_info("%s: %s", self.what, self.line(done, now))

    def line(self, done: int, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        eta = math.inf
        if self._first is not None and done > self._first[0]:
            rate = (done - self._first[0]) / max(now - self._first[1], 1e-9)
            eta = (self.total - done) / rate
        pct = 100 * done / max(self.total, 1)
        return f"{done}/{self.total} ({pct:.0f}%), ETA {_duration(eta)}"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def timed_first_call(fn, what: str):
    """`fn` (a jitted function), logging `compiling <what> ...` and the seconds its first call
    (tracing and compilation) took; later calls go straight to `fn`."""
    first = True

    def call(*args, **kwargs):
        nonlocal first
        if not first:
            return fn(*args, **kwargs)
        first = False
        log_info("compiling %s ...", what)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        log_info("compiled %s in %.1f s", what, time.perf_counter() - start)
        return out

    if hasattr(fn, "lower"):  # Ahead-of-time compilation (`.lower(...).compile()`) still works.
        call.lower = fn.lower
    return call


def format_progress(step: int, total: int, metrics: dict[str, float], rate: float, eta: float):
    """`step 120/500 (24%) | loss 0.0312 d_loss 0.25 | 1.92 steps/s | ETA 3m18s`."""
    parts = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    return (
        f"step {step}/{total} ({100 * step / max(total, 1):.0f}%) | {parts} | "
        f"{rate:.3g} steps/s | ETA {_duration(eta)}"
    )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


logger = logging.getLogger("jaxad")


def setup_logging(level: int = logging.INFO) -> None:
    """jaxad's own lines at `level` on stderr; the libraries' chatter (orbax) at WARNING only."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def log_info(msg: str, *args) -> None:
    if jax.process_index() == 0:
        logger.info(msg, *args)
