"""Weight files without pickle: `.safetensors` (a JSON header and raw bytes) and `.npz`.

Readers give a file's keys, each tensor's shape before reading it, and the tensors as numpy
arrays; `.npz` archives are opened with `allow_pickle=False`, so neither format can run code.
`write_arrays` writes either format. PyTorch's own `.pt` / `.pth` files are pickles and are never
read: they are converted once, in a PyTorch environment, with `torch.load(..., weights_only=True)`
and `safetensors.torch.save_file` (see the README).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxad import paths

EXTENSIONS = (".safetensors", ".npz")


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type name when the message is empty)."""
    return " ".join(str(err).split()) or type(err).__name__


class SafetensorsReader:
    """Keys, shapes and tensors of a safetensors file (its header is parsed, nothing unpickled).

    `hint` ends the error raised for a file that is not safetensors (how to make a good one).
    """

    def __init__(self, path: str, hint: str):
        import safetensors

        # safetensors maps a local file: a gs:// file is copied to a temporary one first.
        self._local = contextlib.ExitStack()
        local = self._local.enter_context(paths.local_file(path))
        try:
            self._handle = safetensors.safe_open(local, framework="numpy")
        except Exception as err:  # SafetensorError: not a safetensors header
            self._local.close()
            raise ValueError(
                f"{path} is not a valid safetensors file ({one_line(err)}); {hint}."
            ) from None
        self._file = self._handle.__enter__()
        self.keys = set(self._file.keys())

    def close(self) -> None:
        self._handle.__exit__(None, None, None)
        self._local.close()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._file.get_tensor(key)


class NpzReader:
    """Keys, shapes and arrays of an `.npz` archive, read with `allow_pickle=False`."""

    def __init__(self, path: str, hint: str):
        try:
            data = np.load(paths.readable(path), allow_pickle=False)
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable .npz archive ({one_line(err)}); {hint}."
            ) from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not an .npz archive; {hint}.")
        self._data = data
        self._cache: dict[str, np.ndarray] = {}
        self.keys = set(data.files)

    def close(self) -> None:
        self._data.close()

    def get(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._data[key]
        return self._cache[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.get(key).shape


class MappingReader:
    """An in-memory state dict of numpy arrays, read like a file."""

    def __init__(self, arrays: Mapping[str, Any]):
        self._arrays = arrays
        self.keys = set(arrays)

    def close(self) -> None:
        pass

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self._arrays[key]))

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._arrays[key])


def open_reader(
    path: str | os.PathLike, hint: str, *, what: str = "", holding: str = ""
) -> SafetensorsReader | NpzReader:
    """A reader for a `.safetensors` or `.npz` file (local or `gs://`); one-line errors end with
    `hint`, name the file as `what` (e.g. "VGG19 weights") and say what it should hold."""
    path = os.fspath(path)
    if not path.endswith(EXTENSIONS):
        holds = f" holding {holding}" if holding else ""
        raise ValueError(
            f"{path}: unknown extension, expected .safetensors or .npz{holds} (pickle and torch "
            f"files are never read); {hint}."
        )
    if not paths.path(path).is_file():
        raise FileNotFoundError(f"{what + ' ' if what else ''}{path} not found; {hint}.")
    if path.endswith(".safetensors"):
        return SafetensorsReader(path, hint)
    return NpzReader(path, hint)


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> str:
    """Writes {key: array} to `path` (`.safetensors` or `.npz`, by its extension)."""
    path = os.fspath(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    if not path.endswith(EXTENSIONS):
        raise ValueError(f"{path}: unknown extension, expected .safetensors or .npz.")
    with paths.local_target(path) as local:
        if path.endswith(".safetensors"):
            import safetensors.numpy

            safetensors.numpy.save_file(arrays, local)
        else:
            np.savez(local, **arrays)
    return path
