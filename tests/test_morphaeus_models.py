"""Tests for MorphAEus's networks: sizes, parameter counts, initial flow, batch norm, gradients."""

import functools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.models import morphaeus
from jaxad.ops import deform

# The smallest model with a deformer: 4 levels at 16 px (taps at 2, 4 and 8 px).
SMALL = dict(widths=(4, 8, 8, 8), deformer_width=4)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def uniform(seed, shape):
    # NumPy draws: on CPU, XLA takes about 0.5 s to compile each 4-D jax.random draw.
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def init(model, shape, train=False):
    return model.init(jax.random.key(0), jnp.zeros(shape), train=train)


def jit_init(model, shape):
    return jax.jit(partial(init, model, shape))()


@functools.cache
def small_apply(bn_mode="frozen", train=False):
    """The jitted apply of the small model, compiled once per setting across the tests."""
    model = morphaeus.MorphAEus(bn_mode=bn_mode, **SMALL)
    mutable = ["batch_stats"] if train else False
    return jax.jit(partial(model.apply, train=train, mutable=mutable))


@pytest.fixture(scope="module")
def small_variables():
    """Variables of the small model; they do not depend on `bn_mode`."""
    return jit_init(morphaeus.MorphAEus(**SMALL), (1, 16, 16, 1))


@pytest.fixture(scope="module")
def model_128():
    """The default model, initialised, with its outputs on two 128 px images (eval mode)."""
    model = morphaeus.MorphAEus()
    x = uniform(1, (2, 128, 128, 1))
    variables = jit_init(model, x.shape)
    out = jax.jit(partial(model.apply, train=False))(variables, x)
    return model, variables, x, out


@pytest.mark.parametrize("deform_", [True, False])
def test_parameter_counts(deform_):
    model = morphaeus.MorphAEus(deform=deform_)
    variables = jax.eval_shape(partial(init, model, (1, 128, 128, 1)))
    params = variables["params"]
    parts = {name: count(tree) for name, tree in params.items()}
    expected = {"encoder": 1_574_496, "decoder": 2_164_193}
    if deform_:
        expected["deformer"] = 116_066
    assert parts == expected
    assert count(params) == (3_854_755 if deform_ else 3_738_689)
    # Running statistics: one mean and one variance per BN channel, outside "params".
    bn_channels = 2 * sum(morphaeus.WIDTHS) + (3 * 32 if deform_ else 0)
    assert count(variables["batch_stats"]) == 2 * bn_channels


def test_outputs_at_128(model_128):
    _, _, x, out = model_128
    shapes = {key: value.shape for key, value in out.items()}
    assert shapes == {
        "prior": (2, 128, 128, 1),
        "velocity": (2, 128, 128, 2),
        "displacement": (2, 128, 128, 2),
        "warped": (2, 128, 128, 1),
        "reversed": (2, 128, 128, 1),
    }
    assert bool(jnp.all((out["prior"] > 0) & (out["prior"] < 1)))  # sigmoid


def test_initial_velocity_is_near_zero(model_128):
    _, _, x, out = model_128
    assert 0 < float(jnp.abs(out["velocity"]).max()) < 1e-3
    assert float(jnp.abs(out["displacement"]).max()) < 1e-3
    # A displacement of ~1e-5 px: the warps are the identity up to that.
    np.testing.assert_allclose(out["warped"], out["prior"], atol=1e-4)
    np.testing.assert_allclose(out["reversed"], x, atol=1e-4)


def test_taps_follow_the_original(model_128):
    """Encoder taps at 1/2 ... 1/128, decoder taps at 1/64 ... 1 (pre-BN conv outputs)."""
    model, variables, x, _ = model_128
    encoder = morphaeus.Encoder()
    decoder = morphaeus.Decoder()
    z, enc_taps = jax.eval_shape(
        partial(encoder.apply, train=False), {k: v["encoder"] for k, v in variables.items()}, x
    )
    prior, dec_taps = jax.eval_shape(
        partial(decoder.apply, train=False), {k: v["decoder"] for k, v in variables.items()}, z
    )
    assert z.shape == (2, 1, 1, 256) and prior.shape == (2, 128, 128, 1)
    assert [t.shape[1:] for t in enc_taps] == [
        (64, 64, 16), (32, 32, 32), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 256),
        (1, 1, 256),
    ]  # fmt: skip
    assert [t.shape[1:] for t in dec_taps] == [
        (2, 2, 256), (4, 4, 256), (8, 8, 256), (16, 16, 128), (32, 32, 64), (64, 64, 32),
        (128, 128, 16),
    ]  # fmt: skip
    # The deformer's inputs (R1, R2, R3): 64 + 128, 32 + 64 + 32, 16 + 32 + 32 channels.
    kernels = [variables["params"]["deformer"][f"refine{k}"]["kernel"] for k in (1, 2, 3)]
    assert [k.shape for k in kernels] == [(3, 3, 192, 32), (3, 3, 128, 32), (3, 3, 80, 32)]
    flow = variables["params"]["deformer"]["flow"]
    assert flow["kernel"].shape == (3, 3, 32, 2) and not bool(jnp.any(flow["bias"]))
    assert float(jnp.std(flow["kernel"])) == pytest.approx(1e-5, rel=0.2)


def test_other_sizes():
    # The original only runs at 128; larger multiples of 2^7 give a larger bottleneck.
    model = morphaeus.MorphAEus()
    out = jax.eval_shape(partial(model.apply, train=False), init_shapes(model, 256), _x(256))
    assert out["warped"].shape == (1, 256, 256, 1)
    with pytest.raises(ValueError, match="divisible by 2"):
        jax.eval_shape(partial(init, model, (1, 32, 32, 1)))
    # Fewer levels run on smaller images: 5 levels at 32 px (bottleneck 1 x 1).
    small = morphaeus.MorphAEus(widths=(16, 32, 64, 128, 256))
    out = jax.eval_shape(partial(small.apply, train=False), init_shapes(small, 32), _x(32))
    assert {k: v.shape[1:] for k, v in out.items()} == {
        "prior": (32, 32, 1),
        "velocity": (32, 32, 2),
        "displacement": (32, 32, 2),
        "warped": (32, 32, 1),
        "reversed": (32, 32, 1),
    }
    with pytest.raises(ValueError, match="at least 4 levels"):
        jax.eval_shape(partial(init, morphaeus.MorphAEus(widths=(8, 8, 8)), (1, 8, 8, 1)))
    woplm = morphaeus.MorphAEus(widths=(8, 8, 8), deform=False)
    assert jax.eval_shape(partial(init, woplm, (1, 8, 8, 1)))["params"].keys() == {
        "encoder",
        "decoder",
    }
    with pytest.raises(ValueError, match="bn_mode"):
        jax.eval_shape(partial(init, morphaeus.MorphAEus(bn_mode="eval"), (1, 128, 128, 1)))


def _x(size):
    return jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)


def init_shapes(model, size):
    return jax.eval_shape(partial(init, model, (1, size, size, 1)))


def test_small_model_runs(small_variables):
    x = uniform(2, (2, 16, 16, 1))
    out = small_apply()(small_variables, x)
    assert {k: v.shape[1:] for k, v in out.items()} == {
        "prior": (16, 16, 1),
        "velocity": (16, 16, 2),
        "displacement": (16, 16, 2),
        "warped": (16, 16, 1),
        "reversed": (16, 16, 1),
    }
    assert float(jnp.abs(out["velocity"]).max()) < 1e-3


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_batch_norm_modes(bn_mode, small_variables):
    x = uniform(3, (4, 16, 16, 1))
    stats = small_variables["batch_stats"]
    assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(stats)[::2])  # means
    out, updates = small_apply(bn_mode, train=True)(small_variables, x)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, updates["batch_stats"])
    eval_out = small_apply(bn_mode)(small_variables, x)
    if bn_mode == "frozen":
        # BN is a fixed affine of its init statistics: training changes nothing, and the
        # training forward equals the evaluation one.
        assert not any(jax.tree.leaves(changed))
        np.testing.assert_array_equal(out["prior"], eval_out["prior"])
    else:
        assert all(jax.tree.leaves(changed))
        assert float(jnp.abs(out["prior"] - eval_out["prior"]).max()) > 1e-4
        # Evaluation uses the running averages, and then they may stay immutable.
        np.testing.assert_array_equal(
            eval_out["prior"], small_apply("frozen")(small_variables, x)["prior"]
        )


def test_frozen_batch_norm_is_an_affine():
    bn = morphaeus._batch_norm("frozen", True, None, "bn")
    x = normal(4, (2, 3, 3, 5))
    scale = jnp.arange(1.0, 6.0)

    @jax.jit
    def apply(x):
        variables = bn.init(jax.random.key(0), x)
        return bn.apply({**variables, "params": {"scale": scale, "bias": -scale}}, x)

    y = apply(x)
    np.testing.assert_allclose(y, scale * x / math.sqrt(1 + 1e-5) - scale, rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_deformer(small_variables):
    model = morphaeus.MorphAEus(**SMALL)
    x = uniform(5, (2, 16, 16, 1))
    variables = small_variables

    def morph_loss(params):
        out = model.apply({**variables, "params": params}, x, train=True)
        ncc = deform.local_ncc_loss(x, out["warped"]) + deform.local_ncc_loss(
            out["prior"], out["reversed"]
        )
        return ncc / 2 + 3.0 * deform.gradient_l2(out["velocity"])

    grads = jax.jit(jax.grad(morph_loss))(variables["params"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    deformer = grads["deformer"]
    # The flow head's kernel gets the full gradient; the refine blocks get it through the
    # N(0, 1e-5) flow kernel, so theirs is small but not zero.
    assert float(jnp.abs(deformer["flow"]["kernel"]).max()) > 1e-6
    for k in (1, 2, 3):
        assert float(jnp.abs(deformer[f"refine{k}"]["kernel"]).max()) > 0
    # The morph loss also trains the autoencoder (no stop-gradient, as in the original).
    assert float(jnp.abs(grads["decoder"]["final"]["kernel"]).max()) > 0


def test_conv_transpose_matches_pytorch_definition():
    """ConvTranspose2d(k3, stride 2, padding 1, output_padding 1) by its scatter definition."""
    layer = morphaeus.ConvTranspose(features=3)
    x = normal(6, (1, 4, 5, 2))
    variables = jax.jit(layer.init)(jax.random.key(0), x)
    y = jax.jit(layer.apply)(variables, x)
    assert y.shape == (1, 8, 10, 3)
    kernel = np.asarray(variables["params"]["kernel"])
    weight = kernel[::-1, ::-1].transpose(2, 3, 0, 1)  # PyTorch's (in, out, kh, kw)
    xs = np.asarray(x)[0]
    out = np.zeros((8 + 2, 10 + 2, 3))  # before cropping `padding` = 1 on each side
    for i in range(4):
        for j in range(5):
            for a in range(3):
                for b in range(3):
                    out[2 * i + a, 2 * j + b] += xs[i, j] @ weight[:, :, a, b]
    expected = out[1:9, 1:11] + np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(y[0], expected, atol=1e-5)
    # PyTorch's default bound: 1 / sqrt(out * kh * kw).
    assert float(np.abs(kernel).max()) <= 1 / math.sqrt(3 * 9)


def test_bf16_compute_keeps_f32_params():
    model = morphaeus.MorphAEus(dtype=jnp.bfloat16, **SMALL)
    variables = jax.eval_shape(partial(init, model, (1, 16, 16, 1)))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(partial(model.apply, train=False), variables, _x(16))
    # The sigmoid, the integration and the warps are float32 (jaxad.methods.morphaeus).
    assert out["prior"].dtype == out["warped"].dtype == jnp.float32
    assert out["velocity"].dtype == out["displacement"].dtype == jnp.float32
