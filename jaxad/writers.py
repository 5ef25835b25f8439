"""Metric writing (JSONL and TensorBoard) and the progress line, on process 0 only.

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


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/` (process 0 only)."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # Imported lazily: only process 0 needs it.

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Adds an HWC uint8 image to TensorBoard (e.g. an anomaly-map overlay)."""
        if self.enabled:
            self._tb.add_image(tag, image, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self.enabled = False


def _to_float(v: Any) -> float:
    return float(np.asarray(v))


class Progress:
    """Steps/s and ETA over the last logging window, for the progress line."""

    def __init__(self, total_steps: int, first_step: int):
        self.total_steps = total_steps
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.total_steps - step) / rate if rate > 0 else math.inf
        return {"steps_per_sec": rate, "eta_sec": eta}


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
