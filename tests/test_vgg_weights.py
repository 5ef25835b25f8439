"""ImageNet VGG19 weights from local .safetensors / .npz files and MorphAEus's perceptual loss."""

import logging
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxad.methods import simclr
from jaxad.models import torch_import, vgg_weights
from jaxad.models.vgg import CONV_NAMES, VGG19Features
from jaxad.ops import perceptual


@pytest.fixture(scope="module")
def hwio():
    """Expected `VGG19Features` params (width 64): random, with nonzero biases."""
    params = vgg_weights.random_vgg19_params(seed=3)
    rng = np.random.default_rng(0)
    return {
        name: {"kernel": p["kernel"], "bias": rng.normal(size=p["bias"].shape).astype(np.float32)}
        for name, p in params.items()
    }


@pytest.fixture(scope="module")
def torch_state(hwio):
    """The same weights in torchvision's layout and names, next to a (small) classifier."""
    state = {}
    for i, name in zip(torch_import.TORCHVISION_CONV_INDICES, CONV_NAMES, strict=True):
        state[f"features.{i}.weight"] = np.ascontiguousarray(
            hwio[name]["kernel"].transpose(3, 2, 0, 1)
        )
        state[f"features.{i}.bias"] = hwio[name]["bias"]
    state["classifier.0.weight"] = np.ones((4, 5), np.float32)
    state["classifier.0.bias"] = np.ones(4, np.float32)
    return state


def write(path, state):
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        safetensors.numpy.save_file(state, path)
    else:
        np.savez(path, **state)
    return path


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == np.float32 and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_load_torchvision_layout_exactly(ext, hwio, torch_state, tmp_path):
    path = write(tmp_path / f"vgg19{ext}", torch_state)
    params = vgg_weights.load_vgg19_imagenet(path)
    assert_same_params(params, hwio)
    assert_same_params(vgg_weights.vgg19_params_or_random(path), hwio)
    # A kernel entry against the torch tensor: HWIO[h, w, i, o] = OIHW[o, i, h, w].
    np.testing.assert_array_equal(
        params["conv3_2"]["kernel"][1, 2], torch_state["features.12.weight"][:, :, 1, 2].T
    )
    x = np.random.default_rng(1).uniform(size=(1, 32, 32, 3)).astype(np.float32)
    apply = jax.jit(lambda p, x: VGG19Features().apply({"params": p}, x, ("r41",))["r41"])
    out = apply(params, x)
    assert out.shape == (1, 4, 4, 512)
    np.testing.assert_array_equal(out, apply(hwio, x))


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_clear_one_line_errors(ext, torch_state, tmp_path):
    def error(exc, match, path):
        with pytest.raises(exc, match=match) as info:
            vgg_weights.load_vgg19_imagenet(path)
        assert "\n" not in str(info.value) and os.fspath(path) in str(info.value)

    error(FileNotFoundError, r"VGG19 weights .* not found", tmp_path / f"absent{ext}")
    for name in ("vgg19.pth", "vgg19.pt", "vgg19.bin", "vgg19"):
        (tmp_path / name).write_bytes(b"x")
        error(ValueError, r"unknown extension, expected \.safetensors or \.npz", tmp_path / name)

    missing = {k: v for k, v in torch_state.items() if k != "features.10.weight"}
    error(
        ValueError,
        r"^features\.10\.weight missing from .*: expected torchvision VGG19 keys "
        r"features\.\{0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34\}\.weight/bias\.$",
        write(tmp_path / f"missing{ext}", missing),
    )
    # SimCLR-nested names are not torchvision's: every conv key is missing.
    nested = {f"features.0.{k[len('features.') :]}": v for k, v in torch_state.items()}
    error(
        ValueError,
        r"features\.0\.weight missing from .* \(and 31 more\)",
        write(tmp_path / f"nested{ext}", nested),
    )
    wrong = dict(torch_state)
    wrong["features.12.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    error(
        ValueError,
        r"features\.12\.weight in .* has shape \(256, 256, 1, 1\), expected \(256, 256, 3, 3\)",
        write(tmp_path / f"shape{ext}", wrong),
    )
    ints = dict(torch_state)
    ints["features.0.bias"] = np.zeros(64, np.int32)
    error(ValueError, r"features\.0\.bias in .* has dtype int32", write(tmp_path / f"i{ext}", ints))
    (tmp_path / f"garbage{ext}").write_bytes(b"\x00" * 64)
    error(
        ValueError, r"is not a (valid safetensors file|readable \.npz)", tmp_path / f"garbage{ext}"
    )


class _Payload:
    """Unpickling this creates a folder: proof that the file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_pickle_is_never_unpickled(ext, torch_state, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"features.0.weight": _Payload(os.fspath(marker))})
    path = tmp_path / f"renamed{ext}"
    path.write_bytes(payload)
    expected = "is not a valid safetensors file" if ext == ".safetensors" else "is not a readable"
    with pytest.raises(ValueError, match=expected) as info:
        vgg_weights.load_vgg19_imagenet(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # An .npz whose entry is a pickled object array.
    if ext == ".npz":
        state = dict(torch_state)
        state["features.0.weight"] = np.array([_Payload(os.fspath(marker))], dtype=object)
        np.savez(tmp_path / "object.npz", **state)
        with pytest.raises(ValueError, match=r"features\.0\.weight in .* is unreadable"):
            vgg_weights.load_vgg19_imagenet(tmp_path / "object.npz")
        assert not marker.exists()


def test_random_fallback_warns_and_is_deterministic(caplog):
    module_logger = logging.getLogger(vgg_weights.__name__)
    module_logger.addHandler(caplog.handler)  # whether or not "jaxad" propagates to the root
    try:
        with caplog.at_level(logging.WARNING, logger=vgg_weights.__name__):
            a = vgg_weights.vgg19_params_or_random("", width=8)
    finally:
        module_logger.removeHandler(caplog.handler)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "no warning for random VGG19 weights"
    text = warnings[0].getMessage()
    assert "RANDOM VGG19" in text and "compares random features" in text
    assert "torchvision.models.vgg19(weights='IMAGENET1K_V1')" in text
    assert "vgg19_imagenet.safetensors" in text

    custom = logging.getLogger("test_vgg_weights.custom")
    seen = []
    custom.addHandler(handler := logging.Handler())
    handler.emit = seen.append
    try:
        b = vgg_weights.vgg19_params_or_random("", width=8, log=custom)
    finally:
        custom.removeHandler(handler)
    assert len(seen) == 1 and seen[0].levelno == logging.WARNING
    assert_same_params(a, b)
    # The same init as SimCLR's fallback (compiled and eager init may differ in the last bit).
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
        a,
        jax.device_get(simclr.random_vgg_params(8)),
    )
    c = vgg_weights.vgg19_params_or_random("", seed=1, width=8, log=custom)
    assert not np.array_equal(a["conv1_1"]["kernel"], c["conv1_1"]["kernel"])
    assert float(np.abs(a["conv1_1"]["bias"]).max()) == 0.0  # torchvision: zero biases
    with pytest.raises(ValueError, match="width 64, not 8"):
        vgg_weights.vgg19_params_or_random("w.safetensors", width=8)


def test_vgg_layers_mse():
    params = vgg_weights.random_vgg19_params(width=8)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 32, 32, 1)).astype(np.float32)
    y = rng.uniform(size=(2, 32, 32, 1)).astype(np.float32)
    assert perceptual.MORPHAEUS_VGG_LAYERS == ("r11", "r21", "r31", "r41")
    loss = jax.jit(perceptual.vgg_layers_mse)(params, x, y)

    def feats(img):
        rgb = np.repeat(img, 3, axis=-1)  # no normalisation
        return VGG19Features(width=8).apply(
            {"params": params}, rgb, perceptual.MORPHAEUS_VGG_LAYERS
        )

    fx, fy = feats(x), feats(y)
    terms = [np.mean((np.asarray(fx[k]) - np.asarray(fy[k])) ** 2) for k in fx]
    assert all(t > 0 for t in terms)
    np.testing.assert_allclose(loss, sum(terms), rtol=1e-5)
    np.testing.assert_allclose(
        perceptual.vgg_layers_mse(params, x, y, ("r11",)), terms[0], rtol=1e-5
    )
    # 3 channels go through as they are.
    np.testing.assert_allclose(
        perceptual.vgg_layers_mse(params, np.repeat(x, 3, -1), np.repeat(y, 3, -1)), loss, rtol=1e-6
    )
    assert float(perceptual.vgg_layers_mse(params, x, x)) == 0.0

    # Gradients reach the inputs, never the frozen params.
    gx, gp = jax.grad(perceptual.vgg_layers_mse, argnums=(1, 0))(params, jnp.asarray(x), y)
    assert gx.shape == x.shape and np.isfinite(gx).all() and np.abs(gx).max() > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(gp))

    with pytest.raises(ValueError, match="differ in shape"):
        perceptual.vgg_layers_mse(params, x, y[:1])
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        perceptual.vgg_layers_mse(params, x[..., :1].repeat(2, -1), y.repeat(2, -1))
    with pytest.raises(ValueError, match="unknown or no VGG19 layers"):
        perceptual.vgg_layers_mse(params, x, y, ("relu1_1",))
