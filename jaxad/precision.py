"""Mixed precision: the compute dtype of the models (`config.model.dtype`).

'bfloat16' runs activations, matrix products and convolutions in bfloat16, which halves memory
traffic and uses the bfloat16 units of TPUs, recent GPUs and CPUs with AVX-512 BF16 / AMX.
Everything that accumulates or is compared across steps stays float32: the parameters (every
layer has `param_dtype=float32` and casts its kernel to the compute dtype when applied, so the
gradients reach the parameters in float32), the optimiser state, the normalisation statistics
(Flax's BatchNorm reduces in float32 whatever its dtype), the losses and the metrics. Each method
casts its networks' outputs to float32 (`as_float32`) before any loss, and names in its module
docstring the layers that stay float32 in its networks.

'auto' is bfloat16 on TPU and GPU and float32 on CPU, so CPU runs (tests, demos) are unchanged;
'float32' is the reference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

CHOICES = ("auto", "float32", "bfloat16")


def resolve_dtype(setting: str, backend: str | None = None) -> jnp.dtype:
    """The compute dtype for `setting` ('auto', 'float32' or 'bfloat16') on `backend`.

    `backend` defaults to `jax.default_backend()`; 'auto' is float32 only on 'cpu'.
    """
    value = str(setting).strip().lower()
    if value not in CHOICES:
        raise ValueError(
            f"config.model.dtype={setting!r} is not one of {', '.join(CHOICES)}; "
            "'auto' is bfloat16 on TPU/GPU and float32 on CPU."
        )
    if value == "auto":
        value = "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
    return jnp.dtype(value)


def model_dtype(config: Any) -> jnp.dtype:
    """`config.model.dtype` resolved for this backend ('auto' when the config has no such key)."""
    return resolve_dtype(config.model.get("dtype", "auto"))


def as_float32(tree: Any) -> Any:
    """`tree` with every floating-point leaf cast to float32 (others untouched): network outputs
    go through it before a loss, a distance or a score, so those are reduced in float32."""

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(jnp.float32)
        return x

    return jax.tree.map(cast, tree)
