"""torchvision's ResNet in Flax (`jaxad.models.resnet`) and its weights (`resnet_weights`)."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxad.models import resnet_weights
from jaxad.models.resnet import ProjectionHead, ResNet, feature_dim
from jaxad.models.resnet_weights import (
    from_torch_state_dict,
    load_torchvision_resnet,
    merge_into,
    to_torch_state_dict,
    torchvision_shapes,
)

PARITY_DIR = os.environ.get(
    "JAXAD_RESNET_PARITY_DIR", os.path.join(tempfile.gettempdir(), "jaxad_resnet_parity")
)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(model, size=32, x_shape=None):
    x = jnp.zeros(x_shape or (1, size, size, 3))
    return jax.eval_shape(model.init, jax.random.key(0), x)


def test_resnet50_and_head_parameter_counts():
    """LCL's encoder and head: 23,508,032 + 4,458,624 = 27,966,656 trainable parameters."""
    backbone = _shapes(ResNet(depth=50))
    head = _shapes(ProjectionHead(), x_shape=(1, 2048))
    assert _count(backbone["params"]) == 23_508_032
    assert _count(backbone["params"]) + _count(head["params"]) == 27_966_656
    # torchvision's counts with the 1000-way fc (resnet50, resnet18).
    assert _count(_shapes(ResNet(depth=50, num_classes=1000))["params"]) == 25_557_032
    assert _count(_shapes(ResNet(depth=18, num_classes=1000))["params"]) == 11_689_512
    assert feature_dim(50) == 2048 and feature_dim(18) == 512 and feature_dim(50, 8) == 256


def test_names_shapes_and_stride_placement():
    """torchvision's keys; 128 px ends at 4 x 4; v1.5: the stride is on the bottleneck's 3x3."""
    shapes = torchvision_shapes(50, num_classes=1000)
    assert len(shapes) == 267  # torchvision's resnet50 state dict without num_batches_tracked
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert shapes["fc.weight"] == (1000, 2048) and "layer2.1.downsample.0.weight" not in shapes

    model = ResNet(depth=50)
    x = jnp.zeros((2, 128, 128, 3))
    variables = _shapes(model, x_shape=x.shape)

    def apply(v, x):
        return model.apply(v, x, capture_intermediates=True)

    out, state = jax.eval_shape(apply, variables, x)
    assert out.shape == (2, 2048)
    inter = state["intermediates"]
    assert inter["layer4_2"]["__call__"][0].shape == (2, 4, 4, 2048)
    assert inter["layer2_0"]["conv1"]["__call__"][0].shape == (2, 32, 32, 128)
    assert inter["layer2_0"]["conv2"]["__call__"][0].shape == (2, 16, 16, 128)
    with pytest.raises(ValueError, match="depth must be one of"):
        _shapes(ResNet(depth=42))


def test_batch_norm_train_and_eval():
    """train=True uses the batch's statistics and updates the running ones (momentum 0.1 in
    PyTorch's terms); eval uses the running ones, so images do not affect each other."""
    model = ResNet(depth=18, width=4, num_classes=3)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def run(x):
        train, state = model.apply(
            variables,
            x,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda mdl, _: mdl.scope.path == ("conv1",),
        )
        return train, state, model.apply(variables, x)

    train, state, evaluated = run(x)
    assert train.shape == evaluated.shape == (4, 3)
    stem = state["intermediates"]["conv1"]["__call__"][0]
    np.testing.assert_allclose(
        state["batch_stats"]["bn1"]["mean"], 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        state["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-5
    )
    # Other images in the batch: the same eval outputs, other train outputs.
    train2, _, evaluated2 = run(x.at[2:].set(-x[2:] * 3))
    np.testing.assert_allclose(evaluated2[:2], evaluated[:2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(train2[:2], train[:2], atol=1e-4)


def test_fast_conv_grad_reaches_every_conv():
    """Every conv takes the fast kernel gradient when asked, and the three 1x1 downsampling
    convs become matrix products (their numerics: tests/test_conv.py)."""
    x = jnp.zeros((2, 16, 16, 3))
    for fast, convs, expected in ((False, 20, 0), (True, 17, 17), ("by_shape", 17, 10)):
        model = ResNet(depth=18, width=4, fast_conv_grad=fast)
        variables = _shapes(model, x_shape=x.shape)
        jaxpr = str(jax.make_jaxpr(lambda v, m=model: m.apply(v, x))(variables))
        assert jaxpr.count("conv_general_dilated") == convs
        assert jaxpr.count("dot_general") == 20 - convs
        assert jaxpr.count("custom_vjp_call") == expected


def test_projection_head_is_unit_norm():
    head = ProjectionHead(hidden=16, features=8)
    x = jax.random.normal(jax.random.key(0), (5, 32))
    params = head.init(jax.random.key(1), x)
    z = head.apply(params, x)
    assert z.shape == (5, 8) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-6)
    assert params["params"]["dense1"]["kernel"].shape == (32, 16)


# --- weights --------------------------------------------------------------------------------


def _random_state_dict(depth=50, width=4, num_classes=3, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd = {
        k: rng.normal(size=s).astype(np.float32)
        for k, s in torchvision_shapes(depth, width=width, num_classes=num_classes).items()
    }
    for k in list(sd):
        if k.endswith("running_var"):
            sd[k] = np.abs(sd[k]) + 0.5
            sd[k.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    return sd


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_weights_round_trip(tmp_path, ext):
    sd = _random_state_dict()
    path = str(tmp_path / f"w{ext}")
    if ext == ".npz":
        np.savez(path, **sd)
    else:
        safetensors.numpy.save_file(sd, path)
    loaded = load_torchvision_resnet(path, depth=50, width=4, num_classes=3)
    assert loaded.missing == () and loaded.ignored == ()
    p, s = loaded.params, loaded.batch_stats
    np.testing.assert_array_equal(p["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        p["layer3_0"]["downsample_0"]["kernel"],
        sd["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(p["layer1_2"]["bn3"]["scale"], sd["layer1.2.bn3.weight"])
    np.testing.assert_array_equal(s["layer4_1"]["bn2"]["var"], sd["layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    back = to_torch_state_dict(p, s)
    assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k])


def test_loaded_weights_give_the_same_network(tmp_path):
    """Variables -> torchvision state dict -> file -> loaded into another init: same outputs."""
    model = ResNet(depth=18, width=4, num_classes=2)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    v0 = jax.jit(model.init)(jax.random.key(0), x)
    # Non-trivial running statistics, so that the eval outputs depend on them.
    _, state = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(v0)
    v0 = {**v0, **state}
    path = str(tmp_path / "r18.safetensors")
    safetensors.numpy.save_file(
        {"module." + k: v for k, v in to_torch_state_dict(**v0).items()}, path
    )
    loaded = load_torchvision_resnet(path, depth=18, width=4, num_classes=2)
    v1 = merge_into(jax.jit(model.init)(jax.random.key(5), x), loaded)
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(v1, x), apply(v0, x))


def test_fc_is_optional(tmp_path, caplog):
    sd = _random_state_dict(depth=18)
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    loaded = from_torch_state_dict(no_fc, depth=18, width=4, num_classes=3)
    assert loaded.missing == ("fc.weight", "fc.bias") and "fc" not in loaded.params
    model = ResNet(depth=18, width=4, num_classes=3)
    init = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    merged = merge_into(init, loaded)
    merged_params = merged["params"]
    np.testing.assert_array_equal(merged_params["fc"]["kernel"], init["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(
        merged_params["conv1"]["kernel"], loaded.params["conv1"]["kernel"]
    )
    # The encoder (num_classes=0) ignores a file's fc and says so.
    with caplog.at_level("INFO"):
        loaded = from_torch_state_dict(sd, depth=18, width=4, num_classes=0)
    assert loaded.ignored == ("fc.bias", "fc.weight") and loaded.missing == ()
    assert "ignored: fc.bias, fc.weight" in caplog.text
    # ... which is how another head goes on top: the model's own fc stays.
    one_unit = _shapes(model.clone(num_classes=1))
    merged = merge_into(one_unit, loaded)
    assert merged["params"]["fc"]["kernel"] is one_unit["params"]["fc"]["kernel"]
    np.testing.assert_array_equal(merged["params"]["bn1"]["bias"], sd["bn1.bias"])
    encoder = _shapes(model.clone(num_classes=0))
    with_fc = from_torch_state_dict(sd, depth=18, width=4, num_classes=3)
    with pytest.raises(ValueError, match=r"params/fc/\w+ is absent in the model"):
        merge_into(encoder, with_fc)


def _one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_weight_file_errors(tmp_path):
    sd = _random_state_dict(depth=18)
    missing = str(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError) as e:
        load_torchvision_resnet(missing, depth=18, width=4, num_classes=3)
    _one_line_error(e, missing, "resnet_weights docstring")
    with pytest.raises(ValueError) as e:
        load_torchvision_resnet(str(tmp_path / "w.pth"), depth=18)
    _one_line_error(e, "w.pth", "unknown extension", "conv1.weight")

    bad = dict(sd, **{"layer2.1.conv1.weight": np.zeros((8, 8, 1, 3), np.float32)})
    path = str(tmp_path / "shape.safetensors")
    safetensors.numpy.save_file(bad, path)
    with pytest.raises(ValueError) as e:
        load_torchvision_resnet(path, depth=18, width=4, num_classes=3)
    _one_line_error(e, path, "layer2.1.conv1.weight", "(8, 8, 1, 3)", "expected (8, 8, 3, 3)")

    gone = {k: v for k, v in sd.items() if k not in ("bn1.running_mean", "layer3.0.bn2.bias")}
    path = str(tmp_path / "missing.npz")
    np.savez(path, **gone)
    with pytest.raises(ValueError) as e:
        load_torchvision_resnet(path, depth=18, width=4, num_classes=3)
    _one_line_error(e, path, "bn1.running_mean missing", "(and 1 more)", "torchvision ResNet-18")

    path = str(tmp_path / "int.npz")
    np.savez(path, **dict(sd, **{"bn1.weight": np.ones(4, np.int32)}))
    with pytest.raises(ValueError) as e:
        load_torchvision_resnet(path, depth=18, width=4, num_classes=3)
    _one_line_error(e, path, "bn1.weight", "float")

    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError) as e:
        load_torchvision_resnet(str(path), depth=18)
    _one_line_error(e, str(path), "resnet_weights docstring")
    assert "vgg" not in str(e.value)


# ResNet-50 compiles for about 15 s on 2 cores: the end-to-end tier.
@pytest.mark.parametrize("depth", [18, pytest.param(50, marks=pytest.mark.slow)])
def test_parity_with_torchvision(depth):
    """Eval and train-mode outputs and running statistics against torchvision's, from files
    written by bench/resnet_parity.py in a torch environment (skipped when they are absent)."""
    io_path = os.path.join(PARITY_DIR, f"resnet{depth}_io.npz")
    if not os.path.isfile(io_path):
        pytest.skip(f"{io_path} absent: run bench/resnet_parity.py with torch installed")
    ref = dict(np.load(io_path))
    loaded = load_torchvision_resnet(
        os.path.join(PARITY_DIR, f"resnet{depth}.safetensors"), depth=depth, num_classes=1000
    )
    model = ResNet(depth=depth, num_classes=1000)
    x = jnp.asarray(ref["x"])

    @jax.jit
    def run(variables):
        logits = model.apply(variables, x)
        backbone = {k: v for k, v in variables["params"].items() if k != "fc"}
        features = model.clone(num_classes=0).apply(
            {"params": backbone, "batch_stats": variables["batch_stats"]}, x
        )
        train, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, features, train, state["batch_stats"]

    logits, features, train, stats = run(loaded.variables)

    def close(a, b, rel=1e-4):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=rel, atol=rel * np.abs(b).max())

    close(logits, ref["logits"])
    close(features, ref["features"])
    close(train, ref["train_logits"])
    torch_stats = to_torch_state_dict(loaded.params, stats)
    for key, value in torch_stats.items():
        if key.endswith("running_mean"):
            close(value, ref[key])
        elif key.endswith("running_var"):
            # Flax: 0.9 v + 0.1 s2 (biased); PyTorch: 0.9 v + 0.1 s2 n / (n - 1).
            n = float(ref[key.replace("running_var", "n")])
            old = resnet_weights.to_torch_state_dict(loaded.params, loaded.batch_stats)[key]
            biased = (value - 0.9 * old) / 0.1
            close(0.9 * old + 0.1 * biased * n / (n - 1), ref[key], 1e-4)
