r"""The demo's three-way comparison: a DR grader from lesion-based CL, whole-image SimCLR, scratch.

Lesion-based CL's claim is that pre-training on patches around lesions gives a grader a better
start than pre-training on whole images or none. On the DR demo photos this runs, in `workdir`:

  lcl/                 configs/lesioncl.py:demo          (lesion patches)
  simclr/              configs/lesioncl.py:demo_simclr   (whole images, same steps and batch)
  grader_lcl/          configs/dr_grading.py:<grader> from lcl/
  grader_simclr/       configs/dr_grading.py:<grader> from simclr/
  grader_scratch/      configs/dr_grading.py:<grader> from random weights
  comparison.json      each grader's best validation kappa, its test kappa, each run's seconds

The three graders share every setting but the start, so the kappas differ by the start alone.
A run already in `workdir` resumes from its checkpoints instead of starting over (a finished
one is only evaluated again), so an interrupted comparison picks up where it stopped. Run it
from the repository's root (the configs are imported from configs/).

  python -m jaxad.lesions.compare_demo --workdir=/tmp/lcl_compare [--seed=1] [--grader=demo_linear]
      [--dtype=float32|bfloat16]       # model.dtype of all five runs
      [--root=DIR]                     # other graded photos in the demo's layout
      [--starts=scratch,lcl,simclr]    # which graders (and so which pre-trainings) to run

`--root` reads graded photos other than the demo's (`data.root` of all five runs): any folder
as `jaxad.data.dr_demo.generate_dr_demo` writes it, for example the demo's photos without
their acquisition artefacts (dr_v1, `generate_dr_demo(DIR, artefacts=False)`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence

import ml_collections

PRETRAININGS = {"lcl": "demo", "simclr": "demo_simclr"}
GRADERS = ("demo", "demo_linear")
STARTS = ("scratch", *PRETRAININGS)


def pretraining_config(
    variant: str, seed: int, dtype: str = "float32", root: str = ""
) -> ml_collections.ConfigDict:
    """configs/lesioncl.py:<variant> with `seed`, `model.dtype` and `data.root`."""
    from configs import lesioncl

    config = lesioncl.get_config(variant)
    config.seed = seed
    config.model.dtype = dtype
    config.data.root = root
    return config


def grader_config(
    grader: str, seed: int, init_from: str = "", dtype: str = "float32", root: str = ""
) -> ml_collections.ConfigDict:
    """configs/dr_grading.py:<grader> with `seed`, `model.dtype` and `data.root`, started
    from the run in `init_from` ('' none)."""
    from configs import dr_grading

    config = dr_grading.get_config(grader)
    config.seed = seed
    config.model.dtype = dtype
    config.data.root = root
    config.init_from.workdir = init_from
    return config


def timed_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[dict, float]:
    """(`jaxad.train.run`'s metrics, wall seconds)."""
    from jaxad import train

    start = time.perf_counter()
    metrics = train.run(config, str(workdir))
    return metrics, time.perf_counter() - start


def grader_summary(metrics: dict, seconds: float) -> dict:
    """The numbers compared: the best validation kappa (the loop minimises -kappa) and the
    test kappa of that state."""
    return {
        "val_kappa": -float(metrics["best_val_loss"]),
        "best_step": int(metrics["best_step"]),
        "test_kappa": float(metrics["kappa"]),
        "seconds": round(seconds, 1),
    }


def check_starts(starts: Sequence[str]) -> None:
    """`starts` must name some of STARTS."""
    if not starts or any(s not in STARTS for s in starts):
        raise ValueError(f"starts must be some of {', '.join(STARTS)}, got {list(starts)}")


def check_root(root: str) -> None:
    """`root` must be a finished `dr_demo.generate_dr_demo` folder: the demo source would
    otherwise take it for an interrupted generation and replace it."""
    from jaxad.data import demo

    if not (pathlib.Path(root) / demo.MARKER).is_file():
        raise ValueError(
            f"{root} is not a folder written by jaxad.data.dr_demo.generate_dr_demo (no "
            f"{demo.MARKER}); grade your own photos with data.name='graded_folder' instead"
        )


def compare(
    workdir: str | pathlib.Path,
    seed: int = 1,
    grader: str = "demo_linear",
    dtype: str = "float32",
    root: str = "",
    starts: Sequence[str] = STARTS,
) -> dict:
    """Runs the runs of the module docstring that `starts` needs (all five by default) on the
    photos in `root` ('' the demo's) and writes `workdir`/comparison.json."""
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")
    check_starts(starts)
    if root:
        check_root(root)
    out = pathlib.Path(workdir)
    result: dict = {"seed": seed, "grader": grader, "dtype": dtype, "root": root}
    result.update(pretraining_seconds={}, graders={})
    init_from = {"scratch": ""}
    for name, variant in PRETRAININGS.items():
        if name in starts:
            config = pretraining_config(variant, seed, dtype, root)
            _, seconds = timed_run(config, out / name)
            result["pretraining_seconds"][name] = round(seconds, 1)
            init_from[name] = str(out / name)
    for name in (s for s in STARTS if s in starts):
        config = grader_config(grader, seed, init_from[name], dtype, root)
        metrics, seconds = timed_run(config, out / f"grader_{name}")
        result["graders"][name] = grader_summary(metrics, seconds)
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxad.lesions.compare_demo",
        description="DR grader from lesion-based CL vs whole-image SimCLR vs scratch (demo).",
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grader", choices=GRADERS, default="demo_linear")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--root", default="", help="graded photos in the demo's layout")
    parser.add_argument("--starts", default=",".join(STARTS), help="comma-separated graders")
    args = parser.parse_args(argv)
    starts = [s for s in args.starts.split(",") if s]
    try:
        check_starts(starts)
    except ValueError as e:
        parser.error(f"--starts: {e}")
    if args.root:
        try:
            check_root(args.root)
        except ValueError as e:
            parser.error(f"--root: {e}")
    result = compare(
        args.workdir,
        seed=args.seed,
        grader=args.grader,
        dtype=args.dtype,
        root=args.root,
        starts=starts,
    )
    for name, g in result["graders"].items():
        print(f"{name:8s} val kappa {g['val_kappa']:.4f}  test kappa {g['test_kappa']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
