"""Prepares a dataset of `data_builders/` as array_record files for `tfds.data_source`.

    python -m jaxad.data.build eyeq/good --manual_dir=/data/eyeq_raw [--data_dir=/data/tfds]

NAME is a folder of `data_builders/`, optionally followed by /CONFIG (the builder's default
config otherwise). The data goes to --data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets,
as in tfds. Running it again is a no-op: tfds keeps a version that is already prepared. A
missing, empty or incomplete --manual_dir ends with a one-line error naming what is missing,
followed by the expected layout (exit code 2).
array_record is the format that reads back without TensorFlow (tfds' default, tfrecord, needs it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Any

import tensorflow_datasets as tfds

import data_builders


def known_builders() -> list[str]:
    """Returns the dataset names: the packages under `data_builders/`."""
    return sorted(m.name for m in pkgutil.iter_modules(data_builders.__path__) if m.ispkg)


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
    """Returns the `Builder` class of `data_builders.<name>` ("eyeq" or "eyeq/good").

    Raises:
        ValueError: naming the known datasets (or configs) if NAME (or CONFIG) is unknown.
    """
    dataset, _, config = name.partition("/")
    known = known_builders()
    if dataset not in known:
        raise ValueError(f"Unknown dataset {dataset!r}; known datasets: {', '.join(known)}")
    cls = importlib.import_module(f"data_builders.{dataset}").Builder
    if config and config not in cls.builder_configs:
        configs = ", ".join(cls.builder_configs)
        raise ValueError(f"Unknown config {config!r} of {dataset}; known configs: {configs}")
    return cls


def build(
    name: str,
    manual_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    **builder_kwargs: Any,
) -> tfds.core.DatasetBuilder:
    """Prepares NAME[/CONFIG] from the raw files in `manual_dir` and returns its builder."""
    cls = builder_class(name)
    config = name.partition("/")[2] or None
    builder = cls(config=config, data_dir=data_dir, file_format="array_record", **builder_kwargs)
    builder.download_and_prepare(
        file_format="array_record",
        # No network: never ask the public GCS bucket for a prepared copy.
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir), try_download_gcs=False
        ),
    )
    return builder


def layout(cls: type[tfds.core.DatasetBuilder]) -> str:
    """The expected manual_dir layout of a builder (its instructions from "Expected" on)."""
    text = (cls.MANUAL_DOWNLOAD_INSTRUCTIONS or "").strip("\n")
    start = text.find("Expected manual_dir layout")
    return text[start:] if start >= 0 else text


def check_manual_dir(manual_dir: str | os.PathLike, cls: type[tfds.core.DatasetBuilder]) -> None:
    """Raises FileNotFoundError (with the expected layout) if `manual_dir` is missing or empty."""
    path = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(path):
        problem = "does not exist" if not os.path.exists(path) else "is not a folder"
    elif not [n for n in os.listdir(path) if not n.startswith(".")]:
        problem = "is empty"
    else:
        return
    raise FileNotFoundError(
        f"manual_dir {path} {problem}: download the raw files into it.\n{layout(cls)}"
    )


def _fail(prog: str, message: str, readme: str) -> None:
    """Exits with code 2: a one-line error, then the expected layout the message carries."""
    first, _, rest = message.strip().partition("\n")
    if readme not in first:
        first = f"{first.rstrip('.')} (see {readme})"
    print(f"{prog}: error: {first}", file=sys.stderr)
    if rest.strip():
        print(rest.rstrip(), file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jaxad.data.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("name", metavar="NAME[/CONFIG]", help="e.g. eyeq or eyeq/all")
    parser.add_argument("--manual_dir", required=True, help="folder holding the raw files")
    parser.add_argument("--data_dir", default=None, help="output root (tfds' default if unset)")
    parser.add_argument(
        "--on_corrupt",
        choices=("fail", "skip"),
        default="fail",
        help="an unreadable raw image stops the build (fail) or is left out, logged and counted",
    )
    parser.add_argument(
        "--num_workers", type=int, default=None, help="preprocessing threads (default: CPUs)"
    )
    args = parser.parse_args(argv)
    try:
        cls = builder_class(args.name)
    except ValueError as err:
        parser.error(str(err))
    readme = f"data_builders/{args.name.partition('/')[0]}/README.md"
    try:
        check_manual_dir(args.manual_dir, cls)
        builder = build(
            args.name,
            args.manual_dir,
            args.data_dir,
            on_corrupt=args.on_corrupt,
            num_workers=args.num_workers,
        )
    except (OSError, ValueError) as err:  # A missing, malformed or unreadable raw file.
        _fail(parser.prog, str(err), readme)
    sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    print(f"{builder.info.full_name} is in {builder.data_dir}: {sizes}")


if __name__ == "__main__":
    main(sys.argv[1:])
