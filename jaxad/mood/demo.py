r"""The MOOD DPA solution end to end on a fresh machine: no download, minutes on a CPU.

  python -m jaxad.mood demo --workdir=DIR [--steps_scale=1.0]

Every stage of the solution, at the reduced size of the ``:demo`` configs
(configs/simclr_vgg19.py and configs/dpa.py say what is reduced and why):

1. generate: a population of procedural brain MRI volumes (`jaxad.data.brain_phantom`), made
   once into a cache folder: ``train/`` normal subjects, ``test/`` other normal subjects;
2. simclr: SimCLR pre-training of the (thinner) VGG19 on the training slices of all three axes
   (``DIR/simclr``);
3. dpa_axis0-2: one DPA per slicing axis with that VGG's perceptual loss (``DIR/dpa_axis<a>``);
4. synth: the solution's synthetic validation set from the test subjects, a normal and an
   anomalous copy of each (`jaxad.mood.synth`; ``DIR/toy``, labels in ``DIR/toy_label``);
5. predict: the submission's 3-D pipeline (`jaxad.mood.inference`) with the three axis models,
   written in the challenge's formats (``DIR/pred/{pixel,sample}``);
6. evaluate: the official metric (`jaxad.mood.metric`), pixel and sample average precision;
7. baseline: the per-voxel intensity z-score against the training volumes, written and
   evaluated the same way (``DIR/baseline/{pixel,sample}``, see `zscore_baseline`).

``DIR/demo_summary.json`` holds both methods' APs for both tasks and the wall time of each
stage. Training stages resume from their workdir, so a second run skips finished training.

Scaled to the demo's volumes (the submission's values hold for 256^3 volumes and 128 px
slices): the slice filter's intensity sum (4000 at 256^2 pixels) is scaled by the slice area,
and the intermediate cube is the slices' size (the submission's 128 for 128 px slices). One set
of axis models serves both tasks; the solution trained separate pixel and sample models with
hyper-parameters from its grid.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxad import run_config

STAGES = (
    "generate",
    "simclr",
    "dpa_axis0",
    "dpa_axis1",
    "dpa_axis2",
    "synth",
    "predict",
    "evaluate",
    "baseline",
)
TASKS = ("pixel", "sample")
# Floor of the per-voxel standard deviation in the z-score: far below the scans' noise (0.01 or
# more), so that it only matters where every training volume is 0 (the background).
ZSCORE_EPS = 1e-3


def load_config(name: str, variant: str):
    """``configs/<name>.py:<variant>`` (the experiment configs are installed with jaxad)."""
    return importlib.import_module(f"configs.{name}").get_config(variant)


def _scaled_steps(config, steps_scale: float) -> None:
    config.total_steps = max(1, round(config.total_steps * steps_scale))
    config.checkpoint_every = min(config.checkpoint_every, config.total_steps)


def _use_population(config, data_root: str | os.PathLike) -> None:
    """Points a demo config at the training volumes of an already generated population."""
    config.data.name = "nifti_folder"
    config.data.root = os.fspath(pathlib.Path(data_root) / "train")


def simclr_config(data_root: str | os.PathLike, steps_scale: float = 1.0, overrides=None):
    """configs/simclr_vgg19.py:demo on the population in `data_root`."""
    c = load_config("simclr_vgg19", "demo")
    _use_population(c, data_root)
    run_config.override(c, overrides or {})
    _scaled_steps(c, steps_scale)
    return c


def dpa_config(
    data_root: str | os.PathLike,
    axis: int,
    vgg_weights: str | os.PathLike,
    steps_scale: float = 1.0,
    overrides=None,
):
    """configs/dpa.py:demo for one axis on the population in `data_root`."""
    c = load_config("dpa", "demo")
    _use_population(c, data_root)
    c.dpa.axis = axis  # data.axis follows it
    c.dpa.vgg_weights = str(vgg_weights)
    run_config.override(c, overrides or {})
    _scaled_steps(c, steps_scale)
    return c


# ---------------------------------------------------------------------------------------------
# The baseline
# ---------------------------------------------------------------------------------------------


def voxel_statistics(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and (population) standard deviation over the volumes in `paths`."""
    from jaxad.mood import inference

    total = total_sq = None
    for path in paths:
        x = inference.read_volume(inference.check_volume(os.fspath(path))).astype(np.float64)
        if total is None:
            total, total_sq = np.zeros_like(x), np.zeros_like(x)
        elif x.shape != total.shape:
            raise ValueError(f"{path}: shape {x.shape}, the other volumes have {total.shape}")
        total += x
        total_sq += x * x
    if total is None:
        raise ValueError("no training volumes for the z-score statistics")
    mean = total / len(paths)
    std = np.sqrt(np.maximum(total_sq / len(paths) - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def zscore_scale(mean: np.ndarray, std: np.ndarray, eps: float = ZSCORE_EPS) -> float:
    """The largest z-score any volume with intensities in [0, 1] can reach: the divisor.

    Chosen from the training statistics alone, it maps every possible z into [0, 1], so the
    official evaluation's clipping never ties high scores, and z >= 0.06 keeps float16's three
    digits (z / scale >= 6e-5, the smallest normal float16).
    """
    return float((np.maximum(mean, 1.0 - mean) / (std + eps)).max())


def zscore_baseline(
    train_paths: Sequence[str | os.PathLike],
    test_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    eps: float = ZSCORE_EPS,
) -> dict[str, Any]:
    """Writes the trivial baseline's predictions for both tasks; returns its settings.

    Pixel map = |x - mean_v| / (std_v + eps) / scale (mean and std per voxel over the training
    volumes, `zscore_scale`), written as the model's pixel output; sample score = its maximum,
    as the model's. Output: ``output_dir/pixel/<name>`` and ``output_dir/sample/<name>.txt``.
    """
    from jaxad.mood import inference

    mean, std = voxel_statistics(train_paths)
    scale = zscore_scale(mean, std, eps)
    out = pathlib.Path(output_dir)
    for task in TASKS:
        (out / task).mkdir(parents=True, exist_ok=True)
    for path in test_paths:
        image = inference.check_volume(os.fspath(path))
        x = inference.read_volume(image)
        if x.shape != mean.shape:
            raise ValueError(f"{path}: shape {x.shape}, the training volumes have {mean.shape}")
        z = np.abs(x - mean) / (std + eps) / scale
        name = os.path.basename(path)
        inference.write_pixel(os.fspath(out / "pixel" / name), z, image)
        inference.write_sample(os.fspath(out / "sample" / f"{name}.txt"), float(z.max()))
    return {"eps": eps, "scale": scale, "n_train": len(train_paths)}


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------


def _nifti_paths(folder: pathlib.Path) -> list[pathlib.Path]:
    from jaxad.mood import inference

    return [pathlib.Path(p) for p in inference.list_volumes(os.fspath(folder))]


def predict_both(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_dirs: Sequence[str],
    *,
    min_intensity_sum: float,
    cube_size: int,
) -> None:
    """Both tasks' outputs of every volume from one pass of the 3-D pipeline.

    ``output_dir/pixel/<name>`` and ``output_dir/sample/<name>.txt``, as `jaxad.mood.inference`
    writes them (the maximum of the averaged cube map is the sample score).
    """
    import jax.numpy as jnp

    from jaxad.mood import inference

    models = inference.load_axis_models(model_dirs)
    options = inference.Options(cube_size=cube_size, min_intensity_sum=min_intensity_sum)
    out = pathlib.Path(output_dir)
    for task in TASKS:
        (out / task).mkdir(parents=True, exist_ok=True)
    for path in _nifti_paths(pathlib.Path(input_dir)):
        image = inference.check_volume(os.fspath(path))
        volume = inference.read_volume(image)
        p = inference.predict_volume(volume, models, options)
        inference.write_sample(os.fspath(out / "sample" / f"{path.name}.txt"), float(jnp.max(p)))
        pixel = np.asarray(inference.resize_to_input(p, tuple(volume.shape)))
        inference.write_pixel(os.fspath(out / "pixel" / path.name), pixel, image)


def _evaluate(pred_dir: pathlib.Path, label_dir: pathlib.Path) -> dict[str, dict[str, Any]]:
    from jaxad.mood import metric

    results = {}
    for task in TASKS:
        summary = metric.evaluate(pred_dir / task, label_dir / task, task=task)
        results[task] = {
            "ap": summary["ap_pooled"],
            "auroc": summary.get("auroc_pooled", summary.get("auroc")),
            "n_cases": summary["n_cases"],
        }
    return results


def format_table(summary: Mapping[str, Any]) -> str:
    """The printed result: APs of the model and of the baseline, then the stage times."""
    lines = [f"{'':10s} {'pixel AP':>9s} {'sample AP':>10s}"]
    for name in ("dpa", "baseline"):
        r = summary["results"][name]
        lines.append(f"{name:10s} {r['pixel']['ap']:9.4f} {r['sample']['ap']:10.4f}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    lines.append(f"wall time: {times} (total {sum(summary['seconds'].values()):.0f} s)")
    return "\n".join(lines)


def run_demo(
    workdir: str | os.PathLike,
    *,
    steps_scale: float = 1.0,
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
    axes: Sequence[int] = (0, 1, 2),
    simclr_overrides: Mapping[str, Any] | None = None,
    dpa_overrides: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every stage (module docstring) in `workdir`; returns and writes the summary.

    `data_root`: the generated population (default: the cache folder of
    `jaxad.data.brain_phantom.ensure_brain_demo`); an existing complete folder is used as it is.
    `steps_scale` multiplies the training steps of the demo configs; the overrides (dotted
    config keys) shrink them further, e.g. for tests.
    """
    from jaxad import train
    from jaxad.data import brain_phantom
    from jaxad.mood import synth

    if steps_scale <= 0:
        raise ValueError(f"steps_scale must be positive, got {steps_scale}")
    workdir = pathlib.Path(workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        log(f"== {name}")
        t0 = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - t0
        log(f"== {name}: {seconds[name]:.1f} s")
        return result

    root = stage("generate", lambda: brain_phantom.ensure_brain_demo(data_root, seed=seed))
    train_paths, test_paths = _nifti_paths(root / "train"), _nifti_paths(root / "test")

    simclr_dir = workdir / "simclr"
    sc = simclr_config(root, steps_scale, simclr_overrides)
    stage("simclr", lambda: train.run(sc, os.fspath(simclr_dir)))
    dpa_dirs, dpa_cfg = [], None
    for axis in axes:
        dpa_cfg = dpa_config(root, axis, simclr_dir, steps_scale, dpa_overrides)
        run_dir = workdir / f"dpa_axis{axis}"
        stage(f"dpa_axis{axis}", lambda c=dpa_cfg, d=run_dir: train.run(c, os.fspath(d)))
        dpa_dirs.append(os.fspath(run_dir))

    toy, labels = workdir / "toy", workdir / "toy_label"
    stage(
        "synth",
        lambda: synth.synthesize_folder(root / "test", toy, seed=seed, label_dir=labels),
    )
    size = _volume_size(test_paths[0])
    min_sum = 4000.0 * (size / 256) ** 2  # the submission's 4000 at 256^2 pixels, per pixel
    image_size = int(dpa_cfg.data.image_size)
    pred = workdir / "pred"
    stage(
        "predict",
        lambda: predict_both(toy, pred, dpa_dirs, min_intensity_sum=min_sum, cube_size=image_size),
    )
    dpa_results = stage("evaluate", lambda: _evaluate(pred, labels))

    def baseline() -> dict[str, Any]:
        settings = zscore_baseline(train_paths, _nifti_paths(toy), workdir / "baseline")
        return {"settings": settings, **_evaluate(workdir / "baseline", labels)}

    base = stage("baseline", baseline)
    summary = {
        "results": {
            "dpa": dpa_results,
            "baseline": {t: base[t] for t in TASKS},
        },
        "baseline": base["settings"],
        "seconds": seconds,
        "settings": {
            "data_root": os.fspath(root),
            "volume_size": size,
            "n_train_volumes": len(train_paths),
            "n_test_cases": 2 * len(test_paths),
            "steps_scale": steps_scale,
            "simclr_steps": int(sc.total_steps),
            "dpa_steps": int(dpa_cfg.total_steps),
            "axes": list(axes),
            "image_size": image_size,
            "min_intensity_sum": min_sum,
        },
        "beats_baseline": {t: dpa_results[t]["ap"] > base[t]["ap"] for t in TASKS},
    }
    (workdir / "demo_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(format_table(summary))
    return summary


def _volume_size(path: pathlib.Path) -> int:
    from jaxad.mood import inference

    shape = inference.check_volume(os.fspath(path)).shape
    if len(set(shape)) != 1:
        raise ValueError(f"{path}: the demo expects cubic volumes, got {shape}")
    return int(shape[0])
