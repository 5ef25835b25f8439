"""Tests for the Lesion2Void networks (U-Net, PatchGAN) and the shared conv layers."""

import math
from functools import partial

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.models import layers
from jaxad.models.patchgan import PatchGAN
from jaxad.models.unet import UNet


def abstract_variables(model, shape):
    """Variable shapes without running the network."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def abstract_output(model, shape, variables):
    return jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables)


@pytest.mark.parametrize(
    "model, params, output_shape",
    [
        (UNet(), 31_043_651, (2, 224, 224, 3)),
        (PatchGAN(), 2_765_633, (2, 26, 26, 1)),
    ],
)
def test_paper_sizes(model, params, output_shape):
    variables = abstract_variables(model, (2, 224, 224, 3))
    assert count(variables["params"]) == params
    assert "batch_stats" in variables  # running statistics are kept apart from the parameters
    assert abstract_output(model, (2, 224, 224, 3), variables).shape == output_shape


@pytest.mark.parametrize("size", [100, 37, 64])
def test_unet_any_size(size):
    model = UNet(out_channels=2, width=4)
    variables = abstract_variables(model, (1, size, size + 3, 3))
    assert abstract_output(model, (1, size, size + 3, 3), variables).shape == (1, size, size + 3, 2)


def initialise(model, shape):
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(jnp.zeros(shape))


@pytest.fixture(scope="module")
def unet():
    """A narrow U-Net, initialised once; its parameters fit any input size."""
    model = UNet(width=8)
    return model, initialise(model, (1, 16, 16, 3))


@pytest.fixture(scope="module")
def patchgan():
    model = PatchGAN(width=8)
    return model, initialise(model, (1, 64, 64, 3))


@partial(jax.jit, static_argnums=(0, 3))
def apply(model, variables, x, train):
    return model.apply(variables, x, train=train, mutable=["batch_stats"])


def test_unet_forward_odd_size(unet):
    model, variables = unet
    x = jax.random.normal(jax.random.key(1), (1, 100, 100, 3))
    y, _ = apply(model, variables, x, False)
    assert y.shape == (1, 100, 100, 3)
    assert bool(jnp.isfinite(y).all())


def test_patchgan_forward(patchgan):
    model, variables = patchgan
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    y, _ = apply(model, variables, x, False)
    assert y.shape == (2, 6, 6, 1)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6


def test_bf16_compute_keeps_f32_params():
    model = UNet(width=4, dtype=jnp.bfloat16)
    variables = abstract_variables(model, (1, 32, 32, 3))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert abstract_output(model, (1, 32, 32, 3), variables).dtype == jnp.bfloat16


@pytest.mark.parametrize("network", ["unet", "patchgan"])
def test_batch_stats_update_only_in_train_mode(network, request):
    model, variables = request.getfixturevalue(network)
    x = 3.0 + jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    y_train, trained = apply(model, variables, x, True)
    y_eval, evaluated = apply(model, variables, x, False)
    changed = jax.tree.map(
        lambda a, b: bool((a != b).any()), variables["batch_stats"], trained["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], evaluated["batch_stats"])
    assert not np.allclose(y_train, y_eval)  # batch vs running statistics


def test_batch_norm_torch_defaults():
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), (4, 5, 5, 2))
    bn = layers.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    # PyTorch's momentum 0.1: running = 0.9 * running + 0.1 * batch statistic.
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
    np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-5), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_folded_batch_norm_matches_batch_norm(dtype):
    """Same variables, outputs, running statistics and gradients as `BatchNorm` (to rounding),
    in training and in eval mode, with a learnt scale and bias."""
    x = (2.0 + 3.0 * jax.random.normal(jax.random.key(0), (4, 5, 5, 3))).astype(dtype)
    ref, folded = (cls(dtype=dtype) for cls in (layers.BatchNorm, layers.FoldedBatchNorm))
    variables = ref.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree.map(jnp.shape, folded.init(jax.random.key(0), x, False)) == jax.tree.map(
        jnp.shape, variables
    )
    params = {"scale": jnp.array([0.5, 2.0, -1.0]), "bias": jnp.array([0.1, -0.3, 1.0])}
    variables = {**variables, "params": params}
    tol = dict(rtol=2e-2, atol=3e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    dy = jax.random.normal(jax.random.key(1), x.shape)
    for train in (True, False):

        def loss(v, xx, module, train=train):
            y, upd = module.apply(v, xx, not train, mutable=["batch_stats"])
            return (y.astype(jnp.float32) * dy).sum(), (y, upd)

        grads = [
            jax.grad(loss, argnums=(0, 1), has_aux=True)(variables, x, m) for m in (ref, folded)
        ]
        (g_ref, (y_ref, s_ref)), (g_fold, (y_fold, s_fold)) = grads
        assert y_fold.dtype == y_ref.dtype == dtype
        np.testing.assert_allclose(np.float32(y_fold), np.float32(y_ref), **tol)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), s_fold, s_ref)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b), **tol),
            g_fold,
            g_ref,
        )
    with pytest.raises(ValueError, match="channels last"):
        layers.FoldedBatchNorm(axis=1).init(jax.random.key(0), x, False)


def assert_torch_uniform(values, fan_in):
    bound = 1 / math.sqrt(fan_in)
    values = np.abs(np.asarray(values))
    assert values.max() <= bound
    assert values.max() > 0.9 * bound


def test_conv_init_bounds():
    conv = layers.Conv(128, 3, padding=1)
    params = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 64)))["params"]
    assert params["kernel"].shape == (3, 3, 64, 128)
    assert_torch_uniform(params["kernel"], 3 * 3 * 64)
    assert_torch_uniform(params["bias"], 3 * 3 * 64)


def test_conv_transpose_init_uses_output_channels():
    # PyTorch reads the fan-in of a transposed conv from its output channels: 2 * 2 * 32 = 128 here
    # (bound 0.088), not 2 * 2 * 128 = 512 (bound 0.044).
    conv = layers.ConvTranspose(32, 2, strides=2)
    params = conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 128)))["params"]
    assert params["kernel"].shape == (2, 2, 128, 32)
    assert_torch_uniform(params["kernel"], 2 * 2 * 32)
    assert_torch_uniform(params["bias"], 2 * 2 * 32)


def test_unet_init_follows_torch_defaults(unet):
    _, variables = unet
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    for path, value in flat.items():
        module, name = path.rsplit("/", 1)
        if module.rsplit("/", 1)[-1].startswith("norm"):
            np.testing.assert_array_equal(value, 1.0 if name == "scale" else 0.0)
            continue
        kernel_shape = flat[f"{module}/kernel"].shape
        fan_in = layers.torch_fan_in(kernel_shape, transpose=module.endswith("/up"))
        assert np.abs(np.asarray(value)).max() <= 1 / math.sqrt(fan_in), path
    up_kernels = [path for path in flat if path.endswith("/up/kernel")]
    assert len(up_kernels) == 4
    up1 = flat["up1/up/kernel"]
    assert up1.shape == (2, 2, 128, 64)
    assert_torch_uniform(up1, 2 * 2 * 64)


def torch_conv_transpose(x, weight, stride, padding):
    """PyTorch's ConvTranspose2d (NHWC input, (in, out, kh, kw) weight), written out in NumPy."""
    n, h, w, _ = x.shape
    k = weight.shape[2]
    full = np.zeros((n, (h - 1) * stride + k, (w - 1) * stride + k, weight.shape[1]), np.float32)
    for i in range(h):
        for j in range(w):
            block = np.einsum("nc,coab->nabo", x[:, i, j], weight)
            full[:, i * stride : i * stride + k, j * stride : j * stride + k] += block
    return full[:, padding : full.shape[1] - padding, padding : full.shape[2] - padding]


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [(2, 2, 0), (3, 3, 0), (4, 2, 1), (3, 1, 1), (3, 2, 0)],  # the first two take the matmul path
)
def test_conv_transpose_matches_torch(kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    weight = rng.normal(size=(3, 4, kernel, kernel)).astype(np.float32)
    conv = layers.ConvTranspose(4, kernel, strides=stride, padding=padding, use_bias=False)
    ported = np.ascontiguousarray(weight.transpose(2, 3, 0, 1)[::-1, ::-1])  # as documented
    y = conv.apply({"params": {"kernel": ported}}, x)
    np.testing.assert_allclose(y, torch_conv_transpose(x, weight, stride, padding), atol=1e-5)


def test_conv_padding_forms_agree():
    x = jax.random.normal(jax.random.key(0), (1, 9, 9, 2))
    params = layers.Conv(3, 4, strides=2, padding=1).init(jax.random.key(1), x)
    y_int = layers.Conv(3, 4, strides=2, padding=1).apply(params, x)
    y_pairs = layers.Conv(3, 4, strides=2, padding=((1, 1), (1, 1))).apply(params, x)
    np.testing.assert_array_equal(y_int, y_pairs)
    assert y_int.shape == (1, 4, 4, 3)  # floor((9 + 2 - 4) / 2) + 1, as in PyTorch


POOLS = {
    "2x2": (layers.max_pool_2x2, dict(window_shape=(2, 2), strides=(2, 2), padding="VALID")),
    "3x3_s2": (
        layers.max_pool_3x3_s2,
        dict(window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
    ),
}


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (2, 8, 6, 3)])
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_max_pool_matches_flax_with_ties(pool, shape):
    """Values, first-maximum gradients (ties included, as after a ReLU) and JVPs of the pools,
    on odd and even sizes."""
    fn, kwargs = POOLS[pool]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    x = jax.nn.relu(x).at[0, 0, 0, 0].set(5.0).at[0, 1, 1, 0].set(5.0)  # tie inside a window

    def ref(v):
        return flax.linen.max_pool(v, **kwargs)

    np.testing.assert_array_equal(fn(x), ref(x))
    g = jnp.asarray(rng.standard_normal(ref(x).shape), jnp.float32)
    got = jax.jit(jax.vjp(fn, x)[1])(g)[0]
    # Overlapping windows (3x3, stride 2) sum their gradients in another order: rounding.
    np.testing.assert_allclose(got, jax.vjp(ref, x)[1](g)[0], rtol=1e-6, atol=1e-6)
    t = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    np.testing.assert_array_equal(jax.jvp(fn, (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])
