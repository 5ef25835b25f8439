"""Lesion2Void's losses, masking, step and 36-lattice residual against hand-checked values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fake_batch, tiny_config

from jaxad import methods
from jaxad.methods import lesion2void
from jaxad.ops import lattice


def test_reconstruction_loss_normalisations():
    pred = jnp.zeros((1, 2, 2, 1))
    target = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    weight = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2, 1)
    # Faithful: |err| on weighted pixels averaged over all 4 elements: (1 + 4) / 4.
    assert lesion2void.reconstruction_loss(pred, target, weight, "all") == pytest.approx(1.25)
    # Alternative: averaged over the weighted pixels only: (1 + 4) / 2.
    assert lesion2void.reconstruction_loss(pred, target, weight, "mask") == pytest.approx(2.5)


def test_lsgan_loss():
    logits = jnp.array([0.0, 1.0, 3.0])
    assert lesion2void.lsgan_loss(logits, 1.0) == pytest.approx((1 + 0 + 4) / 3)
    assert lesion2void.lsgan_loss(logits, 0.0) == pytest.approx((0 + 1 + 9) / 3)


def test_optimizer_is_adam_with_coupled_weight_decay():
    cfg = tiny_config("unused").optim
    tx = lesion2void.make_optimizer(cfg)
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
    # Coupled L2: the decay enters the gradient (g + wd * w = 1e-3), then Adam's first step is
    # -lr * sign: -1e-3, whatever the gradient's size.
    np.testing.assert_allclose(updates["w"], [-cfg.learning_rate], rtol=1e-4)


def test_masked_input_is_one_lattice_shared_by_batch_and_channels():
    method = methods.create(tiny_config("unused", **{"l2v.grid": 12, "l2v.patch": 4}))
    images = jnp.asarray(fake_batch(4, 32)["image"])
    noisy, mask = method.masked_input(jax.random.key(3), images)
    m = np.asarray(mask, bool)
    assert 0 < m.mean() < 0.5
    changed = np.asarray(noisy != images)
    np.testing.assert_array_equal(changed, np.broadcast_to(m[None, :, :, None], changed.shape))
    filled = np.asarray(noisy)[:, m, :]
    assert np.all(np.abs(filled) <= 1.0)
    np.testing.assert_array_equal(filled, np.broadcast_to(filled[:1, :, :1], filled.shape))


class _ZeroGenerator:
    def apply(self, variables, x, train):
        return jnp.zeros_like(x)


def test_residual_averages_36_lattices_dividing_by_36():
    """With a generator that outputs 0, the residual is |x| times coverage / 36 (not / coverage)."""
    config = tiny_config("unused", **{"l2v.grid": 48, "l2v.patch": 16, "l2v.test_step": 8})
    method = methods.create(config)
    method.generator = _ZeroGenerator()
    images = jnp.asarray(fake_batch(2, 64)["image"])
    state = {"g": {"params": {}, "batch_stats": {}}}
    res = np.asarray(method.residual(state, images, jax.random.key(0)))
    phases = lattice.test_phases(config.l2v.grid, config.l2v.test_step)
    assert phases.shape == (36,)
    cover = sum(
        np.asarray(
            lattice.lattice_mask(64, 64, *lattice.phase_to_offsets(p, 48), grid=48, patch=16)
        )
        for p in phases
    )
    np.testing.assert_allclose(res, np.abs(images) * cover[None, :, :, None] / 36, rtol=1e-6)
    assert (cover == 0).any()  # some pixels are never erased and score 0, as in the original


@pytest.mark.slow  # 60 optimisation steps: a short training run
def test_train_step_updates_both_networks_and_learns():
    lattice_12_4 = {"l2v.grid": 12, "l2v.patch": 4}  # a 48/16 lattice may miss a 32 px image
    # Without the adversarial term the step is plain L1 fitting, which must make progress.
    config = tiny_config("unused", **{"l2v.adv_weight": 0.0, "model.width": 8}, **lattice_12_4)
    method = methods.create(config)
    batch = {k: jnp.asarray(v) for k, v in fake_batch(8, 32).items()}
    # Smooth images: erased squares are predictable from their surroundings (noise is not).
    rows, cols = np.mgrid[:32, :32] / 32.0
    phase = np.random.default_rng(0).uniform(0, 6.28, (8, 1, 1, 3))
    batch["image"] = jnp.asarray(np.sin(3 * rows[None, :, :, None] + 2 * cols[..., None] + phase))
    state = method.init(jax.random.key(0), batch)
    step = jax.jit(method.train_step)
    first, rec = None, []
    for _ in range(60):
        new, metrics = step(state, batch, jax.random.key(1))  # the same lattice every step
        if first is None:
            first = new
        state = new
        rec.append(float(metrics["rec_loss"]))
    assert rec[0] > 0
    assert int(state["step"]) == 60
    for net in ("g", "d"):
        before = jax.tree.leaves(method.init(jax.random.key(0), batch)[net]["params"])
        after = jax.tree.leaves(state[net]["params"])
        assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    assert np.mean(rec[-5:]) < 0.5 * np.mean(rec[:5])  # it fits the erased pixels


def test_image_scores():
    config = tiny_config("unused")
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 1, 1] = 5.0
    maps[1, 7, 7] = 9.0  # outside the field of view below
    fov = np.zeros((2, 8, 8), np.float32)
    fov[:, :6, :6] = 1.0
    for kind, expected in (("max", [5.0, 0.0]), ("mean", [5.0 / 36, 0.0])):
        config.score.image_score = kind
        method = methods.create(config)
        method.residual = lambda state, images, key, m=maps: jnp.asarray(m)[..., None]
        out = method.score(None, {"image": None, "fov": jnp.asarray(fov)}, None)
        np.testing.assert_allclose(method.image_scores(jax.device_get(out)), expected, rtol=1e-6)
    config.score.image_score = "median"
    with pytest.raises(ValueError, match="score.image_score='median'"):
        methods.create(config)
