"""Prepares a dataset of `data_builders/` as array_record files for `tfds.data_source`.

    python -m jaxad.data.build eyeq/good --manual_dir=/data/eyeq_raw [--data_dir=/data/tfds]

NAME is a folder of `data_builders/`, optionally followed by /CONFIG (the builder's default
config otherwise). The data goes to --data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets,
as in tfds. Running it again is a no-op: tfds keeps a version that is already prepared.
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
        builder_class(args.name)
    except ValueError as err:
        parser.error(str(err))
    builder = build(
        args.name,
        args.manual_dir,
        args.data_dir,
        on_corrupt=args.on_corrupt,
        num_workers=args.num_workers,
    )
    sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    print(f"{builder.info.full_name} is in {builder.data_dir}: {sizes}")


if __name__ == "__main__":
    main(sys.argv[1:])
