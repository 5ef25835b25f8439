"""PICARD's training step, MCD window scores and dense heatmaps on 64 px windows, width 4.

The generators here have their conv kernels scaled by 2 for the scoring tests: at PyTorch's
default init a narrow 17-layer network's output is nearly constant, so dropout would not
visibly change the completions.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxad.methods import picard
from jaxad.ops import heatmap

WINDOW, BOX, M = 64, 32, 4


def make_config(**overrides) -> ml_collections.ConfigDict:
    """The paper's settings with 64 px windows, 32 px boxes, width 4 and M = 4."""
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({"channels": 1, "mean": (0.5,), "std": (0.5,)})
    c.model = ml_collections.ConfigDict({"width": 4, "critic_width": 4, "fast_conv_grad": False})
    c.picard = ml_collections.ConfigDict(
        {
            "window_size": WINDOW,
            "box_size": BOX,
            "max_delta": 8,
            "mask_batch_same": True,
            "spatial_discounting_gamma": 0.9,
            "coarse_l1_alpha": 1.2,
            "l1_loss_alpha": 1.2,
            "ae_loss_alpha": 1.2,
            "global_wgan_loss_alpha": 1.0,
            "gan_loss_alpha": 0.001,
            "wgan_gp_lambda": 10.0,
            "n_critic": 5,
            "critic_gets_generator_grad": True,
            "drop_rate": 0.5,
            "dropout_layers": "faithful",
            "per_sample_attention_mask": False,
            "num_completions": M,
            "metrics": picard.METRICS,
            "image_metric": "MCD_image",
            "stride": 16,
            "cover_border": False,
            "placement": "centred",
            "window_batch": 4,
        }
    )
    c.optim = ml_collections.ConfigDict({"learning_rate": 1e-4, "b1": 0.5, "b2": 0.9, "eps": 1e-8})
    for key, value in overrides.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    return c


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def scaled(state: dict, factor: float = 2.0) -> dict:
    """Conv kernels of the generator and the local critic scaled by `factor`."""
    scale = lambda tree: jax.tree.map(lambda p: p * factor if p.ndim == 4 else p, tree)  # noqa: E731
    return {**state, "g": scale(state["g"]), "d_local": scale(state["d_local"])}


@pytest.fixture(scope="module")
def method():
    return picard.create(make_config())


@pytest.fixture(scope="module")
def state(method):
    return jax.jit(method.init)(jax.random.key(0), None)


@pytest.fixture(scope="module")
def score_state(state):
    return scaled(state)


def test_full_size_parameter_counts():
    cfg = make_config(
        **{
            "model.width": 32,
            "model.critic_width": 32,
            "picard.window_size": 256,
            "picard.box_size": 128,
        }
    )
    method = picard.create(cfg)
    state = jax.eval_shape(method.init, jax.random.key(0), None)
    counts = {k: count(state[k]["params"]) for k in ("g", "d_local", "d_global")}
    assert counts == {"g": 3_596_162, "d_local": 674_945, "d_global": 699_521}
    assert count(state["d_opt"]) == 2 * (674_945 + 699_521) + 1  # one Adam: mu, nu, count
    assert set(method.inference_state(state)) == {"step", "g", "d_local"}


def test_config_checks():
    with pytest.raises(ValueError, match="MCD_pixel"):
        picard.create(make_config(**{"picard.metrics": ("MCD_pixel",)}))
    with pytest.raises(ValueError, match="placement"):
        picard.create(make_config(**{"picard.placement": "nearest"}))
    with pytest.raises(ValueError, match="mean 0.5 and std 0.5"):
        picard.create(make_config(**{"data.mean": (0.4,)}))
    with pytest.raises(ValueError, match="multiples of 16"):
        picard.create(make_config(**{"picard.box_size": 24}))


# --- training pieces ------------------------------------------------------------------------
def test_spatial_discounting_mask_formula():
    sd = picard.spatial_discounting_mask(8, 0.9)
    for i in range(8):
        for j in range(8):
            expected = max(0.9 ** min(i, 8 - i), 0.9 ** min(j, 8 - j))
            assert sd[i, j] == pytest.approx(expected, rel=1e-6)
    # 1 on the top and left edges, 0.9 on the bottom and right ones, 0.9^4 in the centre.
    assert sd[0, 5] == sd[5, 0] == 1.0
    assert sd[7, 7] == pytest.approx(0.9) and sd[4, 4] == pytest.approx(0.9**4)


def test_training_masks():
    keys = jax.random.split(jax.random.key(1), 300)
    draw = jax.jit(
        jax.vmap(
            partial(picard.training_masks, batch=3, size=64, box=32, max_delta=8, same_box=True)
        )
    )
    top, left, hole = map(np.asarray, draw(keys))
    assert hole.shape == (300, 3, 64, 64, 1) and set(np.unique(hole)) == {0.0, 1.0}
    assert (top == top[:, :1]).all() and (left == left[:, :1]).all()  # one box per batch
    # Top/left take every value of {0, ..., 31}, as randint(0, 32).
    assert set(top.ravel()) == set(range(32)) and set(left.ravel()) == set(range(32))
    rows, cols = hole.any(axis=3)[..., 0], hole.any(axis=2)[..., 0]  # [300, 3, 64]
    heights, widths = rows.sum(-1), cols.sum(-1)
    # The box shrinks by 0-4 on each side: sides 24, 26, ..., 32, centred in the box.
    assert set(heights.ravel()) == set(widths.ravel()) == {24, 26, 28, 30, 32}
    first = rows.argmax(-1)
    np.testing.assert_array_equal(first - top, (32 - heights) // 2)
    assert (hole.sum((2, 3, 4)) == heights * widths).all()  # a rectangle
    top, _, _ = picard.training_masks(jax.random.key(2), 16, 64, 32, 8, same_box=False)
    assert len(set(np.asarray(top).tolist())) > 1


def test_box_crops():
    images = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
    top, left = jnp.array([1, 3]), jnp.array([2, 0])
    per_sample = picard.box_crops(images, top, left, 4, same_box=False)
    np.testing.assert_array_equal(per_sample[1], images[1, 3:7, 0:4])
    shared = picard.box_crops(images, top, left, 4, same_box=True)
    np.testing.assert_array_equal(shared, images[:, 1:5, 2:6])


def test_gradient_penalty_known_answers():
    real = jax.random.normal(jax.random.key(3), (3, 4, 4, 2))
    fake = jax.random.normal(jax.random.key(4), (3, 4, 4, 2))
    alpha = jnp.array([0.0, 0.3, 1.0]).reshape(3, 1, 1, 1)
    # Linear critic: the input gradient is w for every sample, GP = (||w|| - 1)^2.
    w = jax.random.normal(jax.random.key(5), (4, 4, 2)) * 0.1

    def linear(params, x):
        return jnp.sum(x * params, axis=(1, 2, 3))[:, None] + 3.0

    gp, grad = jax.value_and_grad(
        lambda p: picard.gradient_penalty(partial(linear, p), real, fake, alpha)
    )(w)
    norm = np.linalg.norm(np.asarray(w))
    assert gp == pytest.approx((norm - 1) ** 2, rel=1e-5)
    np.testing.assert_allclose(grad, 2 * (norm - 1) * np.asarray(w) / norm, rtol=1e-4, atol=1e-7)
    # Quadratic critic sum(x^2) / 2: the gradient is the interpolate itself.
    gp = picard.gradient_penalty(lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2, 3)), real, fake, alpha)
    a = np.asarray(alpha)
    x_hat = (a * np.asarray(real) + (1 - a) * np.asarray(fake)).reshape(3, -1)
    assert gp == pytest.approx(np.mean((np.linalg.norm(x_hat, axis=1) - 1) ** 2), rel=1e-5)


# --- the training step ----------------------------------------------------------------------
def _batch(seed: int = 0, n: int = 2) -> dict:
    image = np.random.default_rng(seed).uniform(-1, 1, size=(n, WINDOW, WINDOW, 1))
    return {"image": jnp.asarray(image, jnp.float32)}


def _changed(a, b) -> bool:
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _quirk_config(quirk: bool) -> ml_collections.ConfigDict:
    # The adversarial weight and learning rate are raised so that the critics' extra gradient
    # term moves their parameters well above float rounding.
    return make_config(
        **{
            "picard.critic_gets_generator_grad": quirk,
            "picard.gan_loss_alpha": 1.0,
            "optim.learning_rate": 1e-3,
        }
    )


@pytest.fixture(scope="module")
def run(state):
    """Five steps of the faithful method: its jitted step, every state and the metrics."""
    step = jax.jit(picard.create(_quirk_config(True)).train_step)
    states, metrics = [state], []
    for i in range(5):
        new, out = step(states[-1], _batch(i), jax.random.fold_in(jax.random.key(6), i))
        states.append(new)
        metrics.append({k: float(v) for k, v in out.items()})
    return step, states, metrics


def test_train_step_updates_generator_every_n_critic_steps(run):
    _, states, metrics = run
    for i in range(5):
        before, after = states[i], states[i + 1]
        assert int(after["step"]) == i + 1
        assert _changed(before["d_local"], after["d_local"])
        assert _changed(before["d_global"], after["d_global"])
        # Iterations count from 1: the generator moves on the 5th only.
        assert _changed(before["g"], after["g"]) == (i == 4)
        assert all(np.isfinite(v) for v in metrics[i].values())
        assert metrics[i]["loss"] == pytest.approx(
            metrics[i]["wgan_d"] + 10.0 * metrics[i]["gp"], rel=1e-5
        )


def test_conditional_and_selected_generator_steps_agree(run):
    """The accelerator path (`lax.cond`) gives the CPU path's (compute and select) states."""
    _, states, _ = run
    method = picard.create(_quirk_config(True))
    method.select_generator_step = False
    step = jax.jit(method.train_step)
    for i in range(5):  # each step from the same state: the two agree to float rounding
        state, _ = step(states[i], _batch(i), jax.random.fold_in(jax.random.key(6), i))
        assert _max_diff(state, states[i + 1]) < 1e-5


def _max_diff(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.abs(x - y).max()) for x, y in leaves)


def test_quirk_changes_the_critic_update_on_generator_steps_only(run):
    step, states, _ = run
    plain = jax.jit(picard.create(_quirk_config(False)).train_step)
    batch, key = _batch(5), jax.random.key(7)
    # From one state (Adam moments from 4 steps), once as iteration 5 (generator step) and
    # once relabelled as iteration 6 (critic only).
    for number, generator_step in ((4, True), (5, False)):
        start = {**states[4], "step": jnp.asarray(number, jnp.int32)}
        with_quirk, without = step(start, batch, key)[0], plain(start, batch, key)[0]
        assert _max_diff(with_quirk["g"], without["g"]) < 1e-6
        assert _changed(start["g"], with_quirk["g"]) == generator_step
        for critic in ("d_local", "d_global"):
            diff = _max_diff(with_quirk[critic], without[critic])
            assert diff > 1e-4 if generator_step else diff < 1e-6


def test_generator_losses_without_dropout_against_numpy(method, state, run):
    """l1, ae and g_loss of a step from the deterministic generator and the sheet's formulas."""
    batch, key = _batch(7), jax.random.key(8)
    _, metrics = run[0](state, batch, key)  # gan_loss_alpha 1
    metrics = {k: float(v) for k, v in metrics.items()}
    gt = np.asarray(batch["image"])
    top, left, hole = picard.training_masks(jax.random.split(key, 3)[0], 2, WINDOW, BOX, 8, True)
    top, left, hole = int(top[0]), int(left[0]), np.asarray(hole)
    x = gt * (1 - hole)
    # Dropout is off in training: the step's generator is the plain (sample=False) forward.
    x1, x2 = map(
        np.asarray,
        jax.jit(partial(method.generator.apply, sample=False))(state["g"], x, hole),
    )
    sd = np.array(
        [
            [max(0.9 ** min(i, BOX - i), 0.9 ** min(j, BOX - j)) for j in range(BOX)]
            for i in range(BOX)
        ]
    )[None, :, :, None]

    def local(im):
        return im[:, top : top + BOX, left : left + BOX]

    def inpaint(out):
        return out * hole + x * (1 - hole)

    l1 = 1.2 * np.mean(np.abs(sd * (local(inpaint(x1)) - local(gt)))) + np.mean(
        np.abs(sd * (local(inpaint(x2)) - local(gt)))
    )
    ae = 1.2 * np.mean(np.abs((x1 - gt) * (1 - hole))) + np.mean(np.abs((x2 - gt) * (1 - hole)))
    assert metrics["l1"] == pytest.approx(l1, rel=1e-4)
    assert metrics["ae"] == pytest.approx(ae, rel=1e-4)
    d_local = method.local_critic.apply(state["d_local"], jnp.asarray(local(inpaint(x2))))
    d_global = method.global_critic.apply(state["d_global"], jnp.asarray(inpaint(x2)))
    wgan_g = -float(np.mean(d_local)) - float(np.mean(d_global))
    assert metrics["wgan_g"] == pytest.approx(wgan_g, rel=1e-4, abs=1e-6)
    assert metrics["g_loss"] == pytest.approx(1.2 * l1 + 1.2 * ae + wgan_g, rel=1e-4)


# --- window scores --------------------------------------------------------------------------
def _windows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(n, WINDOW, WINDOW, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def completions(method, score_state):
    windows = _windows(9, 4)
    key = jax.random.key(10)
    return windows, key, np.asarray(jax.jit(method.completions)(score_state, windows, key))


def test_completions_are_the_dropout_generator_with_each_windows_keys(
    method, score_state, completions
):
    windows, key, samples = completions
    assert samples.shape == (4, M, WINDOW, WINDOW, 1)
    mask = method.test_mask()
    lo, hi = (WINDOW - BOX) // 2, (WINDOW + BOX) // 2
    assert mask.sum() == BOX * BOX and mask[lo:hi, lo:hi].all()

    @jax.jit
    def direct(x, k):  # one window, one key, dropout on
        _, x2 = method.generator.apply(
            score_state["g"], x[None] * (1 - mask), mask[None], sample=True, rngs={"dropout": k}
        )
        return x2[0] * mask + x * (1 - mask)

    for n in (0, 3):
        keys = jax.random.split(jax.random.fold_in(key, n), M)
        for m in range(M):
            np.testing.assert_allclose(samples[n, m], direct(windows[n], keys[m]), atol=1e-5)
    # Outside the hole every completion is its window; inside, the M completions differ.
    outside = np.broadcast_to(mask == 0, samples.shape)
    np.testing.assert_array_equal(
        samples[outside], np.broadcast_to(windows[:, None], samples.shape)[outside]
    )
    centres = samples[:, :, lo:hi, lo:hi]
    assert centres.std(axis=1).mean() > 1e-3


def test_window_scores_against_numpy(method, score_state, completions):
    windows, key, samples = completions
    scores = {k: np.asarray(v) for k, v in method.window_scores(score_state, windows, key).items()}
    assert set(scores) == set(picard.METRICS)
    lo, hi = (WINDOW - BOX) // 2, (WINDOW + BOX) // 2
    truth, centres = windows[:, lo:hi, lo:hi], samples[:, :, lo:hi, lo:hi]
    image = np.linalg.norm((truth[:, None] - centres).reshape(4, M, -1), axis=-1)
    features = partial(method.local_critic.apply, score_state["d_local"], method="features")
    f_truth = np.asarray(features(truth)).reshape(4, -1)
    f_centres = np.asarray(features(centres.reshape(4 * M, BOX, BOX, 1))).reshape(4, M, -1)
    feature = np.linalg.norm(f_truth[:, None] - f_centres, axis=-1)
    for space, d in (("image", image), ("feature", feature)):
        ordered = np.sort(d, axis=1)
        # M = 4: torch.median's lower middle value, not the mean of the two middle ones.
        assert (ordered[:, 2] - ordered[:, 1] > 1e-4 * ordered[:, 1]).all()
        np.testing.assert_allclose(scores[f"MCD_{space}"], d.min(1), rtol=1e-4)
        np.testing.assert_allclose(scores[f"MeanCD_{space}"], d.mean(1), rtol=1e-4)
        np.testing.assert_allclose(scores[f"MedCD_{space}"], ordered[:, 1], rtol=1e-4)


def test_reduce_distances_lower_median():
    d = jnp.array([[4.0, 1.0, 3.0, 2.0], [5.0, 5.0, 1.0, 9.0]])
    np.testing.assert_allclose(picard.reduce_distances(d, "MedCD"), [2.0, 5.0])
    np.testing.assert_allclose(picard.reduce_distances(d[:, :3], "MedCD"), [3.0, 5.0])
    np.testing.assert_allclose(picard.reduce_distances(d, "MCD"), [1.0, 1.0])
    np.testing.assert_allclose(picard.reduce_distances(d, "MeanCD"), [2.5, 5.0])


# --- dense heatmaps -------------------------------------------------------------------------
def _image(height: int, width: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(height, width, 1)).astype(np.float32)


def test_dense_map_geometry(method, score_state):
    image, key = _image(96, 80), jax.random.key(12)
    grid = method.grid_scores(score_state, image, key)
    assert {k: v.shape for k, v in grid.items()} == {k: (3, 2) for k in picard.METRICS}
    # Window (i, j) at (16 i, 16 j), mapped with x * 2 - 1, keyed by its row-major index.
    corners = [(r, c) for r in (0, 16, 32) for c in (0, 16)]
    windows = np.stack([image[r : r + WINDOW, c : c + WINDOW] for r, c in corners]) * 2 - 1
    first = method.window_scores(score_state, windows[:4], key)["MCD_feature"]
    padded = np.concatenate([windows[4:], windows[:2]])
    last = method.window_scores(score_state, padded, key, 4)["MCD_feature"][:2]
    expected = np.concatenate([first, last]).reshape(3, 2)
    np.testing.assert_allclose(grid["MCD_feature"], expected, rtol=1e-5)
    dense = method.dense_map(score_state, image, key)
    assert dense.shape == (96, 80) and dense.dtype == np.float32
    np.testing.assert_allclose(
        dense, heatmap.place(grid["MCD_image"], 96, 80, WINDOW, 16, "centred"), rtol=1e-6
    )
    # H == W == window: one window, a constant map.
    one = method.dense_map(score_state, image[:64, :64], key)
    np.testing.assert_allclose(one, grid["MCD_image"][0, 0], rtol=1e-5)


@pytest.mark.parametrize("window_batch", [1, 7])
def test_dense_map_does_not_depend_on_chunking(method, score_state, window_batch):
    image, key = _image(96, 80, seed=13), jax.random.key(14)
    other = picard.create(make_config(**{"picard.window_batch": window_batch}))
    np.testing.assert_allclose(
        other.dense_map(score_state, image, key),
        method.dense_map(score_state, image, key),
        rtol=1e-5,
    )


def test_dense_map_rejects_bad_images(method, score_state):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"\(63x80\) is smaller than PICARD's 64x64 window"):
        method.dense_map(score_state, np.zeros((63, 80, 1)), key)
    with pytest.raises(ValueError, match=r"\[H, W, 1\] image .* got shape \(96, 80, 3\)"):
        method.dense_map(score_state, np.zeros((96, 80, 3)), key)


def test_score_is_the_dense_map_of_each_image(method, score_state):
    images = np.stack([_image(80, 80, seed=15), _image(80, 80, seed=16)])
    key = jax.random.key(17)
    out = jax.jit(method.score)(score_state, {"image": jnp.asarray(images * 2 - 1)}, key)
    assert out["map"].shape == (2, 80, 80) and out["score"].shape == (2,)
    for b in range(2):
        dense = method.dense_map(score_state, images[b], jax.random.fold_in(key, b))
        np.testing.assert_allclose(out["map"][b], dense, rtol=1e-5)
    np.testing.assert_allclose(out["score"], np.asarray(out["map"]).max((1, 2)))
    np.testing.assert_array_equal(method.image_scores(out), out["score"])
