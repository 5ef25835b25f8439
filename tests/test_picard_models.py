"""Tests for PICARD's networks (generator, critics), channel dropout and contextual attention."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.models import picard
from jaxad.ops import contextual_attention as ca


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def generator_variables(model, size, batch=1):
    x = jnp.zeros((batch, size, size, model.channels))
    return model.init(jax.random.key(0), x, jnp.zeros((batch, size, size, 1)), sample=False)


@pytest.mark.parametrize(
    "channels, total, coarse, fine",
    [(1, 3_596_162, 1_446_337, 2_149_825), (3, 3_601_542, 1_448_227, 2_153_315)],
)
def test_generator_parameter_count(channels, total, coarse, fine):
    model = picard.Generator(channels=channels)
    variables = jax.eval_shape(lambda: generator_variables(model, 256))
    params = variables["params"]
    assert list(variables) == ["params"]
    assert (count(params), count(params["coarse"]), count(params["fine"])) == (total, coarse, fine)
    x = jax.ShapeDtypeStruct((2, 256, 256, channels), jnp.float32)
    mask = jax.ShapeDtypeStruct((2, 256, 256, 1), jnp.float32)
    out = jax.eval_shape(partial(model.apply, sample=False), variables, x, mask)
    assert [o.shape for o in out] == [(2, 256, 256, channels)] * 2


@pytest.mark.parametrize(
    "critic, channels, params, features",
    [
        (picard.LocalCritic, 1, 674_945, (2, 8, 8, 128)),
        (picard.GlobalCritic, 1, 699_521, (2, 16, 16, 128)),
        (picard.LocalCritic, 3, 676_545, (2, 8, 8, 128)),
        (picard.GlobalCritic, 3, 701_121, (2, 16, 16, 128)),
    ],
)
def test_critic_parameter_count(critic, channels, params, features):
    model = critic(channels=channels)
    x = jnp.zeros((2, model.input_size, model.input_size, channels))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert count(variables["params"]) == params
    assert count(variables["params"]) - count(variables["params"]["linear"]) == (
        666_752 + 800 * (channels - 1)  # the trunk; RGB widens only the first conv
    )
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 1)
    shape = jax.eval_shape(partial(model.apply, method="features"), variables, x).shape
    assert shape == features


def test_bf16_compute_keeps_f32_params():
    model = picard.Generator(width=8, dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: generator_variables(model, 64))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    out = jax.eval_shape(partial(model.apply, sample=False), variables, x, x)
    assert {o.dtype for o in out} == {jnp.dtype(jnp.bfloat16)}


def test_size_checks():
    model = picard.Generator(width=8)
    with pytest.raises(ValueError, match="multiples of 8"):
        jax.eval_shape(lambda: generator_variables(model, 60))
    critic = picard.LocalCritic(width=8)
    with pytest.raises(ValueError, match="128"):
        jax.eval_shape(lambda: critic.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1))))


# --- Contextual attention against a direct NumPy transcription of steps 1-8 (NCHW, loops). ---


def np_same_pad(x, kernel, stride):
    """[C, H, W] zero-padded as TensorFlow's "same" (extra pixel at the bottom/right)."""
    pads = []
    for size in x.shape[1:]:
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + kernel - size)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), *pads))


def np_unfold(x, kernel, stride):
    """[C, H, W] -> [L, C, k, k], L over the patch positions row-major."""
    xp = np_same_pad(x, kernel, stride)
    return np.stack(
        [
            xp[:, i : i + kernel, j : j + kernel]
            for i in range(0, xp.shape[1] - kernel + 1, stride)
            for j in range(0, xp.shape[2] - kernel + 1, stride)
        ]
    )


def np_identity_conv(matrix):
    """2-D correlation with the 3 x 3 identity kernel, zero padding 1."""
    padded = np.pad(matrix, 1)
    eye = np.eye(3)
    out = np.zeros_like(matrix)
    for a in range(3):
        for b in range(3):
            out += eye[a, b] * padded[a : a + matrix.shape[0], b : b + matrix.shape[1]]
    return out


def reference_attention(f, b, mask, *, per_sample=False, scale=10.0):
    """f, b: [N, C, H, W]; mask: [N, 1, 4H, 4W]; returns [N, C, H, W] (float64)."""
    f, b, mask = (np.asarray(a, np.float64) for a in (f, b, mask))
    n, c, height, width = f.shape
    fs, bs, ms = f[:, :, ::2, ::2], b[:, :, ::2, ::2], mask[:, :, ::8, ::8]
    h, w = fs.shape[2:]
    out = np.zeros_like(f)
    for i in range(n):
        raw = np_unfold(b[i], 4, 2)  # [L, C, 4, 4]
        filters = np_unfold(bs[i], 3, 1)  # [L, C, 3, 3]
        m = np_unfold(ms[i if per_sample else 0], 3, 1)
        valid = (m.mean(axis=(1, 2, 3)) == 0).astype(np.float64)
        normed = filters / np.sqrt(np.sum(filters**2 + 1e-4, axis=(1, 2, 3), keepdims=True))
        fp = np_same_pad(fs[i], 3, 1)
        scores = np.zeros((h * w, h, w))
        for p in range(h):
            for q in range(w):
                scores[:, p, q] = np.einsum("lcab,cab->l", normed, fp[:, p : p + 3, q : q + 3])
        y = np_identity_conv(scores.reshape(h * w, h * w))
        y = y.reshape(h, w, h, w).transpose(1, 0, 3, 2).reshape(h * w, h * w)
        y = np_identity_conv(y).reshape(w, h, w, h).transpose(1, 0, 3, 2).reshape(h * w, h, w)
        y = y * valid[:, None, None] * scale
        y = np.exp(y - y.max(axis=0))
        y = y / y.sum(axis=0) * valid[:, None, None]
        # Transposed conv, stride 2, padding 1: input pixel (p, q) adds its kernel at 2p-1, 2q-1.
        full = np.zeros((c, 2 * h + 2, 2 * w + 2))
        for p in range(h):
            for q in range(w):
                full[:, 2 * p : 2 * p + 4, 2 * q : 2 * q + 4] += np.einsum(
                    "l,lcab->cab", y[:, p, q], raw
                )
        out[i] = full[:, 1:-1, 1:-1] / 4
    return out


def nhwc(x):
    return jnp.asarray(np.moveaxis(x, 1, -1), jnp.float32)


@pytest.fixture(scope="module")
def attention_case():
    """Non-square features (16 x 24, matching grid 8 x 12), two samples with different holes."""
    rng = np.random.default_rng(0)
    f = 0.3 * rng.standard_normal((2, 3, 16, 24))
    b = 0.3 * rng.standard_normal((2, 3, 16, 24))
    mask = np.zeros((2, 1, 64, 96))
    mask[0, :, 16:40, 24:64] = 1
    mask[1, :, 30:60, 8:40] = 1
    return f, b, mask


@pytest.mark.parametrize("per_sample", [False, True])
def test_contextual_attention_matches_reference(attention_case, per_sample):
    f, b, mask = attention_case
    expected = reference_attention(f, b, mask, per_sample=per_sample)
    attend = jax.jit(partial(ca.contextual_attention, per_sample_mask=per_sample))
    got = attend(nhwc(f), nhwc(b), nhwc(mask))
    np.testing.assert_allclose(got, np.moveaxis(expected, 1, -1), rtol=1e-4, atol=1e-6)
    assert np.abs(expected).max() > 0.05  # a non-trivial case


def test_contextual_attention_uses_first_mask_by_default(attention_case):
    f, b, mask = (nhwc(a) for a in attention_case)
    default = ca.contextual_attention(f, b, mask)
    first = ca.contextual_attention(f, b, jnp.broadcast_to(mask[:1], mask.shape))
    np.testing.assert_array_equal(default, first)
    own = ca.contextual_attention(f, b, mask, per_sample_mask=True)
    np.testing.assert_array_equal(own[0], default[0])
    assert not np.allclose(own[1], default[1])


def test_contextual_attention_copies_matching_region():
    """A foreground equal to the background shifted by 14 pixels copies it into the hole."""
    rng = np.random.default_rng(1)
    b = rng.standard_normal((1, 32, 32, 4)).astype(np.float32)
    f = np.roll(b, -14, axis=2)  # f[:, y, x] = b[:, y, x + 14]: matching-grid offset (0, 7)
    mask = np.zeros((1, 128, 128, 1), np.float32)
    mask[:, 40:80, 16:48] = 1  # matching-grid rows 5-9, columns 2-5
    out = ca.contextual_attention(jnp.asarray(f), jnp.asarray(b), jnp.asarray(mask))
    # Pixels pasted only from hole positions whose match (7 columns right) is known and interior.
    np.testing.assert_allclose(out[:, 11:19, 5:11], b[:, 11:19, 19:25], rtol=1e-5, atol=1e-5)


def test_valid_patches_and_same_padding():
    assert ca.same_pads(64, 4, 2) == (1, 1)
    assert ca.same_pads(5, 4, 2) == (1, 2)  # the odd extra pixel goes to the bottom/right
    x = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3)
    got = ca.patches(jnp.asarray(x), 4, 2)  # [N, 3, 4, 4, 4, C]
    expected = np.stack([np_unfold(np.moveaxis(s, -1, 0), 4, 2) for s in x])  # [N, L, C, 4, 4]
    np.testing.assert_array_equal(got.reshape(2, 12, 4, 4, 3), expected.transpose(0, 1, 3, 4, 2))
    mask = np.zeros((1, 32, 32, 1), np.float32)
    mask[0, 9, 17] = 1  # not on the 8-pixel grid: the downsampled mask misses it
    mask[0, 16, 8] = 1  # on the grid: matching cell (2, 1)
    valid = np.asarray(ca.valid_patches(jnp.asarray(mask))).reshape(4, 4)
    expected = np.ones((4, 4))
    expected[1:4, 0:3] = 0  # every 3 x 3 patch containing cell (2, 1)
    np.testing.assert_array_equal(valid, expected)


# --- Channel dropout and sampling. ---


def test_dropout_presets():
    sets = {name: picard.resolve_dropout_layers(name) for name in ("faithful", "intended", "all")}
    assert len(sets["faithful"]) == 9 and all(n.startswith("coarse/") for n in sets["faithful"])
    assert {"coarse/conv2_downsample", "coarse/conv10_atrous"} <= sets["faithful"]
    assert len(sets["intended"] - sets["faithful"]) == 23
    assert sets["intended"] <= sets["all"] and len(sets["all"]) == 15 + 23
    assert "fine/pmconv1" in sets["intended"] and "fine/conv1" not in sets["all"]
    assert picard.resolve_dropout_layers(()) == frozenset()
    with pytest.raises(ValueError, match="no dropout"):
        picard.resolve_dropout_layers(("coarse/conv1",))
    with pytest.raises(ValueError, match="faithful"):
        picard.resolve_dropout_layers("fine")


def test_channel_dropout_drops_whole_channels():
    layer = picard.ChannelDropout(0.5)
    x = jnp.ones((3, 4, 5, 64))
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    assert set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1, :1], y.shape))  # per (sample, ch)
    assert 0.3 < (y[:, 0, 0] > 0).mean() < 0.7
    assert not np.array_equal(y[0, 0, 0], y[1, 0, 0])  # independent per sample
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)


@pytest.fixture(scope="module")
def small_generator():
    """Width 8 on 64 x 64 windows with a centred 32 x 32 hole.

    PyTorch's init divides the activation variance by about 3 per layer, so at init the output
    hardly depends on the input; kernels scaled by 2 let the signal through.
    """
    model = picard.Generator(width=8)
    variables = jax.jit(lambda: generator_variables(model, 64))()
    variables = jax.tree.map_with_path(
        lambda path, v: 2.0 * v if path[-1].key == "kernel" else v, variables
    )
    rng = np.random.default_rng(2)
    image = jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 1)), jnp.float32)
    mask = jnp.zeros((2, 64, 64, 1)).at[:, 16:48, 16:48].set(1.0)
    return variables, image * (1 - mask), mask


@partial(jax.jit, static_argnames=("model", "sample"))
def sample_completions(model, variables, x, mask, keys, *, sample):
    """One generator pass per key (vmapped): each key is one draw of the dropout masks."""
    run = lambda key: model.apply(variables, x, mask, sample=sample, rngs={"dropout": key})
    return jax.vmap(run)(keys)


def test_generator_outputs(small_generator):
    variables, x, mask = small_generator
    keys = jax.random.split(jax.random.key(3), 2)
    model = picard.Generator(width=8)
    stage1, stage2 = sample_completions(model, variables, x, mask, keys, sample=False)
    for out in (stage1, stage2):
        assert out.shape == (2, 2, 64, 64, 1)
        assert float(jnp.abs(out).max()) <= 1.0 and float(out.std()) > 0
        np.testing.assert_array_equal(out[0], out[1])  # no dropout when not sampling
    inpainted = picard.compose(x, stage2[0], mask)
    np.testing.assert_array_equal(inpainted * (1 - mask), x * (1 - mask))
    np.testing.assert_array_equal(inpainted * mask, stage2[0] * mask)


@pytest.mark.parametrize(
    "layers, varies1, varies2",
    [
        ("faithful", True, True),
        ((), False, False),
        (("fine/allconv16",), False, True),
    ],
)
def test_sampling_varies_only_selected_layers(small_generator, layers, varies1, varies2):
    variables, x, mask = small_generator
    model = picard.Generator(width=8, dropout_layers=layers)
    keys = jax.random.split(jax.random.key(4), 4)
    stage1, stage2 = sample_completions(model, variables, x, mask, keys, sample=True)
    plain1, plain2 = picard.Generator(width=8).apply(variables, x, mask, sample=False)
    for out, plain, varies in ((stage1, plain1, varies1), (stage2, plain2, varies2)):
        spread = np.asarray(out.max(axis=0) - out.min(axis=0))  # over the 4 draws
        hole = np.asarray(mask, bool)
        if varies:
            assert (spread[hole] > 1e-2).mean() > 0.5  # most hole pixels differ between draws
        else:
            assert not spread.any()
            np.testing.assert_allclose(out[0], plain, atol=1e-5)  # vmapped vs not: rounding


# --- Critics. ---


def test_critic_flattens_channel_major():
    model = picard.LocalCritic(width=8)
    x = jax.random.uniform(jax.random.key(5), (2, 128, 128, 1), minval=-1, maxval=1)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    params = variables["params"]
    kernel, bias = np.asarray(params["linear"]["kernel"]), np.asarray(params["linear"]["bias"])
    bound = 1 / math.sqrt(32 * 8 * 8)  # PyTorch's Linear init, fan-in 2048
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
    features = np.asarray(model.apply(variables, x, method="features"))
    assert features.shape == (2, 8, 8, 32) and features.min() < 0  # after LeakyReLU(0.2)
    score = np.asarray(jax.jit(model.apply)(variables, x))
    flat = features.transpose(0, 3, 1, 2).reshape(2, -1)  # C-H-W order
    np.testing.assert_allclose(score, flat @ kernel + bias, rtol=1e-4, atol=1e-6)


def test_generator_gradients_reach_the_attention_branch(small_generator):
    variables, x, mask = small_generator
    model = picard.Generator(width=8)

    def loss(params):
        _, stage2 = model.apply({"params": params}, x, mask, sample=False)
        return jnp.mean(jnp.abs(stage2 - 0.5) * mask)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["fine"]["pmconv1"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["coarse"]["conv1"]["kernel"]).max()) > 0
