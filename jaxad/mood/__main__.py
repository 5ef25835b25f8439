r"""MOOD challenge tools: predict with trained DPA models, evaluate, make a synthetic set, demo.

  python -m jaxad.mood predict --task=pixel --input=DIR --output=DIR --models=RUN0,RUN1,RUN2
  python -m jaxad.mood evaluate --pred=DIR --label=DIR [--task=pixel|sample]
      [--mode=pooled|cases] [--out=FILE] [--skip_bad_labels]
  python -m jaxad.mood synth --input=DIR --output=DIR [--seed=0] [--swap_centre_axes]
  python -m jaxad.mood demo --workdir=DIR [--steps_scale=1.0] [--data_root=DIR] [--seed=0]

predict: every NIfTI volume in --input scored by the axis models (workdirs of finished
`jaxad.methods.dpa` runs), written as the challenge expects: pixel, a float NIfTI of the input's
shape and name; sample, ``<name>.txt`` holding one float. In a multi-process job
(--coordinator_address, --num_processes, --process_id; run the same command in every process)
each process predicts and writes its share of the volumes.

evaluate: the official metric (`jaxad.mood.metric`): average precision over the voxels (pixel) or
the cases (sample) of all cases pooled; prints a JSON summary (also written to --out). A
prediction that is missing, unreadable or of another shape than its label is scored as zeros, as
the official script does, and named in a warning on stderr.
--mode=cases makes the mean per-case AP the summary's ``score``.

synth: the normal and an anomalous copy of every volume in --input, written to --output, and
their labels to ``<output>_label/{pixel,sample}`` (--label_output to change), which evaluate reads
with --label=<output>_label.

demo: every stage on generated brain volumes, no download (`jaxad.mood.demo`): SimCLR, the three
axis models, synth, predict, evaluate, and the per-voxel z-score baseline; the APs and stage
times go to DIR/demo_summary.json.

Bad input (missing folders, unreadable files) ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

from jaxad import paths

EXIT_USAGE = 2
PROG = "python -m jaxad.mood"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="MOOD challenge tools: predict, evaluate, synth."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="Score a folder of volumes with trained axis models.")
    p.add_argument("--task", choices=("pixel", "sample"), required=True)
    p.add_argument("--input", required=True, help="Folder of NIfTI volumes.")
    p.add_argument("--output", required=True, help="Folder for the predictions.")
    p.add_argument("--models", required=True, help="Comma-separated workdirs of trained runs.")
    p.add_argument(
        "--batch_size", type=int, default=128, help="Slices per forward pass (the solution's 128)."
    )
    p.add_argument(
        "--min_intensity_sum",
        default="auto",
        help="Keep a slice when its intensity sum exceeds this number; 'none' keeps every slice; "
        "'auto' (default): each axis model's training filter (data.min_nonzero), scaled down to "
        "the slice area (the submission's 4000 on MOOD's volumes).",
    )
    p.add_argument(
        "--coordinator_address",
        default="",
        help="host:port of process 0 of a multi-process job; each process then predicts its "
        "share of the volumes (on Cloud TPU pods, --num_processes alone finds the peers).",
    )
    p.add_argument("--num_processes", type=int, default=1, help="Processes of the job.")
    p.add_argument("--process_id", type=int, default=0, help="This process, 0..num_processes-1.")

    e = sub.add_parser("evaluate", help="The official MOOD metric of a prediction folder.")
    e.add_argument("--pred", required=True, help="Folder of predictions.")
    e.add_argument("--label", required=True, help="Label folder, e.g. toy_label/pixel.")
    e.add_argument("--task", choices=("pixel", "sample"), default="pixel")
    e.add_argument("--mode", choices=("pooled", "cases"), default="pooled")
    e.add_argument("--out", default=None, help="Also write the JSON summary to this file.")
    e.add_argument(
        "--skip_bad_labels",
        action="store_true",
        help="Skip unreadable label files as the official script does, instead of failing.",
    )

    s = sub.add_parser("synth", help="Synthetic validation set: normal + anomalous copies.")
    s.add_argument("--input", required=True, help="Folder of NIfTI volumes.")
    s.add_argument("--output", required=True, help="Folder for the volumes.")
    s.add_argument("--label_output", default=None, help="Label folder (default <output>_label).")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--swap_centre_axes",
        action="store_true",
        help="Swap the blob centres' axes 0 and 2 as the original code did (by mistake).",
    )

    d = sub.add_parser("demo", help="Every stage on generated brain volumes, against a baseline.")
    d.add_argument("--workdir", required=True, help="Folder for the runs and the results.")
    d.add_argument("--steps_scale", type=float, default=1.0, help="Multiplies the training steps.")
    d.add_argument(
        "--data_root", default=None, help="Generated population (default: the cache folder)."
    )
    d.add_argument("--seed", type=int, default=0, help="Population and anomaly seed.")
    return parser


def _predict(args: argparse.Namespace) -> None:
    input_dir = paths.path(args.input)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    model_dirs = [m.strip() for m in args.models.split(",") if m.strip()]
    if not model_dirs:
        raise ValueError("--models needs at least one workdir")
    for workdir in model_dirs:
        _check_axis_model(workdir)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be positive, got {args.batch_size}")
    min_sum = _min_intensity_sum(args.min_intensity_sum)
    _join_processes(args)
    from jaxad.mood import inference  # Imported here: only predict needs JAX and the models.

    inference.predict_folder(
        str(input_dir),
        os.fspath(paths.path(args.output)),
        task=args.task,
        model_dirs=model_dirs,
        batch_size=args.batch_size,
        min_intensity_sum=min_sum,
    )


def _join_processes(args: argparse.Namespace) -> None:
    """Joins the multi-process job that --num_processes > 1 names (before JAX starts)."""
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        raise ValueError(
            f"--process_id={args.process_id} is not in 0..{args.num_processes - 1} "
            "(--num_processes - 1)"
        )
    if args.num_processes == 1 and not args.coordinator_address:
        return
    from types import SimpleNamespace

    from jaxad import parallel

    parallel.initialize_distributed(
        SimpleNamespace(
            enabled=True,
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    )


def _min_intensity_sum(value: str) -> float | str | None:
    """--min_intensity_sum: 'auto', 'none' or a number."""
    if value.lower() in ("auto", "none"):
        return None if value.lower() == "none" else "auto"
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"--min_intensity_sum={value!r}: give a number, 'none' or 'auto'"
        ) from None


def _check_axis_model(workdir: str) -> None:
    """A one-line error for a workdir that is not a DPA run (before any model is loaded)."""
    path = paths.path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} is not a finished run (no config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a jaxad run config")
    is_dpa = isinstance(config.get("dpa"), dict) and "axis" in config["dpa"]
    if config.get("method") and not is_dpa:
        raise ValueError(
            f"{workdir} is a run of method {config.get('method')!r}, not a DPA axis model: "
            "--models takes workdirs of configs/dpa.py runs"
        )


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def _evaluate(args: argparse.Namespace) -> None:
    from jaxad.mood import metric

    summary = metric.evaluate(
        args.pred,
        args.label,
        task=args.task,
        mode=args.mode,
        skip_bad_labels=args.skip_bad_labels,
    )
    zero = "all zeros" if args.task == "pixel" else "0"
    for case in summary["cases"]:
        if case["prediction"] != "ok":  # Scored as the official evaluation does, and said so.
            status = " ".join(str(case["prediction"]).split())
            print(
                f"{PROG} evaluate: warning: prediction {pathlib.Path(args.pred) / case['name']} "
                f"is {status}; scored as {zero}",
                file=sys.stderr,
            )
    text = json.dumps(_json_safe(summary), indent=1)
    if args.out:
        out = pathlib.Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


def _synth(args: argparse.Namespace) -> None:
    from jaxad.mood import synth

    label_dir = args.label_output or synth.label_dir_for(args.output)
    written = synth.synthesize_folder(
        args.input,
        args.output,
        seed=args.seed,
        swap_centre_axes=args.swap_centre_axes,
        label_dir=label_dir,
    )
    n_anom = sum(w["label"] for w in written)
    print(
        f"wrote {len(written)} volumes ({n_anom} anomalous) to {args.output}, labels to {label_dir}"
    )


def _demo(args: argparse.Namespace) -> None:
    from jaxad import writers
    from jaxad.mood import demo

    writers.setup_logging()
    demo.run_demo(
        args.workdir, steps_scale=args.steps_scale, data_root=args.data_root, seed=args.seed
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a subcommand; returns the exit code (2 with a one-line error on bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"predict": _predict, "evaluate": _evaluate, "synth": _synth, "demo": _demo}
    command = commands[args.command]
    try:
        command(args)
    except (OSError, ValueError) as e:  # Includes unreadable files and bad labels.
        message = " ".join(str(e).split())  # One line, whatever the exception held.
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
