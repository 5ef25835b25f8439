"""What the dataset builder tests share (imported by tests/test_*_builder.py).

Building configs from Python and through `python -m jaxad.data.build`, copies of a raw folder
with a file removed or truncated, and the check that building a prepared dataset again writes
nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from jaxad.data import build as build_lib

REPO = Path(__file__).resolve().parents[1]


def build_cli(
    name: str, manual_dir: os.PathLike | str, data_dir: os.PathLike | str, *flags: str
) -> subprocess.CompletedProcess:
    """Runs `python -m jaxad.data.build NAME --manual_dir --data_dir FLAGS` in the repository.

    Fails the test, with the end of the command's stderr, unless it succeeds.
    """
    result = subprocess.run(
        [sys.executable, "-m", "jaxad.data.build", name]
        + [f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def build_both_ways(
    manual_dir: os.PathLike | str,
    data_dir: Path,
    python: Iterable[str],
    cli: str,
    *,
    num_workers: int | None = None,
    cli_workers: int | None = None,
    cli_prints: str = "",
) -> Path:
    """Builds each of `python` (e.g. 'eyeq/good') with `build_lib.build`, then `cli` through the
    command line, whose output must include `cli_prints`; returns `data_dir`.

    `num_workers` and `cli_workers` are the builds' threads (None: the builders' default).
    """
    for name in python:
        build_lib.build(name, manual_dir, data_dir, num_workers=num_workers)
    flags = [] if cli_workers is None else [f"--num_workers={cli_workers}"]
    assert cli_prints in build_cli(cli, manual_dir, data_dir, *flags).stdout
    return data_dir


def remove_path(path: Path) -> None:
    """Deletes a file or a whole folder."""
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def truncate_file(path: Path) -> None:
    """Cuts a file to the first half of its bytes, as an interrupted download leaves it.

    The file is replaced, not written in place, so a hard-linked copy leaves the original alone.
    """
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def broken_copy(
    source: Path,
    dest: Path,
    *,
    remove: str | None = None,
    truncate: str | None = None,
    hard_links: bool = False,
) -> Path:
    """Copies the raw folder `source` to `dest` and returns `dest`, with `remove` (a file or
    folder below `dest`) deleted and `truncate` cut to half. `hard_links` copies faster but the
    copy's files must then be replaced (as `truncate_file` does), never edited in place."""
    copy_function = os.link if hard_links else shutil.copy2
    root = Path(shutil.copytree(source, dest, copy_function=copy_function))
    if remove:
        remove_path(root / remove)
    if truncate:
        truncate_file(root / truncate)
    return root


def assert_rebuild_is_a_noop(name: str, data_dir: Path, tmp_path: Path) -> None:
    """Building prepared `name` again, from a manual_dir that does not exist, touches no file of
    its version folder: the raw files are not even read."""
    cls = build_lib.builder_class(name)
    dataset, _, config = name.partition("/")
    folder = data_dir / dataset / (config or cls.DEFAULT_CONFIG_NAME) / str(cls.VERSION)
    files = sorted(folder.iterdir())
    before = {f: f.stat().st_mtime_ns for f in files}
    build_lib.build(name, tmp_path / "gone", data_dir)
    assert {f: f.stat().st_mtime_ns for f in files} == before
