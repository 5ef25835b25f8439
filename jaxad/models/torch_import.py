"""Import of torchvision-layout VGG19 conv weights (e.g. the MOOD SimCLR checkpoint) into Flax.

A torchvision VGG19 stores its 16 convs as `features.{i}.weight` [out, in, 3, 3] (OIHW) and
`features.{i}.bias` with i = 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34 (ReLU and
pool modules take the other indices). The SimCLR model nests it once more (`features.0.{i}`), and
the MOOD solution ignores names altogether: it copies the first 32 tensors of the file by
position. Both are accepted here. `VGG19Features` stores HWIO kernels, so each weight is transposed
(2, 3, 1, 0); convolutions are cross-correlations in both frameworks, so nothing is flipped.

Files are read without pickle: `.npz` here (e.g. written with `numpy.savez` from the torch state
dict, one array per entry in state-dict order); `.safetensors` or `.npz` files of torchvision's
ImageNet VGG19, by torchvision names only, with `jaxad.models.vgg_weights.load_vgg19_imagenet`.
`torch.load` is never used.
"""

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxad.models.vgg import CONV_NAMES, VGG19_BLOCKS

# torchvision indices of the convs inside `vgg19().features`.
TORCHVISION_CONV_INDICES: tuple[int, ...] = (
    0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34
)  # fmt: skip

# `features.{i}.weight`, optionally nested as in the SimCLR model (`features.0.{i}`) or prefixed
# by DataParallel (`module.`).
_NAME = re.compile(r"^(?:module\.)?features\.(?:0\.)?(\d+)\.(weight|bias)$")


def _conv_shapes() -> list[tuple[int, int]]:
    """(in, out) channels of the 16 convs."""
    shapes, cin = [], 3
    for block in VGG19_BLOCKS:
        for cout in block:
            shapes.append((cin, cout))
            cin = cout
    return shapes


def torchvision_conv_shapes() -> dict[str, tuple[int, ...]]:
    """{`features.{i}.weight`: (out, in, 3, 3), `features.{i}.bias`: (out,)} in conv order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout) in zip(TORCHVISION_CONV_INDICES, _conv_shapes(), strict=True):
        shapes[f"features.{i}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (cout,)
    return shapes


def _by_name(arrays: Mapping[str, Any]) -> list[np.ndarray] | None:
    """The 32 tensors in conv order if every torchvision conv name is present, else None."""
    found: dict[tuple[int, str], Any] = {}
    for key, value in arrays.items():
        match = _NAME.match(key)
        if match:
            found[(int(match.group(1)), match.group(2))] = value
    wanted = [(i, kind) for i in TORCHVISION_CONV_INDICES for kind in ("weight", "bias")]
    if not all(k in found for k in wanted):
        return None
    return [np.asarray(found[k]) for k in wanted]


def vgg19_params_from_arrays(
    arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """torchvision VGG19 conv tensors -> the `params` of `VGG19Features` (HWIO kernels).

    A mapping is read by torchvision names when all 32 are present (with the optional prefixes
    above), otherwise, like a sequence, by position: its first 32 entries are taken as (weight,
    bias) of the 16 convs in order, as the MOOD solution loads its checkpoint. Shapes are checked.
    """
    tensors = _by_name(arrays) if isinstance(arrays, Mapping) else None
    if tensors is None:
        values = list(arrays.values()) if isinstance(arrays, Mapping) else list(arrays)
        if len(values) < 32:
            raise ValueError(f"need 32 tensors (16 conv weights and biases), got {len(values)}.")
        tensors = [np.asarray(v) for v in values[:32]]
    params = {}
    for n, (name, (cin, cout)) in enumerate(zip(CONV_NAMES, _conv_shapes(), strict=True)):
        weight, bias = tensors[2 * n], tensors[2 * n + 1]
        if weight.shape != (cout, cin, 3, 3) or bias.shape != (cout,):
            raise ValueError(
                f"{name}: expected weight {(cout, cin, 3, 3)} and bias {(cout,)}, "
                f"got {weight.shape} and {bias.shape}."
            )
        params[name] = {
            "kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32),
            "bias": np.asarray(bias, np.float32),
        }
    return params


def _npz_order(names: Sequence[str]) -> list[str]:
    """Stored order, except that `numpy.savez`'s positional names arr_0, arr_1, ... sort by
    number (they are stored in order anyway; this guards against re-packed archives)."""
    positional = re.compile(r"^arr_(\d+)$")
    if names and all(positional.match(n) for n in names):
        return sorted(names, key=lambda n: int(positional.match(n).group(1)))
    return list(names)


def load_vgg19_weights(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """The `VGG19Features` params from a local `.npz` file (see `vgg19_params_from_arrays`)."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(
            f"{path}: only .npz is supported (no pickle or torch files; convert the state dict "
            "with numpy.savez(path, **{k: v.numpy() for k, v in state_dict.items()}))."
        )
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in _npz_order(data.files)}
    return vgg19_params_from_arrays(arrays)
