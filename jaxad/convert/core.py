"""PyTorch state dicts <-> the variables of one jaxad network, by a rename table.

A `Network` says where a network's variables sit in its method's state and how its Flax modules
are named in the original code: `table` maps each Flax module path ("up1/conv/conv1") to the
original's module ("up1.conv.double_conv.0"). Leaves map as PyTorch names them (kernel and
scale -> weight, bias -> bias, batch-norm mean / var -> running_mean / running_var), and tensors
change layout by kind: conv kernels HWIO <-> OIHW, transposed-conv kernels (`transposed`) HWIO
flipped <-> (in, out, kh, kw), Linear kernels [in, out] <-> [out, in].

Reading is strict, as PyTorch's `load_state_dict(strict=True)`: every key the network needs must
be in the file with the shape the config gives, and every key of the file must be used, except
`num_batches_tracked` (PyTorch's batch-norm step counter, which jaxad does not keep) and what
the network declares it ignores (`ignore`, e.g. a SimCLR head next to the VGG19 the DPA takes)
or holds as constants (`constants`: buffers the original computes from its constructor
arguments, such as MorphAEus's sampling grids, which exports write so that the original's
strict loading finds them).
Each mismatch is a `ConversionError`, one line naming the network, the key, the file and both
shapes. A DataParallel `module.` prefix is removed, and a file holding several networks (the
DPA's `enc` / `dec`, flattened to `enc.<key>`) is read under the network's `prefix`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jaxad.convert.files import MappingReader, one_line

# (collection, Flax leaf) -> PyTorch leaf.
LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var")


class ConversionError(ValueError):
    """Weights that do not fit a network; the message is one line naming the key."""


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of a method, as the original code names it.

    name: the original's name for it (`--weights=NAME=PATH`, exported file names).
    where: {collection: path of that collection's tree in the method's state}.
    table: {Flax module path: the original's module path}, in the original's order.
    transposed: Flax module paths that are transposed convolutions.
    widths: the config keys that set its shapes, named when a shape does not match.
    prefix: its key prefix in a file holding several networks ("" if it is saved alone).
    required: False when the original does not save it (a fresh one is then logged).
    ignore: a regex of the original's keys the network has no use for.
    aliases: rewrites another naming of the same tensors (e.g. torchvision's) to `table`'s.
    constants: {the original's key: array} of buffers that are no variables of jaxad's (fixed
        by the config); written after the variables on export, not needed on import (a file
        that holds one must give it that shape).
    """

    name: str
    where: Mapping[str, tuple[str, ...]]
    table: Mapping[str, str]
    transposed: frozenset[str] = frozenset()
    widths: str = ""
    prefix: str = ""
    required: bool = True
    ignore: str = ""
    aliases: Callable[[str], str] | None = None
    constants: Callable[[], Mapping[str, np.ndarray]] | None = None


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """A copy of `tree` (dicts along `path` copied) with `value` at `path`."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = set_path(tree[path[0]], path[1:], value)
    return out


def variables_of(net: Network, state: Any) -> dict[str, Any]:
    """{collection: tree} of `net` in a method's state."""
    return {c: get_path(state, p) for c, p in net.where.items()}


def with_variables(net: Network, state: dict, variables: Mapping[str, Any]) -> dict:
    """`state` with `net`'s collections replaced by `variables`."""
    for collection, path in net.where.items():
        state = set_path(state, path, variables[collection])
    return state


def _kind(net: Network, module: str, ndim: int) -> str:
    if ndim == 4:
        return "transposed" if module in net.transposed else "conv"
    return "linear" if ndim == 2 else "vector"


def to_torch_layout(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(3, 2, 0, 1)
    if kind == "transposed":
        return value[::-1, ::-1].transpose(2, 3, 0, 1)
    return value.T if kind == "linear" else value


def from_torch_layout(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)
    if kind == "transposed":
        return value.transpose(2, 3, 0, 1)[::-1, ::-1]
    return value.T if kind == "linear" else value


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    return to_torch_layout(np.empty(shape, np.uint8), kind).shape


def layout(
    net: Network, variables: Mapping[str, Any]
) -> dict[str, tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
    """{torch key: (collection, Flax path, kind, torch shape)} in the original's order.

    `variables` may hold arrays or shape structs (`jax.eval_shape`).
    """
    rank = {module: i for i, module in enumerate(net.table)}
    out = {}
    for collection in net.where:
        flat = traverse_util.flatten_dict(dict(variables[collection]))
        for path, leaf in flat.items():
            module = "/".join(path[:-1])
            if module not in net.table or (collection, path[-1]) not in LEAVES:
                raise ConversionError(
                    f"{net.name}: {collection}/{'/'.join(path)} has no name in the original "
                    "(the rename table is out of date)."
                )
            kind = _kind(net, module, len(leaf.shape))
            key = f"{net.table[module]}.{LEAVES[(collection, path[-1])]}"
            out[key] = (collection, path, kind, _torch_shape(tuple(leaf.shape), kind))

    def order(key: str) -> tuple[int, int]:
        collection, path, _, _ = out[key]
        return rank["/".join(path[:-1])], _LEAF_ORDER.index(LEAVES[(collection, path[-1])])

    return {k: out[k] for k in sorted(out, key=order)}


def to_torch(net: Network, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{the original's key: float32 array in PyTorch's layout} of `net`'s variables."""
    out = {}
    for key, (collection, path, kind, _) in layout(net, variables).items():
        value = np.asarray(traverse_util.flatten_dict(dict(variables[collection]))[path])
        out[key] = np.ascontiguousarray(to_torch_layout(value, kind), np.float32)
    if net.constants is not None:
        out.update({k: np.ascontiguousarray(v) for k, v in net.constants().items()})
    return out


def _select(net: Network, keys: set[str]) -> dict[str, str]:
    """{the original's key: key in the file} of the keys that belong to `net`."""
    prefix = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    keys = {k[len(prefix) :]: k for k in keys}
    if net.prefix and any(k.startswith(net.prefix + ".") for k in keys):
        start = len(net.prefix) + 1
        keys = {k[start:]: v for k, v in keys.items() if k.startswith(net.prefix + ".")}
        inner = "module." if keys and all(k.startswith("module.") for k in keys) else ""
        keys = {k[len(inner) :]: v for k, v in keys.items()}
    if net.aliases is not None:
        keys = {net.aliases(k): v for k, v in keys.items()}
    return keys


def has_prefix(net: Network, keys: set[str]) -> bool:
    """Whether a file with `keys` holds `net` under its prefix (a file of several networks)."""
    stripped = {k[7:] if k.startswith("module.") else k for k in keys}
    return bool(net.prefix) and any(k.startswith(net.prefix + ".") for k in stripped)


def from_torch(net: Network, reader: Any, abstract: Mapping[str, Any], source: str) -> dict:
    """{collection: tree of float32 arrays} of `net` from a reader of the original's tensors.

    `abstract` is `net`'s variables (arrays or shape structs) as the config builds them; the
    tensors must fit it exactly (see the module docstring).
    """
    expected = layout(net, abstract)
    present = _select(net, set(reader.keys))
    where = f"{net.widths} in the config" if net.widths else "the config"
    flat: dict[str, dict] = {c: {} for c in net.where}
    for key, (collection, path, kind, shape) in expected.items():
        if key not in present:
            missing = [k for k in expected if k not in present]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConversionError(
                f"{net.name}: {key} (shape {shape}) missing from {source}{more}; is it the "
                f"original's {net.name}?"
            )
        try:
            actual = tuple(reader.shape(present[key]))
            value = reader.get(present[key]) if actual == shape else None
        except Exception as err:  # e.g. bfloat16, which numpy cannot hold
            raise ConversionError(
                f"{net.name}: {key} in {source} is unreadable ({one_line(err)})."
            ) from None
        if actual != shape:
            raise ConversionError(
                f"{net.name}: {key} in {source} has shape {actual}, jaxad expects {shape} from "
                f"{where}."
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ConversionError(
                f"{net.name}: {key} in {source} has dtype {value.dtype}, expected a float type."
            )
        value = from_torch_layout(np.asarray(value, np.float32), kind)
        flat[collection][path] = np.ascontiguousarray(value)
    constants = dict(net.constants()) if net.constants is not None else {}
    for key, value in constants.items():  # not needed, but a present one must fit the config
        if key in present and tuple(reader.shape(present[key])) != value.shape:
            raise ConversionError(
                f"{net.name}: {key} in {source} has shape {tuple(reader.shape(present[key]))}, "
                f"jaxad expects {value.shape} from {where}."
            )
    ignore = re.compile(net.ignore) if net.ignore else None
    unexpected = [
        k
        for k in sorted(present)
        if k not in expected
        and k not in constants
        and not k.endswith("num_batches_tracked")
        and not (ignore and ignore.search(k))
    ]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        shape = tuple(reader.shape(present[unexpected[0]]))
        raise ConversionError(
            f"{net.name}: unexpected key {unexpected[0]} (shape {shape}) in {source}{more}; "
            f"{net.name} has no such tensor with {where}."
        )
    return {c: traverse_util.unflatten_dict(tree) for c, tree in flat.items()}


def from_state_dict(
    net: Network, arrays: Mapping[str, Any], abstract: Mapping[str, Any], source: str = "the dict"
) -> dict:
    """`from_torch` of an in-memory state dict of numpy arrays."""
    return from_torch(net, MappingReader(arrays), abstract, source)
