"""torchvision's ImageNet VGG19 for perceptual losses (MorphAEus), read from a local file.

MorphAEus's perceptual loss (`jaxad.ops.perceptual.vgg_layers_mse`) runs torchvision's
ImageNet-pretrained `vgg19().features`, frozen. Nothing is downloaded at run time: the weights
come from a local `.safetensors` (preferred) or `.npz` file with torchvision's key names,
`features.{i}.weight` [out, in, 3, 3] (OIHW) and `features.{i}.bias` [out] for the 16 convs,
i = 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34. Other keys (`classifier.*`) are
ignored; kernels are transposed to the HWIO layout of `VGG19Features` by
`jaxad.models.torch_import`. Neither pickle nor `torch.load` is ever used: safetensors files are a
JSON header and raw bytes, `.npz` files are read with `allow_pickle=False`.

One-time conversion, on any machine with torch, torchvision (>= 0.13) and safetensors installed
(it downloads the ImageNet weights once; keep only the `features.*` tensors, about 80 MB):

    python -c "import torchvision, safetensors.torch as st; m = torchvision.models.vgg19(weights='IMAGENET1K_V1'); st.save_file({k: v.contiguous() for k, v in m.state_dict().items() if k.startswith('features.')}, 'vgg19_imagenet.safetensors')"

then give the path of `vgg19_imagenet.safetensors` to `load_vgg19_imagenet` (or to
`vgg19_params_or_random`). A `.npz` works too, e.g.
`numpy.savez('vgg19_imagenet.npz', **{k: v.numpy() for k, v in
m.state_dict().items() if k.startswith('features.')})`.

With no file (`vgg19_params_or_random("")`) a random VGG19 with torchvision's init and a fixed
seed stands in, with a loud warning: the perceptual loss then compares random features.
"""  # noqa: E501 (the one-line command above)

import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxad.convert import files
from jaxad.models.torch_import import (
    TORCHVISION_CONV_INDICES,
    torchvision_conv_shapes,
    vgg19_params_from_arrays,
)
from jaxad.models.vgg import VGG19Features

logger = logging.getLogger(__name__)

# Seed of the random stand-in (the same as `jaxad.methods.simclr.RANDOM_VGG_SEED`).
RANDOM_SEED = 0
EXPECTED_KEYS = (
    "torchvision VGG19 keys features.{"
    + ",".join(str(i) for i in TORCHVISION_CONV_INDICES)
    + "}.weight/bias"
)
CONVERT_HINT = "convert torchvision's weights once, see the jaxad.models.vgg_weights docstring"


_one_line = files.one_line


def load_vgg19_imagenet(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """The `VGG19Features` params (numpy, float32, HWIO kernels) from a `.safetensors` or
    `.npz` file with torchvision's `vgg19().features` key names (see the module docstring).

    Raises FileNotFoundError for a missing file and ValueError for an unknown extension, an
    unreadable file, a missing key, a wrong shape or a non-float tensor, each with one line naming
    the file and what was expected.
    """
    path = os.fspath(path)
    reader = files.open_reader(path, CONVERT_HINT, what="VGG19 weights", holding=EXPECTED_KEYS)
    try:
        arrays = _read_checked(reader, path)
    finally:
        reader.close()
    return vgg19_params_from_arrays(arrays)


def _read_checked(reader: Any, path: str) -> dict[str, np.ndarray]:
    """The 32 conv tensors by torchvision name, after checking names, shapes and dtypes."""
    expected = torchvision_conv_shapes()
    missing = [key for key in expected if key not in reader.keys]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{missing[0]} missing from {path}{more}: expected {EXPECTED_KEYS}.")
    arrays = {}
    for key, shape in expected.items():
        try:
            actual = reader.shape(key)
            value = reader.get(key) if actual == shape else None
        except Exception as err:  # e.g. a pickled object array, or bfloat16 (not in numpy)
            raise ValueError(f"{key} in {path} is unreadable ({_one_line(err)}).") from None
        if actual != shape:
            raise ValueError(
                f"{key} in {path} has shape {actual}, expected {shape} (torchvision VGG19, OIHW)."
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{key} in {path} has dtype {value.dtype}, expected a float type.")
        arrays[key] = value
    return arrays


@functools.partial(jax.jit, static_argnums=(0, 1))
def _random_params(seed: int, width: int) -> dict:
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    return VGG19Features(width=width).init(jax.random.key(seed), x)["params"]


def random_vgg19_params(seed: int = RANDOM_SEED, width: int = 64) -> dict[str, Any]:
    """`VGG19Features(width)` params (numpy) with torchvision's init from `seed`; with the
    default seed, those of `jaxad.methods.simclr.random_vgg_params`."""
    return jax.device_get(_random_params(int(seed), int(width)))


def vgg19_params_or_random(
    path: str | os.PathLike,
    *,
    seed: int = RANDOM_SEED,
    width: int = 64,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """ImageNet VGG19 params from `path` (`load_vgg19_imagenet`), or, for `path=""`, a random
    VGG19 (`random_vgg19_params(seed, width)`) after a warning on `log` (default: this module's
    logger, under "jaxad"). `width` != 64 is for CPU demos and tests, random weights only."""
    path = os.fspath(path)
    if path:
        if width != 64:
            raise ValueError(f"{path}: torchvision VGG19 weights have width 64, not {width}.")
        return load_vgg19_imagenet(path)
    (log or logger).warning(
        "NO VGG19 WEIGHTS GIVEN: the perceptual loss uses a RANDOM VGG19 (torchvision init, "
        "seed %d), so it compares random features, not ImageNet ones as MorphAEus does. Convert "
        "torchvision's ImageNet VGG19 once with torch + torchvision: python -c \"import "
        "torchvision, safetensors.torch as st; m = torchvision.models.vgg19("
        "weights='IMAGENET1K_V1'); st.save_file({k: v.contiguous() for k, v in "
        "m.state_dict().items() if k.startswith('features.')}, 'vgg19_imagenet.safetensors')\" "
        "and give the path of vgg19_imagenet.safetensors.",
        seed,
    )
    return random_vgg19_params(seed, width)
