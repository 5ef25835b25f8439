"""Orbax checkpoints of the training state, and the one loader of finished runs.

Resume order (as in big_vision): (1) the latest checkpoint in `workdir/checkpoints`, if any;
(2) otherwise a fresh state. A checkpoint holds three items: `state` (the method's pytree,
restored onto the same shardings), `data` (each process's grain iterator state) and `meta`
(step and config, JSON). Saves are asynchronous; `close()` waits for them.

A finished run is read in one place, `load_run` (its config, method and best or latest state),
by prediction, the MOOD inference and `apply_init_from`, which starts a fresh run from other
runs' weights (`config.init_from.workdir` and the method's `init_runs`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jaxad import methods, parallel, writers

# Where each kind of saved state lives under a workdir: the loop's latest checkpoints and the
# best validated state (kept when `config.validation` is on).
FOLDERS = {"latest": "checkpoints", "best": "best"}


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run and restores the newest one."""

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int,
        keep: int | None,
        async_save: bool = True,
        name: str = "checkpoints",
    ):
        """`name` is the folder under `workdir` (e.g. "best" for the early-stopping best state).

        `keep=None` keeps every checkpoint (for reading a run without touching it).
        """
        self.directory = os.path.abspath(os.path.join(workdir, name))
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any has been told of a preemption (multi-host safe)."""
        return self._manager.reached_preemption(step)

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, data_iter: Any | None, meta: dict) -> None:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, state_like: Any, data_iter: Any | None = None, step: int | None = None):
        """Restores (state, meta) at `step` (default latest) onto `state_like`'s shardings.

        `data_iter`, when given, is moved to the saved position in place.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}; train first (mode=train) with this workdir."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = dict(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# --- finished runs ----------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (its `config.json`, written by the loop).

    It is read over the base config (`configs/common.py`), so that a run saved before a key
    existed still has every key the code reads, at its default. A run saved before evaluators
    were named (no `evals`) gets the one anomaly-map evaluator it had (`eval.dense`: at full
    resolution).
    """
    from configs import common  # The base config: every key the shared code reads.

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a jaxad run?")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    config = common.get_config()
    config.update(saved)
    if "evals" not in saved and config.method:
        dense = bool(saved.get("eval", {}).get("dense", False))
        config.evals.model = common.anomaly_map_eval(full_resolution=dense)
    return config


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run, loaded: what it was trained with and the state it scores with."""

    workdir: str
    config: ml_collections.ConfigDict
    method: methods.Method
    state: Any  # `method.inference_state` of the restored state
    step: int
    source: str  # 'best' (workdir/best) or 'latest' (workdir/checkpoints)


def saved_step(workdir: str, source: str) -> int | None:
    """The newest step saved in the `source` folder of `workdir`; never creates the folder."""
    if not os.path.isdir(os.path.join(workdir, FOLDERS[source])):
        return None
    ckpt = Checkpointer(workdir, every_steps=0, keep=None, async_save=False, name=FOLDERS[source])
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _choose_source(workdir: str, prefer: str) -> tuple[str, int]:
    """(source, step): the preferred kind of state if the run saved one, else the other."""
    order = ("best", "latest") if prefer == "best" else ("latest", "best")
    for source in order:
        step = saved_step(workdir, source)
        if step is not None:
            return source, step
    raise FileNotFoundError(
        f"no checkpoint in {os.path.join(workdir, 'checkpoints')} or "
        f"{os.path.join(workdir, 'best')}: train first (mode=train) with this workdir."
    )


def abstract_state(method: methods.Method, config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """Shapes and dtypes of the method's state, replicated on `mesh`; nothing is computed.

    Restoring onto it reads each array straight to its devices, without initialising a state
    first (a VGG19 or a full PICARD would otherwise be built only to be overwritten).
    """
    batch = methods.example_batch(config, 1)
    shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def load_run(workdir: str | os.PathLike, prefer: str = "best", mesh: Mesh | None = None) -> Run:
    """Loads a finished run: config, method and its inference state replicated on `mesh`.

    `prefer='best'` takes the best validated state (`workdir/best`) when the run kept one, else
    the latest checkpoint; `'latest'` takes the latest checkpoint, else the best state. `mesh`
    defaults to every device (`parallel.make_mesh()`); a mesh of one local device
    (`parallel.make_mesh(jax.local_devices()[:1])`) lets each process read the run by itself.
    """
    if prefer not in FOLDERS:
        raise ValueError(f"prefer={prefer!r} is not one of {', '.join(FOLDERS)}.")
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(
            f"{workdir} not found: give the workdir of a finished jaxad run (python -m "
            "jaxad.main --workdir=DIR)."
        )
    config = load_config(workdir)
    source, step = _choose_source(workdir, prefer)
    method = methods.create(config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    ckpt = Checkpointer(workdir, every_steps=0, keep=None, async_save=False, name=FOLDERS[source])
    try:
        state, _ = ckpt.restore(abstract_state(method, config, mesh), step=step)
    finally:
        ckpt.close()
    return Run(workdir, config, method, method.inference_state(state), int(step), source)


# --- starting from other runs' weights ----------------------------------------------------------


def _key(entry: Any) -> Any:
    """The plain key of one key-path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def _never_taken(path: tuple) -> bool:
    """Optimiser states (dict keys ending in 'opt') and the step counter start afresh."""
    keys = [e.key for e in path if isinstance(e, jax.tree_util.DictKey)]
    return any(isinstance(k, str) and (k.endswith("opt") or k == "step") for k in keys)


def _signature(x: Any) -> tuple:
    return np.shape(x), (np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x))


def _top_keys(tree: Any) -> str:
    return ", ".join(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__


def _transfer(state: Any, source_state: Any) -> tuple[Any, int, int]:
    """(new state, arrays taken, arrays of `state`): see `transfer_weights`."""
    source = {
        tuple(map(_key, path)): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(source_state)[0]
        if not _never_taken(path)
    }
    taken = 0

    def take(path: tuple, leaf: Any) -> Any:
        nonlocal taken
        new = source.get(tuple(map(_key, path)))
        if new is None or _never_taken(path) or _signature(new) != _signature(leaf):
            return leaf
        taken += 1
        sharding = getattr(leaf, "sharding", None)
        return jax.device_put(new, sharding) if sharding is not None else new

    new_state = jax.tree_util.tree_map_with_path(take, state)
    return new_state, taken, len(jax.tree.leaves(state))


def _nothing_in_common(state: Any, source_state: Any) -> str:
    return (
        f"no array of the run (top-level keys: {_top_keys(source_state)}) matches this state "
        f"(top-level keys: {_top_keys(state)}) by key path, shape and dtype; optimiser states "
        "and step are never taken."
    )


def transfer_weights(state: Any, source_state: Any) -> Any:
    """`state` with every array of `source_state` at the same key path, shape and dtype.

    Parameters and statistics carry over; optimiser states (any dict key ending in `opt`) and
    `step` do not, so training starts afresh from the weights. The taken arrays get the
    shardings of the ones they replace. Nothing in common is an error (a run of another
    method, or another architecture), not a silent fresh start.
    """
    new_state, taken, _ = _transfer(state, source_state)
    if not taken:
        raise ValueError(_nothing_in_common(state, source_state))
    return new_state


def init_from_workdirs(config: ml_collections.ConfigDict, method: methods.Method) -> list[str]:
    """The runs a fresh run starts from: the method's `init_runs`, then `init_from.workdir`."""
    workdirs = list(method.init_runs()) if methods.provides(method, "init_runs") else []
    if config.init_from.workdir:
        workdirs.append(os.fspath(config.init_from.workdir))
    return workdirs


def _start_from(method: methods.Method, state: Any, run: Run) -> tuple[Any, str]:
    """(state with the run's weights, what was taken, for the log)."""
    if methods.provides(method, "init_from"):
        return method.init_from(state, run), f"taken by {type(method).__name__}.init_from"
    new_state, taken, total = _transfer(state, run.state)
    if not taken:
        raise ValueError(f"init_from {run.workdir}: {_nothing_in_common(state, run.state)}")
    return new_state, f"{taken} of {total} arrays"


def apply_init_from(
    config: ml_collections.ConfigDict, method: methods.Method, state: Any, mesh: Mesh
) -> Any:
    """A fresh state started from the weights of the runs named by the config and method.

    For each of `init_from_workdirs` the run is loaded (`config.init_from.prefer`) and handed
    to the method's `init_from` hook, or else taken by `transfer_weights`. The loop calls this
    once, for a fresh run only: a run that resumes from its own checkpoints already has them.
    """
    for workdir in init_from_workdirs(config, method):
        run = load_run(workdir, prefer=config.init_from.prefer, mesh=mesh)
        state, what = _start_from(method, state, run)
        writers.log_info(
            "started from %s (%s run, %s state of step %d): %s",
            workdir,
            run.config.method,
            run.source,
            run.step,
            what,
        )
    return state
