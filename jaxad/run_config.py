"""A run's identity: what a rerun in an existing workdir may change, and the config history.

A workdir holds one run. Rerunning its command resumes it, and the rerun may change how long the
run trains and how it logs, checkpoints, validates and evaluates, but not what it trains. The rule:

- A key may differ from the saved `config.json` when it matches one of `RESUMABLE` (length,
  logging, checkpointing, validation, evaluation, where the data is read from and how fast,
  multi-host settings, `mode`, the optimiser's hyperparameters). Such differences are logged
  and the run goes on.
- Any other difference (`method`, `model.*`, the method's own section, the batch size, the
  seed, which data is trained on and how it is preprocessed) stops the run before it writes
  anything, with a one-line error listing each changed key with its saved and new value.
  Such a change is a new run: use a new workdir (`--config.init_from.workdir=OLD` starts it from
  the old run's weights).
- The check applies once the workdir holds saved state (`checkpoints/` or `best/`): a start that
  failed before its first checkpoint can be rerun with any config.
- A key present in only one of the two configs (added or removed by another version of jaxad) is
  allowed and logged.

History: `config.json` is the config of the latest start. Before a different one replaces it, the
previous one is kept as `config_history/config.<n>.json` (n = 1, 2, ...), so the config the run
was started with is never lost, whatever later reruns do.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxad import paths, writers

CONFIG_FILE = "config.json"
HISTORY_DIR = "config_history"

# Keys (fnmatch patterns over dotted names) that a rerun may change. Everything else is the
# run's identity.
RESUMABLE = (
    "mode",
    "total_steps",
    "num_epochs",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "profile_steps",
    "model.dtype",  # compute precision only: parameters and optimiser state stay float32
    "validation.*",
    "eval.*",
    "evals.*",
    "init_from.*",  # A resumed run restores its own checkpoint; init_from is not read.
    "distributed.*",
    "data.data_dir",
    "data.root",
    "data.val_split",
    "data.test_split",
    "data.num_workers",
    "data.num_threads",
    "data.prefetch",
    "data.nifti_cache",  # Where decoded slices are kept, not their values.
    "data.nifti_cache_gb",
    "data.decoded_cache",  # The same images, decoded once.
    "data.on_corrupt",  # Unreadable files cannot be trained on either way.
    "collapse.*",  # A warning's settings (jaxad.collapse).
    "model.fast_conv_grad",  # How kernel gradients are computed; not what they are.
    "model.cpu_ynnpack",  # Which CPU kernels compute the same values (to rounding).
    # Optimiser hyperparameters: the optimiser state keeps its shapes (e.g. a lower learning
    # rate after a NaN loss, resuming from the last good checkpoint).
    "optim.learning_rate",
    "optim.weight_decay",
    "optim.b1",
    "optim.b2",
    "optim.eps",
    "optim.momentum",
    "optim.nesterov",
)

_ABSENT = object()  # A key missing from one of the two configs.


class ConfigChangeError(ValueError):
    """A rerun changes keys that make it another run; the message lists them (one line)."""


def override(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *, strict: bool = True
) -> ml_collections.ConfigDict:
    """`config` with dotted keys set ({"model.width": 8}), as `--config.model.width=8` sets them.

    For code that builds configs (demos, benchmarks, tests). With ``strict`` a key the config
    does not have is a KeyError naming it; otherwise an unlocked section gains it.
    """
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if strict and leaf not in node:
            raise KeyError(f"no config key {key}")
        node[leaf] = value
    return config


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of the leaves of a nested dict (a ConfigDict as JSON)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):  # An empty section has no keys to compare.
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def as_json(config: ml_collections.ConfigDict) -> dict:
    """The config as `config.json` holds it (tuples as lists, objects best effort)."""
    return json.loads(config.to_json_best_effort())


def resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE)


def differences(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """[(dotted key, saved value, new value)] where the two (JSON) configs differ, by key."""
    a, b = flatten(saved), flatten(new)
    return [
        (k, a.get(k, _ABSENT), b.get(k, _ABSENT))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    ]


def blocking(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The changes that make another run: a key outside `RESUMABLE`, present in both configs."""
    return [
        (k, old, new)
        for k, old, new in changes
        if not resumable(k) and old is not _ABSENT and new is not _ABSENT
    ]


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """`model.width 64 -> 8, total_steps 100 -> 200` (long values shortened)."""
    return ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, old, new in changes)


def _show(value: Any, limit: int = 60) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_saved(workdir: str) -> dict | None:
    """The workdir's `config.json` as a dict, or None if there is none."""
    path = paths.join(workdir, CONFIG_FILE)
    if not paths.path(path).exists():
        return None
    try:
        return json.loads(paths.path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot read {path} ({e}); move it away to start this run afresh."
        ) from None


def has_saved_state(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint (`checkpoints/<step>` or `best/<step>`)."""
    for folder in ("checkpoints", "best"):
        if any(name.isdigit() for name in paths.names(paths.join(workdir, folder))):
            return True
    return False


def check(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, Any, Any]]:
    """Compares `config` with the workdir's saved one; returns the allowed differences.

    Reads only: nothing is written, and JAX is not touched (it runs before a multi-host job is
    joined).

    Raises:
      ConfigChangeError: the workdir holds saved state and `config` changes keys outside
        `RESUMABLE`; the message lists them with both values.
    """
    saved = load_saved(workdir)
    if saved is None:
        return []
    changes = differences(saved, as_json(config))
    if not has_saved_state(workdir):
        return changes
    blocked = blocking(changes)
    if blocked:
        raise ConfigChangeError(
            f"{workdir} holds a run trained with another config: {describe(blocked)} (saved -> "
            "now). These keys change the run's model, method or training data, so it cannot "
            "resume; rerun with the saved values (see its config.json) to continue it, or use "
            f"a new --workdir (--config.init_from.workdir={workdir} starts from its weights)."
        )
    return changes


def save(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, Any, Any]]:
    """Writes `config.json`, first keeping a different previous one in `config_history/`.

    Logs and returns the differences from the previous config (none for a first start). Call
    on one process only.
    """
    paths.makedirs(workdir)
    path = paths.join(workdir, CONFIG_FILE)
    text = config.to_json_best_effort(indent=2)
    saved = load_saved(workdir)
    changes = [] if saved is None else differences(saved, json.loads(text))
    if saved is not None and not changes:
        return []
    if saved is not None:
        history = paths.path(workdir) / HISTORY_DIR
        history.mkdir(parents=True, exist_ok=True)
        n = 1 + max((_history_index(name) for name in paths.names(history)), default=0)
        kept = os.fspath(history / f"config.{n}.json")
        paths.path(path).copy(kept)
        writers.logger.info(
            "config changed since the last start (%s); the previous one is kept as %s",
            describe(changes),
            kept,
        )
    paths.write_text_atomic(path, text)  # A reader sees the old file or the new, not half.
    return changes


def _history_index(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "config" and parts[1].isdigit() and parts[2] == "json":
        return int(parts[1])
    return 0
