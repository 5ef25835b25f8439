"""The Method protocol: everything a method may provide to the shared loop, evaluators and tools.

A method owns its models, losses and scoring; `jaxad.train` owns the loop, sharding,
checkpoints and logging; the evaluators in `jaxad.evals` own metrics and reports;
`jaxad.checkpoint.load_run` and `jaxad.predict` load finished runs. A method is a class
deriving from `Method`, built by its module's `create(config)`. It must implement `init` and
`train_step`; every other hook below is optional, and the code that needs one checks for it
with `provides(method, name)`, so a method that leaves a hook out (a pre-training method has no
anomaly maps) is never asked for it.

State is any pytree (usually a dict of params, batch statistics and optimiser states).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

State = Any
Batch = dict[str, jax.Array]


class Method:
    """Base class of every method; the docstring of each hook is its contract."""

    # --- required ----------------------------------------------------------------------------
    def init(self, key: jax.Array, batch: Batch) -> State:
        """Builds the initial training state from an example batch (only shapes matter).

        Pure and jittable: the loop runs it under `jax.jit` with replicated outputs.
        """
        raise NotImplementedError

    def train_step(self, state: State, batch: Batch, key: jax.Array) -> tuple[State, dict]:
        """One optimisation step; pure and jittable. The metrics include a scalar `loss`."""
        raise NotImplementedError

    # --- anomaly maps (the `anomaly_map` evaluator, `jaxad.predict`) ----------------------------
    def score(self, state: State, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
        """Anomaly maps of a resized batch; pure and jittable.

        Returns `map` [B, H, W] (higher = more anomalous) and `score` [B]; it may return further
        per-image arrays that `image_scores` needs on the host, and further maps `<name>` with
        their image scores `<name>_score` (an `anomaly_map` evaluator with `output=<name>`
        evaluates them, e.g. a variant trained alongside).
        """
        raise NotImplementedError

    def image_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Host-side image scores [B] from `score`'s outputs (non-jittable post-processing).

        Default: `outputs["score"]`.
        """
        return np.asarray(outputs["score"])

    def dense_map(self, state: State, image: np.ndarray, key: jax.Array) -> np.ndarray:
        """The anomaly map [H, W] of one float32 [H, W, C] image in [0, 1] at its own size.

        For methods that score high-resolution images by windows (PICARD); the `anomaly_map`
        evaluator and `jaxad.predict` use it when the evaluator has `full_resolution=True`.
        """
        raise NotImplementedError

    def panels(self, state: State, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
        """Named pictures of what the method did to each image of a batch; pure and jittable.

        For the `panels` evaluator's report PNGs (one row of pictures per image): `[B, H, W]` or
        `[B, H, W, 3]` arrays in [0, 1] shown as images, in the order of their names (jit sorts
        dict keys; a leading number and space, "2 warped", orders them and is not shown); a
        name ending in `_map` is an anomaly map, drawn as a heatmap over `batch["image"]`.
        """
        raise NotImplementedError

    # --- validation (config.validation) ------------------------------------------------------
    def eval_loss(self, state: State, batch: Batch, key: jax.Array) -> jax.Array:
        """Per-example validation loss [B]; pure and jittable.

        Turns on `config.validation` (validation every N steps, best state, early stopping).
        """
        raise NotImplementedError

    def validation_outputs(self, state: State, batch: Batch, key: jax.Array) -> dict:
        """Per-example outputs `{name: [B]}` of a validation batch; pure and jittable.

        With `validation_summary`, validation by a metric of the whole split (e.g. kappa)
        instead of the mean `eval_loss`; it turns on `config.validation` like `eval_loss`.
        """
        raise NotImplementedError

    def validation_summary(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Scalars of the validation split from its examples' `validation_outputs`; `loss` is
        what the best state minimises (e.g. minus kappa)."""
        raise NotImplementedError

    # --- contrastive methods (`jaxad.collapse`) -----------------------------------------------
    # collapse_level() -> float: the loss of identical embeddings (NT-Xent: log(2B - 1)); a
    # method that defines it has the loop warn when its logged loss stays there (and its
    # `spread` metric, if logged, falls to ~0). Not defined here: its absence means "not
    # contrastive".

    # --- loading runs (`jaxad.checkpoint.load_run`, `config.init_from`) ------------------------
    def inference_state(self, state: State) -> State:
        """The part of the state that scoring needs. Default: the whole state."""
        return state

    def init_runs(self) -> list[str]:
        """Workdirs of finished runs this method's own config names as weights to start from.

        For example the DPA's `dpa.vgg_weights` when it names a SimCLR run. The loop loads each
        with `jaxad.checkpoint.load_run` and passes it to `init_from` before the first step.
        Default: none.
        """
        return []

    def init_from(self, state: State, run: Any) -> State:
        """`state` with weights taken from `run` (a `jaxad.checkpoint.Run`).

        Called by the loop, before training starts, for `config.init_from.workdir` and for each
        of `init_runs()`. Without this hook the loop uses `jaxad.checkpoint.transfer_weights`:
        every parameter and statistic of `run` whose path and shape match (optimiser states
        are not taken).
        """
        raise NotImplementedError


def provides(method: Method, hook: str) -> bool:
    """Whether `method` implements the optional `hook` (overrides `Method`'s)."""
    impl = getattr(type(method), hook, None)
    return impl is not None and impl is not getattr(Method, hook, None)
