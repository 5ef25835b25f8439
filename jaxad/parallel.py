"""Device mesh, shardings and global batches: the data-parallel layer shared by every method.

Data parallelism is expressed the modern way: `jax.jit` over a one-axis `Mesh` ("data") with
`NamedSharding`. The batch is split along "data", the training state is replicated. Each process
contributes its local slice of the global batch, so the same code runs on one CPU, eight TPU chips
or a multi-host pod.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(dist_cfg: Any) -> None:
    """Joins a multi-process job when the config names a coordinator (no-op otherwise, or when
    this process has joined already).

    On Cloud TPU pods `jax.distributed.initialize()` finds its peers by itself: set
    `distributed.enabled=True` and leave the address empty. On CPU the collectives use gloo.
    `dist_cfg` is `config.distributed` (configs/common.py).
    """
    if not dist_cfg.enabled or jax.distributed.is_initialized():
        return  # Joined already: one process may run several commands (training, prediction).
    # Cross-process collectives on CPU go through gloo; accelerators ignore this setting. (The
    # backend cannot be queried here: that would initialise it before the job is joined.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if dist_cfg.coordinator_address:
        kwargs = dict(
            coordinator_address=dist_cfg.coordinator_address,
            num_processes=dist_cfg.num_processes,
            process_id=dist_cfg.process_id,
        )
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh over `devices` (default: all devices of all processes).

    `AxisType.Auto` matters: Linen dropout and batch norm fail under explicit sharding types,
    the default of `jax.make_mesh`.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh, key: str = "batch_size") -> int:
    """This process's share of the global batch; a clear error when it does not divide evenly."""
    n_dev = mesh.devices.size
    if global_batch_size % n_dev:
        raise ValueError(
            f"config.{key}={global_batch_size} is not divisible by the {n_dev} devices of the "
            f"mesh; set --config.{key} to a multiple of {n_dev}."
        )
    return global_batch_size // jax.process_count()


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's local numpy batch (strings are dropped)."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local.items()
        if np.asarray(v).dtype.kind in "biuf"
    }


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (`[obj]` on one process).

    For small host-side results (per-image rows, lesion boxes); every process must call it.
    """
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size]))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    parts = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(p[:n]).decode()) for p, n in zip(parts, lengths, strict=True)]
