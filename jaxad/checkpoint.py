"""Orbax checkpoints of the training state, and the one loader of finished runs.

Resume order (as in big_vision): (1) the latest checkpoint in `workdir/checkpoints`, if any;
(2) otherwise a fresh state. A checkpoint holds three items: `state` (the method's pytree,
restored onto the same shardings), `data` (each process's grain iterator state) and `meta`
(step and config, JSON). Saves are asynchronous; `check()` (called after every step) raises
as soon as one has failed, and `close()` waits for them.

Damaged files are not fatal while an older checkpoint is good: `restore` tries the steps newest
first, warns in one line about each one that does not restore, and takes the newest that does.
Nothing is deleted; a training run that resumes from an older step renames the newer, unreadable
ones to `<step>.unreadable` so that it can save those steps again. A save that fails (a full
disk) raises `CheckpointError` at once, naming the step directory and the cause; the earlier
checkpoints are left as they were.

A finished run is read in one place, `load_run` (its config, method and best or latest state),
by prediction, the MOOD inference and `apply_init_from`, which starts a fresh run from other
runs' weights (`config.init_from.workdir` and the method's `init_runs`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jaxad import methods, parallel, paths, writers

# Where each kind of saved state lives under a workdir: the loop's latest checkpoints and the
# best validated state (kept when `config.validation` is on).
FOLDERS = {"latest": "checkpoints", "best": "best"}

# What each item of a checkpoint holds, for the messages about one that does not restore.
_ITEMS = {"meta": "step and metadata", "data": "data-iterator state", "state": "training state"}


class CheckpointError(OSError):
    """A checkpoint that could not be saved or restored; the message is one line naming it."""


def cause(error: BaseException) -> str:
    """One line saying why `error` happened, from the innermost exception of its chain.

    An OS error gives the system's own words, e.g. `No space left on device (errno 28)`, also
    when TensorStore wraps it in a message ending in `[os_error_code='28']`; TensorStore's
    specs (`[tensorstore_spec=...]`, hundreds of characters) are left out.
    """
    chain = [error]
    while True:
        last = chain[-1]
        nxt = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    for e in reversed(chain):
        if isinstance(e, OSError) and e.strerror:
            where = f": {e.filename}" if e.filename else ""
            return f"{e.strerror} (errno {e.errno}){where}"
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code:
            return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    inner = chain[-1]
    text = str(inner).split(" [tensorstore_spec", 1)[0]
    first = " ".join(text.split("\n", 1)[0].split())
    if len(first) > 500:
        first = first[:497] + "..."
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


class _QuietOrbaxErrors(logging.Filter):
    """Drops Orbax's own error logs (tracebacks from its save threads, one per thread).

    Every failure they describe reaches the Checkpointer as an exception, which reports it in
    one line; warnings still pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax and record.levelno >= logging.ERROR)


def _quiet_orbax_errors() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbaxErrors) for f in absl_logger.filters):
        absl_logger.addFilter(_QuietOrbaxErrors())


class _NeverRetrieved(logging.Filter):
    """Drops asyncio's `Task exception was never retrieved` about checkpoint reads or writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
            return True
        exc = record.exc_info[1]
        frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
        from_orbax = any(f"{os.sep}orbax{os.sep}" in f.filename for f in frames)
        return not (from_orbax or "tensorstore" in str(exc))


def _abandoned_io(unraisable: Any) -> bool:
    """Whether an unraisable exception is the echo of a checkpoint read or write given up on."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return inspect.iscoroutine(unraisable.object) and f"{os.sep}orbax{os.sep}" in str(
        code.co_filename if code else ""
    )


def _quiet_abandoned_io() -> None:
    """Silences the echoes of a checkpoint that fails to restore or save half-way.

    Orbax reads (and writes) a checkpoint's arrays concurrently and gives up at the first
    error; the operations still in flight end later, into a closed event loop, and Python
    reports each of them (`Event loop is closed`, `Task exception was never retrieved`, a
    coroutine never awaited): hundreds of tracebacks about the one damaged file or full disk
    that the Checkpointer reports in one line.
    """
    if getattr(sys.unraisablehook, "quiets_abandoned_io", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _abandoned_io(unraisable):
            previous(unraisable)

    hook.quiets_abandoned_io = True
    sys.unraisablehook = hook
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _NeverRetrieved) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_NeverRetrieved())
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)


def _empty_files(directory: str) -> list[str]:
    """The empty files under `directory` (relative paths): a checkpoint writes none."""
    out = []
    top = paths.path(directory)
    if not top.is_dir():
        return out
    for path in paths.files_under(top):
        if path.stat().length == 0:
            out.append(path.relative_to(top.parent).as_posix())
    return out


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
        self.directory = paths.abspath(paths.join(workdir, name))
        self.every_steps = every_steps
        self._saving: int | None = None  # The step of a save not yet known to have succeeded.
        self._closed = False
        _quiet_orbax_errors()
        _quiet_abandoned_io()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            paths.path(self.directory),
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
        """Starts saving `step` (in the background when asynchronous).

        Raises:
          CheckpointError: this save, or the previous one, failed (one line: step directory
            and cause).
        """
        self.wait()  # Orbax waits for the previous save anyway; its failure is named here.
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._saving = step
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:
            raise self._save_error(e) from e

    def check(self) -> None:
        """Raises CheckpointError if the last save has finished and failed; never waits.

        Called after every training step, so that a failed background save stops the run at
        once instead of at the next checkpoint.
        """
        if self._saving is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def _save_error(self, error: Exception) -> CheckpointError:
        step, self._saving = self._saving, None
        where = self.directory if step is None else paths.join(self.directory, str(step))
        good = [s for s in self._manager.all_steps() if s != step]
        kept = (
            f"the last good checkpoint (step {max(good)}) is intact"
            if good
            else "no earlier checkpoint was saved"
        )
        what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
        return CheckpointError(
            f"could not save {what} to {where}: {cause(error)}; training stopped and {kept}. "
            "Fix the cause (e.g. free disk space) and rerun the same command to resume."
        )

    def restore(
        self,
        state_like: Any,
        data_iter: Any | None = None,
        step: int | None = None,
        *,
        set_aside: bool = False,
    ):
        """Restores (state, meta) at `step` (default: the newest that restores).

        The state is restored onto `state_like`'s shardings; `data_iter`, when given, is moved
        to the saved position in place. Without `step`, a checkpoint that does not restore is
        reported in one warning line and the next older one is tried; with `set_aside` (a
        training run, which will save those steps again), the newer unreadable ones are
        renamed `<step>.unreadable`. Nothing is deleted.

        Raises:
          CheckpointError: no checkpoint restores (one line naming the folder and what to do).
        """
        steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}; train first (mode=train) with this workdir."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        failed: list[tuple[int, str]] = []
        for candidate in steps:
            try:
                restored = self._restore_step(candidate, abstract, data_iter)
            except Exception as e:  # Any damage: a truncated file, a missing one, bad JSON.
                why = str(e) if isinstance(e, CheckpointError) else cause(e)
                failed.append((candidate, why))
                if step is None:
                    writers.logger.warning(
                        "checkpoint %s does not restore (%s); trying the one before.",
                        paths.join(self.directory, str(candidate)),
                        why,
                    )
                continue
            if failed and set_aside:
                self._set_aside([s for s, _ in failed])
            return restored
        newest, why = failed[0]
        if step is not None:
            raise CheckpointError(
                f"checkpoint {paths.join(self.directory, str(newest))} does not restore: {why}."
            )
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores (step {newest}: {why}); to start over, "
            f"move that folder away (e.g. mv {self.directory} {self.directory}.unreadable) and "
            "rerun."
        )

    def _restore_step(self, step: int, abstract: Any, data_iter: Any | None):
        """(state, meta) of `step`; each item is read alone, so an error names the item."""
        args = {"meta": ocp.args.JsonRestore(), "state": ocp.args.StandardRestore(abstract)}
        saved_data = paths.path(self.directory) / str(step) / "data"
        if data_iter is not None and saved_data.is_dir():
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        elif data_iter is not None:  # Saved without a data position (`jaxad.convert`'s step 0).
            writers.log_info(
                "checkpoint %s holds no data position: the training data starts from the "
                "beginning of its order.",
                paths.join(self.directory, str(step)),
            )
        restored = {}
        for name in ("meta", "data", "state"):
            if name not in args:
                continue
            try:
                item = self._manager.restore(step, args=ocp.args.Composite(**{name: args[name]}))
            except Exception as e:
                empty = _empty_files(paths.join(self.directory, str(step), name))
                found = f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty; "
                found = found if empty else ""
                raise CheckpointError(f"its {_ITEMS[name]} ({name}/): {found}{cause(e)}") from e
            restored[name] = item[name]
        if not isinstance(restored["meta"], dict) or "step" not in restored["meta"]:
            raise CheckpointError(f"its {_ITEMS['meta']} (meta/) has no step")
        return restored["state"], restored["meta"]

    def _set_aside(self, steps: list[int]) -> None:
        """Renames unreadable step folders to `<step>.unreadable` (process 0; all wait)."""
        if jax.process_index() == 0:
            for step in steps:
                path = paths.join(self.directory, str(step))
                target, n = f"{path}.unreadable", 1
                while paths.path(target).exists():
                    n += 1
                    target = f"{path}.unreadable-{n}"
                paths.path(path).rename(target)
                writers.logger.warning("kept the unreadable checkpoint as %s", target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxad_checkpoint_set_aside")
        self._manager.reload()

    def wait(self) -> None:
        """Waits for a save in progress; raises CheckpointError if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(e) from e
        self._saving = None

    def close(self) -> None:
        """Waits for a save in progress (raising CheckpointError if it failed), then closes."""
        if self._closed:
            return
        self.wait()
        self._manager.close()
        self._closed = True


# --- finished runs ----------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (its `config.json`, written by the loop).

    It is read over the base config (`configs/common.py`), so that a run saved before a key
    existed still has every key the code reads, at its default. A run saved before evaluators
    were named (no `evals`) gets the one anomaly-map evaluator it had (`eval.dense`: at full
    resolution).
    """
    from configs import common  # The base config: every key the shared code reads.

    path = paths.path(paths.join(workdir, "config.json"))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a jaxad run?")
    saved = json.loads(path.read_text(encoding="utf-8"))
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
    if not (paths.path(workdir) / FOLDERS[source]).is_dir():
        return None
    ckpt = Checkpointer(workdir, every_steps=0, keep=None, async_save=False, name=FOLDERS[source])
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _sources(workdir: str, prefer: str) -> list[str]:
    """The kinds of state the run saved, the preferred one first."""
    order = ("best", "latest") if prefer == "best" else ("latest", "best")
    found = [source for source in order if saved_step(workdir, source) is not None]
    if found:
        return found
    raise FileNotFoundError(
        f"no checkpoint in {paths.join(workdir, 'checkpoints')} or "
        f"{paths.join(workdir, 'best')}: train first (mode=train) with this workdir."
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
    the latest checkpoint; `'latest'` takes the latest checkpoint, else the best state (also
    when none of the preferred kind restores). `mesh`
    defaults to every device (`parallel.make_mesh()`); a mesh of one local device
    (`parallel.make_mesh(jax.local_devices()[:1])`) lets each process read the run by itself.
    """
    if prefer not in FOLDERS:
        raise ValueError(f"prefer={prefer!r} is not one of {', '.join(FOLDERS)}.")
    workdir = os.fspath(workdir)
    if not paths.path(workdir).is_dir():
        raise FileNotFoundError(
            f"{workdir} not found: give the workdir of a finished jaxad run (python -m "
            "jaxad.main --workdir=DIR)."
        )
    config = load_config(workdir)
    sources = _sources(workdir, prefer)
    method = methods.create(config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    abstract = abstract_state(method, config, mesh)
    for i, source in enumerate(sources):
        try:
            state, meta = _read(workdir, source, abstract)
        except CheckpointError as e:  # No step of this kind restores: the other kind, if any.
            if i + 1 == len(sources):
                raise
            writers.logger.warning("%s; taking the %s state instead.", e, sources[i + 1])
        else:
            step = int(meta["step"])
            return Run(workdir, config, method, method.inference_state(state), step, source)


def _read(workdir: str, source: str, abstract: Any) -> tuple[Any, dict]:
    """(state, meta) of the newest step of `source` that restores (damaged newer ones are
    skipped with a warning)."""
    ckpt = Checkpointer(workdir, every_steps=0, keep=None, async_save=False, name=FOLDERS[source])
    try:
        return ckpt.restore(abstract)
    finally:
        ckpt.close()


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
