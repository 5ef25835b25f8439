"""Orbax checkpoints of the training state together with the data-iterator position.

Resume order (as in big_vision): (1) the latest checkpoint in `workdir/checkpoints`, if any;
(2) otherwise a fresh state. A checkpoint holds three items: `state` (the method's pytree,
restored onto the same shardings), `data` (each process's grain iterator state) and `meta`
(step and config, JSON). Saves are asynchronous; `close()` waits for them.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run and restores the newest one."""

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int,
        keep: int,
        async_save: bool = True,
        name: str = "checkpoints",
    ):
        """`name` is the folder under `workdir` (e.g. "best" for the early-stopping best state)."""
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
