"""The one training loop shared by every method.

mesh -> data -> method state -> jitted data-parallel steps -> logging, checkpoints, evaluation.
A method supplies `init` and `train_step`, and the optional hooks of `jaxad.methods.base`
(`eval_loss` turns validation on, `init_from` takes another run's weights); evaluation is the
evaluators of `config.evals` (`jaxad.evals`). Nothing here is method-specific.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import parameter_overview
from jax.experimental import multihost_utils

from jaxad import checkpoint, evals, methods, parallel, run_config, writers
from jaxad.data import pipeline


class _Preemption:
    """Tells the loop when to checkpoint and stop because the machine is going away.

    One process: SIGTERM (how Cloud TPU VMs announce preemption) sets a flag. Several processes
    must all stop at the same step, so they use JAX's preemption sync point instead (through
    Orbax), which handles the signal itself; a local handler would override it.
    """

    def __init__(self, ckpt: checkpoint.Checkpointer):
        self._ckpt = ckpt
        self._requested = False
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        writers.logger.warning("SIGTERM received: saving a checkpoint and stopping.")
        self._requested = True

    def reached(self, step: int) -> bool:
        return self._ckpt.reached_preemption(step) if self._multi else self._requested


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

    return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(repl, repl))


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
    state = methods.init_state(method, config, mesh, local_bs)
    writers.log_info("parameters: %s", parameter_counts(state))
    if config.mode == "eval":
        state, meta = ckpt.restore(state)
        ckpt.close()
        return evals.run(config, workdir, method, state, mesh, step=meta["step"])

    preemption = _Preemption(ckpt)  # Before anything slow: a SIGTERM from now on is honoured.
    save_config(config, workdir)
    train_it = pipeline.train_iterator(
        config.data, config.data.train_split, local_batch_size=local_bs, seed=config.seed
    )
    num_steps = total_steps(config, pipeline.num_examples(config.data, config.data.train_split))
    first_step, meta = 0, {}
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state, train_it)
        first_step = int(meta["step"])
        writers.log_info("resumed from step %d in %s", first_step, ckpt.directory)
    else:
        state = checkpoint.apply_init_from(config, method, state, mesh)
    validation = _Validation(config, workdir, method, mesh, meta)
    writers.log_info(
        "training %s for %d steps, global batch %d on %d devices",
        config.method,
        num_steps,
        config.batch_size,
        mesh.devices.size,
    )
    writer = writers.MetricWriter(workdir)
    train_step = make_train_step(method, config, mesh)
    progress = writers.Progress(num_steps, first_step)
    step = first_step
    early_stop = False
    for step in range(first_step + 1, num_steps + 1):
        batch = parallel.global_batch(mesh, next(train_it))
        state, metrics = train_step(state, batch, step)
        if validation.due(step):
            scalars, early_stop = validation.run(state, step)
            writer.write_scalars(step, scalars)
            writers.log_info(
                "step %d: validation %s",
                step,
                ", ".join(f"{k[4:]} {v:.6g}" for k, v in scalars.items() if k != "val/best_loss"),
            )
        last = step == num_steps or early_stop
        stop = preemption.reached(step)
        save = last or stop or ckpt.should_save(step)
        if save or step % config.log_every == 0:
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
        if save:
            ckpt.save(step, state, train_it, {"step": step, **validation.meta()})
        if early_stop:
            writers.log_info(
                "early stop at step %d: no validation gain for %d validations; best step %d",
                step,
                validation.patience,
                validation.best_step,
            )
            break
        if stop:
            ckpt.close()
            validation.close()
            writer.close()
            writers.log_info("stopped at step %d; rerun the same command to resume.", step)
            return {"preempted_at_step": step}
        if config.eval_every and step % config.eval_every == 0 and not last:
            results = evals.run(config, workdir, method, state, mesh, step=step)
            writer.write_scalars(step, evals.scalars(results))
    ckpt.close()
    if validation.every:
        if validation.last_step != step:  # As the original: validate the final state too.
            scalars, _ = validation.run(state, step)
            writer.write_scalars(step, scalars)
        state = validation.best_state(state)
        step = validation.best_step or step
        validation.close()
    results = evals.run(config, workdir, method, state, mesh, step=step)
    writer.write_scalars(step, evals.scalars(results))
    writer.close()
    return {**validation.meta(), **results}


class _Validation:
    """Validation loss every `config.validation.every` steps, with early stopping (DPA, §5).

    The loss is `method.eval_loss(state, batch, key)` (per example) averaged over the examples
    of `config.data.val_split`. A loss below the best minus `min_delta`
    is a new best: the state is saved to `workdir/best`; training stops when `patience`
    validations in a row brought none. The best loss and step travel in the checkpoint's meta,
    so a resumed run keeps counting. Off when `every` is 0 or the method has no `eval_loss`.
    """

    def __init__(self, config, workdir: str, method, mesh, meta: dict | None = None):
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
        self.last_step = 0
        self._ckpt = None
        if self.every:
            self._ckpt = checkpoint.Checkpointer(
                workdir, every_steps=0, keep=1, async_save=False, name="best"
            )
            self._loss_fn = jax.jit(
                method.validation_outputs if self.by_summary else method.eval_loss
            )

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def meta(self) -> dict:
        return {"best_val_loss": self.best, "best_step": self.best_step} if self.every else {}

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
        stop = bool(self.patience) and (step - self.best_step) / self.every > self.patience
        return {"val/loss": loss, "val/best_loss": self.best, **extra}, stop

    def best_state(self, state):
        """The best validated state (restored onto `state`'s shardings), or `state`."""
        if not self.every or self._ckpt.latest_step() is None:
            return state
        best, _ = self._ckpt.restore(state)
        return best

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
