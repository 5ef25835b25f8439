"""The one training loop shared by every method.

mesh -> data -> method state -> jitted data-parallel steps -> logging, checkpoints, evaluation.
A method supplies `init` and `train_step`, and the optional hooks of `jaxad.methods.base`
(`eval_loss` turns validation on, `init_from` takes another run's weights); evaluation is the
evaluators of `config.evals` (`jaxad.evals`). Nothing here is method-specific.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import socket
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import parameter_overview
from jax.experimental import multihost_utils

from jaxad import checkpoint, collapse, evals, methods, parallel, paths, run_config, writers
from jaxad.data import pipeline, sources


class _Preemption:
    """Tells the loop when to checkpoint and stop because the machine is going away.

    One process: SIGTERM is how Cloud TPU VMs announce preemption. Until the first training step
    has run (reading data, restoring, compiling) nothing is newer than the last checkpoint, so
    SIGTERM ends the process at once, with its data-loading workers. From `arm()` on, it sets a
    flag that the loop checks after every step and the evaluations between batches: the loop
    saves the current state and returns. A second SIGTERM ends the process at once.

    A Python signal handler runs only when the main thread next executes Python, which can be
    minutes away while XLA compiles; so a thread woken by the signal itself (through
    `signal.set_wakeup_fd`) does the ending at once. Several processes must all stop at the same
    step, so they use JAX's preemption sync point instead (through Orbax), which handles the
    signal itself; a local handler would override it.
    """

    def __init__(self, ckpt: checkpoint.Checkpointer):
        self._ckpt = ckpt
        self._requested = False
        self._multi = jax.process_count() > 1
        self._armed = False
        self._installed = False
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._install()

    def _install(self) -> None:
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_write.setblocking(False)
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._previous_fd = signal.set_wakeup_fd(
            self._wake_write.fileno(), warn_on_full_buffer=False
        )
        self._watcher = threading.Thread(target=self._watch, name="jaxad-sigterm", daemon=True)
        self._watcher.start()
        self._installed = True

    def _watch(self) -> None:
        """Ends the process at a SIGTERM before `arm` and at a second one (any thread may run)."""
        count = 0
        while True:
            try:
                data = self._wake_read.recv(64)
            except OSError:
                return
            if not data or not self._installed:
                return
            count += data.count(signal.SIGTERM)
            if count and not self._armed:
                _end_now("SIGTERM received: stopping now (nothing newer than a checkpoint).")
            if count > 1:
                _end_now("second SIGTERM received: stopping now, without a checkpoint.")

    def arm(self, armed: bool = True) -> None:
        """From now on a SIGTERM is a request to save and stop (`armed=False`: it ends the
        process at once again)."""
        self._armed = self._installed and armed

    def _handle(self, signum, frame):
        del signum, frame
        if self._armed and not self._requested:
            writers.logger.warning(
                "SIGTERM received: stopping (a second SIGTERM ends the process at once)."
            )
            self._requested = True

    def requested(self) -> bool:
        """Whether this process was told to stop (the evaluations ask between batches)."""
        return self._requested

    def reached(self, step: int) -> bool:
        return self._ckpt.reached_preemption(step) if self._multi else self._requested

    def close(self) -> None:
        """Puts back the SIGTERM handling there was before."""
        if not self._installed:
            return
        self._installed = self._armed = False
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
        self._wake_write.send(b"\0")  # Wakes the watcher, which sees it is no longer needed.
        self._watcher.join(timeout=5)
        self._wake_read.close()
        self._wake_write.close()


def _end_now(message: str) -> None:
    """Logs `message`, stops this process's data-loading workers and exits (143, as SIGTERM).

    Python's resource tracker then frees the workers' shared memory (and says so).
    """
    writers.logger.warning("%s", message)
    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(128 + signal.SIGTERM)


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """`config.total_steps` if set, else `num_epochs` epochs of full batches (drop_last)."""
    if config.total_steps:
        return int(config.total_steps)
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training split has {num_train} images, fewer than config.batch_size="
            f"{config.batch_size}; lower the batch size or add images."
        )
    return int(math.ceil(config.num_epochs * steps_per_epoch))


def parameter_counts(state: Any) -> str:
    """`g 31,043,651, d 2,765,633`: trainable parameters of each network in the state."""
    nets = {k: v["params"] for k, v in state.items() if isinstance(v, dict) and "params" in v}
    return ", ".join(f"{k} {parameter_overview.count_parameters(p):,}" for k, p in nets.items())


def make_train_step(method, config, mesh):
    """Jits the method's step: batch sharded, state replicated and donated.

    The step's key is the run's loop key folded with the step number, so a resumed run draws
    exactly the randomness an uninterrupted one would.
    """
    loop_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    repl = parallel.replicated(mesh)

    def step_fn(state, batch, step):
        return method.train_step(state, batch, jax.random.fold_in(loop_key, step))

    return methods.jit(method, step_fn, donate_argnums=(0,), out_shardings=(repl, repl))


def _check_finite(metrics: dict, step: int, ckpt: checkpoint.Checkpointer) -> None:
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        ckpt.wait()
        last = ckpt.latest_step()
        kept = f"the last good checkpoint (step {last}) is intact" if last else "no checkpoint"
        raise FloatingPointError(
            f"loss is {loss} at step {step}; training stopped and {kept} in {ckpt.directory}. "
            "Lower the learning rate or check the input data."
        )


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        run_config.save(config, workdir)  # Keeps a replaced config in config_history/.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (mode=train) or evaluates the latest checkpoint (mode=eval); returns eval metrics."""
    if config.mode not in ("train", "eval"):
        raise ValueError(f"config.mode={config.mode!r}: use 'train' or 'eval'.")
    profile_window(config.get("profile_steps", ""))  # A bad value fails before anything runs.
    run_config.check(config, workdir)  # Before anything is written: a changed model stops here.
    parallel.initialize_distributed(config.distributed)
    mesh = parallel.make_mesh()
    method = methods.create(config)
    local_bs = parallel.local_batch_size(config.batch_size, mesh)
    parallel.local_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
    ckpt = checkpoint.Checkpointer(
        workdir, every_steps=config.checkpoint_every, keep=config.keep_checkpoints
    )
    evals.check(config, method)  # A typo in config.evals fails now, not after training.
    data_check = sources.check_data(config)  # Every split's files, before any step.
    state = methods.init_state(method, config, mesh, local_bs)
    writers.log_info("parameters: %s", parameter_counts(state))
    preemption = _Preemption(ckpt)  # mode=eval never arms it: SIGTERM ends the process.
    try:
        if config.mode == "eval":
            state, meta = ckpt.restore(state)
            ckpt.close()
            step = meta["step"]
            return evals.run(config, workdir, method, state, mesh, step=step, extra=data_check)
        return _train(config, workdir, method, mesh, ckpt, state, local_bs, preemption, data_check)
    finally:
        preemption.close()


def _train(config, workdir, method, mesh, ckpt, state, local_bs, preemption, data_check) -> dict:
    """`run` for mode=train: the loop, its checkpoints and evaluations, then the final ones.

    A run that resumes at a step whose validation or evaluation did not finish (SIGTERM) runs
    it first; a run stopped during its final evaluation runs that again.
    """
    save_config(config, workdir)
    train_it = pipeline.train_iterator(
        config.data, config.data.train_split, local_batch_size=local_bs, seed=config.seed
    )
    num_steps = total_steps(config, pipeline.num_examples(config.data, config.data.train_split))
    first_step, meta = 0, {}
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state, train_it, set_aside=True)
        first_step = int(meta["step"])
        writers.log_info("resumed from step %d in %s", first_step, ckpt.directory)
    else:
        state = checkpoint.apply_init_from(config, method, state, mesh)
    validation = _Validation(config, workdir, method, mesh, meta, preemption.requested)
    writers.log_info(
        "training %s for %d steps, global batch %d on %d devices",
        config.method,
        num_steps,
        config.batch_size,
        mesh.devices.size,
    )
    writer = writers.MetricWriter(workdir)
    train_step = writers.timed_first_call(
        make_train_step(method, config, mesh), "the training step"
    )
    progress = writers.Progress(num_steps, first_step)
    profiler = _Profiler(profile_window(config.get("profile_steps", "")), workdir)
    collapsed = collapse.Detector.for_method(method, config)  # Contrastive methods.

    def evaluate(state, step: int) -> dict:
        results = evals.run(
            config,
            workdir,
            method,
            state,
            mesh,
            step=step,
            stop_requested=preemption.requested,
            extra=data_check,
        )
        writer.write_scalars(step, evals.scalars(results))
        return results

    def stopped(step: int, during: str = "", then: str = "resume") -> dict:
        profiler.stop()
        ckpt.close()
        validation.close()
        writer.close()
        writers.log_info("stopped at step %d%s; rerun the same command to %s.", step, during, then)
        return {"preempted_at_step": step}

    step = first_step
    # Periodic evaluations: the step of the last one that finished travels in the checkpoint,
    # so that one left unfinished (SIGTERM) runs when the run resumes.
    evaluated = int(meta.get("evaluated_step", first_step))
    eval_due = lambda s: bool(config.eval_every) and s % config.eval_every == 0 and s < num_steps
    early_stop = validation.exhausted(first_step)  # A rerun of an early-stopped run stays stopped.
    if 0 < first_step < num_steps and not early_stop:
        preemption.arm()
        try:  # What the previous run left unfinished at this step.
            if validation.due(first_step) and validation.last_step != first_step:
                early_stop = _validate(validation, writer, state, first_step)
            if eval_due(first_step) and evaluated != first_step and not early_stop:
                evaluate(state, first_step)
                evaluated = first_step
        except evals.core.Interrupted:
            return stopped(first_step, " during its evaluation")
        preemption.arm(False)  # Until the first step has run (compiling), SIGTERM ends it.
    for step in range(first_step + 1, (first_step if early_stop else num_steps) + 1):
        batch = parallel.global_batch(mesh, next(train_it))
        profiler.before(step)
        state, metrics = train_step(state, batch, step)
        profiler.after(step, (state, metrics))
        if step == first_step + 1:
            progress.started(step)  # Rates and ETA count step times, not the compilation.
        preemption.arm()  # From the first step on, a SIGTERM saves the current state.
        ckpt.check()  # A background save that failed stops the run now, not a checkpoint later.
        interrupted = ""
        if validation.due(step):
            try:
                early_stop = _validate(validation, writer, state, step)
            except evals.core.Interrupted:
                interrupted = " during its validation"
        last = step == num_steps or early_stop
        stop = preemption.reached(step) or bool(interrupted)
        evaluate_now = eval_due(step) and not last and not stop
        save = last or stop or ckpt.should_save(step)
        if save or evaluate_now or step % config.log_every == 0:
            metrics = jax.device_get(metrics)
            _check_finite(metrics, step, ckpt)
            if step % config.log_every == 0 or last:
                rate = progress.update(step)
                writer.write_scalars(step, {**metrics, **rate})
                writers.log_info(
                    "%s",
                    writers.format_progress(
                        step, num_steps, metrics, rate["steps_per_sec"], rate["eta_sec"]
                    ),
                )
                collapsed.update(step, metrics)
        if evaluate_now:  # Before the save, whose meta says whether it finished.
            try:
                evaluate(state, step)
                evaluated = step
            except evals.core.Interrupted:
                stop, save, interrupted = True, True, " during its evaluation"
        if save:
            meta = {"step": step, "evaluated_step": evaluated, **validation.checkpoint_meta()}
            ckpt.save(step, state, train_it, meta)
        if stop:
            return stopped(step, interrupted)
        if early_stop:
            writers.log_info(
                "early stop at step %d: no validation gain for %d validations; best step %d",
                step,
                validation.patience,
                validation.best_step,
            )
            break
    profiler.stop()
    ckpt.close()
    preemption.arm()  # Also in a rerun that only evaluates: SIGTERM stops the evaluation.
    try:
        final_step = step
        if validation.every:
            if validation.last_step != step:  # As the original: validate the final state too.
                _validate(validation, writer, state, step, log=False)
            state = validation.best_state(state)
            final_step = validation.best_step or step
            validation.close()
        results = evaluate(state, final_step)
    except evals.core.Interrupted:
        return stopped(step, " during the final evaluation", then="evaluate")
    writer.close()
    return {**validation.meta(), **results}


def profile_window(value: str) -> tuple[int, int] | None:
    """`config.profile_steps` 'N,M' as (N, M), the steps N to M-1 to trace; '' is None (off)."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        first, stop = (int(part) for part in text.split(","))
    except ValueError:
        first = stop = 0
    if not 1 <= first < stop:
        raise ValueError(
            f"config.profile_steps={value!r}: use 'N,M', integers with 1 <= N < M (traces "
            "training steps N to M-1), or '' for no trace."
        )
    return first, stop


class _Profiler:
    """A JAX profiler trace of the training steps in `window` = (N, M), into workdir/profile.

    Process 0 alone traces (its trace shows the collectives that wait for the other hosts), so
    one run writes one trace. Each traced step's outputs are waited for, so that the trace holds
    the step's device work, not just its dispatch. Choose N after the first step of a start,
    whose time is mostly compilation; a run resumed inside the window traces from its first step.
    """

    def __init__(self, window: tuple[int, int] | None, workdir: str):
        self._window = window if jax.process_index() == 0 else None
        self.directory = paths.join(workdir, "profile")
        self._active = False
        self._mirror = None  # A gs:// workdir: traced locally, uploaded at stop.

    def before(self, step: int) -> None:
        if self._window and not self._active and self._window[0] <= step < self._window[1]:
            local = self.directory
            if paths.is_remote(self.directory):
                self._mirror = paths.LocalMirror(self.directory)
                local = self._mirror.local
            jax.profiler.start_trace(local)
            self._active = True
            writers.log_info(
                "profiling steps %d to %d into %s", step, self._window[1] - 1, self.directory
            )

    def after(self, step: int, outputs: Any) -> None:
        if self._active:
            jax.block_until_ready(outputs)
            if step + 1 >= self._window[1]:
                self.stop()

    def stop(self) -> None:
        if self._active:
            jax.profiler.stop_trace()
            self._active = False
            if self._mirror is not None:
                self._mirror.close()
                self._mirror = None
            writers.log_info("profile written to %s", self.directory)


def _validate(validation: _Validation, writer, state, step: int, log: bool = True) -> bool:
    """Validates at `step`, writes and logs the scalars; returns whether to stop early."""
    scalars, early_stop = validation.run(state, step)
    writer.write_scalars(step, scalars)
    if log:
        writers.log_info(
            "step %d: validation %s",
            step,
            ", ".join(f"{k[4:]} {v:.6g}" for k, v in scalars.items() if k != "val/best_loss"),
        )
    return early_stop


class _Validation:
    """Validation loss every `config.validation.every` steps, with early stopping (DPA, §5).

    The loss is `method.eval_loss(state, batch, key)` (per example) averaged over the examples
    of `config.data.val_split`. A loss below the best minus `min_delta`
    is a new best: the state is saved to `workdir/best`; training stops when `patience`
    validations in a row brought none. The best loss and step, and the step of the last
    validation, travel in the checkpoint's meta, so a resumed run keeps counting (and runs a
    validation that SIGTERM interrupted: `stop_requested()` is asked between batches). Off when
    `every` is 0 or the method has no `eval_loss`.
    """

    def __init__(
        self, config, workdir: str, method, mesh, meta: dict | None = None, stop_requested=None
    ):
        cfg = config.validation
        self.by_summary = methods.provides(method, "validation_outputs")
        validates = self.by_summary or methods.provides(method, "eval_loss")
        self.every = int(cfg.every) if validates else 0
        self.patience = int(cfg.patience)
        self.min_delta = float(cfg.min_delta)
        self.config, self.method, self.mesh = config, method, mesh
        meta = meta or {}
        self.best = float(meta.get("best_val_loss", np.inf))
        self.best_step = int(meta.get("best_step", 0))
        self.last_step = int(meta.get("val_step", 0))
        self._stop_requested = stop_requested or (lambda: False)
        self._ckpt = None
        if self.every:
            self._ckpt = checkpoint.Checkpointer(
                workdir, every_steps=0, keep=1, async_save=False, name="best"
            )
            self._loss_fn = writers.timed_first_call(
                methods.jit(
                    method, method.validation_outputs if self.by_summary else method.eval_loss
                ),
                "the validation step",
            )

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def meta(self) -> dict:
        return {"best_val_loss": self.best, "best_step": self.best_step} if self.every else {}

    def checkpoint_meta(self) -> dict:
        """`meta()` and the step of the last validation, for the checkpoint."""
        return {**self.meta(), "val_step": self.last_step} if self.every else {}

    def exhausted(self, step: int) -> bool:
        """Whether early stopping ends training at `step` (`patience` validations, no gain)."""
        if not self.every or not self.patience or not self.last_step:
            return False
        return (step - self.best_step) / self.every > self.patience

    def run(self, state, step: int) -> tuple[dict, bool]:
        """Validates at `step`; returns (scalars to log, whether to stop)."""
        total, count = 0.0, 0.0
        local_bs = parallel.local_batch_size(self.config.eval.batch_size, self.mesh)
        key = jax.random.fold_in(jax.random.key(self.config.seed), 3)
        batches = pipeline.eval_batches(
            self.config.data,
            self.config.data.val_split,
            local_batch_size=local_bs,
        )
        rows: dict[str, list] = {}
        for i, local in enumerate(batches):
            if self._stop_requested():
                raise evals.core.Interrupted()
            batch = parallel.global_batch(self.mesh, local)
            out = self._loss_fn(state, batch, jax.random.fold_in(key, i))
            if self.by_summary:
                valid = np.asarray(multihost_utils.process_allgather(batch["valid"], tiled=True))
                for k, v in out.items():
                    v = np.asarray(multihost_utils.process_allgather(v, tiled=True))
                    rows.setdefault(k, []).append(v[valid])
                continue
            valid = batch["valid"].astype(jnp.float32)
            total += float(jnp.sum(out * valid))
            count += float(jnp.sum(valid))
        if self.by_summary:
            summary = self.method.validation_summary(
                {k: np.concatenate(v) for k, v in rows.items()}
            )
            loss = float(summary["loss"])
            extra = {f"val/{k}": float(v) for k, v in summary.items() if k != "loss"}
        else:
            loss, extra = total / max(count, 1.0), {}
        self.last_step = step
        if loss < self.best - self.min_delta:
            self.best, self.best_step = loss, step
            self._ckpt.save(step, state, None, {"step": step, "val_loss": loss})
        return {"val/loss": loss, "val/best_loss": self.best, **extra}, self.exhausted(step)

    def best_state(self, state):
        """The best validated state (restored onto `state`'s shardings), or `state`."""
        if not self.every or self._ckpt.latest_step() is None:
            return state
        best, _ = self._ckpt.restore(state)
        return best

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None
