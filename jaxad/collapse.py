"""A warning when a contrastive method's embeddings have collapsed to one point.

NT-Xent over B pairs (2B views, each with one positive among 2B - 1 others) is exactly
log(2B - 1) when all embeddings are equal: every logit is the same. A run in that state does
not fail, its loss just stays there, and what it trained (the VGG19 the DPA then uses as its
perceptual network) is useless. A method opts in with two things:

- a `collapse_level()` method: the loss of identical embeddings (`jaxad.methods.simclr`:
  log(2B - 1));
- optionally a `collapse_hint()` method: what the warning suggests (default: another seed);
- optionally a `spread` training metric: the standard deviation of the L2-normalised
  embeddings across the batch, averaged over dimensions and times sqrt(D) (about 1 for
  embeddings spread over the sphere, 0 when they are all equal; `embedding_spread`).

The loop (`jaxad.train`) hands every logged step's metrics to `Detector.update`, which logs one
warning the first time `patience` logged steps in a row were collapsed: the loss within
`rel_tol` (1 %) of the level, or the spread below `min_spread`. The settings are
`config.collapse` (`patience`, `rel_tol`, `min_spread`; `patience` 0 turns the check off), with
the defaults of `DEFAULTS` for configs that do not set them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxad import writers

DEFAULTS = {"patience": 5, "rel_tol": 0.01, "min_spread": 0.01}


def embedding_spread(z: jax.Array) -> jax.Array:
    """[N, D] embeddings -> scalar: mean over dimensions of the std of the L2-normalised rows
    across the batch, times sqrt(D) (about 1 spread over the sphere, 0 all equal)."""
    z = z.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    return z.std(axis=0).mean() * math.sqrt(z.shape[-1])


class Detector:
    """Counts consecutive collapsed logged steps; warns once (see the module docstring)."""

    def __init__(
        self,
        level: float | None,
        *,
        patience: int = DEFAULTS["patience"],
        rel_tol: float = DEFAULTS["rel_tol"],
        min_spread: float = DEFAULTS["min_spread"],
        hint: str = "rerun with another config.seed",
    ):
        self.level = None if level is None else float(level)
        self.patience = int(patience)
        self.rel_tol = float(rel_tol)
        self.min_spread = float(min_spread)
        self.hint = hint
        self.run = 0  # Collapsed logged steps in a row.
        self.warned = False

    @classmethod
    def for_method(cls, method, config) -> Detector:
        """The detector of `method` (off when it has no `collapse_level`) with `config.collapse`."""
        level = method.collapse_level() if hasattr(method, "collapse_level") else None
        settings = dict(DEFAULTS)
        if "collapse" in config:
            settings.update(config.collapse.to_dict())
        if hasattr(method, "collapse_hint"):
            settings["hint"] = method.collapse_hint()
        return cls(level, **settings)

    @property
    def enabled(self) -> bool:
        return self.level is not None and self.patience > 0

    def collapsed(self, metrics: dict) -> bool:
        """Whether one logged step's metrics look collapsed."""
        loss = float(metrics["loss"])
        if abs(loss - self.level) <= self.rel_tol * self.level:
            return True
        return "spread" in metrics and float(metrics["spread"]) < self.min_spread

    def update(self, step: int, metrics: dict) -> str | None:
        """Takes a logged step's (host) metrics; returns the warning when it is logged."""
        if not self.enabled or self.warned:
            return None
        self.run = self.run + 1 if self.collapsed(metrics) else 0
        if self.run < self.patience:
            return None
        self.warned = True
        spread = f", embedding spread {float(metrics['spread']):.3g}" if "spread" in metrics else ""
        message = (
            f"step {step}: the embeddings look collapsed for {self.patience} logged steps in a "
            f"row (loss {float(metrics['loss']):.4g}; identical embeddings give log(2B - 1) = "
            f"{self.level:.4g}{spread}); the network is likely useless: {self.hint}."
        )
        writers.logger.warning("%s", message)
        return message
