"""One path type for every file jaxad reads or writes: local paths and Cloud Storage (`gs://`).

Paths are `etils.epath.Path`, the type tfds and Orbax use: a local path behaves as `pathlib`
does, and `gs://bucket/...` goes through fsspec's gcsfs (or TensorFlow's file system when
TensorFlow is installed). Cloud Storage has no appends, renames of a file into place or local
file names, so the few writers that need them (the metrics JSONL, TensorBoard event files, an
atomic replace) work through the helpers here, which keep local paths exactly as before.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike

# What to install for `gs://` paths (setup.py's `gcs` extra holds gcsfs).
GCS_INSTALL = "pip install 'jaxad[gcs]' (or pip install gcsfs)"


class MissingBackendError(OSError):
    """A `gs://` path was given but no library that reads Cloud Storage is installed."""


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URL (`gs://...`) rather than a local file name."""
    return "://" in os.fspath(path)


@functools.cache
def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_backend(path: PathLike) -> None:
    """Raises MissingBackendError (one line, naming what to install) for a `gs://` path that
    nothing installed can read; local paths always pass."""
    text = os.fspath(path)
    if text.startswith("gs://") and not (_has_module("gcsfs") or _has_module("tensorflow")):
        raise MissingBackendError(
            f"{text}: reading or writing gs:// paths needs gcsfs; install it with {GCS_INSTALL}."
        )


def path(p: PathLike) -> epath.Path:
    """`p` as an epath Path (`~` expanded for local paths); checks the `gs://` backend."""
    check_backend(p)
    out = epath.Path(p)
    return out if is_remote(out) else out.expanduser()


def join(base: PathLike, *parts: str) -> str:
    """`base/part/...` as a string (`os.path.join` for local paths, `/` for URLs)."""
    return os.fspath(path(base).joinpath(*parts)) if is_remote(base) else os.path.join(base, *parts)


def abspath(p: PathLike) -> str:
    """An absolute local path, or the URL unchanged."""
    return os.fspath(p) if is_remote(p) else os.path.abspath(os.path.expanduser(os.fspath(p)))


def makedirs(p: PathLike) -> None:
    """Creates the folder `p` and its parents (on Cloud Storage folders are implicit)."""
    path(p).mkdir(parents=True, exist_ok=True)


def names(folder: PathLike) -> list[str]:
    """The names in `folder`; none if it does not exist (on Cloud Storage a folder exists only
    while it holds a file)."""
    p = path(folder)
    try:
        return [c.name for c in p.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def files_under(folder: PathLike) -> list[epath.Path]:
    """Every file under `folder`, recursively, sorted (epath has no recursive glob on GCS)."""
    top = path(folder)
    if not is_remote(top):
        return sorted(epath.Path(p) for p in pathlib.Path(top).rglob("*") if p.is_file())
    out = []
    for child in top.iterdir():
        out.extend(files_under(child) if child.is_dir() else [child])
    return sorted(out)


def readable(p: PathLike) -> str | IO[bytes]:
    """Something Pillow, numpy or nibabel can open: the file name of a local file, the bytes of
    a remote one in memory."""
    if not is_remote(p):
        return os.fspath(p)
    return io.BytesIO(path(p).read_bytes())


@contextlib.contextmanager
def local_file(p: PathLike, suffix: str = "") -> Iterator[str]:
    """A local file name holding `p`'s bytes, for libraries that only open file names: `p` itself
    when local, else a temporary copy (deleted on exit)."""
    if not is_remote(p):
        yield os.fspath(p)
        return
    with tempfile.TemporaryDirectory(prefix="jaxad-") as tmp:
        name = os.path.join(tmp, "file" + (suffix or path(p).name))
        with path(p).open("rb") as src, open(name, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield name


@contextlib.contextmanager
def writable(p: PathLike, mode: str = "wb") -> Iterator[str | IO]:
    """For writers that take a file name or a file (PIL `save`, `np.save`): the local file name,
    or an open remote file (`mode` 'wb' or 'w')."""
    if not is_remote(p):
        yield os.fspath(p)
        return
    with path(p).open(mode) as f:
        yield f


@contextlib.contextmanager
def local_target(p: PathLike) -> Iterator[str]:
    """A local file name to write `p` through, for libraries that only write file names: `p`
    itself when local, else a temporary file uploaded to `p` on exit."""
    if not is_remote(p):
        yield os.fspath(p)
        return
    with tempfile.TemporaryDirectory(prefix="jaxad-") as tmp:
        name = os.path.join(tmp, path(p).name)
        yield name
        with open(name, "rb") as src, path(p).open("wb") as dst:
            shutil.copyfileobj(src, dst)


def write_text_atomic(p: PathLike, text: str) -> None:
    """Writes `p` so that a reader sees the old file or the new one, never half of one.

    Locally a temporary file is renamed into place; a Cloud Storage object is replaced whole by
    its upload.
    """
    if is_remote(p):
        path(p).write_text(text)
        return
    tmp = f"{os.fspath(p)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, p)


class LocalMirror:
    """A local folder whose files are copied to a remote folder on `sync()`: for writers that
    append to open files (JSONL, TensorBoard event files), which Cloud Storage cannot do.

    `pull(name)` first copies an existing remote file down, so that appending continues it (a
    resumed run's `metrics.jsonl`). Each `sync()` uploads every file changed since the last.
    """

    def __init__(self, remote: PathLike):
        self.remote = path(remote)
        self.local = tempfile.mkdtemp(prefix="jaxad-mirror-")
        self._sizes: dict[str, tuple[int, int]] = {}

    def pull(self, name: str) -> None:
        src = self.remote / name
        if src.exists():
            dst = os.path.join(self.local, name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with src.open("rb") as f, open(dst, "wb") as out:
                shutil.copyfileobj(f, out)
            st = os.stat(dst)
            self._sizes[name] = (st.st_size, st.st_mtime_ns)

    def sync(self) -> None:
        for root, _, files in os.walk(self.local):
            for f in files:
                full = os.path.join(root, f)
                rel = os.path.relpath(full, self.local)
                st = os.stat(full)
                if self._sizes.get(rel) == (st.st_size, st.st_mtime_ns):
                    continue
                dst = self.remote / rel.replace(os.sep, "/")
                with open(full, "rb") as src, dst.open("wb") as out:
                    shutil.copyfileobj(src, out)
                self._sizes[rel] = (st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        """Uploads what changed, then removes the local folder."""
        try:
            self.sync()
        finally:
            shutil.rmtree(self.local, ignore_errors=True)
