r"""`python -m jaxad.bench quality`: every anomaly-map method and both baselines on the same data.

  python -m jaxad.bench quality --out=DIR [--datasets=fundus,dbt,cxr,brain] [--folder=DIR ...]
      [--tfds=NAME/CONFIG ...] [--methods=lesion2void,picard,dpa,morphaeus] [--seeds=3]
      [--budget_scale=1.0] [--fov=ones] [--quick]

Each paper reported its method on its own data, split and scores. Here each method is trained
from its demo config (`configs/<method>.py:demo`: the networks, losses and settings that work on
2 CPU cores) on each dataset with one shared budget (`Dataset.size` px, batch `BATCH`, `images`
training images seen, seeds 0..n-1), then scored by the same evaluator. Per dataset:

- `fundus` (fundus photographs with drawn lesions, `jaxad.data.demo`), `dbt` (textured phantoms
  with masses, `jaxad.data.phantom`), `cxr` (chest X-ray phantoms with opacities, nodules and
  effusions, `jaxad.data.cxr_phantom`) and `brain` (axial slices of brain phantom volumes,
  `jaxad.data.brain_phantom`, with `jaxad.mood.synth`'s anomalies), each made once and resized
  to `--image_size` (64) into DIR/data; `--folder` (an MVTec-layout folder, its field of view
  `--fov`: the whole image, or 'eyeq' for fundus photographs) and `--tfds` (a built dataset
  with a labelled test split), read at that size;
- methods: Lesion2Void, PICARD (windows of half the image, scored over the whole image), the DPA
  in 2-D (with a fixed-seed random VGG19 as perceptual network: no SimCLR run is trained here)
  and MorphAEus (grey images: colour ones are read as luma); the baselines (distance from the mean
  training image, per-pixel intensity z-score) once per dataset: they have no seed.

What is measured, per cell: image AUROC/AUPRC, FPR at 95 % TPR, pixel AUROC/AUPRC and best Dice
where the test split has masks; training seconds (start-up and compilation included); scoring
images/s (the test split's images over the evaluation's wall time, its compilation excluded).
Results are the mean and the sample standard deviation over seeds.

`--postprocess=SIGMA:SCORE[:normal]` adds a row per method and option: the same trained state's
maps smoothed by a Gaussian of SIGMA px, with ':normal' normalised per pixel by the maps of the
normal validation images, and image scores taken as SCORE ('method', 'max', 'mean',
'topk_mean' of the top 1 %, 'components' with the largest blob dropped;
`jaxad.evals.postprocess`), evaluated after the plain row.

DIR/runs/<dataset>/<method>/seed<k> is each cell's workdir (each trains in its own process) and
its `result.json` marks it done: a rerun of the command skips finished cells and resumes an
unfinished one from its last checkpoint. A finished cell measured with other settings (its
dataset's, or another budget) is reported as failed, not mixed into the table.
DIR/quality.json and DIR/quality.md hold the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USAGE = 2
PROG = "python -m jaxad.bench quality"
BATCH = 16  # every method's training batch
# Training images seen per cell at --budget_scale=1: 200 steps of 16, so that the whole table
# (4 datasets x 4 methods x 3 seeds) fits in about an hour on 2 CPU cores.
IMAGES = 3200
METHODS = ("lesion2void", "picard", "dpa", "morphaeus")
BASELINES = "baselines"
DEMO_DATASETS = ("fundus", "dbt", "cxr", "brain")
METRICS = (
    "image_auroc",
    "image_auprc",
    "fpr_at_tpr95",
    "pixel_auroc",
    "pixel_auprc",
    "best_dice",
)
RESULT = "result.json"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset of the comparison: where its data comes from and its shared settings."""

    name: str
    size: int  # image side every method trains and scores at
    channels: int
    data: dict[str, Any]  # config.data keys (source, field of view)
    mean: tuple[float, ...] = ()  # normalisation of methods free to choose it (empty: 0.5)
    std: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Dataset:
        """The dataset as a cell's `cell.json` records it (`dataclasses.asdict`)."""
        return cls(**{**saved, "mean": tuple(saved["mean"]), "std": tuple(saved["std"])})


# --- data -----------------------------------------------------------------------------------


def _resized_copy(src: pathlib.Path, dst: pathlib.Path, size: int, limit: int) -> None:
    """An MVTec-layout folder with every image resized to size^2 (masks by nearest), at most
    `limit` images per class folder (0: all)."""
    from PIL import Image

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("train", "test"):
        for folder in sorted(p for p in (src / sub).iterdir() if p.is_dir()):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
            for f in files[:limit] if limit else files:
                rel = f.relative_to(src)
                (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
                with Image.open(f) as im:
                    im.convert("RGB" if im.mode in ("RGB", "RGBA") else "L").resize(
                        (size, size), Image.Resampling.BILINEAR
                    ).save(tmp / rel)
                mask = src / "ground_truth" / folder.name / f"{f.stem}_mask.png"
                if sub == "test" and mask.exists():
                    out = tmp / "ground_truth" / folder.name / mask.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with Image.open(mask) as im:
                        im.convert("L").resize((size, size), Image.Resampling.NEAREST).save(out)
    tmp.rename(dst)


def _brain_slices(dst: pathlib.Path, size: int, limit: int, seed: int = 0) -> None:
    """Axial slices of brain phantom volumes: train/good from normal subjects, test/good and
    test/anomaly (with masks) from other subjects, half of them with synthetic anomalies."""
    import numpy as np
    from PIL import Image

    from jaxad.data import brain_phantom
    from jaxad.mood import synth

    n_train, n_test = (4, 4) if limit else (40, 24)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("train/good", "test/good", "test/anomaly", "ground_truth/anomaly"):
        (tmp / d).mkdir(parents=True)

    def save(path: pathlib.Path, array: np.ndarray) -> None:
        Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)

    rng = np.random.default_rng([seed, 20_26])
    middle = range(size // 2 - 4, size // 2 + 5, 2)  # 5 slices around the centre
    for i in range(n_train):
        vol = brain_phantom.brain_volume(rng, size)
        for z in middle:
            save(tmp / "train/good" / f"{i:03d}_{z:02d}.png", vol[:, :, z])
    for i in range(n_test):
        vol = brain_phantom.brain_volume(rng, size)
        if i % 2 == 0:
            for z in middle[1:4]:
                save(tmp / "test/good" / f"{i:03d}_{z:02d}.png", vol[:, :, z])
            continue
        vol, mask, _ = synth.add_anomalies(vol, rng)
        for z in range(size):  # the anomaly's slices, up to 3 per volume
            if mask[:, :, z].any() and len(list((tmp / "test/anomaly").glob(f"{i:03d}_*"))) < 3:
                save(tmp / "test/anomaly" / f"{i:03d}_{z:02d}.png", vol[:, :, z])
                save(tmp / "ground_truth/anomaly" / f"{i:03d}_{z:02d}_mask.png", mask[:, :, z] > 0)
    tmp.rename(dst)


def prepare(name: str, data_dir: pathlib.Path, quick: bool) -> pathlib.Path:
    """The folder of built-in dataset `name`, made (once) under `data_dir`."""
    from jaxad.data import cxr_phantom, demo, phantom

    spec = DEMOS[name]
    dst = data_dir / f"{name}_{spec.size}{'_quick' if quick else ''}"
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    limit = 6 if quick else 0
    if name == "brain":
        _brain_slices(dst, spec.size, limit)
    else:
        ensure = {
            "fundus": demo.ensure_fundus_demo,
            "dbt": phantom.ensure_phantom_demo,
            "cxr": cxr_phantom.ensure_cxr_demo,
        }[name]
        _resized_copy(ensure(), dst, spec.size, limit)
    return dst


DEMOS = {
    "fundus": Dataset(
        "fundus",
        64,
        3,
        {"fov": "eyeq"},
        mean=(0.522, 0.212, 0.153),  # the demo images' own statistics (configs/lesion2void.py)
        std=(0.377, 0.167, 0.125),
    ),
    "dbt": Dataset("dbt", 64, 1, {}),
    "cxr": Dataset("cxr", 64, 1, {}),
    "brain": Dataset("brain", 64, 1, {}),
}


def user_dataset(kind: str, value: str, size: int, channels: int, fov: str = "ones") -> Dataset:
    """A `--folder` or `--tfds` dataset; a folder's channels come from its first image, its
    field of view is `fov` (`jaxad.data.fov`: 'eyeq' for fundus photographs)."""
    if kind == "folder":
        root = pathlib.Path(value).expanduser()
        if not (root / "train").is_dir() or not (root / "test").is_dir():
            raise ValueError(f"--folder={value}: not an MVTec-layout folder (train/, test/)")
        if not channels:
            from PIL import Image

            first = next((p for p in sorted((root / "train").rglob("*")) if p.is_file()), None)
            if first is None:
                raise ValueError(f"--folder={value}: train/ holds no image")
            with Image.open(first) as im:
                channels = 3 if im.mode in ("RGB", "RGBA", "P") else 1
        data = {"name": "folder", "root": os.fspath(root.resolve())}
        if fov != "ones":
            data["fov"] = fov
        return Dataset(root.name, size, channels, data)
    builder = value.split("/")[0]
    data = {"name": builder, "tfds_name": value}
    return Dataset(value.replace("/", "_"), size, channels or 1, data)


# --- configs --------------------------------------------------------------------------------


def _load(name: str, variant: str):
    return importlib.import_module(f"configs.{name}").get_config(variant)


def _norm(ds: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return ds.mean or (0.5,) * ds.channels, ds.std or (0.5,) * ds.channels


def _lesion2void(c, ds: Dataset) -> None:
    s = ds.size  # the demo's lattice (24/8 at 128 px) scaled with the image
    c.l2v.grid, c.l2v.patch, c.l2v.test_step = 3 * s // 16, s // 16, max(1, s // 32)
    c.data.mean, c.data.std = _norm(ds)


def _picard(c, ds: Dataset) -> None:
    s = ds.size  # the demo's windows (64 px, box 32, stride 16, at 192 px) scaled with the image
    c.picard.window_size, c.picard.box_size = s // 2, s // 4
    c.picard.max_delta, c.picard.stride = s // 16, s // 8
    c.data.crop_size = s // 2
    c.evals.model.full_resolution = False
    c.data.mean, c.data.std = (0.5,) * c.data.channels, (0.5,) * c.data.channels


def _dpa(c, ds: Dataset) -> None:
    c.dpa.vgg_weights = ""  # a fixed-seed random VGG19 (logged)
    c.eval.enabled = True
    c.data.mean, c.data.std = (0.5,) * c.data.channels, (0.5,) * c.data.channels


def _morphaeus(c, ds: Dataset) -> None:
    levels = int(math.log2(ds.size))
    c.model.widths = (16, 32, 64, 128, 256, 256, 256, 256, 256)[:levels]
    # The demo's schedule in steps: the morph terms after 3 of its 26 epochs.
    c.morphaeus.steps_per_epoch = max(1, c.total_steps // 26)
    for name in ("plain", "panels", "baseline"):
        if name in c.evals:
            del c.evals[name]


ADAPT: dict[str, Callable] = {
    "lesion2void": _lesion2void,
    "picard": _picard,
    "dpa": _dpa,
    "morphaeus": _morphaeus,
}
GREY_ONLY = ("morphaeus",)  # read colour images as luma


def cell_config(method: str, ds: Dataset, seed: int, steps: int):
    """The config of one cell: the method's demo config on `ds` with the shared budget."""
    import ml_collections

    from configs import common

    c = _load("lesion2void" if method == BASELINES else method, "demo")
    c.seed = seed
    c.batch_size = BATCH
    c.num_epochs = 0
    c.total_steps = steps
    c.checkpoint_every = max(1, steps // 4)
    c.keep_checkpoints = 1
    c.log_every = max(1, steps // 10)
    c.validation.every = 0
    c.eval_every = 0
    data = c.data
    data.name, data.demo, data.tfds_name, data.root = "folder", "", "", ""
    data.fov = "ones"
    data.train_split, data.val_split, data.test_split = "train", "validation", "test"
    data.image_size = ds.size
    data.channels = 1 if method in GREY_ONLY else ds.channels
    data.crop_size = 0
    data.decoded_cache = False
    data.num_workers, data.num_threads = 0, 2
    for key, value in ds.data.items():
        data[key] = value
    c.eval.batch_size = BATCH
    c.eval.split = ""
    c.eval.pixel_metrics = True
    c.eval.num_overlays = 0
    if method == BASELINES:
        c.data.mean, c.data.std = _norm(ds)
        c.evals = ml_collections.ConfigDict(
            {
                "mean_image": common.mean_image_eval(prefix="mean_image/"),
                "zscore": common.zscore_eval(prefix="zscore/"),
            }
        )
        return c
    # The plain row is each method's own map and image score (a demo config may post-process
    # its maps: MorphAEus's); `--postprocess` rows add the others.
    c.evals = ml_collections.ConfigDict({"model": c.evals.model})
    own = common.anomaly_map_eval()
    for key in ("smooth_sigma", "normalize", "image_score", "top_k", "drop_largest"):
        c.evals.model[key] = own[key]
    ADAPT[method](c, ds)
    c.evals.model.split = ""
    return c


# --- one cell, in its own process -----------------------------------------------------------


def _metrics(saved: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The table's metrics of one evaluator (`prefix`) from a metrics.json's contents."""
    out = {k: saved.get(prefix + k) for k in METRICS}
    out["num_images"] = saved.get(prefix + "num_images", saved.get("num_images"))
    return out


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Trains (timed), then evaluates (timed) one cell; the result that goes to result.json."""
    import ml_collections

    from jaxad import evals, parallel, train

    ds = Dataset.from_json(spec["dataset"])
    workdir = pathlib.Path(spec["workdir"])
    config = cell_config(spec["method"], ds, spec["seed"], spec["steps"])
    if spec["method"] == BASELINES:
        t0 = time.perf_counter()
        evals.run(config, os.fspath(workdir), None, None, parallel.make_mesh(), step=0)
        sec = time.perf_counter() - t0
        out = {}
        written = json.loads((workdir / "eval" / "metrics.json").read_text())
        for prefix in ("mean_image", "zscore"):
            m = _metrics(written, prefix + "/")
            out[prefix] = {**m, "train_sec": None, "score_images_per_sec": None}
        out["eval_sec"] = sec
        return out
    method = spec["method"]
    out = dict(spec.get("previous") or {})
    model_eval = config.evals.model
    if method not in out:
        config.eval.enabled = False
        t0 = time.perf_counter()
        train.run(config, os.fspath(workdir))
        train_sec = time.perf_counter() - t0
        config.mode, config.eval.enabled = "eval", True
        with _EvalClock() as clock:
            train.run(config, os.fspath(workdir))
        m = _metrics(json.loads((workdir / "eval" / "metrics.json").read_text()))
        score_sec = clock.scoring_sec()
        per_sec = (m["num_images"] or 0) / score_sec if score_sec else None
        out[method] = {**m, "train_sec": train_sec, "score_images_per_sec": per_sec}
    todo = [p for p in spec.get("postprocess", []) if row_name(method, p) not in out]
    if todo:
        # The same trained state, its maps post-processed (jaxad.evals.postprocess).
        config.mode, config.eval.enabled = "eval", True
        config.evals = ml_collections.ConfigDict()
        for i, (sigma, kind, *normalize) in enumerate(todo):
            e = model_eval.copy_and_resolve_references()
            e.prefix, e.smooth_sigma, e.image_score = f"post{i}/", float(sigma), kind
            e.normalize = normalize[0] if normalize else "none"
            config.evals[f"post{i}"] = e
        train.run(config, os.fspath(workdir))
        written = json.loads((workdir / "eval" / "metrics.json").read_text())
        for i, p in enumerate(todo):
            m = _metrics(written, f"post{i}/")
            train_sec = out[method]["train_sec"]
            out[row_name(method, p)] = {**m, "train_sec": train_sec, "score_images_per_sec": None}
    return out


def row_name(method: str, post: Sequence) -> str:
    """The table row of `method`'s maps post-processed as `post` = (sigma, image score[,
    normalize])."""
    sigma, kind, *normalize = post
    extra = "".join(f", {n}" for n in normalize if n != "none")
    return f"{method} (σ {float(sigma):g}, {kind}{extra})"


def parse_postprocess(values: Sequence[str]) -> list[tuple]:
    """`--postprocess` values 'SIGMA:SCORE[:normal]' (e.g. '2:max', '1:topk_mean:normal') as
    (sigma, image score) pairs, or (sigma, image score, 'normal') triples."""
    from jaxad.evals import postprocess

    out = []
    for value in values:
        sigma, *parts = value.split(":")
        kind, rest = (parts[0] or "method", parts[1:]) if parts else ("method", [])
        try:
            post = (float(sigma), kind, *rest)
        except ValueError:
            raise ValueError(f"--postprocess={value}: use SIGMA:SCORE, e.g. 2:max") from None
        if len(rest) > 1 or rest and rest[0] != "normal":
            raise ValueError(f"--postprocess={value}: the third part can only be 'normal'")
        postprocess.check(post[0], post[1], 0.01, where="--postprocess")
        out.append(post)
    return out


class _EvalClock(logging.Handler):
    """The evaluation's scoring seconds, read from the run's log: from "evaluating step" to the
    end, less the compilations logged meanwhile (so neither setup nor compiling counts)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.start: float | None = None
        self.compile_sec = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("evaluating step"):
            self.start, self.compile_sec = time.perf_counter(), 0.0
        elif record.msg.startswith("compiled ") and self.start is not None:
            self.compile_sec += float(record.args[-1])

    def __enter__(self) -> _EvalClock:
        from jaxad import writers

        self._logger = writers.logger
        self._level = self._logger.level
        self._logger.setLevel(min(self._level or logging.INFO, logging.INFO))
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def scoring_sec(self) -> float | None:
        if self.start is None:
            return None
        return max(self.end - self.start - self.compile_sec, 1e-9)


# --- the table ------------------------------------------------------------------------------


def summarise(cells: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict]]:
    """{dataset: {row: [result per seed]}} -> {dataset: {row: {metric: {mean, std, n}}}}."""
    table: dict[str, dict[str, dict]] = {}
    for dataset, rows in cells.items():
        for row, results in rows.items():
            stats = {}
            for key in (*METRICS, "train_sec", "score_images_per_sec"):
                values = [r[key] for r in results if r.get(key) is not None]
                if not values:
                    stats[key] = None
                    continue
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                stats[key] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
            table.setdefault(dataset, {})[row] = stats
    return table


def _cell(stat: dict | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown(table: dict[str, dict[str, dict]], header: str) -> str:
    """One Markdown table: a row per dataset and method (or baseline)."""
    cols = ("image AUROC", "image AUPRC", "FPR@95%TPR", "pixel AUROC", "pixel AUPRC", "best Dice")
    lines = [
        header,
        "",
        "| dataset | method | " + " | ".join(cols) + " | train s | scoring img/s |",
        "|---|---|" + "---|" * (len(cols) + 2),
    ]
    for dataset, rows in table.items():
        for row, stats in rows.items():
            cells = [_cell(stats[k]) for k in METRICS]
            cells += [_cell(stats["train_sec"], 0), _cell(stats["score_images_per_sec"], 1)]
            lines.append(f"| {dataset} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- the command ----------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"quality: {msg}", file=sys.stderr, flush=True)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    from jaxad.data.fov import FOV_KINDS

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Output folder (data, runs, quality.json/.md).")
    p.add_argument("--datasets", default=",".join(DEMO_DATASETS), help="Built-in ('' none).")
    p.add_argument("--folder", action="append", default=[], help="An MVTec-layout folder.")
    p.add_argument("--tfds", action="append", default=[], help="A built tfds dataset NAME/CONFIG.")
    p.add_argument("--image_size", type=int, default=64, help="Every dataset's size (px).")
    p.add_argument("--channels", type=int, default=0, help="--folder/--tfds channels (0: infer).")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget_scale", type=float, default=1.0, help="x the training images seen.")
    p.add_argument(
        "--fov",
        default="ones",
        choices=FOV_KINDS,
        help="--folder datasets' field of view, where maps are scored and pixels counted "
        "(ones: the whole image; eyeq: fundus photographs' circle).",
    )
    p.add_argument("--quick", action="store_true", help="Tiny data and 2 steps: a smoke run.")
    p.add_argument(
        "--postprocess",
        action="append",
        default=[],
        help="SIGMA:SCORE[:normal] (e.g. 2:max): one more row per method, its maps smoothed by "
        "a Gaussian of SIGMA px, with ':normal' normalised by normal validation maps, and "
        "scored by SCORE (method, max, mean, topk_mean, components); repeatable.",
    )
    p.add_argument("--_cell", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _settings(ds: Dataset, steps: int) -> dict:
    """What makes a cell's result: its dataset's spec and its training steps."""
    return {"dataset": json.loads(json.dumps(dataclasses.asdict(ds))), "steps": steps}


def _measured_with(workdir: pathlib.Path) -> dict | None:
    """`_settings` of a finished cell, from its cell.json (None without one)."""
    spec = workdir / "cell.json"
    if not spec.exists():
        return None
    spec = json.loads(spec.read_text())
    return {"dataset": spec.get("dataset"), "steps": spec.get("steps")}


def _error(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _datasets(args: argparse.Namespace, out: pathlib.Path) -> list[Dataset]:
    """Every dataset asked for, built-in ones prepared; all are checked before any is made."""
    found = []
    for name in [n for n in args.datasets.split(",") if n]:
        if name not in DEMOS:
            raise ValueError(f"--datasets: unknown {name!r}; built-in: {', '.join(DEMOS)}")
        found.append(dataclasses.replace(DEMOS[name], size=args.image_size))
    builtin = len(found)
    if args.fov != "ones" and not args.folder:
        raise ValueError(
            f"--fov={args.fov}: applies to --folder datasets only (built-in and tfds datasets "
            "store their own field of view); drop it or give a --folder"
        )
    for kind, values in (("folder", args.folder), ("tfds", args.tfds)):
        for value in values:
            ds = user_dataset(kind, value, args.image_size, args.channels, args.fov)
            # A dataset's name is its folder under DIR/runs, where finished cells are reused.
            if ds.name in DEMOS or any(ds.name == f.name for f in found):
                what = "a built-in dataset's" if ds.name in DEMOS else "another dataset's"
                raise ValueError(
                    f"--{kind}={value}: its name {ds.name!r} is {what} (results are kept per "
                    "name): give the folder another name, e.g. a symlink"
                )
            found.append(ds)
    if not found:
        raise ValueError("no dataset: give --datasets, --folder or --tfds")
    for i, ds in enumerate(found[:builtin]):
        root = prepare(ds.name, out / "data", args.quick)
        found[i] = dataclasses.replace(
            ds, data={**ds.data, "name": "folder", "root": os.fspath(root)}
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args._cell:
        from jaxad import writers

        writers.setup_logging()
        spec = json.loads(pathlib.Path(args._cell).read_text())
        result = run_cell(spec)
        pathlib.Path(spec["workdir"], RESULT).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        return _error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.budget_scale <= 0:
        return _error("--seeds must be >= 1 and --budget_scale > 0")
    if args.image_size < 32 or args.image_size & (args.image_size - 1):
        why = "the DPA and MorphAEus halve it down to a few pixels"
        return _error(f"--image_size={args.image_size}: use a power of two >= 32 ({why})")
    out = pathlib.Path(args.out).expanduser().resolve()
    try:
        posts = parse_postprocess(args.postprocess)
        datasets = _datasets(args, out)
    except (ValueError, OSError) as e:
        return _error(str(e))
    steps = 2 if args.quick else max(1, round(IMAGES * args.budget_scale / BATCH))
    plan = [(ds, BASELINES, 0) for ds in datasets]
    plan += [(ds, m, s) for ds in datasets for m in methods for s in range(args.seeds)]
    cells: dict[str, dict[str, list]] = {}
    failed, t_start = [], time.perf_counter()
    for i, (ds, method, seed) in enumerate(plan, 1):
        workdir = out / "runs" / ds.name / method / f"seed{seed}"
        label = f"[{i}/{len(plan)}] {ds.name} / {method}"
        label += "" if method == BASELINES else f" / seed {seed}"
        done = workdir / RESULT
        previous = json.loads(done.read_text()) if done.exists() else None
        if previous is not None and _measured_with(workdir) not in (None, _settings(ds, steps)):
            failed.append(label)
            _log(
                f"{label}: FAILED: {workdir} was measured with other settings (dataset "
                f"{ds.name!r}, --fov, --budget_scale or --image_size); give another --out"
            )
            continue
        rows = [] if method == BASELINES else [method, *(row_name(method, p) for p in posts)]
        if previous is None or any(r not in previous for r in rows):
            _log(f"{label}: running ({steps} steps of {BATCH}; log in {workdir}/log.txt)")
            workdir.mkdir(parents=True, exist_ok=True)
            spec = {
                "dataset": dataclasses.asdict(ds),
                "method": method,
                "seed": seed,
                "steps": steps,
                "workdir": os.fspath(workdir),
                "postprocess": posts,
                "previous": previous,
            }
            (workdir / "cell.json").write_text(json.dumps(spec, indent=1) + "\n")
            t0 = time.perf_counter()
            with open(workdir / "log.txt", "a", encoding="utf-8") as log:
                cmd = [sys.executable, "-m", "jaxad.bench.quality", "--out", os.fspath(out)]
                cmd += ["--_cell", os.fspath(workdir / "cell.json")]
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
                code = code.returncode
            if code != 0 or not done.exists():
                tail = (workdir / "log.txt").read_text().strip().splitlines()[-1:]
                _log(f"{label}: FAILED (exit {code}): {tail[0] if tail else ''}")
                failed.append(label)
                continue
            _log(f"{label}: done in {time.perf_counter() - t0:.0f} s")
        else:
            _log(f"{label}: done before, kept")
        for row, result in json.loads(done.read_text()).items():
            if isinstance(result, dict) and (method == BASELINES or row in rows):
                cells.setdefault(ds.name, {}).setdefault(row, []).append(result)
    table = summarise(cells)
    budget = {"batch": BATCH, "steps": steps, "images_seen": steps * BATCH}
    report = {
        "budget": {**budget, "seeds": args.seeds, "quick": args.quick},
        "datasets": {ds.name: {"size": ds.size, "channels": ds.channels} for ds in datasets},
        "table": table,
        "cells": cells,
        "failed": failed,
        "wall_sec_this_invocation": time.perf_counter() - t_start,
    }
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    header = (
        f"Budget per cell: {steps} steps of {BATCH} images ({steps * BATCH} seen), "
        f"{args.seeds} seed(s); mean ± sample std over seeds (baselines have none)."
    )
    (out / "quality.md").write_text(markdown(table, header))
    _log(f"wrote {out / 'quality.json'} and {out / 'quality.md'}")
    if failed:
        _log(f"failed cells: {'; '.join(failed)} (rerun the command to retry them)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
