"""One process of a multi-process job on 127.0.0.1 (run by tests/test_multihost.py).

argv: process_id num_processes port spec.json. The spec names the data folders, the output
folder and the methods to run, in order; `jax.distributed` starts once and every method runs in
this one process, so that imports and the job's start are paid once. For each method:

1. trains one step and checkpoints it (evaluation off), then reruns to two steps: the run
   resumes from the checkpoint, trains, checkpoints and evaluates (process 0 alone writes);
   with `"resume": false` in the spec, one run of two steps checkpoints both and evaluates;
2. one data-parallel step over every process equals the same step on this process's device
   alone over the whole global batch (the pipeline's first batch of each process, gathered);
3. one epoch of the training pipeline: which records this process read.

Every record read (`__getitem__` of a data source) and every file opened for writing is
counted, and everything measured is printed as one `RESULT {json}` line per method, which the
test compares across processes. With `mood` in the spec, `python -m jaxad.mood predict` then
scores the spec's volumes with the DPA run.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxad import checkpoint, methods, parallel, train, writers
from jaxad.data import pipeline, sources

writers.setup_logging()

PID, NPROC, PORT, SPEC = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(SPEC, encoding="utf-8") as f:
    spec = json.load(f)
OUT = spec["out"]

# --- counting hooks ---------------------------------------------------------------------------

reads: collections.Counter = collections.Counter()  # (split, record index) -> reads
writes: list[str] = []  # files under OUT opened for writing by this process


class _Counted:
    """A data source that counts its reads and otherwise is the source it wraps."""

    def __init__(self, src, split: str):
        self._src, self._split = src, split

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, index):
        reads[(self._split, int(index))] += 1
        return self._src[index]

    def __getattr__(self, name):
        return getattr(self._src, name)


def _counting(factory):
    return lambda data_cfg, split: _Counted(factory(data_cfg, split), split)


for _name, _factory in list(sources.SOURCES.items()):
    sources.SOURCES[_name] = _counting(_factory)

_open = builtins.open


def _recording_open(file, mode="r", *args, **kwargs):
    if isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+"):
        path = os.path.abspath(os.fspath(file))
        if path.startswith(OUT + os.sep):
            writes.append(os.path.relpath(path, OUT))
    return _open(file, mode, *args, **kwargs)


builtins.open = _recording_open

caught: dict = {}  # "init": the run's initial state; 1: its state after step 1 (host copies)
_apply_init_from = checkpoint.apply_init_from
_save = checkpoint.Checkpointer.save


def _catching_init_from(config, method, state, mesh):
    state = _apply_init_from(config, method, state, mesh)
    caught["init"] = jax.device_get(state)
    return state


def _catching_save(self, step, state, *args, **kwargs):
    if step == 1 and os.path.basename(str(self.directory)) == "checkpoints":
        caught[1] = jax.device_get(state)
    return _save(self, step, state, *args, **kwargs)


checkpoint.apply_init_from = _catching_init_from
checkpoint.Checkpointer.save = _catching_save

# --- tiny configs -----------------------------------------------------------------------------


def _distributed(c):
    c.distributed.enabled = True
    c.distributed.coordinator_address = f"127.0.0.1:{PORT}"
    c.distributed.num_processes = NPROC
    c.distributed.process_id = PID
    return c


def tiny(method: str):
    """Each method's tiny test config, on the spec's data; global batch 4 (8 for 4 processes)."""
    from conftest import override, tiny_config

    fundus, dr = spec["fundus"], spec.get("dr", "")
    if method == "lesion2void":
        c = tiny_config(fundus, **{"l2v.score_chunk": 16, "eval.num_overlays": 2})
    elif method == "picard":
        from test_picard_run import tiny as picard_tiny

        c = picard_tiny(fundus, **{"evals.baseline.max_train_images": 2})
    elif method == "simclr":
        from test_simclr import tiny_config as simclr_tiny

        c = simclr_tiny(fundus, **{"validation.every": 2, "validation.patience": 0})
    elif method == "dpa":
        from test_dpa_method import tiny_config as dpa_tiny

        from configs import common

        c = dpa_tiny(fundus, **{"dpa.vgg_weights": f"{OUT}/simclr", "eval.enabled": True})
        c.evals.model = common.anomaly_map_eval()
        c.evals.baseline = common.mean_image_eval()
        c.data.test_split = "test"
    elif method == "morphaeus":
        from configs import morphaeus

        c = override(
            morphaeus.get_config("demo"),
            {
                "data.name": "folder",
                "data.root": fundus,
                "data.image_size": 16,
                "model.widths": (4, 4, 8, 8),
                "model.vgg_width": 4,
                "model.fast_conv_grad": False,
                "morphaeus.steps_per_epoch": 1,
                "morphaeus.warmup_epochs": 0,
                "validation.every": 0,
                "eval.num_overlays": 2,
            },
        )
    elif method in ("lesioncl", "dr_grading"):
        from configs import dr_grading, lesioncl

        base = (
            lesioncl.get_config("demo") if method == "lesioncl" else dr_grading.get_config("demo")
        )
        c = override(
            base,
            {
                "data.root": dr,
                "data.image_size": 32,
                "model.depth": 18,
                "model.width": 4,
                "model.fast_conv_grad": False,
                "validation.every": 0,
            },
        )
        if method == "lesioncl":
            # LCL's own head: the tolerances below were set for it.
            c = override(
                c, {"lcl.patch_size": 16, "lcl.steps_per_epoch": 2, "model.head_norm": "none"}
            )
            c.data.box_max_side = 16.0
            c.data.boxes = os.path.join(dr, "boxes.json")
        else:
            c = override(c, {"grading.steps_per_epoch": 2})
    else:
        raise ValueError(f"unknown method {method}")
    c.batch_size = c.eval.batch_size = 4 * max(1, NPROC // 2)
    c.num_epochs = 0
    c.log_every = c.checkpoint_every = 1
    c.data.num_workers = 0
    return _distributed(c)


# --- checks -----------------------------------------------------------------------------------


def _gathered(local: dict) -> dict:
    """The global batch of every process's local batch (process order), on this host."""
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf":
            parts = multihost_utils.process_allgather(v)
            out[k] = np.concatenate(list(np.asarray(parts)))
    return out


def one_step_agrees(config, first: dict) -> dict:
    """The run's first step over every process against the same step on this device alone.

    `first` holds the run's initial state (after `init_from`) and its state after step 1, as
    the hooks below caught them. The reference starts from the same initial state, on this
    process's device only, and takes one step over the whole global batch: every process's
    first pipeline batch, gathered. The reduction orders differ, so float32 noise differs, and
    Adam's first step turns the noise of a near-zero gradient element into up to
    lr * g / (|g| + eps): the share of elements off by more than 1e-5 + 1e-4 |b| is reported (a
    wrong reduction would make most of them differ).
    """
    method = methods.create(config)
    local_bs = config.batch_size // NPROC
    it = pipeline.train_iterator(
        config.data, config.data.train_split, local_batch_size=local_bs, seed=config.seed
    )
    full = _gathered(next(it))
    del it
    alone_mesh = parallel.make_mesh(jax.local_devices())
    state = jax.device_put(first["init"], parallel.replicated(alone_mesh))
    state, _ = train.make_train_step(method, config, alone_mesh)(
        state, parallel.global_batch(alone_mesh, full), 1
    )
    alone = jax.device_get(state)
    together = jax.tree_util.tree_leaves_with_path(first[1])
    pairs = list(zip(together, jax.tree.leaves(alone), jax.tree.leaves(first["init"]), strict=True))
    off = sum(int(np.sum(np.abs(a - b) > 1e-5 + 1e-4 * np.abs(b))) for (_, a), b, _ in pairs)
    total = sum(np.size(b) for _, b, _ in pairs)
    diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for (_, a), b, _ in pairs)
    # For information: the largest relative difference of a leaf's update, and where.
    update = [
        (float(np.linalg.norm(np.float64(a) - b) / np.linalg.norm(np.float64(b) - i)), path)
        for (path, a), b, i in pairs
        if np.size(b) and np.issubdtype(np.asarray(b).dtype, np.floating) and np.any(b != i)
    ]
    worst = max(update, key=lambda u: u[0], default=(0.0, ()))
    return {
        "mismatch": off / total,
        "elements": total,
        "maxdiff": diff,
        "update_rel": worst[0],
        "update_rel_at": jax.tree_util.keystr(worst[1]),
    }


def epoch_reads(config) -> dict:
    """The records this process reads in one epoch of its training pipeline."""
    reads.clear()
    local_bs = config.batch_size // NPROC
    n = pipeline.num_examples(config.data, config.data.train_split)
    it = pipeline.train_iterator(
        config.data, config.data.train_split, local_batch_size=local_bs, seed=config.seed
    )
    for _ in range(-(-len(range(PID, n, NPROC)) // local_bs)):  # Batches span epochs.
        next(it)
    del it
    split = config.data.train_split
    return {"n": n, "read": sorted(i for (s, i) in reads if s == split)}


def run_method(name: str) -> dict:
    config = tiny(name)
    workdir = f"{OUT}/{name}"
    reads.clear()
    del writes[:]
    caught.clear()
    t0 = time.perf_counter()
    first = {}
    if spec.get("resume", True):  # Checkpoint 1 without evaluation, then resume from it.
        first = train.run(_override(config, total_steps=1, **{"eval.enabled": False}), workdir)
        config = tiny(name)
    results = train.run(_override(config, total_steps=2), workdir)  # resumes, checkpoint 2
    t_train = time.perf_counter() - t0
    split = config.data.train_split
    out = {
        "method": name,
        "first": {k: v for k, v in first.items() if isinstance(v, int | float | str)},
        "results": {k: v for k, v in results.items() if isinstance(v, int | float | str)},
        "train_reads": sorted(i for (s, i) in reads if s == split),
        "eval_writes": sorted(w for w in writes if w.startswith(f"{name}/eval/")),
        "other_writes": sorted({w for w in writes if not w.startswith(f"{name}/eval/")}),
        "seconds_run": round(t_train, 1),
    }
    t0 = time.perf_counter()
    out.update(one_step_agrees(tiny(name), dict(caught)))
    out["seconds_step"] = round(time.perf_counter() - t0, 1)
    out["epoch"] = epoch_reads(tiny(name))
    return out


def _override(config, **overrides):
    from conftest import override

    return override(config, overrides)


def predict_mood() -> dict:
    """`python -m jaxad.mood predict` of the spec's volumes with the DPA run, on every process."""
    from jaxad.mood.__main__ import main

    del writes[:]
    out = f"{OUT}/mood_pred"
    t0 = time.perf_counter()
    code = main(
        [
            "predict",
            "--task=pixel",
            f"--input={spec['volumes']}",
            f"--output={out}",
            f"--models={OUT}/dpa",
            "--min_intensity_sum=none",
            "--batch_size=8",
            f"--coordinator_address=127.0.0.1:{PORT}",
            f"--num_processes={NPROC}",
            f"--process_id={PID}",
        ]
    )
    return {
        "method": "mood",
        "code": code,
        "writes": sorted(writes),
        "seconds": round(time.perf_counter() - t0, 1),
    }


for name in spec["methods"]:
    row = predict_mood() if name == "mood" else run_method(name)
    print("RESULT " + json.dumps(row), flush=True)
assert jax.process_count() == NPROC and jax.process_index() == PID
print(f"PROCESS {PID} OF {NPROC} OK", flush=True)
