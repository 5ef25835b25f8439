"""Tests for the MOOD DPA networks (autoencoder, VGG19, SimCLR), their losses and the VGG import."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.models import torch_import
from jaxad.models.dpa import Autoencoder
from jaxad.models.vgg import (
    CONV_NAMES,
    LAYER_NAMES,
    SimCLRModel,
    VGG19Features,
    adaptive_avg_pool2d,
    adaptive_pool_matrix,
)
from jaxad.ops import perceptual


def count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- autoencoder


@pytest.mark.parametrize(
    "nf, encoder, decoder", [(128, 2_034_560, 1_739_265), (64, 509_376, 435_457)]
)
def test_autoencoder_sizes(nf, encoder, decoder):
    model = Autoencoder(nf=nf, latent_dim=nf)
    x = jnp.zeros((2, 128, 128, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    assert count(params["encoder"]) == encoder
    assert count(params["decoder"]) == decoder
    variables = {"params": params}
    z = jax.eval_shape(lambda v: model.apply(v, x, method=Autoencoder.encode), variables)
    assert z.shape == (2, 1, 1, nf)
    assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (2, 128, 128, 1)


def np_conv(x, kernel, bias, pad):
    """NHWC x HWIO cross-correlation with zero padding, by explicit kernel taps."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = sum(xp[:, i : i + h, j : j + w] @ kernel[i, j] for i in range(kh) for j in range(kw))
    return out + bias


def np_lrelu(x):
    return np.where(x > 0, x, 0.2 * x)


def np_block(p, x, resample):
    down = lambda v: v.reshape(v.shape[0], v.shape[1] // 2, 2, v.shape[2] // 2, 2, -1).mean((2, 4))
    up = lambda v: v.repeat(2, axis=1).repeat(2, axis=2)
    r = {"down": down, "up": up, None: lambda v: v}[resample]
    y = np_conv(r(np_lrelu(x)), p["conv1"]["kernel"], p["conv1"]["bias"], 1)
    y = np_conv(np_lrelu(y), p["conv2"]["kernel"], p["conv2"]["bias"], 1)
    return r(x) + y


def np_autoencoder(params, x):
    e, d = params["encoder"], params["decoder"]
    x = np_conv(x, e["from_image"]["kernel"], e["from_image"]["bias"], 1)
    x = np_block(e["res0"], x, None)
    x = np_block(e["res1"], x, "down")
    x = np_block(e["res2"], x, "down")
    z = np_conv(np_lrelu(x), e["to_latent"]["kernel"], e["to_latent"]["bias"], 0)
    y = np_conv(np_lrelu(z), d["from_latent"]["kernel"], d["from_latent"]["bias"], 3)
    y = np_block(d["res1"], y, "up")
    y = np_block(d["res2"], y, "up")
    return z, np_conv(np_lrelu(y), d["to_image"]["kernel"], d["to_image"]["bias"], 1)


def test_autoencoder_matches_numpy():
    model = Autoencoder(nf=4, latent_dim=3, image_size=16)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    z, y = jax.jit(lambda p, x: (model.apply({"params": p}, x, method=Autoencoder.encode),
                                 model.apply({"params": p}, x)))(params, x)  # fmt: skip
    z_ref, y_ref = np_autoencoder(jax.tree.map(np.asarray, params), x.astype(np.float64))
    assert z.shape == (2, 1, 1, 3) and y.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    # The 1x1 latent is spread by the padded 4x4 conv: output (i, j) is kernel tap (3-i, 3-j).
    d = jax.tree.map(np.asarray, params["decoder"]["from_latent"])
    h = np_lrelu(z_ref[:, 0, 0])
    expected = np.einsum("nc,ijco->nijo", h, d["kernel"][::-1, ::-1]) + d["bias"]
    np.testing.assert_allclose(np_conv(np_lrelu(z_ref), d["kernel"], d["bias"], 3), expected)


def test_autoencoder_init_statistics():
    # Width 128 at an 8x8 input: the full model's kernel shapes at a fraction of the cost.
    model = Autoencoder(nf=128, latent_dim=128, image_size=8)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    gain2 = 2 / 1.04
    for kernel, fan_out, tol in [
        (params["encoder"]["to_latent"]["kernel"], 16 * 128, 0.01),
        (params["encoder"]["res1"]["conv1"]["kernel"], 9 * 128, 0.01),
        (params["decoder"]["to_image"]["kernel"], 9 * 1, 0.06),  # fan_in would be 1152
    ]:
        w = np.asarray(kernel).ravel()
        std = math.sqrt(gain2 / fan_out)
        assert abs(w.std() / std - 1) < tol
        assert abs(w.mean()) < 4 * std / math.sqrt(w.size)
    # Untruncated: a 262,144-sample normal reaches beyond 4 sigma.
    w = np.asarray(params["encoder"]["to_latent"]["kernel"])
    assert np.abs(w).max() > 4 * math.sqrt(gain2 / 2048)
    # Biases: PyTorch's default U(+-1/sqrt(fan_in)).
    for bias, fan_in in [
        (params["encoder"]["from_image"]["bias"], 9),
        (params["decoder"]["res1"]["conv2"]["bias"], 9 * 128),
    ]:
        b = np.abs(np.asarray(bias))
        assert b.max() <= fan_in**-0.5 and b.max() > 0.7 * fan_in**-0.5


def test_autoencoder_fast_conv_grad_same_gradients():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    models = [
        Autoencoder(nf=4, latent_dim=3, image_size=8, fast_conv_grad=f) for f in (False, True)
    ]
    params = jax.jit(models[0].init)(jax.random.key(0), x)

    def grads(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(params)

    ref, fast = grads(models[0]), grads(models[1])
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(fast), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- VGG19 and SimCLR


def test_vgg_sizes_and_layer_resolutions():
    model = VGG19Features()
    x = jnp.zeros((2, 128, 128, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, ("r32",)))["params"]
    assert count(params) == 20_024_384  # every conv is built at init, whatever is requested
    assert list(params) == list(CONV_NAMES)
    out = jax.eval_shape(lambda v: model.apply(v, x, ("r42", "r32")), {"params": params})
    assert {k: v.shape for k, v in out.items()} == {
        "r32": (2, 32, 32, 256),
        "r42": (2, 16, 16, 512),
    }
    out = jax.eval_shape(lambda v: model.apply(v, x, ("p5", "c11")), {"params": params})
    assert out["p5"].shape == (2, 4, 4, 512) and out["c11"].shape == (2, 128, 128, 64)
    with pytest.raises(ValueError):
        model.apply({"params": params}, x, ("r35",))
    # The forward pass stops at the last requested layer: later convs are not even looked up.
    first_block = {"params": {k: params[k] for k in ("conv1_1", "conv1_2")}}
    out = jax.eval_shape(lambda v: model.apply(v, x, ("r12",)), first_block)
    assert list(out) == ["r12"] and out["r12"].shape == (2, 128, 128, 64)


def test_simclr_sizes():
    model = SimCLRModel()
    x = jnp.zeros((2, 96, 96, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    assert count(params["features"]) == 20_024_384
    assert count({k: params[k] for k in ("l1", "l2")}) == 51_906_816
    assert params["l1"]["kernel"].shape == (25088, 2048)
    h, z = jax.eval_shape(lambda v: model.apply(v, x), {"params": params})
    assert h.shape == (2, 25088) and z.shape == (2, 256)


def test_adaptive_pool_bins():
    # 3x3 -> 7x7 (a 96 px SimCLR view): overlapping bins [0,1) [0,1) [0,2) [1,2) [1,3) [2,3) [2,3).
    m = adaptive_pool_matrix(3, 7)
    bins = [tuple(np.flatnonzero(row)) for row in m]
    assert bins == [(0,), (0,), (0, 1), (1,), (1, 2), (2,), (2,)]
    np.testing.assert_allclose(m.sum(1), 1)
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    expected = np.zeros((2, 7, 7, 4), np.float32)
    for i in range(7):
        for j in range(7):
            r0, r1 = (i * 3) // 7, -(-(i + 1) * 3 // 7)
            c0, c1 = (j * 5) // 7, -(-(j + 1) * 5 // 7)
            expected[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    np.testing.assert_allclose(adaptive_avg_pool2d(jnp.asarray(x), (7, 7)), expected, atol=1e-6)
    # Divisible sizes are a plain average pool.
    y = np.random.default_rng(1).normal(size=(1, 14, 14, 2)).astype(np.float32)
    pooled = y.reshape(1, 7, 2, 7, 2, 2).mean((2, 4))
    np.testing.assert_allclose(adaptive_avg_pool2d(jnp.asarray(y), (7, 7)), pooled, atol=1e-6)


@pytest.fixture(scope="module")
def torch_vgg():
    """Random conv tensors in torchvision's layout (OIHW, `features.{i}.weight`)."""
    rng = np.random.default_rng(0)
    arrays, cin, n = {}, 3, 0
    for name in CONV_NAMES:
        i = torch_import.TORCHVISION_CONV_INDICES[n]
        cout = {1: 64, 2: 128, 3: 256}.get(int(name[4]), 512)
        arrays[f"features.{i}.weight"] = rng.normal(0, (9 * cin) ** -0.5, (cout, cin, 3, 3)).astype(
            np.float32
        )
        arrays[f"features.{i}.bias"] = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
        cin, n = cout, n + 1
    return arrays


def np_conv_oihw(x, weight, bias):
    """NCHW x OIHW cross-correlation with padding 1, as torch.nn.Conv2d."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[2:]
    out = sum(
        np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + w], weight[:, :, i, j])
        for i in range(3)
        for j in range(3)
    )
    return out + bias[None, :, None, None]


def test_vgg_import_matches_torch_layout(torch_vgg):
    params = torch_import.vgg19_params_from_arrays(torch_vgg)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    out = jax.jit(lambda p, x: VGG19Features().apply({"params": p}, x, LAYER_NAMES))(params, x)
    # The first conv against NumPy in PyTorch's layout.
    w0, b0 = torch_vgg["features.0.weight"], torch_vgg["features.0.bias"]
    c11 = np_conv_oihw(x.transpose(0, 3, 1, 2).astype(np.float64), w0, b0)
    np.testing.assert_allclose(out["c11"], c11.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    # Every conv against lax in OIHW layout, on the activation that feeds it.
    prev = {f"c{b}{i}": (f"r{b}{i - 1}" if i > 1 else f"p{b - 1}") for b in range(1, 6)
            for i in range(1, 5)}  # fmt: skip
    prev["c11"] = None
    for n, name in enumerate(CONV_NAMES):
        key = "c" + name[4] + name[6]
        idx = torch_import.TORCHVISION_CONV_INDICES[n]
        inp = x if prev[key] is None else out[prev[key]]
        ref = (
            jax.lax.conv_general_dilated(
                jnp.asarray(inp).transpose(0, 3, 1, 2),
                torch_vgg[f"features.{idx}.weight"],
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
                precision="highest",
            )
            + torch_vgg[f"features.{idx}.bias"][None, :, None, None]
        )
        np.testing.assert_allclose(out[key], ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    assert out["p5"].shape == (2, 1, 1, 512)


def test_vgg_import_by_position_and_prefixes(torch_vgg, tmp_path):
    params = torch_import.vgg19_params_from_arrays(torch_vgg)
    values = list(torch_vgg.values())
    # By position (the solution's loading), with trailing extra tensors ignored.
    extra = [np.zeros((2048, 25088 // 1024))]
    by_position = torch_import.vgg19_params_from_arrays(values + extra)
    # SimCLR-nested names, in a shuffled order, next to the head: read by name.
    nested = {f"features.0.{k[len('features.') :]}": v for k, v in torch_vgg.items()}
    keys = list(nested)[::-1]
    shuffled = {"l1.weight": np.zeros((3, 3)), **{k: nested[k] for k in keys}}
    by_name = torch_import.vgg19_params_from_arrays(shuffled)
    # A .npz file written with numpy.savez from the state dict.
    path = tmp_path / "vgg.npz"
    np.savez(path, **torch_vgg)
    loaded = torch_import.load_vgg19_weights(path)
    positional = tmp_path / "positional.npz"
    np.savez(positional, *values)
    loaded_positional = torch_import.load_vgg19_weights(positional)
    for other in (by_position, by_name, loaded, loaded_positional):
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)
    k = params["conv3_2"]["kernel"]
    assert k.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(k[1, 2], torch_vgg["features.12.weight"][:, :, 1, 2].T)
    with pytest.raises(ValueError):
        torch_import.vgg19_params_from_arrays(values[1:])  # shifted by one: shapes do not fit
    with pytest.raises(ValueError):
        torch_import.load_vgg19_weights(tmp_path / "vgg.pth")


def test_simclr_head_and_flatten_order():
    model = SimCLRModel(out_dim=4, hidden=8)
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    h, z = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    f = jax.jit(lambda p, x: VGG19Features().apply({"params": p}, x, ("p5",)))(
        params["features"], x
    )["p5"]
    f = np.asarray(f)  # [2, 2, 2, 512]
    pooled = np.einsum(
        "ih,jw,nhwc->ncij", adaptive_pool_matrix(2, 7), adaptive_pool_matrix(2, 7), f
    )
    np.testing.assert_allclose(h, pooled.reshape(2, -1), rtol=1e-5, atol=1e-6)
    l1, l2 = params["l1"], params["l2"]
    expected = np.maximum(pooled.reshape(2, -1) @ l1["kernel"] + l1["bias"], 0) @ l2["kernel"]
    np.testing.assert_allclose(z, expected + l2["bias"], rtol=1e-4, atol=1e-5)
    bound = 25088**-0.5
    assert np.abs(l1["kernel"]).max() <= bound and np.abs(l1["kernel"]).max() > 0.99 * bound


# ----------------------------------------------------------------------------- losses


def test_vgg_input():
    x = jnp.asarray([[[[-1.0]], [[2.0]]]])  # [1, 2, 1, 1]
    y = perceptual.vgg_input(x)
    assert y.shape == (1, 2, 1, 3)
    np.testing.assert_allclose(y[0, :, 0], [[0, 0, 0], [1.5, 1.5, 1.5]])  # not clamped
    z = perceptual.vgg_input(x, imagenet_normalize=True)
    mean, std = np.array(perceptual.IMAGENET_MEAN), np.array(perceptual.IMAGENET_STD)
    np.testing.assert_allclose(z[0, 1, 0], (1.5 - mean) / std, rtol=1e-6)


def test_relative_perceptual_l1_per_sample():
    rng = np.random.default_rng(0)
    fr, fy = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    loss = perceptual.relative_perceptual_l1(jnp.asarray(fr), jnp.asarray(fy))
    for n in range(3):
        num = sum(abs(fr[n, h, w, c] - fy[n, h, w, c]) for h in range(4) for w in range(5)
                  for c in range(6)) / 120  # fmt: skip
        assert loss[n] == pytest.approx(num / np.abs(fr[n]).mean(), rel=1e-5)
    # The denominator carries no gradient: d/dfr = sign(fr - fy) / (120 * den).
    grad = jax.grad(lambda a: perceptual.relative_perceptual_l1(a, jnp.asarray(fy)).sum())(
        jnp.asarray(fr)
    )
    den = np.abs(fr).mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(grad, np.sign(fr - fy) / (120 * den), rtol=1e-5)


def test_relative_perceptual_l1_per_volume():
    rng = np.random.default_rng(1)
    fr, fy = rng.normal(size=(2, 2, 5, 3, 3, 4)).astype(np.float32)  # 2 volumes of 5 slices
    loss = perceptual.relative_perceptual_l1(jnp.asarray(fr), jnp.asarray(fy), per="volume")
    assert loss.shape == (2,)
    for v in range(2):
        expected = np.abs(fr[v] - fy[v]).mean() / np.abs(fr[v]).mean()
        assert loss[v] == pytest.approx(expected, rel=1e-5)
    # Differs from the mean of per-slice losses, whose denominators vary.
    per_slice = perceptual.relative_perceptual_l1(jnp.asarray(fr), jnp.asarray(fy)).mean(1)
    assert not np.allclose(per_slice, loss, rtol=1e-3)


def torch_bilinear_matrix(n_in, n_out):
    """Weights of PyTorch's linear interpolation with align_corners=False along one axis."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        frac = src - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


@pytest.mark.parametrize("n_in, n_out", [(16, 128), (32, 128), (5, 12), (12, 5)])
def test_resize_bilinear_matches_torch_rule(n_in, n_out):
    x = np.random.default_rng(0).normal(size=(2, n_in, n_in + 1)).astype(np.float32)
    y = perceptual.resize_bilinear(jnp.asarray(x), (n_out, n_out + 3))
    rows, cols = torch_bilinear_matrix(n_in, n_out), torch_bilinear_matrix(n_in + 1, n_out + 3)
    np.testing.assert_allclose(y, np.einsum("ih,jw,nhw->nij", rows, cols, x), atol=1e-5)


def test_perceptual_map():
    rng = np.random.default_rng(2)
    fr, fy = rng.normal(size=(2, 2, 4, 4, 3)).astype(np.float32)
    m = perceptual.perceptual_map(jnp.asarray(fr), jnp.asarray(fy), (16, 16))
    den = np.abs(fr).mean(axis=(1, 2, 3))
    error = np.abs(fr - fy).mean(-1) / den[:, None, None]
    expected = np.einsum("ih,jw,nhw->nij", torch_bilinear_matrix(4, 16),
                         torch_bilinear_matrix(4, 16), error)  # fmt: skip
    np.testing.assert_allclose(m, expected, rtol=1e-5, atol=1e-6)
    # Unresized, its mean is the loss (per sample, and per volume with one denominator).
    same = perceptual.perceptual_map(jnp.asarray(fr), jnp.asarray(fy), (4, 4))
    loss = perceptual.relative_perceptual_l1(jnp.asarray(fr), jnp.asarray(fy))
    np.testing.assert_allclose(same.mean((1, 2)), loss, rtol=1e-5)
    vol = perceptual.perceptual_map(jnp.asarray(fr), jnp.asarray(fy), (4, 4), per="volume")
    np.testing.assert_allclose(vol * np.abs(fr).mean(), np.abs(fr - fy).mean(-1), rtol=1e-5)


def nt_xent_loops(zi, zj, temperature):
    """SimCLR's NTXentLoss, written out: views [zj; zi], positives at +-N, CE summed / 2N."""
    n = len(zi)
    reps = np.concatenate([zj, zi])
    sim = np.array([[a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in reps] for a in reps])
    total = 0.0
    for k in range(2 * n):
        positive = sim[k, (k + n) % (2 * n)]
        negatives = [sim[k, j] for j in range(2 * n) if j != k and j != (k + n) % (2 * n)]
        logits = np.array([positive, *negatives]) / temperature
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    return total / (2 * n)


def test_nt_xent():
    rng = np.random.default_rng(3)
    zi, zj = rng.normal(size=(2, 3, 5))
    got = perceptual.nt_xent(jnp.asarray(zi), jnp.asarray(zj))
    assert float(got) == pytest.approx(nt_xent_loops(zi, zj, 0.5), rel=1e-5)
    scaled = perceptual.nt_xent(jnp.asarray(3 * zi), jnp.asarray(zj / 7), temperature=0.1)
    assert float(scaled) == pytest.approx(nt_xent_loops(zi, zj, 0.1), rel=1e-5)
    # Two identical pairs on orthogonal axes: every view scores [2, 0, 0] (positive first).
    e = np.eye(2)
    assert float(perceptual.nt_xent(e, e)) == pytest.approx(math.log(math.exp(2) + 2) - 2, 1e-6)


def test_vgg_width_scales_every_block():
    from jaxad.models.vgg import VGG19Features

    x = jnp.zeros((1, 32, 32, 3))
    params = jax.eval_shape(lambda: VGG19Features(width=16).init(jax.random.key(0), x))
    assert params["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 16)
    assert params["params"]["conv5_4"]["kernel"].shape == (3, 3, 128, 128)
    out = VGG19Features(width=16).apply(
        VGG19Features(width=16).init(jax.random.key(0), x), x, ("r32", "r42")
    )
    assert out["r32"].shape == (1, 8, 8, 64) and out["r42"].shape == (1, 4, 4, 128)
