"""Evaluators chosen by name in `config.evals`, on one shared core (`jaxad.evals.core`).

`config.evals` maps a name to an evaluator config whose `type` names a module of this package
(the list is read from the package: a new type is one new file; a dotted path names a module
elsewhere) and whose `prefix` goes before
its metric names in `workdir/eval/metrics.json`:

    c.evals.model = common.anomaly_map_eval()          # image_auroc, pixel_auroc, ...
    c.evals.baseline = common.mean_image_eval()        # baseline/image_auroc, ...

Each type module provides `check(ecfg, config, method)` (raises before training if the method
or config cannot support it) and `evaluate(ecfg, config, method, state, mesh) -> core.Result`.
Anomaly-map types: `anomaly_map` (the method's maps, resized or at full resolution),
`mean_image` and `zscore` (baselines any image method can be compared with). A method with no
maps (pre-training) lists no evaluators. Every process takes part; process 0 alone writes.
An evaluator's loop calls `core.check_stop()` once per batch, so that a run told to stop
(SIGTERM) leaves the evaluation at once.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from jaxad import paths, writers
from jaxad.evals import core

_NOT_EVALUATORS = ("core", "postprocess")


def available() -> list[str]:
    """The evaluator types: the modules of this package except the shared helpers."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_EVALUATORS)


def _module(name: str, ecfg: ml_collections.ConfigDict):
    """The module of an evaluator's `type`: jaxad/evals/<type>.py, or a dotted module path."""
    kind = str(ecfg.type)
    if "." in kind:
        try:
            return importlib.import_module(kind)
        except ModuleNotFoundError as e:
            raise ValueError(f"config.evals.{name}.type={kind!r}: no module {kind}.") from e
    if kind not in available():
        raise ValueError(
            f"config.evals.{name}.type={kind!r} is not one of {', '.join(available())} "
            "(or the dotted path of a module with check and evaluate)."
        )
    return importlib.import_module(f"jaxad.evals.{kind}")


def check(config: ml_collections.ConfigDict, method) -> None:
    """Raises, before any training, if an evaluator cannot run (type, prefix, method hooks)."""
    if not config.eval.enabled:
        return
    prefixes: dict[str, str] = {}
    for name, ecfg in config.evals.items():
        module = _module(name, ecfg)
        if ecfg.prefix in prefixes:
            raise ValueError(
                f"config.evals.{name} and config.evals.{prefixes[ecfg.prefix]} have the same "
                f"prefix {ecfg.prefix!r}: give one of them another prefix."
            )
        prefixes[ecfg.prefix] = name
        module.check(ecfg, config, method)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    method,
    state: Any,
    mesh,
    *,
    step: int,
    stop_requested: Callable[[], bool] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs every evaluator of `config.evals`, writes `workdir/eval/`, returns the metrics.

    `extra` joins the metrics (e.g. the files the data check left out, `skipped_files`).

    Raises:
      core.Interrupted: `stop_requested()` became true; nothing was written.
    """
    if not config.eval.enabled or not config.evals:
        return {"step": int(step)}
    results: dict[str, Any] = {"step": int(step), **(extra or {})}
    check(config, method)
    tables = []
    writers.log_info("evaluating step %d: %s", step, ", ".join(sorted(config.evals)))
    # The unprefixed evaluator (the method's own maps) first: its rows order scores.csv.
    with core.stoppable(stop_requested):
        for name, ecfg in sorted(config.evals.items(), key=lambda kv: (kv[1].prefix != "", kv[0])):
            result = _module(name, ecfg).evaluate(ecfg, config, method, state, mesh)
            results.update({f"{ecfg.prefix}{k}": v for k, v in result.metrics.items()})
            tables.append((ecfg.prefix, result))
    core.write_reports(paths.join(workdir, "eval"), results, tables)
    writers.log_info("eval at step %d: %s", step, _summary(results))
    return results


def scalars(results: dict[str, Any]) -> dict[str, float]:
    """The numeric results, as `eval/<key>` scalars for the metric writer."""
    return {
        f"eval/{k}": v
        for k, v in results.items()
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
    }


def _summary(results: dict) -> str:
    keys = [k for k in results if k.endswith(("image_auroc", "pixel_auroc", "kappa"))]
    return ", ".join(f"{k} {results[k]:.4f}" for k in keys)
