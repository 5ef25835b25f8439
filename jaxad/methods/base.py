"""The Method protocol: the only thing a method provides to the shared loop and evaluation.

A method owns its models, losses and anomaly scoring; `jaxad.train` owns the loop, sharding,
checkpoints and logging; `jaxad.evaluate` and `jaxad.predict` own metrics and outputs. State is
any pytree (a dict of params, batch statistics and optimiser states) that carries its `step`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np

State = Any
Batch = dict[str, jax.Array]


class Method(Protocol):
    def init(self, key: jax.Array, batch: Batch) -> State:
        """Builds the initial training state from an example batch (shapes only matter)."""

    def train_step(self, state: State, batch: Batch, key: jax.Array) -> tuple[State, dict]:
        """One optimisation step; pure and jittable. Metrics include `loss`."""

    def score(self, state: State, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
        """Pure and jittable: `map` [B, H, W] per-pixel anomaly map, `score` [B] image score.

        May return further per-image arrays that `image_scores` needs on the host.
        """

    def image_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Host-side image scores from `score`'s outputs (e.g. non-jittable post-processing)."""

    def inference_state(self, state: State) -> State:
        """The part of the state needed for scoring (what predict restores)."""

    # Optional: `eval_loss(state, batch, key) -> [B]` per-example validation loss, which turns on
    # `config.validation` (validation every N steps, best state, early stopping) in the loop.
