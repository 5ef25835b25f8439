"""Tests for jaxad.ops.conv: the fast kernel gradient equals XLA's, under jit, vmap and sharding."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from jax import lax

from jaxad.models import layers
from jaxad.models.patchgan import PatchGAN
from jaxad.models.unet import UNet
from jaxad.ops import conv

PADDINGS = ["SAME", "VALID", ((1, 1), (2, 2)), ((0, 2), (3, 1))]


def reference(x, kernel, strides, padding, dilation, groups=1):
    return lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def value_and_grads(fn, x, kernel, dy):
    """(output, d/dx, d/dkernel) of sum(fn(x, kernel) * dy), jitted."""

    @jax.jit
    def run(x, kernel, dy):
        y, vjp = jax.vjp(fn, x, kernel)
        return (y, *vjp(dy))

    return run(x, kernel, dy)


def assert_close(actual, expected, tol):
    """Max abs error at most `tol` times the largest reference magnitude (sums reorder)."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f"max error {err:.3g} > {tol} x {scale:.3g}"


def random_case(seed, n, hw, ci, co, k, groups=1, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, *hw, ci)), dtype)
    kernel = jnp.asarray(rng.standard_normal((k, k, ci // groups, co)) / k, dtype)
    return x, kernel


def check(x, kernel, strides, padding, dilation, groups=1, tol=2e-6):
    s, d = (strides, strides), (dilation, dilation)

    def ours(x, kernel):
        return conv.conv2d(
            x, kernel, s, padding, d, groups=groups, fast_kernel_grad=True, matmul_1x1=True
        )

    def xla(x, kernel):
        return reference(x, kernel, s, padding, d, groups)

    y = jax.eval_shape(xla, x, kernel)
    assert min(y.shape) > 0, y.shape
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), x.dtype)
    got = value_and_grads(ours, x, kernel, dy)
    want = value_and_grads(xla, x, kernel, dy)
    pads = conv.resolve_padding(padding, x.shape[1:3], kernel.shape[:2], s, d)
    if conv.is_pointwise(kernel.shape, pads, groups):  # one matrix product: sums reorder
        assert_close(got[0], want[0], tol)
    else:  # the forward pass is the same XLA convolution; the input gradient is XLA's too
        np.testing.assert_array_equal(got[0], want[0])
    assert_close(got[1], want[1], tol)
    assert got[2].dtype == kernel.dtype
    assert_close(got[2], want[2], tol)


# Every kernel size x stride x dilation, the padding cycling through its forms, odd sizes.
@pytest.mark.parametrize(
    "case", list(enumerate(itertools.product([1, 3, 4, 5, 7], [1, 2], [1, 2, 4]))), ids=str
)
def test_kernel_grad_matches_xla(case):
    i, (k, stride, dilation) = case
    padding = PADDINGS[i % len(PADDINGS)]
    span = (k - 1) * dilation + 1
    n = 1 + i % 3  # batch 1, 2, 3
    x, kernel = random_case(i, n, (span + 6, span + 3), 3 + i % 4, 2 + i % 5, k)
    check(x, kernel, stride, padding, dilation)


@pytest.mark.parametrize("padding", PADDINGS + [((-1, 2), (2, -1))], ids=str)
@pytest.mark.parametrize("k, stride, dilation", [(3, 1, 1), (4, 2, 1), (3, 2, 2), (5, 1, 4)])
def test_paddings(padding, k, stride, dilation):
    span = (k - 1) * dilation + 1
    x, kernel = random_case(k + stride, 2, (span + 4, span + 1), 5, 4, k)
    check(x, kernel, stride, padding, dilation)


@pytest.mark.parametrize(
    "n, hw, ci, co, k, stride, dilation",
    [
        (1, (9, 9), 1, 1, 3, 1, 1),  # single channels
        (4, (13, 7), 16, 8, 3, 1, 1),
        (2, (17, 17), 3, 64, 4, 2, 1),  # a PatchGAN-style first layer
        (1, (21, 21), 24, 24, 3, 1, 8),  # a dilated context layer
        (3, (9, 12), 32, 3, 1, 1, 1),  # a U-Net output layer
        (2, (23, 23), 2, 5, 3, 3, 1),  # stride 3: three column phases
    ],
)
def test_shapes_and_channels(n, hw, ci, co, k, stride, dilation):
    x, kernel = random_case(ci + co, n, hw, ci, co, k)
    padding = ((k // 2 * dilation,) * 2,) * 2
    check(x, kernel, stride, padding, dilation)


@pytest.mark.parametrize("groups, stride", [(2, 1), (4, 2), (6, 1)])
def test_feature_groups(groups, stride):
    x, kernel = random_case(groups, 2, (11, 10), 12, 6 * groups // 2, 3, groups=groups)
    check(x, kernel, stride, "SAME", 1, groups=groups)


@pytest.mark.parametrize("layout", ["split", "im2col"])
@pytest.mark.parametrize(
    "k, stride, dilation, padding, block_rows",
    [
        (3, 1, 1, ((1, 1), (1, 1)), 2),  # loop of row blocks + a remainder block
        (4, 2, 1, ((1, 1), (1, 1)), 3),
        (3, 2, 2, ((3, 0), (2, 2)), 1),  # top rows read only padding
        (5, 1, 1, ((0, 4), (1, 3)), 4),
        (3, 3, 1, ((-1, 2), (0, 0)), 2),  # a negative pad crops
    ],
)
def test_row_blocks_and_layouts(layout, k, stride, dilation, padding, block_rows):
    """Every layout and block size of the kernel gradient, against XLA's."""
    x, kernel = random_case(k, 3, (19, 16), 5, 7, k)
    s, d = (stride, stride), (dilation, dilation)
    dy_shape = jax.eval_shape(lambda a, b: reference(a, b, s, padding, d), x, kernel).shape
    dy = jnp.asarray(np.random.default_rng(3).standard_normal(dy_shape), jnp.float32)
    want = value_and_grads(lambda a, b: reference(a, b, s, padding, d), x, kernel, dy)[2]
    got = jax.jit(
        lambda x, dy: conv.kernel_grad(
            x, dy, kernel.shape, s, padding, d, layout=layout, block_rows=block_rows
        )
    )(x, dy)
    assert_close(got, want, 2e-6)


@pytest.mark.parametrize("k, stride, dilation", [(3, 1, 1), (4, 2, 1), (3, 1, 2)])
def test_bfloat16(k, stride, dilation):
    """bf16 in, bf16 out, accumulated in float32: within bf16 rounding of the float32 result."""
    x, kernel = random_case(k, 2, (14, 13), 16, 8, k, dtype=jnp.bfloat16)
    s, d = (stride, stride), (dilation, dilation)
    y = jax.eval_shape(lambda a, b: reference(a, b, s, "SAME", d), x, kernel)
    dy = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape), jnp.bfloat16)

    def ours(a, b):
        return conv.conv2d(a, b, s, "SAME", d, fast_kernel_grad=True)

    got = value_and_grads(ours, x, kernel, dy)
    assert all(g.dtype == jnp.bfloat16 for g in got)
    f32 = [v.astype(jnp.float32) for v in (x, kernel, dy)]
    want = value_and_grads(lambda a, b: reference(a, b, s, "SAME", d), *f32)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, 1e-2)


@pytest.mark.parametrize(
    "k, stride, padding",
    [(2, 2, 0), (4, 2, 1), (3, 1, 1), (3, 2, 0), (5, 3, 2), (4, 2, 4)],  # the last one crops
)
def test_transposed_conv_kernel_grad_matches_xla(k, stride, padding):
    x, kernel = random_case(k, 2, (5, 6), 6, 4, k)
    pads = ((k - 1 - padding, k - 1 - padding), (k - 1 - padding, k - padding))  # asymmetric

    def ours(x, kernel):
        return conv.conv_transpose2d(x, kernel, stride, pads, fast_kernel_grad=True)

    def xla(x, kernel):
        return conv.conv_transpose2d(x, kernel, stride, pads, fast_kernel_grad=False)

    dy_shape = jax.eval_shape(xla, x, kernel).shape
    dy = jnp.asarray(np.random.default_rng(4).standard_normal(dy_shape), jnp.float32)
    got, want = value_and_grads(ours, x, kernel, dy), value_and_grads(xla, x, kernel, dy)
    np.testing.assert_array_equal(got[0], want[0])
    for g, w in zip(got[1:], want[1:], strict=True):
        assert_close(g, w, 2e-6)


def test_conv_transpose_layer_switch():
    """`ConvTranspose(fast_conv_grad=True)` on the general path: same output and gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 5))
    slow = layers.ConvTranspose(3, 4, strides=2, padding=1)
    fast = layers.ConvTranspose(3, 4, strides=2, padding=1, fast_conv_grad=True)
    params = slow.init(jax.random.key(1), x)

    def grads(module):
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x)))))(params)

    np.testing.assert_array_equal(fast.apply(params, x), slow.apply(params, x))
    for g, w in zip(jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(slow)), strict=True):
        assert_close(g, w, 1e-5)


def test_eager_and_jit_agree():
    x, kernel = random_case(0, 2, (10, 10), 4, 4, 3)

    def loss(kernel):
        y = conv.conv2d(x, kernel, 1, "SAME", fast_kernel_grad=True)
        return (y**2).sum()

    np.testing.assert_allclose(jax.grad(loss)(kernel), jax.jit(jax.grad(loss))(kernel), rtol=1e-5)


@pytest.fixture(params=["one block", "row blocks"])
def block_budget(request, monkeypatch):
    """Small inputs fit one block; a tiny budget forces the loop over row blocks too."""
    if request.param == "row blocks":
        monkeypatch.setattr(conv, "_BLOCK_ELEMENTS", 64)


def test_vmap_over_inputs_and_kernels(block_budget):
    x, kernel = random_case(0, 2, (9, 11), 4, 5, 3)
    xs = jnp.stack([x, 2 * x + 1, -x])
    kernels = jnp.stack([kernel, kernel[::-1], 0.5 * kernel])

    def grads(fast):
        def loss(x, kernel):
            y = conv.conv2d(x, kernel, 2, ((1, 2), (1, 1)), fast_kernel_grad=fast)
            return jnp.sum(jnp.sin(y))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    for axes in [(0, None), (None, 0), (0, 0)]:
        args = (xs if axes[0] == 0 else x, kernels if axes[1] == 0 else kernel)
        got = jax.vmap(grads(True), in_axes=axes)(*args)
        want = jax.vmap(grads(False), in_axes=axes)(*args)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, 2e-6)


def test_second_order_reverse_mode(block_budget):
    """Gradients of functions of gradients (e.g. a gradient penalty) still work."""
    x, kernel = random_case(0, 2, (8, 8), 3, 4, 3)

    def conv_sum(x, kernel, fast):
        return jnp.sum(jnp.sin(conv.conv2d(x, kernel, 1, "SAME", fast_kernel_grad=fast)))

    def second_order(fast):
        def input_grad_norm(x, kernel):  # through the input gradient
            return jnp.sum(jax.grad(conv_sum)(x, kernel, fast) ** 2)

        def kernel_grad_norm(x, kernel):  # through the fast kernel gradient itself
            return jnp.sum(jax.grad(conv_sum, argnums=1)(x, kernel, fast) ** 2)

        return jax.jit(
            lambda x, k: (
                jax.grad(input_grad_norm, argnums=1)(x, k),
                jax.grad(kernel_grad_norm, argnums=0)(x, k),
            )
        )(x, kernel)

    for g, w in zip(second_order(True), second_order(False), strict=True):
        assert_close(g, w, 1e-5)


def test_zero_size_output_gives_zero_grad():
    x = jnp.ones((0, 5, 5, 2))
    kernel = jnp.ones((3, 3, 2, 4))
    dk = jax.grad(lambda k: conv.conv2d(x, k, 1, "VALID", fast_kernel_grad=True).sum())(kernel)
    np.testing.assert_array_equal(dk, np.zeros((3, 3, 2, 4)))


def test_resolve_fast_kernel_grad():
    assert conv.resolve_fast_kernel_grad("auto", backend="cpu") == conv.BY_SHAPE
    assert conv.resolve_fast_kernel_grad("auto", backend="tpu") is False
    assert conv.resolve_fast_kernel_grad("auto", backend="gpu") is False
    for value, expected in [(True, True), (False, False), ("False", False), ("TRUE", True)]:
        assert conv.resolve_fast_kernel_grad(value) is expected
    with pytest.raises(ValueError, match="fast_conv_grad"):
        conv.resolve_fast_kernel_grad("sometimes")


@pytest.mark.parametrize(
    "kernel_shape, output_hw, expected",
    [
        ((3, 3, 128, 128), (112, 112), True),  # the U-Net's large layers
        ((3, 3, 512, 512), (28, 28), True),
        ((3, 3, 1024, 1024), (14, 14), False),  # the U-Net's bottom: XLA's is as fast
        ((1, 1, 64, 3), (224, 224), True),
        ((4, 4, 3, 64), (112, 112), True),  # few input channels: any kernel
        ((4, 4, 64, 128), (56, 56), False),  # PatchGAN's 4x4 convs
        ((5, 5, 128, 128), (64, 64), False),
    ],
)
def test_kernel_grad_helps(kernel_shape, output_hw, expected):
    assert conv.kernel_grad_helps(kernel_shape, output_hw) is expected


def test_by_shape_picks_the_path_per_layer(monkeypatch):
    """BY_SHAPE takes ours where `kernel_grad_helps` and XLA's elsewhere, with equal gradients."""
    calls = []
    original = conv.kernel_grad
    monkeypatch.setattr(conv, "kernel_grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    key_x, key_k = jax.random.split(jax.random.key(0))
    for shape, kernel_shape, fast in [
        ((1, 30, 30, 4), (3, 3, 4, 4), True),
        ((1, 12, 12, 16), (3, 3, 16, 16), False),
        ((1, 30, 30, 16), (4, 4, 16, 16), False),
    ]:
        x = jax.random.normal(key_x, shape)
        kernel = jax.random.normal(key_k, kernel_shape)
        calls.clear()

        def loss(k, mode, x=x):
            return (conv.conv2d(x, k, 1, "SAME", fast_kernel_grad=mode) ** 2).sum()

        got = jax.grad(loss)(kernel, conv.BY_SHAPE)
        assert bool(calls) is fast
        want = jax.grad(loss)(kernel, False)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_layer_dilation_and_groups():
    x = jax.random.normal(jax.random.key(0), (2, 20, 20, 8))
    layer = layers.Conv(6, 3, padding=4, kernel_dilation=4, feature_group_count=2)
    params = layer.init(jax.random.key(1), x)
    assert params["params"]["kernel"].shape == (3, 3, 4, 6)
    y = layer.apply(params, x)
    assert y.shape == (2, 20, 20, 6)
    fast = layers.Conv(
        6, 3, padding=4, kernel_dilation=4, feature_group_count=2, fast_conv_grad=True
    )

    def grads(module):
        return jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2)))(params)

    for g, w in zip(jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(layer)), strict=True):
        assert_close(g, w, 1e-5)


@pytest.mark.parametrize("network", ["unet", "patchgan"])
def test_models_same_params_and_gradients(network):
    """The switch changes neither the parameter tree nor, up to rounding, the gradients."""
    model = {"unet": UNet, "patchgan": PatchGAN}[network]
    slow, fast = model(width=4, fast_conv_grad=False), model(width=4, fast_conv_grad=True)
    x = jax.random.normal(jax.random.key(0), (2, 37, 37, 3))
    variables = jax.jit(lambda x: slow.init(jax.random.key(1), x, train=False))(x)
    fast_variables = jax.jit(lambda x: fast.init(jax.random.key(1), x, train=False))(x)
    jax.tree.map(np.testing.assert_array_equal, variables, fast_variables)

    def grads(model):
        def loss(params):
            y, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(y**2)

        return jax.jit(jax.grad(loss))(variables["params"])

    got, want = grads(fast), grads(slow)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    # A bias followed by BatchNorm has a zero gradient, computed as rounding noise (1e-9 here):
    # each leaf is compared at the scale of its own gradient or 1e-3 of the largest, if more.
    floor = 1e-3 * max(float(np.abs(w).max()) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = max(float(np.abs(w).max()), floor)
        assert float(np.abs(np.asarray(g) - np.asarray(w)).max()) <= 1e-4 * scale


@pytest.mark.parametrize("fast", [False, True])
def test_paper_parameter_counts_with_switch(fast):
    def count(model):
        variables = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
        )
        return sum(v.size for v in jax.tree.leaves(variables["params"]))

    assert count(UNet(fast_conv_grad=fast)) == 31_043_651
    assert count(PatchGAN(fast_conv_grad=fast)) == 2_765_633


def test_config_switch_reaches_the_models():
    from conftest import tiny_config

    from jaxad import methods

    config = tiny_config("unused")
    assert config.model.fast_conv_grad == "auto"
    method = methods.create(config)
    auto = conv.BY_SHAPE if jax.default_backend() == "cpu" else False
    assert method.generator.fast_conv_grad == auto
    assert method.discriminator.fast_conv_grad == auto
    for value in (True, False):
        config.model.fast_conv_grad = value
        method = methods.create(config)
        assert method.generator.fast_conv_grad is value
        assert method.discriminator.fast_conv_grad is value


@pytest.mark.parametrize("flag, expected", [("False", False), ("True", True), ("auto", "auto")])
def test_config_switch_from_command_line(flag, expected):
    from absl import flags
    from ml_collections import config_flags

    argv = ["main", f"--config={ROOT / 'configs' / 'lesion2void.py'}"]
    argv.append(f"--config.model.fast_conv_grad={flag}")
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    assert values.config.model.fast_conv_grad == expected


_SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxad import parallel
    from jaxad.ops import conv

    assert jax.device_count() == 8
    conv._BLOCK_ELEMENTS = 64  # several row blocks: the loop must not gather the batch
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 12, 10, 6)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 6, 5)), jnp.float32)

    def grads(fast):
        def loss(x, kernel):
            y = conv.conv2d(x, kernel, 2, "SAME", 2, fast_kernel_grad=fast)
            return jnp.sum(jnp.tanh(y))
        return jax.grad(loss, argnums=(0, 1))

    want = jax.jit(grads(False))(x, kernel)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ks = jax.device_put(kernel, NamedSharding(mesh, P()))
    step = jax.jit(grads(True))
    hlo = step.lower(xs, ks).compile().as_text()
    got = step(xs, ks)
    assert got[0].sharding.spec[0] == "data", got[0].sharding
    assert got[1].sharding.is_fully_replicated, got[1].sharding
    # Data parallel: each device multiplies its own images, then the kernel gradients are summed.
    assert "all-reduce" in hlo and "all-gather" not in hlo
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)
    print("SHARDED_OK")
    """
)


def test_sharded_over_eight_devices():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "SHARDED_OK" in out.stdout, out.stderr[-4000:]


def test_pointwise_keeps_bfloat16_and_sums_in_float32():
    """A 1x1 conv as a matrix product: bfloat16 in and out, the sums in float32."""
    x, kernel = random_case(3, 2, (6, 5), 64, 8, 1, dtype=jnp.bfloat16)
    y = conv.conv2d(x, kernel, 2, "VALID", fast_kernel_grad=True, matmul_1x1=True)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 3, 3, 8)
    exact = reference(x.astype(jnp.float32), kernel.astype(jnp.float32), (2, 2), "VALID", (1, 1), 1)
    assert_close(y, exact, 2**-8)  # one bfloat16 rounding of the float32 sum
