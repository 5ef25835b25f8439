"""MorphAEus in the shared loop: schedule, losses, BatchNorm modes, scoring, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override

from configs import morphaeus as morphaeus_configs
from jaxad import methods
from jaxad.methods import morphaeus
from jaxad.ops import deform


def _config(**overrides):
    c = morphaeus_configs.get_config()
    c.data.name = "folder"
    c.batch_size = 2
    c.model.vgg_width = 4
    c.model.widths = (4, 4, 8, 8)  # 16 px images: small and quick to compile
    c.model.fast_conv_grad = False
    c.morphaeus.steps_per_epoch = 3
    c.morphaeus.warmup_epochs = 1
    return override(c, overrides)


def _batch(n=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, (n, size, size, 1)).astype(np.float32)
    return {"image": jnp.asarray(x), "valid": jnp.ones((n,), bool)}


def test_beta_ramps_per_epoch_and_the_morph_terms_start_after_the_warm_up():
    assert float(morphaeus.beta_at(jnp.float32(0), 3.0, 200)) == pytest.approx(1e-3)
    assert float(morphaeus.beta_at(jnp.float32(11), 3.0, 200)) == pytest.approx(0.165)
    assert float(morphaeus.beta_at(jnp.float32(500), 3.0, 200)) == pytest.approx(3.0)
    method = methods.create(_config())  # 3 steps per epoch, warm-up 1 epoch
    on = [float(method.schedule(jnp.int32(s))[1]) for s in range(9)]
    assert on == [0, 0, 0, 0, 0, 0, 1, 1, 1]  # epoch > 1 from step 6
    epochs = [int(method.schedule(jnp.int32(s))[0]) for s in range(9)]
    assert epochs == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_losses_are_the_originals_terms():
    method = methods.create(_config())
    state = method.init(jax.random.key(0), _batch())
    x = _batch()["image"]
    out, _ = jax.jit(lambda v, x: method._apply(method.net, v, x, train=True))(state["net"], x)
    losses = jax.jit(method.losses, static_argnums=(3,))
    terms = losses(out, x, state["vgg"]["params"], 0.05, jnp.int32(100))
    ncc = 0.5 * (
        deform.local_ncc_loss(x, out["warped"])
        + deform.local_ncc_loss(out["prior"], out["reversed"])
    )
    beta = morphaeus.beta_at(jnp.float32(100 // 3), 3.0, 200)
    expected = (
        jnp.mean(jnp.square(out["prior"] - x))
        + 0.05 * terms["perceptual"]
        + ncc
        + beta * deform.gradient_l2(out["velocity"])
    )
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-3)
    # Before the warm-up ends, only the reconstruction terms count.
    early = losses(out, x, state["vgg"]["params"], 0.05, jnp.int32(0))
    assert float(early["loss"]) == pytest.approx(float(early["mse"] + 0.05 * early["perceptual"]))


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_train_step_and_batchnorm_modes(bn_mode):
    method = methods.create(_config(**{"morphaeus.bn_mode": bn_mode, "morphaeus.alpha": 0.0}))
    batch = _batch()
    state = method.init(jax.random.key(0), batch)
    step = jax.jit(method.train_step)
    new, metrics = step(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and int(new["step"]) == 1
    stats_before = jax.tree.leaves(state["net"]["batch_stats"])
    stats_after = jax.tree.leaves(new["net"]["batch_stats"])
    moved = any(not np.allclose(a, b) for a, b in zip(stats_before, stats_after, strict=True))
    # The original's eval-mode training never moves the statistics; ordinary BN does.
    assert moved == (bn_mode == "train")
    changed = jax.tree.map(
        lambda a, b: bool(np.any(a != b)), state["net"]["params"], new["net"]["params"]
    )
    assert any(jax.tree.leaves(changed))
    # The deformer gets no gradient during the warm-up.
    deformer = [k for k in changed if "deform" in k.lower()]
    assert deformer and not any(jax.tree.leaves({k: changed[k] for k in deformer}))


def test_score_eval_loss_and_the_plain_variant():
    method = methods.create(_config(**{"morphaeus.train_plain": True}))
    batch = _batch()
    state = method.init(jax.random.key(0), batch)
    out = jax.jit(method.score)(state, batch, jax.random.key(0))
    assert out["map"].shape == (2, 16, 16) and out["plain_map"].shape == (2, 16, 16)
    np.testing.assert_allclose(out["score"], out["map"].mean(axis=(1, 2)), rtol=1e-6)
    loss = jax.jit(method.eval_loss)(state, batch, jax.random.key(0))
    assert loss.shape == (2,) and np.all(np.isfinite(loss))
    new, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert "plain_loss" in metrics and set(new) == set(state)
    plain = methods.create(morphaeus_configs.get_config("plain"))
    assert not plain.cfg.deform and plain.cfg.alpha == 0.0


def test_configs_and_bad_inputs():
    for variant in morphaeus_configs.VARIANTS:
        c = morphaeus_configs.get_config(None if variant == "paper" else variant)
        assert c.method == "morphaeus" and c.data.image_size == (64 if variant == "demo" else 128)
    with pytest.raises(ValueError, match="unknown variant"):
        morphaeus_configs.get_config("fast")
    with pytest.raises(ValueError, match="bn_mode"):
        methods.create(_config(**{"morphaeus.bn_mode": "eval"}))
    with pytest.raises(ValueError, match="data.channels=1"):
        methods.create(
            _config(**{"data.channels": 3, "data.mean": (0.0,) * 3, "data.std": (1.0,) * 3})
        )
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        method = methods.create(
            _config(
                **{"morphaeus.vgg_weights": "/nowhere/missing.safetensors", "model.vgg_width": 64}
            )
        )
        method.init(jax.random.key(0), _batch())


def test_panels_picture_the_warp_and_the_evaluator_writes_one_row_per_image(tmp_path):
    from jaxad import evals
    from jaxad.evals import panels

    method = methods.create(_config(**{"morphaeus.train_plain": True}))
    batch = _batch()
    state = method.init(jax.random.key(0), batch)
    out = jax.jit(method.panels)(state, batch, jax.random.key(0))
    assert sorted(out) == [
        "1 prior",
        "2 warped prior",
        "3 deformation",
        "4 residual_map",
        "5 plain AE residual_map",
    ]
    # The flow starts at about 0, so the warped grid is the grid itself.
    np.testing.assert_allclose(
        out["3 deformation"], morphaeus.grid_lines((2, 16, 16))[..., 0], atol=1e-3
    )
    picture = panels.row(
        {k: np.asarray(v[0]) for k, v in out.items()},
        np.zeros((16, 16, 1), np.uint8),
        np.ones((16, 16), np.float32),
    )
    assert picture.dtype == np.uint8 and picture.shape == (14 + 128, 7 * 128 + 6 * 2, 3)

    config = _config()
    evals.check(config, method)  # the paper config lists a panels evaluator
    assert config.evals.panels.type == "panels"
    result = evals.core.Result({}, [], [dict(id="a/b.png", label=1, panel=picture)])
    evals.core.write_reports(str(tmp_path), {"step": 0}, [("panels/", result)])
    assert (tmp_path / "overlays" / "panels" / "a_b_label1.png").is_file()


@pytest.mark.parametrize("trains", [True, False])
def test_morph_terms_reach_the_autoencoder_only_as_the_original(trains):
    method = methods.create(_config(**{"morphaeus.morph_trains_autoencoder": trains}))
    batch = _batch()
    state = method.init(jax.random.key(0), batch)
    x = batch["image"]

    def morph(params):
        out, _ = method._apply(method.net, {**state["net"], "params": params}, x, train=True)
        terms = method.losses(out, x, state["vgg"]["params"], 0.0, jnp.asarray(100))
        return terms["ncc"] + terms["smooth"]

    grads = jax.grad(morph)(state["net"]["params"])
    norm = {
        k: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(v))) for k, v in grads.items()
    }
    assert norm["deformer"] > 0
    assert (norm["encoder"] > 0 and norm["decoder"] > 0) == trains
    if not trains:
        assert norm["encoder"] == norm["decoder"] == 0.0


def test_a_detached_morphaeus_autoencoder_trains_as_the_plain_autoencoder():
    """With the morph terms on the deformer only, `prior_map` is a plain autoencoder's map."""
    cfg = {"morphaeus.morph_trains_autoencoder": False, "morphaeus.alpha": 0.0}
    method = methods.create(_config(**cfg))
    plain = methods.create(_config(**{**cfg, "morphaeus.deform": False}))
    batches = [_batch(seed=i) for i in range(8)]  # past the warm-up (6 steps)
    state = method.init(jax.random.key(0), batches[0])
    plain_state = plain.init(jax.random.key(0), batches[0])
    # The same autoencoder to start with: its parameters are a subtree of MorphAEus's.
    for part in ("encoder", "decoder"):
        plain_state["net"]["params"][part] = state["net"]["params"][part]
    plain_state["opt"] = plain.tx.init(plain_state["net"]["params"])
    step, plain_step = jax.jit(method.train_step), jax.jit(plain.train_step)
    for batch in batches:
        state, metrics = step(state, batch, jax.random.key(1))
        plain_state, _ = plain_step(plain_state, batch, jax.random.key(1))
    assert float(metrics["morph_on"]) == 1.0 and float(metrics["ncc"]) > 0
    out = jax.jit(method.score)(state, batches[0], jax.random.key(0))
    plain_out = jax.jit(plain.score)(plain_state, batches[0], jax.random.key(0))
    np.testing.assert_allclose(out["prior_map"], plain_out["map"], atol=1e-6)
    assert float(jnp.abs(out["map"] - out["prior_map"]).max()) > 0  # the warp moved something
    np.testing.assert_allclose(out["prior_map_score"], out["prior_map"].mean(axis=(1, 2)))
    pictures = jax.jit(method.panels)(state, batches[0], jax.random.key(0))
    np.testing.assert_allclose(pictures["5 unwarped residual_map"], out["prior_map"], atol=1e-6)
    # With the original's gradient path the autoencoder trains differently.
    coupled = methods.create(_config(**{**cfg, "morphaeus.morph_trains_autoencoder": True}))
    coupled_state = coupled.init(jax.random.key(0), batches[0])
    for batch in batches:
        coupled_state, _ = jax.jit(coupled.train_step)(coupled_state, batch, jax.random.key(1))
    coupled_out = jax.jit(coupled.score)(coupled_state, batches[0], jax.random.key(0))
    assert float(jnp.abs(coupled_out["prior_map"] - plain_out["map"]).max()) > 1e-5
