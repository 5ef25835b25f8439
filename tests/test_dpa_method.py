"""The MOOD DPA method: loss, frozen VGG, scoring, divergence rule, early stopping, configs."""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad import checkpoint, methods, parallel, train
from jaxad.methods import dpa, simclr
from jaxad.models.dpa import Autoencoder
from jaxad.models.vgg import CONV_NAMES, VGG19Features
from jaxad.ops import perceptual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The solution's final models (fact sheet §5.1): (region, task, axis) -> (nf = latent_dim, lr,
# VGG layer, seed).
TABLE = {
    ("brain", "pixel", 0): (128, 1e-4, "r32", 5317),
    ("brain", "pixel", 1): (128, 1e-4, "r32", 5317),
    ("brain", "pixel", 2): (128, 1e-4, "r32", 5317),
    ("brain", "sample", 0): (128, 1e-4, "r42", 9289),
    ("brain", "sample", 1): (64, 2e-4, "r32", 9775),
    ("brain", "sample", 2): (128, 1e-4, "r42", 9289),
    ("abdom", "pixel", 0): (64, 2e-4, "r42", 2349),
    ("abdom", "pixel", 2): (128, 1e-4, "r42", 9289),
    ("abdom", "sample", 0): (128, 1e-4, "r42", 9289),
    ("abdom", "sample", 2): (128, 1e-4, "r42", 9289),
}


@pytest.fixture(autouse=True, scope="module")
def _quick_compiles():
    """Tiny programs: XLA's optimisations would cost more compile time than they save."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def tiny_config(root="unused", variant="brain_pixel_axis0", **overrides):
    """configs/dpa.py on a small greyscale folder: 16 px slices, a 4-wide autoencoder, VGG
    width 8."""
    from configs import dpa as dpa_configs

    c = dpa_configs.get_config(variant)
    c.data.name = "folder"
    c.data.root = str(root)
    c.data.test_split = "test"
    c.data.image_size = 16
    c.data.num_workers = 0
    c.data.num_threads = 2
    c.model.nf = 4
    c.model.latent_dim = 4
    c.model.vgg_width = 8
    c.model.fast_conv_grad = False
    c.batch_size = 4
    c.eval.batch_size = 4
    c.total_steps = 20
    c.log_every = 2
    c.checkpoint_every = 10
    c.eval.enabled = False
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def _slices(n=3, size=16, seed=0):
    """Smooth slices in [-1, 1] (the pipeline's x * 2 - 1)."""
    rows, cols = np.mgrid[:size, :size] / size
    phase = np.random.default_rng(seed).uniform(0, 6.0, (n, 1, 1))
    img = 0.8 * np.sin(5 * rows[None] + 3 * cols[None] + phase)
    return jnp.asarray(img[..., None], jnp.float32)


def _direct_features(state, images, layer):
    """VGG features of the images and of their reconstructions, computed step by step."""
    ae = Autoencoder(nf=4, latent_dim=4, channels=1, image_size=16)
    rec = ae.apply({"params": state["ae"]["params"]}, images)
    vgg = {"params": state["vgg"]["params"]}
    net = VGG19Features(width=8)
    f_real = net.apply(vgg, perceptual.vgg_input(images), (layer,))[layer]
    f_rec = net.apply(vgg, perceptual.vgg_input(rec), (layer,))[layer]
    return np.asarray(f_real, np.float64), np.asarray(f_rec, np.float64)


def _relative_l1(f_real, f_rec):
    """NumPy: mean |f(x) - f(x_rec)| / mean |f(x)| per sample."""
    axes = (1, 2, 3)
    return np.abs(f_real - f_rec).mean(axes) / np.abs(f_real).mean(axes)


# ----------------------------------------------------------------------------- training


def test_train_step_loss_is_the_relative_perceptual_l1_and_vgg_stays_frozen():
    method = methods.create(tiny_config())
    images = _slices()
    state = jax.jit(method.init)(jax.random.key(0), {"image": images})
    new, metrics = jax.jit(method.train_step)(state, {"image": images}, jax.random.key(1))
    f_real, f_rec = _direct_features(state, images, "r32")
    assert f_real.shape == (3, 4, 4, 32)  # relu3_2 at 1/4 of the input size, 256 * 8 / 64
    np.testing.assert_allclose(metrics["loss"], _relative_l1(f_real, f_rec).mean(), rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, new["vgg"], state["vgg"])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), new["ae"], state["ae"])
    assert all(jax.tree.leaves(changed))
    assert int(new["step"]) == 1 and set(new) == {"step", "ae", "opt", "vgg"}
    # The optimiser holds the autoencoder only: Adam's two moments of each of its params.
    assert count(new["opt"]) == 2 * count(new["ae"]) + 1
    assert set(method.inference_state(new)) == {"ae", "vgg"}


def test_eval_loss_and_score_per_slice_at_r42():
    method = methods.create(tiny_config(**{"dpa.vgg_layer": "r42"}))
    images = _slices(4, seed=1)
    state = jax.jit(method.init)(jax.random.key(0), {"image": images})
    valid = jnp.array([True, True, True, False])
    batch = {"image": images, "valid": valid}
    loss = jax.jit(method.eval_loss)(state, batch, None)
    out = jax.jit(method.score)(state, batch, None)
    f_real, f_rec = _direct_features(state, images, "r42")
    assert f_real.shape == (4, 2, 2, 64)
    want = _relative_l1(f_real, f_rec)
    np.testing.assert_allclose(loss[:3], want[:3], rtol=1e-5)
    assert float(loss[3]) == 0.0  # padding row
    assert out["map"].shape == (4, 16, 16) and out["score"].shape == (4,)
    # The map: channel mean of |f(x) - f(x_rec)| / the slice's own denominator, upsampled.
    error = np.abs(f_real - f_rec).mean(-1) / np.abs(f_real).mean((1, 2, 3))[:, None, None]
    np.testing.assert_allclose(error.mean((1, 2)), want, rtol=1e-5)
    upsampled = perceptual.resize_bilinear(jnp.asarray(error, jnp.float32), (16, 16))
    np.testing.assert_allclose(out["map"][:3], upsampled[:3], rtol=1e-5)
    np.testing.assert_allclose(out["score"], np.asarray(out["map"]).max((1, 2)), rtol=1e-6)
    assert not np.any(out["map"][3]) and np.all(np.isfinite(out["map"]))


class _FakeLoss:
    """Stands in for the networks: the loss is `scale` * sum of the params squared."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, ae_params, vgg_params, images):
        total = sum(jnp.sum(p**2) for p in jax.tree.leaves(ae_params))
        return jnp.full((images.shape[0],), self.scale * total)


@pytest.mark.parametrize("scale, diverged", [(1.0, False), (1e12, True)])
def test_loss_above_max_loss_poisons_the_step(scale, diverged):
    method = methods.create(tiny_config())
    method.per_example_loss = _FakeLoss(scale)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "ae": {"params": {"w": jnp.ones((3,))}},
        "vgg": {"params": {}},
    }
    state["opt"] = method.tx.init(state["ae"]["params"])
    new, metrics = method.train_step(state, {"image": jnp.zeros((2, 16, 16, 1))}, None)
    w = np.asarray(new["ae"]["params"]["w"])
    if diverged:  # 3e12 > 1e9: NaN loss and parameters, so every later loss is NaN too
        assert np.isnan(float(metrics["loss"])) and np.all(np.isnan(w))
    else:
        assert float(metrics["loss"]) == pytest.approx(3.0)
        np.testing.assert_allclose(w, 1.0 - 1e-4, rtol=1e-5)  # Adam's first step: lr * sign


def test_vgg_weights_from_npz_and_missing_path(tmp_path):
    random = simclr.load_vgg_params("")
    arrays = []
    for layer in (random[name] for name in CONV_NAMES):  # torchvision layout, conv order
        arrays += [np.asarray(layer["kernel"]).transpose(3, 2, 0, 1) * 2.0, layer["bias"] + 1.0]
    path = str(tmp_path / "vgg.npz")
    np.savez(path, *arrays)
    batch = {"image": jnp.zeros((1, 16, 16, 1))}
    npz_config = tiny_config(**{"dpa.vgg_weights": path, "model.vgg_width": 64})
    loaded = jax.jit(methods.create(npz_config).init)(jax.random.key(0), batch)
    np.testing.assert_allclose(
        loaded["vgg"]["params"]["conv4_2"]["kernel"], 2.0 * random["conv4_2"]["kernel"]
    )
    np.testing.assert_allclose(loaded["vgg"]["params"]["conv1_1"]["bias"], 1.0)
    # A missing file: init still works (a checkpoint brings the trained VGG), training does not.
    method = methods.create(tiny_config(**{"dpa.vgg_weights": str(tmp_path / "gone")}))
    state = jax.jit(method.init)(jax.random.key(0), batch)
    jax.tree.map(
        np.testing.assert_array_equal, state["vgg"]["params"], simclr.load_vgg_params("", 8)
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        method.train_step(state, batch, jax.random.key(1))


def _run(workdir, config, state, source="best", step=1):
    """A loaded run as `checkpoint.load_run` returns it (for the `init_from` hook)."""
    return checkpoint.Run(str(workdir), config, None, state, step, source)


def _simclr_config(width=8):
    from configs import simclr_vgg19

    c = simclr_vgg19.get_config()
    c.model.vgg_width = width
    return c


def test_init_from_takes_the_vgg_of_a_simclr_run_and_the_networks_of_a_dpa_run(tmp_path):
    simclr_dir = tmp_path / "simclr"
    simclr_dir.mkdir()
    method = methods.create(tiny_config(**{"dpa.vgg_weights": str(simclr_dir)}))
    assert method.init_runs() == [str(simclr_dir)]
    batch = {"image": jnp.zeros((1, 16, 16, 1))}
    fresh = jax.jit(method.init)(jax.random.key(0), batch)
    # Until the run is handed over, the fixed-seed random VGG holds its place.
    random = simclr.load_vgg_params("", 8)
    jax.tree.map(np.testing.assert_array_equal, fresh["vgg"]["params"], random)
    features = jax.tree.map(lambda p: p + 1.0, random)
    state = method.init_from(
        fresh, _run(simclr_dir, _simclr_config(), {"model": {"params": {"features": features}}})
    )
    jax.tree.map(np.testing.assert_array_equal, state["vgg"]["params"], features)
    jax.tree.map(np.testing.assert_array_equal, state["ae"], fresh["ae"])
    wide = simclr.load_vgg_params("", 16)
    with pytest.raises(ValueError, match="have width 16, not model.vgg_width=8"):
        method.init_from(
            fresh, _run(simclr_dir, _simclr_config(16), {"model": {"params": {"features": wide}}})
        )
    # Another DPA run (config.init_from.workdir): its autoencoder and VGG, not its optimiser.
    other = jax.jit(method.init)(jax.random.key(1), batch)
    dpa_run = _run(tmp_path / "dpa", tiny_config(), method.inference_state(other))
    state = method.init_from(fresh, dpa_run)
    jax.tree.map(np.testing.assert_array_equal, state["ae"], other["ae"])
    jax.tree.map(np.testing.assert_array_equal, state["opt"], fresh["opt"])
    bigger = methods.create(tiny_config(**{"model.nf": 8, "model.latent_dim": 8}))
    with pytest.raises(ValueError, match="dpa has other shapes .*model.nf, model.latent_dim"):
        bigger.init_from(jax.eval_shape(bigger.init, jax.random.key(0), batch), dpa_run)
    # dpa.vgg_weights must name a SimCLR run; nothing else gives VGG weights.
    as_vgg = _run(simclr_dir, tiny_config(), method.inference_state(other))
    with pytest.raises(ValueError, match="is a run of method 'dpa', not 'simclr'"):
        method.init_from(fresh, as_vgg)
    l2v = _run(tmp_path / "l2v", tiny_config(**{"method": "lesion2void"}), {})
    with pytest.raises(ValueError, match="l2v is a run of method 'lesion2void', not 'simclr'"):
        method.init_from(fresh, l2v)
    # No folder, no run to load: a .npz, '' or a missing path are read by init itself.
    assert methods.create(tiny_config()).init_runs() == []
    gone = methods.create(tiny_config(**{"dpa.vgg_weights": str(tmp_path / "gone")}))
    assert gone.init_runs() == []


def test_vgg_weights_from_a_saved_simclr_run_best_else_latest(tmp_path):
    """`dpa.vgg_weights=<SimCLR workdir>` as the loop applies it, on a run saved directly."""
    workdir = str(tmp_path / "simclr")
    sc_config = _simclr_config()
    sc_config.model.hidden, sc_config.model.out_dim, sc_config.model.pool_size = 16, 8, 1
    sc_config.simclr.crop_size = 32
    sc_method = methods.create(sc_config)
    mesh = parallel.make_mesh()
    saved = {}
    for source, seed in (("best", 1), ("latest", 2)):
        saved[source] = jax.jit(sc_method.init)(jax.random.key(seed), None)
        ckpt = checkpoint.Checkpointer(
            workdir, every_steps=1, keep=1, async_save=False, name=checkpoint.FOLDERS[source]
        )
        ckpt.save(
            seed, jax.device_put(saved[source], parallel.replicated(mesh)), None, {"step": seed}
        )
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(sc_config.to_json_best_effort())
    config = tiny_config(**{"dpa.vgg_weights": workdir})
    method = methods.create(config)
    fresh = methods.init_state(method, config, mesh, 1)
    for source in ("best", "latest"):
        state = checkpoint.apply_init_from(config, method, fresh, mesh)
        expected = saved[source]["model"]["params"]["features"]
        jax.tree.map(np.testing.assert_array_equal, state["vgg"]["params"], expected)
        jax.tree.map(np.testing.assert_array_equal, state["ae"], fresh["ae"])
        leaf = state["vgg"]["params"]["conv1_1"]["kernel"]
        assert leaf.sharding == fresh["vgg"]["params"]["conv1_1"]["kernel"].sharding
        if source == "best":
            shutil.rmtree(os.path.join(workdir, "best"))  # then: the latest checkpoint


def test_full_size_parameter_counts():
    from configs import dpa as dpa_configs

    for variant, ae_count in (("brain_pixel_axis0", 3_773_825), ("brain_sample_axis1", 944_833)):
        method = methods.create(dpa_configs.get_config(variant))
        batch = {"image": jnp.zeros((1, 128, 128, 1))}
        state = jax.eval_shape(method.init, jax.random.key(0), batch)
        assert count(state["ae"]["params"]) == ae_count
        assert count(state["vgg"]["params"]) == 20_024_384


@pytest.mark.slow
def test_run_stops_early_and_keeps_the_best_state(fundus_root, tmp_path):
    # Validation every 2 steps; after the first, a gain must exceed 1e9, so none does and
    # with patience 1 training stops at step 6 (two validations without gain), best at 2.
    config = tiny_config(
        fundus_root,
        **{"validation.every": 2, "validation.patience": 1, "validation.min_delta": 1e9},
    )
    workdir = tmp_path / "run"
    results = train.run(config, str(workdir))
    assert results["step"] == 2 and results["best_step"] == 2
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val/loss" in x]
    assert [x["step"] for x in val] == [2, 4, 6]
    assert all(np.isfinite(x["val/loss"]) and x["val/loss"] > 0 for x in val)
    best = checkpoint.Checkpointer(str(workdir), every_steps=0, keep=1, name="best")
    assert best.latest_step() == 2
    best.close()
    saved = checkpoint.load_config(str(workdir))
    assert (saved.dpa.axis, saved.dpa.vgg_layer, saved.model.nf) == (0, "r32", 4)


# ----------------------------------------------------------------------------- configs


def test_every_variant_is_a_row_of_the_solution_table():
    from configs import dpa as dpa_configs

    assert set(dpa_configs.VARIANTS) == {f"{r}_{t}_axis{a}" for r, t, a in TABLE}
    for (region, task, axis), (nf, lr, layer, seed) in TABLE.items():
        c = dpa_configs.get_config(f"{region}_{task}_axis{axis}")
        assert (c.dpa.region, c.dpa.task, c.dpa.axis, c.dpa.vgg_layer) == (
            region,
            task,
            axis,
            layer,
        )
        assert (c.model.nf, c.model.latent_dim, c.optim.learning_rate, c.seed) == (nf, nf, lr, seed)
        assert c.data.tfds_name == f"mood/{region}_axis{axis}" and c.data.axis == axis
        assert (c.data.image_size, c.data.channels, c.data.mean, c.data.std) == (
            128,
            1,
            (0.5,),
            (0.5,),
        )
        assert (c.batch_size, c.total_steps, c.data.val_split) == (64, 300_000, "validation")
        assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.9, 0.999, 1e-8)
        assert dict(c.validation) == {"every": 10_000, "patience": 3, "min_delta": 0.002}
        assert c.dpa.max_loss == 1e9 and not c.data.hflip and not c.data.vflip
        methods.create(c)  # every variant builds


def test_unknown_variant_is_one_line_listing_the_known_ones():
    from configs import dpa as dpa_configs

    for arg in (None, "brain_pixel_axis3", "abdom_pixel_axis1"):
        with pytest.raises(ValueError) as err:
            dpa_configs.get_config(arg)
        message = str(err.value)
        assert (
            "\n" not in message
            and "brain_pixel_axis0" in message
            and "abdom_sample_axis2" in message
        )


def test_bad_choices_are_rejected():
    with pytest.raises(ValueError, match="dpa.vgg_layer='r53'"):
        dpa.DPA(tiny_config(**{"dpa.vgg_layer": "r53"}))
    with pytest.raises(ValueError, match="data.mean"):
        dpa.DPA(tiny_config(**{"data.mean": (0.0,)}))


def test_config_switch_to_nifti_folder_from_command_line():
    from absl import flags
    from ml_collections import config_flags

    argv = [
        "main",
        f"--config={os.path.join(ROOT, 'configs', 'dpa.py')}:abdom_pixel_axis2",
        "--config.data.name=nifti_folder",
        "--config.data.root=/data/volumes",
        "--config.data.axis=1",
        "--config.data.resize=128",
        "--config.dpa.vgg_weights=/runs/simclr",
        "--config.eval.enabled=False",
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    c = values.config
    assert (c.data.name, c.data.root, c.data.axis, c.data.resize) == (
        "nifti_folder",
        "/data/volumes",
        1,
        128,
    )
    assert (c.data.min_nonzero, c.data.filter, c.data.val_fraction) == (4000, True, 0.1)
    assert c.dpa.vgg_weights == "/runs/simclr" and not c.eval.enabled
