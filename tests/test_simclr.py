"""SimCLR pre-training of VGG19: augmentations against torchvision's laws, loss, step, weights."""

from __future__ import annotations

import math
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from jaxad import checkpoint, methods, parallel, train
from jaxad.methods import simclr
from jaxad.models.vgg import CONV_NAMES
from jaxad.ops import augment, perceptual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _quick_compiles():
    """Tiny programs: XLA's optimisations would cost more compile time than they save."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def tiny_config(root="unused", **overrides):
    """configs/simclr_vgg19.py on a small greyscale folder: 32 px crops, VGG width 8, a 16-wide
    head."""
    from configs import simclr_vgg19

    c = simclr_vgg19.get_config()
    c.data.name = "folder"
    c.data.root = str(root)
    c.data.image_size = 32
    c.data.num_workers = 0
    c.data.num_threads = 2
    c.model.hidden = 16
    c.model.out_dim = 8
    c.model.pool_size = 1
    c.model.vgg_width = 8
    c.model.fast_conv_grad = False
    c.simclr.crop_size = 32
    c.simclr.blur_kernel = 3
    c.simclr.lr_schedule = "constant"
    c.optim.learning_rate = 1e-3
    c.batch_size = 4
    c.eval.batch_size = 4
    c.num_epochs = 0
    c.total_steps = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.validation.every = 1
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


# ----------------------------------------------------------------------------- crops


def torchvision_crop(rng, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop.get_params of torchvision 0.5, with numpy's generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w, False
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, True


@pytest.mark.parametrize("height, width", [(256, 256), (32, 256)])
def test_crop_box_follows_torchvision_law(height, width):
    n = 20000
    boxes = np.asarray(
        jax.jit(jax.vmap(lambda k: augment.crop_box(k, height, width)))(
            jax.random.split(jax.random.key(0), n)
        )
    )
    rng = np.random.default_rng(0)
    ref = np.array([torchvision_crop(rng, height, width) for _ in range(n)], np.float64)
    top, left, h, w = boxes.T
    assert np.all((h > 0) & (w > 0) & (top >= 0) & (left >= 0))
    assert np.all((top + h <= height) & (left + w <= width))
    # Area fraction and log aspect ratio: same quantiles up to sampling noise.
    ours = np.stack([h * w / (height * width), np.log(w / h)], 1)
    theirs = np.stack([ref[:, 2] * ref[:, 3] / (height * width), np.log(ref[:, 3] / ref[:, 2])], 1)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        np.testing.assert_allclose(
            np.quantile(ours, q, axis=0), np.quantile(theirs, q, axis=0), atol=0.02
        )
    # The corner is uniform over the valid positions: centred on average.
    for corner, room in ((top, height - h), (left, width - w)):
        assert abs(np.mean((corner - room / 2) / (room + 1))) < 0.01
    # All ten tries fail (~never for a square image, most of the time for 32 x 256) as often.
    _, _, fall_h, fall_w = augment.fallback_box(height, width, (3 / 4, 4 / 3))
    ours_fallback = np.mean((h == fall_h) & (w == fall_w))
    their_fallback = np.mean((ref[:, 2] == fall_h) & (ref[:, 3] == fall_w))
    assert abs(ours_fallback - their_fallback) < 0.02
    assert ref[:, 4].mean() > (0.3 if height != width else -1)


@pytest.mark.parametrize(
    "height, width, expected",
    [(64, 64, (0, 0, 64, 64)), (40, 100, (0, 23, 40, 53)), (100, 40, (23, 0, 53, 40))],
)
def test_crop_falls_back_to_the_centre_crop(height, width, expected):
    aug = augment.Augment(scale=(2.0, 3.0))  # larger than the image: every try fails
    box = augment.crop_box(jax.random.key(1), height, width, aug)
    assert tuple(int(v) for v in box) == expected


def test_resized_crop_is_pillow_crop_then_bilinear_resize():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(120, 100)).astype(np.float32)
    for top, left, h, w in [(10, 20, 90, 70), (0, 0, 120, 100), (50, 30, 20, 15), (7, 3, 48, 48)]:
        pil = Image.fromarray(img, "F").crop((left, top, left + w, top + h))
        want = np.asarray(pil.resize((48, 48), Image.BILINEAR))
        got = augment.resized_crop(jnp.asarray(img[..., None]), jnp.array([top, left, h, w]), 48)
        np.testing.assert_allclose(np.asarray(got)[..., 0], want, atol=2e-5)


# ----------------------------------------------------------------------------- the other steps


def test_gaussian_kernel_and_blur_match_opencv_formulas():
    k = np.asarray(augment.gaussian_kernel(jnp.float32(1.3), 9))
    x = np.arange(9) - 4.0
    want = np.exp(-(x**2) / (2 * 1.3**2))
    np.testing.assert_allclose(k, want / want.sum(), rtol=1e-6)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(1)
    img = rng.uniform(size=(12, 10, 1)).astype(np.float32)
    got = np.asarray(augment.gaussian_blur(jnp.asarray(img), jnp.float32(1.3), 9))
    padded = np.pad(img[..., 0].astype(np.float64), 4, mode="reflect")  # BORDER_REFLECT_101
    want = np.zeros((12, 10))
    for i in range(9):
        for j in range(9):
            want += k[i] * k[j] * padded[i : i + 12, j : j + 10]
    np.testing.assert_allclose(got[..., 0], want, atol=1e-6)
    flat = np.full((12, 10, 1), 0.3, np.float32)
    np.testing.assert_allclose(augment.gaussian_blur(jnp.asarray(flat), 0.5, 9), flat, atol=1e-6)


def test_parameter_laws():
    n = 20000
    params = jax.vmap(lambda k: augment.sample_params(k, 64, 64))(
        jax.random.split(jax.random.key(2), n)
    )
    p = {k: np.asarray(v) for k, v in params.items()}
    for name in ("brightness", "contrast"):
        assert 0.2 <= p[name].min() and p[name].max() <= 1.8
        assert abs(p[name].mean() - 1.0) < 0.02
    assert 0.1 <= p["sigma"].min() and p["sigma"].max() <= 2.0
    for name, prob in (("flip", 0.5), ("jitter", 0.8), ("brightness_first", 0.5), ("blur", 0.5)):
        assert abs(p[name].mean() - prob) < 0.02, name
    # Independent draws: e.g. flip and blur are uncorrelated.
    assert abs(np.corrcoef(p["flip"], p["blur"])[0, 1]) < 0.03


def test_color_jitter_orders_and_clipping():
    x = np.array([0.1, 0.5, 0.9, 0.7], np.float32).reshape(2, 2, 1)
    b, c = 1.5, 1.6

    def contrast(y):
        return np.clip(y.mean() + c * (y - y.mean()), 0, 1)

    def brightness(y):
        return np.clip(b * y, 0, 1)

    base = {"jitter": True, "brightness": jnp.float32(b), "contrast": jnp.float32(c)}
    for first, want in ((True, contrast(brightness(x))), (False, brightness(contrast(x)))):
        got = augment.color_jitter(jnp.asarray(x), {**base, "brightness_first": first})
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # The clipping makes the order matter here.
    assert not np.allclose(contrast(brightness(x)), brightness(contrast(x)))
    off = augment.color_jitter(jnp.asarray(x), {**base, "jitter": False, "brightness_first": True})
    np.testing.assert_array_equal(off, x)


def test_flip_mirrors_the_crop():
    img = jnp.asarray(np.random.default_rng(3).uniform(size=(40, 40, 1)), jnp.float32)
    aug = augment.Augment(size=16)
    params = augment.sample_params(jax.random.key(4), 40, 40, aug)
    params = {**params, "jitter": False, "blur": False}
    plain = augment.apply_params(img, {**params, "flip": False}, aug)
    flipped = augment.apply_params(img, {**params, "flip": True}, aug)
    np.testing.assert_array_equal(flipped, plain[:, ::-1])


def test_views_shapes_ranges_and_keys():
    aug = augment.Augment(size=24, blur_kernel=3)
    one = np.random.default_rng(5).uniform(size=(40, 40, 1)).astype(np.float32)
    images = jnp.asarray(np.stack([one] * 6))  # identical images
    fn = jax.jit(lambda k, x: augment.two_views(k, x, aug))
    v1, v2 = fn(jax.random.key(0), images)
    assert v1.shape == v2.shape == (6, 24, 24, 1)
    assert float(v1.min()) >= 0.0 and float(v1.max()) <= 1.0
    again, _ = fn(jax.random.key(0), images)
    np.testing.assert_array_equal(v1, again)  # deterministic per key
    other, _ = fn(jax.random.key(1), images)
    assert not np.allclose(v1, other)  # different keys, different views
    assert not np.allclose(v1, v2)  # the two views differ
    for i in range(1, 6):  # identical images get their own views
        assert not np.allclose(v1[0], v1[i])


# ----------------------------------------------------------------------------- loss, optimiser


def _numpy_shares(z1, z2, temperature):
    """Each pair's (CE of view 1 + CE of view 2) / 2, with a loop over the 2N views."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / temperature
    n2 = len(z)
    ce = []
    for i in range(n2):
        others = [k for k in range(n2) if k != i]
        ce.append(np.log(np.exp(sim[i, others]).sum()) - sim[i, (i + n2 // 2) % n2])
    ce = np.array(ce)
    return (ce[: n2 // 2] + ce[n2 // 2 :]) / 2


def test_nt_xent_per_example_sums_to_the_batch_loss():
    rng = np.random.default_rng(6)
    z1, z2 = rng.normal(size=(2, 5, 8)).astype(np.float32)
    shares = jax.jit(simclr.nt_xent_per_example, static_argnums=2)
    per = shares(z1, z2, 0.5)
    np.testing.assert_allclose(per, _numpy_shares(z1, z2, 0.5), rtol=1e-5)
    np.testing.assert_allclose(per.mean(), perceptual.nt_xent(z1, z2, 0.5), rtol=1e-5)
    # Padding rows: 0, and out of the valid rows' negatives.
    keep = np.array([True, True, False, True, False])
    masked = np.asarray(shares(z1, z2, 0.5, keep))
    assert np.all(masked[~keep] == 0)
    np.testing.assert_allclose(masked[keep], _numpy_shares(z1[keep], z2[keep], 0.5), rtol=1e-5)


def test_adam_with_coupled_weight_decay_by_hand():
    cfg = tiny_config().optim
    tx = simclr.make_optimizer(cfg, 1e-2)
    w = np.array([2.0, -1.0], np.float64)
    grads = [np.array([0.5, 0.0]), np.array([-0.3, 0.2])]
    params = {"w": jnp.asarray(w, jnp.float32)}
    state = tx.init(params)
    m = v = np.zeros(2)
    for t, g in enumerate(grads, 1):
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        g = g + cfg.weight_decay * w  # L2 in the gradient, before the moments
        m = cfg.b1 * m + (1 - cfg.b1) * g
        v = cfg.b2 * v + (1 - cfg.b2) * g**2
        m_hat, v_hat = m / (1 - cfg.b1**t), v / (1 - cfg.b2**t)
        w = w - 1e-2 * m_hat / (np.sqrt(v_hat) + cfg.eps)
        np.testing.assert_allclose(params["w"], w, rtol=1e-5)


def test_cosine_schedule_per_epoch_after_the_warmup_epoch():
    method = methods.create(
        tiny_config(**{"simclr.lr_schedule": "cosine_epochs", "simclr.steps_per_epoch": 100})
    )
    lr = np.asarray(jax.vmap(method.learning_rate)(jnp.array([0, 99, 100, 199, 200, 250, 300])))
    t_max = 10  # int(100 / 10) epochs
    base = 1e-3
    want = [base, base, base, base] + [
        base * (1 + math.cos(math.pi * t / t_max)) / 2 for t in (1, 1, 2)
    ]
    np.testing.assert_allclose(lr, want, rtol=1e-6)
    short = methods.create(
        tiny_config(**{"simclr.lr_schedule": "cosine_epochs", "simclr.steps_per_epoch": 9})
    )
    with pytest.raises(ValueError, match="T_max = 0"):
        short.learning_rate(jnp.array(0))


# ----------------------------------------------------------------------------- method


def test_full_size_parameter_count():
    from configs import simclr_vgg19

    method = methods.create(simclr_vgg19.get_config())
    state = jax.eval_shape(method.init, jax.random.key(0), None)
    assert count(state["model"]["params"]) == 71_931_200  # 20,024,384 VGG + 51,906,816 head
    assert count(state["model"]["params"]["features"]) == 20_024_384


def _grey_batch(n=4, size=32, seed=0):
    rows, cols = np.mgrid[:size, :size] / size
    phase = np.random.default_rng(seed).uniform(0, 6.0, (n, 1, 1))
    img = 0.5 + 0.4 * np.sin(4 * rows[None] + 3 * cols[None] * (1 + phase) + phase)
    return {"image": jnp.asarray(img[..., None], jnp.float32)}


def test_train_step_lowers_nt_xent_on_a_fixed_batch():
    # Built as the loop builds it (same state, jitted step and batch layout as the run below,
    # which then finds it in the compilation cache).
    config = tiny_config()
    method = methods.create(config)
    mesh = parallel.make_mesh()
    state = methods.init_state(method, config, mesh, 4)
    step = train.make_train_step(method, config, mesh)
    batch = {**methods.example_batch(config, 4), "image": np.asarray(_grey_batch()["image"])}
    batch = parallel.global_batch(mesh, batch)
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch, 1)  # the same step number: the same views
        losses.append(float(metrics["loss"]))
    assert int(state["step"]) == 6 and float(metrics["lr"]) == pytest.approx(1e-3)
    # Random VGG features start nearly parallel (loss ~ log 7); the step separates them.
    assert losses[-1] < losses[0] - 0.05, losses
    # Pre-training makes no anomaly maps: the evaluators never ask it for any.
    assert not methods.provides(method, "score")
    assert not methods.provides(method, "image_scores")


def test_batch_normalised_head_option():
    """model.head_norm='batch': the hidden layer normalised by the batch's statistics (padding
    rows left out), a step still lowers the loss, and a typo is a one-line error."""
    from jaxad.models.layers import BatchStatNorm

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(3.0, 2.0, (6, 5)), jnp.float32)
    norm = BatchStatNorm()
    params = norm.init(jax.random.key(0), x)
    y = np.asarray(norm.apply(params, x))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)
    weights = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    padded = np.asarray(norm.apply(params, x.at[4:].set(1e3), weights))
    np.testing.assert_allclose(padded[:4], np.asarray(norm.apply(params, x[:4])), atol=1e-5)

    config = tiny_config(**{"model.head_norm": "batch"})
    method = methods.create(config)
    mesh = parallel.make_mesh()
    state = methods.init_state(method, config, mesh, 4)
    assert set(state["model"]["params"]) == {"features", "l1", "l1_norm", "l2"}
    step = train.make_train_step(method, config, mesh)
    batch = {**methods.example_batch(config, 4), "image": np.asarray(_grey_batch()["image"])}
    batch = parallel.global_batch(mesh, batch)
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch, 1)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    from jaxad.convert import simclr as convert_simclr

    with pytest.raises(ValueError, match=r"^model.head_norm='batch': the SimCLR fork's head"):
        convert_simclr.networks(config)  # no counterpart in the original to export to
    with pytest.raises(ValueError, match=r"^config.model.head_norm='bn' is not one of none, batch"):
        methods.create(tiny_config(**{"model.head_norm": "bn"}))


def test_eval_loss_is_each_examples_share_of_nt_xent():
    method = methods.create(tiny_config())
    rng = np.random.default_rng(8)
    z1, z2 = (jnp.asarray(rng.normal(size=(4, 8)), jnp.float32) for _ in range(2))
    seen = []

    def projections(params, key, images, valid=None):  # stands in for the network
        seen.append((params, key, images.shape))
        passed.append(None if valid is None else np.asarray(valid).tolist())
        return z1, z2

    passed = []

    method.projections = projections
    state = {"model": {"params": "p"}}
    key = jax.random.key(3)
    image = jnp.zeros((4, 32, 32, 1))
    loss = method.eval_loss(state, {"image": image, "valid": jnp.ones(4, bool)}, key)
    assert seen == [("p", key, (4, 32, 32, 1))]  # the views come from the given key
    np.testing.assert_allclose(loss.mean(), perceptual.nt_xent(z1, z2, 0.5), rtol=1e-5)
    padded = method.eval_loss(state, {"image": image, "valid": jnp.array([1, 1, 1, 0], bool)}, key)
    assert float(padded[3]) == 0.0
    assert passed[-1] == [True, True, True, False]  # a batch-normalised head leaves padding out
    np.testing.assert_allclose(
        padded[:3], simclr.nt_xent_per_example(z1[:3], z2[:3], 0.5), rtol=1e-5
    )


# ----------------------------------------------------------------------------- VGG weights


def _restore_features(directory: str, step: int):
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
    return state["model"]["params"]["features"]


def _dpa_config(vgg_weights: str, vgg_width: int = 8):
    from configs import dpa as dpa_configs

    c = dpa_configs.get_config("brain_pixel_axis0")
    c.model.nf, c.model.latent_dim, c.data.image_size = 4, 4, 16
    c.dpa.vgg_weights = vgg_weights
    c.model.vgg_width = vgg_width
    return c


@pytest.mark.slow
def test_vgg_params_from_a_simclr_workdir(fundus_root, tmp_path):
    workdir = str(tmp_path / "simclr")
    # Every validation after the first must gain 1e9: the best state is step 1's, the last 2.
    config = tiny_config(fundus_root, **{"validation.min_delta": 1e9})
    results = train.run(config, workdir)
    assert results["step"] == 1 and results["best_step"] == 1
    assert not os.path.exists(os.path.join(workdir, "eval"))
    loaded = simclr.vgg_params_from_run(checkpoint.load_run(workdir))
    assert set(loaded) == set(CONV_NAMES)
    best = _restore_features(os.path.join(workdir, "best"), 1)
    last = _restore_features(os.path.join(workdir, "checkpoints"), 2)
    jax.tree.map(np.testing.assert_array_equal, loaded, best)
    assert not np.array_equal(loaded["conv1_1"]["kernel"], last["conv1_1"]["kernel"])
    # The DPA names the run (init_runs); the loop loads it and hands it to init_from before
    # the first step.
    c = _dpa_config(workdir)
    method = methods.create(c)
    assert method.init_runs() == [workdir]
    mesh = parallel.make_mesh()
    fresh = methods.init_state(method, c, mesh, 1)
    state = checkpoint.apply_init_from(c, method, fresh, mesh)
    jax.tree.map(np.testing.assert_array_equal, state["vgg"]["params"], best)
    jax.tree.map(np.testing.assert_array_equal, state["ae"], fresh["ae"])
    c = _dpa_config(workdir, vgg_width=64)  # not the SimCLR run's width
    method = methods.create(c)
    fresh = jax.eval_shape(method.init, jax.random.key(0), {"image": jnp.zeros((1, 16, 16, 1))})
    with pytest.raises(ValueError, match="have width 8, not model.vgg_width=64"):
        checkpoint.apply_init_from(c, method, fresh, mesh)
    shutil.rmtree(os.path.join(workdir, "best"))  # no best state: the latest checkpoint
    latest = checkpoint.load_run(workdir)
    assert (latest.source, latest.step) == ("latest", 2)
    jax.tree.map(np.testing.assert_array_equal, simclr.vgg_params_from_run(latest), last)


def test_load_vgg_params_from_npz_empty_and_bad_paths(tmp_path):
    rng = np.random.default_rng(0)
    indices = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
    shapes = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128)] + [(256, 256)] * 3
    shapes += [(512, 256)] + [(512, 512)] * 7
    arrays = {}
    for i, (cout, cin) in zip(indices, shapes, strict=True):
        arrays[f"features.{i}.weight"] = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
        arrays[f"features.{i}.bias"] = rng.normal(size=(cout,)).astype(np.float32)
    path = str(tmp_path / "vgg19.npz")
    np.savez(path, **arrays)
    params = simclr.load_vgg_params(path)
    np.testing.assert_array_equal(
        params["conv3_2"]["kernel"], arrays["features.12.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(params["conv5_4"]["bias"], arrays["features.34.bias"])
    # Empty: torchvision-style random weights from a fixed seed, the same on every call.
    random = simclr.load_vgg_params("")
    jax.tree.map(np.testing.assert_array_equal, random, simclr.load_vgg_params(""))
    assert np.all(random["conv2_1"]["bias"] == 0)
    std = random["conv2_1"]["kernel"].std()
    assert std == pytest.approx(math.sqrt(2.0 / (9 * 128)), rel=0.05)  # kaiming fan_out
    with pytest.raises(ValueError, match="width 64, not 8"):
        simclr.load_vgg_params(path, width=8)
    assert simclr.load_vgg_params("", width=8)["conv5_4"]["kernel"].shape == (3, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match="not found"):
        simclr.load_vgg_params(str(tmp_path / "missing"))
    # A workdir is a run to load (checkpoint.load_run), then vgg_params_from_run.
    with pytest.raises(ValueError, match="is a folder: .*vgg_params_from_run"):
        simclr.load_vgg_params(str(tmp_path))
    other = checkpoint.Run(
        workdir=str(tmp_path / "other_run"),
        config=ml_collections.ConfigDict({"method": "lesion2void"}),
        method=None,
        state={},
        step=1,
        source="best",
    )
    with pytest.raises(
        ValueError, match="other_run is a run of method 'lesion2void', not 'simclr'"
    ):
        simclr.vgg_params_from_run(other)


# ----------------------------------------------------------------------------- config


def test_config_paper_settings():
    from configs import simclr_vgg19

    c = simclr_vgg19.get_config()
    names = c.data.tfds_name.split(",")
    assert names == [f"mood/{r}_axis{a}" for r in ("brain", "abdom") for a in (0, 1, 2)]
    assert (c.batch_size, c.num_epochs, c.total_steps) == (256, 80, 0)
    assert (c.data.train_split, c.data.val_split) == ("train", "validation")
    assert (c.data.image_size, c.data.channels, c.data.mean, c.data.std) == (256, 1, (0.0,), (1.0,))
    assert not c.data.hflip and not c.data.vflip and not c.evals  # pre-training: no evaluations
    assert (c.simclr.crop_size, c.simclr.temperature, c.simclr.blur_kernel) == (96, 0.5, 9)
    assert (c.optim.learning_rate, c.optim.weight_decay) == (3e-4, 1e-5)
    assert c.simclr.lr_schedule == "cosine_epochs"
    with pytest.raises(ValueError, match="unknown variant"):
        simclr_vgg19.get_config("fast")


def test_config_switch_to_nifti_folder_from_command_line():
    from absl import flags
    from ml_collections import config_flags

    argv = [
        "main",
        f"--config={os.path.join(ROOT, 'configs', 'simclr_vgg19.py')}",
        "--config.data.name=nifti_folder",
        "--config.data.root=/data/volumes",
        "--config.data.axis=0,2",
        "--config.data.min_nonzero=100",
        "--config.data.filter=False",
        "--config.data.val_fraction=0.2",
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    data = values.config.data
    assert (data.name, data.root, data.axis) == ("nifti_folder", "/data/volumes", (0, 2))
    assert (data.resize, data.min_nonzero, data.filter, data.val_fraction) == (256, 100, False, 0.2)
