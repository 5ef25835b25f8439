"""PyTorch weights -> a jaxad run directory, and a run's networks -> the original's state dicts.

`import_run` builds the method's state from the config (as a fresh run would), puts each
converted network in place, and writes the run directory the loop writes: `config.json` and an
Orbax checkpoint of step 0 in `checkpoints/`. Everything that reads runs then takes it as it
is: `jaxad.predict`, `--config.mode=eval`, `python -m jaxad.mood predict`,
`--config.init_from.workdir` and rerunning training in the workdir (which resumes from step 0,
with fresh optimiser states: the originals' optimiser states are not converted).

To resume, a checkpoint also holds the position of the training-data iterator. It is saved
(at the start of the data) when the config's training data can be read here; otherwise the run
holds none, and training starts from it with `--config.init_from.workdir` in a new workdir.

`export_run` writes one file per network with the original's key names, which the original
loads with `load_state_dict(..., strict=True)` after `safetensors.torch.load_file`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxad import checkpoint, methods, parallel, writers
from jaxad.convert import core, files

# Modules of this package that are not a method's rename tables.
_MACHINERY = ("core", "files", "runs", "__main__")
HINT = (
    "convert the PyTorch file once with torch.load(..., weights_only=True) and "
    "safetensors.torch.save_file, see the README"
)


def available() -> list[str]:
    """The methods whose weights convert: a module `jaxad.convert.<method>` each, exposing
    `networks(config)`."""
    import jaxad.convert

    names = (m.name for m in pkgutil.iter_modules(jaxad.convert.__path__))
    return sorted(n for n in names if n not in _MACHINERY)


def networks(config: ml_collections.ConfigDict) -> tuple[core.Network, ...]:
    """The networks of `config.method` as its original names them."""
    if config.method not in available():
        raise ValueError(
            f"config.method={config.method!r}: no weight conversion for it yet; the methods "
            f"with one are {', '.join(available())}."
        )
    module = importlib.import_module(f"jaxad.convert.{config.method}")
    return module.networks(config)


def parse_weights(entries: Sequence[str], nets: Sequence[core.Network]) -> dict[str, str]:
    """{network name: file} from `[NAME=]PATH` entries.

    A PATH without NAME is the file the original saves for the method: every network whose
    prefix it holds (the DPA's `enc.` and `dec.`), or else the method's first network.
    """
    names = [n.name for n in nets]
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep and name in names:
            targets = [name]
        elif sep and not os.path.exists(entry):
            raise ValueError(
                f"--weights={entry}: {name!r} is not a network of this method; use one of "
                f"{', '.join(names)} (or a path alone)."
            )
        else:
            path = entry
            reader = files.open_reader(path, HINT)
            try:
                targets = [n.name for n in nets if core.has_prefix(n, reader.keys)] or [names[0]]
            finally:
                reader.close()
        for target in targets:
            if target in out:
                raise ValueError(f"--weights: two files for {target} ({out[target]}, {path}).")
            out[target] = path
    return out


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """Silences `logger`'s warnings about the fresh state's stand-ins, which are replaced."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _init_args(config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
    """The key and example batch a fresh run initialises its state from."""
    return jax.random.fold_in(jax.random.key(config.seed), 0), methods.example_batch(config, 1)


def fresh_state(config: ml_collections.ConfigDict, method: methods.Method | None = None) -> Any:
    """The method's initial state (numpy arrays), built as a fresh run builds it."""
    method = method or methods.create(config)
    with _quiet(writers.logger):
        return jax.device_get(methods.jit(method, method.init)(*_init_args(config)))


def convert_networks(
    config: ml_collections.ConfigDict, weights: Mapping[str, Any], method: methods.Method
) -> tuple[dict[str, dict], list[str]]:
    """({network name: its converted variables}, the names of the networks not given).

    `weights` maps network names to files or in-memory state dicts. The tensors are checked
    against the state's shapes (traced, not computed), so a mismatch stops the conversion
    before anything is initialised. A required network missing from `weights` is an error.
    """
    nets = networks(config)
    unknown = sorted(set(weights) - {n.name for n in nets})
    if unknown:
        raise ValueError(
            f"{unknown[0]} is not a network of {config.method}; use "
            f"{', '.join(n.name for n in nets)}."
        )
    missing = [n.name for n in nets if n.required and n.name not in weights]
    if missing:
        raise ValueError(
            f"no weights for {missing[0]}, which {config.method} needs: give "
            f"--weights={missing[0]}=PATH."
        )
    with _quiet(writers.logger):
        shapes = jax.eval_shape(method.init, *_init_args(config))
    converted = {}
    for net in nets:
        if net.name not in weights:
            continue
        source = weights[net.name]
        if isinstance(source, Mapping):
            reader, where = files.MappingReader(source), f"the {net.name} state dict"
        else:
            reader, where = files.open_reader(source, HINT), os.fspath(source)
        try:
            converted[net.name] = core.from_torch(
                net, reader, core.variables_of(net, shapes), where
            )
        finally:
            reader.close()
    return converted, [n.name for n in nets if n.name not in weights]


def convert_state(config: ml_collections.ConfigDict, weights: Mapping[str, Any]) -> tuple:
    """(method, its initial state with each network of `weights` converted in, the networks
    left as initialised)."""
    method = methods.create(config)
    converted, fresh = convert_networks(config, weights, method)
    state = fresh_state(config, method)
    for net in networks(config):
        if net.name in converted:
            state = core.with_variables(net, state, converted[net.name])
    return method, state, fresh


def _data_iterator(config: ml_collections.ConfigDict) -> tuple[Any, str]:
    """(the run's training-data iterator at its start, or None and why it is not readable)."""
    from jaxad.data import pipeline

    try:
        it = pipeline.train_iterator(
            config.data, config.data.train_split, local_batch_size=config.batch_size,
            seed=config.seed,
        )  # fmt: skip
    except Exception as err:  # Any reason the data cannot be opened here.
        return None, files.one_line(err)
    return it, ""


def import_run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    weights: Mapping[str, Any],
    *,
    data_state: bool = True,
) -> str:
    """Writes a run directory of `config` holding the converted `weights`; returns its path.

    `weights`: {network name: `.safetensors` / `.npz` file or in-memory state dict}. The
    workdir must not hold a run yet. `data_state=False` skips saving the data-iterator
    position (see the module docstring).
    """
    workdir = os.path.abspath(os.fspath(workdir))
    for folder in checkpoint.FOLDERS.values():
        if os.path.isdir(os.path.join(workdir, folder)):
            raise ValueError(f"{workdir} already holds a run ({folder}/); give a new --workdir.")
    _, state, fresh = convert_state(config, weights)
    module = importlib.import_module(f"jaxad.convert.{config.method}")
    if hasattr(module, "not_converted"):
        fresh += list(module.not_converted(config))
    for name in fresh:
        writers.log_info(
            "%s: not converted; the run holds a freshly initialised one, which only training uses.",
            name,
        )
    iterator, why = _data_iterator(config) if data_state else (None, "not asked for")
    if iterator is None:
        writers.log_info(
            "no data-iterator position saved (%s): to train from this run, start a new run "
            "with --config.init_from.workdir=%s.",
            why,
            workdir,
        )
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    state = jax.device_put(jax.tree.map(jnp.asarray, state), parallel.replicated(mesh))
    from jaxad import train

    train.save_config(config, workdir)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=0, keep=None, async_save=False)
    try:
        sources = {k: v if isinstance(v, str) else "(in memory)" for k, v in weights.items()}
        ckpt.save(0, state, iterator, {"step": 0, "converted_from": sources})
    finally:
        ckpt.close()
    return workdir


def restore_full_state(workdir: str, prefer: str = "best") -> tuple[ml_collections.ConfigDict, Any]:
    """(config, the whole saved state, not only its inference part) of a run."""
    if prefer not in checkpoint.FOLDERS:
        raise ValueError(f"prefer={prefer!r} is not one of {', '.join(checkpoint.FOLDERS)}.")
    config = checkpoint.load_config(workdir)
    order = ("best", "latest") if prefer == "best" else ("latest", "best")
    for source in order:
        step = checkpoint.saved_step(workdir, source)
        if step is not None:
            break
    else:
        raise FileNotFoundError(f"no checkpoint in {workdir}: train or convert first.")
    method = methods.create(config)
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    folder = checkpoint.FOLDERS[source]
    ckpt = checkpoint.Checkpointer(workdir, every_steps=0, keep=None, async_save=False, name=folder)
    try:
        state, _ = ckpt.restore(checkpoint.abstract_state(method, config, mesh), step=step)
    finally:
        ckpt.close()
    return config, jax.device_get(state)


def export_state(config: ml_collections.ConfigDict, state: Any) -> dict[str, dict]:
    """{network name: the original's state dict (numpy)} of a method's state."""
    return {net.name: core.to_torch(net, core.variables_of(net, state)) for net in networks(config)}


def export_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    prefer: str = "best",
    fmt: str = "safetensors",
) -> list[str]:
    """Writes `out/<network>.<fmt>` for each network of the run; returns the paths."""
    if fmt not in ("safetensors", "npz"):
        raise ValueError(f"--format={fmt}: use safetensors or npz.")
    config, state = restore_full_state(os.fspath(workdir), prefer)
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, arrays in export_state(config, state).items():
        paths.append(files.write_arrays(os.path.join(out, f"{name}.{fmt}"), arrays))
    return paths


def max_relative_difference(a: Any, b: Any) -> float:
    """max |a - b| / max |b|: how far an output is from a reference, relative to its scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
