"""Anomaly-detection methods: each module `jaxad.methods.<name>` exposes `create(config) -> Method`.

`config.method` names a module of this package (the list is read from the package, so a new
method is one new file), or the dotted path of a module elsewhere that exposes `create`
(`"my_project.my_method"`), which lets a method live outside jaxad.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxad import parallel, writers
from jaxad.methods.base import Method, provides

__all__ = ["Method", "available", "create", "example_batch", "init_state", "jit", "provides"]

_NOT_METHODS = ("base",)


def available() -> list[str]:
    """The methods in this package: its modules, except the protocol."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS)


def create(config) -> Method:
    """Imports the module named by `config.method` and builds the method from the config."""
    name = str(config.method)
    if "." not in name and name not in available():
        raise ValueError(
            f"config.method={name!r} is not one of {', '.join(available())} "
            "(or the dotted path of a module with create(config))."
        )
    module_name = name if "." in name else f"jaxad.methods.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"config.method={name!r}: no module {module_name} found.") from None
        raise
    if not hasattr(module, "create"):
        raise ValueError(f"config.method={name!r}: module {module_name} has no create(config).")
    method = module.create(config)
    method.cpu_ynnpack = bool((config.get("model") or {}).get("cpu_ynnpack", True))
    return method


def compiler_options(method: Method, backend: str | None = None) -> dict[str, str] | None:
    """XLA options for compiling `method`'s functions: none, unless the method's config has
    `model.cpu_ynnpack=False` and the backend is the CPU (`backend` defaults to JAX's)."""
    if getattr(method, "cpu_ynnpack", True) or (backend or jax.default_backend()) != "cpu":
        return None
    # Of the YNNPACK fusion types XLA's CPU backend uses by default (its reductions, and every
    # dot and convolution on its own), keep only the reductions: they measured faster than
    # XLA's, while its dots and convolutions gained little from a second core.
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def jit(method: Method, fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)` with `method`'s `compiler_options`: the loop, the evaluators and
    the tools jit the method's hooks (init, training step, scoring, validation) through here."""
    return jax.jit(fn, compiler_options=compiler_options(method), **kwargs)


def example_batch(config: ml_collections.ConfigDict, local_batch_size: int) -> dict:
    """A zero batch with the pipeline's shapes, for building a state without reading data."""
    s, c = config.data.crop_size or config.data.image_size, config.data.channels
    patch = int(config.data.get("lesion_pairs", 0))
    if patch:  # lesion-based CL's pairs cut on the host (`pipeline.lesion_pair_example`)
        return {
            "pairs": np.zeros((local_batch_size, 2, patch, patch, c), np.uint8),
            "label": np.zeros((local_batch_size,), np.int32),
            "grade": np.zeros((local_batch_size,), np.int32),
        }
    return {
        "image": np.zeros((local_batch_size, s, s, c), np.float32),
        "fov": np.ones((local_batch_size, s, s), np.float32),
        "mask": np.zeros((local_batch_size, s, s), np.float32),
        "label": np.zeros((local_batch_size,), np.int32),
        "grade": np.zeros((local_batch_size,), np.int32),
    }


def init_state(
    method: Method, config: ml_collections.ConfigDict, mesh: Mesh, local_batch_size: int
) -> Any:
    """The method's initial state, created directly replicated on the mesh (seed: config.seed)."""
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0)
    batch = parallel.global_batch(mesh, example_batch(config, local_batch_size))
    init = jit(method, method.init, out_shardings=parallel.replicated(mesh))
    return writers.timed_first_call(init, "the model's initialisation")(init_key, batch)
