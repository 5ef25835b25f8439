"""torchvision-layout ResNet weights (ImageNet, LCL's checkpoints) to and from `ResNet` variables.

LCL initialises its encoder with torchvision's ImageNet ResNet-50 and hands its contrastive
backbone to the grading network under torchvision's key names, loaded with `strict=False`. Here
the weights come from a local `.safetensors` (preferred) or `.npz` file with torchvision's
keys: `conv1.weight` [out, in, 7, 7] (OIHW), `bn1.weight` / `bias` / `running_mean` /
`running_var`, `layer{s}.{b}.conv{i}.weight`, `layer{s}.{b}.bn{i}.*`,
`layer{s}.{b}.downsample.0.weight` / `.1.*`, and `fc.weight` [out, in] / `fc.bias`.
`num_batches_tracked` entries are skipped and a DataParallel `module.` prefix is removed. Conv
kernels become HWIO and the Linear kernel [in, out]; names map as the `jaxad.models.resnet`
docstring says. Neither pickle nor `torch.load` is ever used (the readers are those of
`jaxad.models.vgg_weights`: a safetensors header and raw bytes, `.npz` with
`allow_pickle=False`).

`strict=False` as in LCL and PYCLS: `fc` is optional. For `num_classes=0` (LCL's encoder) an fc
in the file is ignored; for `num_classes > 0` a missing fc is reported in `Loaded.missing` and
`merge_into` keeps the initialised (random) one. Every other key of the model must be in the
file with its shape, else a one-line error names the file, the first missing or mis-shaped key
and what was expected. Keys the model does not have are reported in `Loaded.ignored`. To put
another head on weights with a 1000-way fc (LCL's grading fc is Linear(2048, 1)), load with
`num_classes=0` and `merge_into` the full model's variables: its own fc stays.

One-time conversion (on any machine with torch, torchvision >= 0.13 and safetensors; it
downloads the weights once). `weights='IMAGENET1K_V1'` is what `pretrained=True` gave in 2021:

    python -c "import torchvision, safetensors.torch as st; m = torchvision.models.resnet50(weights='IMAGENET1K_V1'); st.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, 'resnet50_imagenet.safetensors')"

LCL's released contrastive backbone (`resnet50_128_08.pt`, a state dict with torchvision names
and no fc) converts the same way, with torch.load on your side (`LCL_RECIPE`). `.npz` works too:
`numpy.savez('resnet50_imagenet.npz', **{k: v.numpy() for k, v in m.state_dict().items()})`.
"""  # noqa: E501 (the one-line command above)

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxad.convert import files
from jaxad.models.resnet import ResNet
from jaxad.models.vgg_weights import _one_line

logger = logging.getLogger(__name__)

CONVERT_HINT = "convert torchvision's weights once, see the jaxad.models.resnet_weights docstring"
# The conversion one-liners (module docstring), for the README.
IMAGENET_RECIPE = (
    'python -c "import torchvision, safetensors.torch as st; m = torchvision.models.resnet50('
    "weights='IMAGENET1K_V1'); st.save_file({k: v.contiguous() for k, v in "
    "m.state_dict().items()}, 'resnet50_imagenet.safetensors')\""
)
LCL_RECIPE = (
    "python -c \"import torch, safetensors.torch as st; sd = torch.load('resnet50_128_08.pt', "
    "map_location='cpu'); st.save_file({k: v.contiguous() for k, v in sd.items()}, "
    "'lcl_resnet50_128_08.safetensors')\""
)

# Flax module "layer1_0" / "downsample_0" <-> torchvision "layer1.0" / "downsample.0".
_INDEXED = re.compile(r"^(layer\d+|downsample)_(\d+)$")
# (collection, Flax leaf) -> torchvision leaf.
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


@dataclasses.dataclass
class Loaded:
    """Weights read from a torchvision state dict, as `ResNet` variables (numpy, float32).

    `missing`: model keys absent from the file (only fc's may be); `ignored`: file keys the
    model does not have (e.g. fc for `num_classes=0`), `num_batches_tracked` left out.
    """

    params: dict[str, Any]
    batch_stats: dict[str, Any]
    missing: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The torchvision state-dict key of a `ResNet` variable, e.g. ("params", ("layer1_0",
    "downsample_0", "kernel")) -> "layer1.0.downsample.0.weight"."""
    modules = [_INDEXED.sub(r"\1.\2", name) for name in path[:-1]]
    return ".".join([*modules, _LEAVES[(collection, path[-1])]])


def _to_torch(value: np.ndarray) -> np.ndarray:
    """HWIO conv kernel -> OIHW, [in, out] Linear kernel -> [out, in]; others unchanged."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value.T if value.ndim == 2 else value


def _from_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1] if len(shape) == 2 else shape


# Rank of each name in torchvision's state-dict order (module registration order); stage s is
# 10 + s, between the stem and fc.
_RANK = {
    **{name: i for i, name in enumerate(("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"))},
    "downsample": 6,
    "fc": 20,
    **{name: i for i, name in enumerate(("weight", "bias", "running_mean", "running_var"))},
}


def _torchvision_rank(key: str) -> tuple[int, ...]:
    rank = []
    for part in key.split("."):
        if part.isdigit():
            rank.append(int(part))
        elif part.startswith("layer"):
            rank.append(10 + int(part[5:]))
        else:
            rank.append(_RANK[part])
    return tuple(rank)


def _entries(variables: Mapping[str, Any]) -> dict[str, tuple[str, tuple[str, ...], Any]]:
    """{torchvision key: (collection, Flax path, leaf)} over params and batch_stats, in
    torchvision's state-dict order (so that errors name the first key torchvision would)."""
    out = {}
    for collection in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for path, leaf in flat.items():
            out[torch_key(collection, path)] = (collection, path, leaf)
    return {k: out[k] for k in sorted(out, key=_torchvision_rank)}


def to_torch_state_dict(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict:
    """`ResNet` variables -> {torchvision key: numpy array in torch layout} (float32 as given).

    The inverse of the loader; torchvision's `load_state_dict(strict=True)` accepts it (its
    `num_batches_tracked` buffers are optional there).
    """
    entries = _entries({"params": params, "batch_stats": batch_stats})
    return {k: np.ascontiguousarray(_to_torch(np.asarray(v[2]))) for k, v in entries.items()}


@functools.lru_cache(maxsize=16)
def _layout(
    depth: int, width: int, num_classes: int
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """{torchvision key: (collection, Flax path, torch shape)} of a `ResNet`, traced once."""
    model = ResNet(depth=depth, width=width, num_classes=num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return {k: (c, p, _torch_shape(tuple(v.shape))) for k, (c, p, v) in _entries(shapes).items()}


def torchvision_shapes(
    depth: int = 50, *, width: int = 64, num_classes: int = 0
) -> dict[str, tuple[int, ...]]:
    """{torchvision key: torch shape} of `ResNet(depth, width, num_classes)`, in the model's
    order, without `num_batches_tracked`."""
    return {k: shape for k, (_, _, shape) in _layout(depth, width, num_classes).items()}


def _expected_keys(depth: int) -> str:
    return (
        f"torchvision ResNet-{depth} keys conv1.weight, bn1.*, "
        "layer{1-4}.{b}.conv{i}.weight, layer*.{b}.bn{i}.*, layer*.0.downsample.{0,1}.*, "
        "fc.* optional"
    )


def _strip_module(keys: set[str]) -> str:
    """The DataParallel prefix "module." when every key has it, else ""."""
    return "module." if keys and all(k.startswith("module.") for k in keys) else ""


def _read(reader: Any, source: str, depth: int, width: int, num_classes: int) -> Loaded:
    """Checks names, shapes and dtypes against the model and builds its variables."""
    expected = torchvision_shapes(depth, width=width, num_classes=num_classes)
    prefix = _strip_module(reader.keys)
    present = {k[len(prefix) :] for k in reader.keys}
    missing = [k for k in expected if k not in present]
    required = [k for k in missing if not k.startswith("fc.")]
    if required:
        more = f" (and {len(required) - 1} more)" if len(required) > 1 else ""
        raise ValueError(
            f"{required[0]} missing from {source}{more}: expected {_expected_keys(depth)}."
        )
    arrays = {}
    for key, shape in expected.items():
        if key in missing:
            continue
        try:
            actual = reader.shape(prefix + key)
            value = reader.get(prefix + key) if actual == shape else None
        except Exception as err:  # e.g. a pickled object array, or bfloat16 (not in numpy)
            raise ValueError(f"{key} in {source} is unreadable ({_one_line(err)}).") from None
        if actual != shape:
            raise ValueError(
                f"{key} in {source} has shape {actual}, expected {shape} (torchvision "
                f"ResNet-{depth} at width {width}, num_classes {num_classes}; OIHW / [out, in])."
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{key} in {source} has dtype {value.dtype}, expected a float type.")
        arrays[key] = value
    flat: dict[str, dict[tuple[str, ...], np.ndarray]] = {"params": {}, "batch_stats": {}}
    for key, (collection, path, _) in _layout(depth, width, num_classes).items():
        if key in arrays:
            flat[collection][path] = np.ascontiguousarray(_from_torch(arrays[key]), np.float32)
    ignored = sorted(
        k for k in present if k not in expected and not k.endswith("num_batches_tracked")
    )
    loaded = Loaded(
        params=traverse_util.unflatten_dict(flat["params"]),
        batch_stats=traverse_util.unflatten_dict(flat["batch_stats"]),
        missing=tuple(missing),
        ignored=tuple(ignored),
    )
    if missing or ignored:
        logger.info(
            "ResNet-%d weights from %s: missing (kept as initialised): %s; ignored: %s",
            depth,
            source,
            ", ".join(missing) or "none",
            ", ".join(ignored) or "none",
        )
    return loaded


def from_torch_state_dict(
    arrays: Mapping[str, Any],
    *,
    depth: int = 50,
    width: int = 64,
    num_classes: int = 0,
    source: str = "the state dict",
) -> Loaded:
    """`Loaded` variables of `ResNet(depth, width, num_classes)` from an in-memory torchvision
    state dict of numpy arrays (checks and errors as `load_torchvision_resnet`)."""
    return _read(files.MappingReader(arrays), source, depth, width, num_classes)


def load_torchvision_resnet(
    path: str | os.PathLike, *, depth: int = 50, width: int = 64, num_classes: int = 0
) -> Loaded:
    """`Loaded` variables of `ResNet(depth, width, num_classes)` from a local `.safetensors` or
    `.npz` file with torchvision's key names (see the module docstring).

    Raises FileNotFoundError for a missing file and ValueError for an unknown extension, an
    unreadable file, a missing key (fc excepted), a wrong shape or a non-float tensor, each with
    one line naming the file and what was expected.
    """
    path = os.fspath(path)
    what, holding = f"ResNet-{depth} weights", _expected_keys(depth)
    # The reader's errors end with this module's hint too.
    reader = files.open_reader(path, CONVERT_HINT, what=what, holding=holding)
    try:
        return _read(reader, path, depth, width, num_classes)
    finally:
        reader.close()


def merge_into(variables: Mapping[str, Any], loaded: Loaded) -> dict[str, Any]:
    """`variables` (e.g. from `ResNet.init`) with every loaded array put in place.

    What the file lacks (fc, see `Loaded.missing`) keeps its value in `variables`, as PyTorch's
    `load_state_dict(strict=False)` keeps a module's own initialisation. Paths and shapes must
    match (same depth, width and num_classes).
    """
    out = dict(variables)
    for collection, tree in (("params", loaded.params), ("batch_stats", loaded.batch_stats)):
        target = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for path, value in traverse_util.flatten_dict(tree).items():
            old = target.get(path)
            if old is None or tuple(old.shape) != value.shape:
                where = "/".join(path)
                have = "absent" if old is None else f"shape {tuple(old.shape)}"
                raise ValueError(
                    f"{collection}/{where} is {have} in the model but {value.shape} in the "
                    "loaded weights: build the ResNet with the weights' depth, width and "
                    "num_classes."
                )
            target[path] = jnp.asarray(value, old.dtype)
        out[collection] = traverse_util.unflatten_dict(target)
    return out
