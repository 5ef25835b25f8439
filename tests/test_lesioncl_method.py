"""Lesion-based CL and DR grading in the shared loop: steps, linear probe, selection, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override as _override

from configs import dr_grading as grading_configs
from configs import lesioncl as lesioncl_configs
from jaxad import checkpoint, methods


def _set(c, **overrides):
    return _override(c, overrides)


def _tiny(c):
    """ResNet-18 at width 4 on 32 px images: small and quick to compile."""
    return _set(
        c,
        **{
            "model.depth": 18,
            "model.width": 4,
            "model.fast_conv_grad": False,
            "data.image_size": 32,
            "batch_size": 4,
        },
    )


def _batch(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((n, 3, 4), np.float32)
    boxes[:, 0] = [10, 12, 14, 15]
    boxes[:, 1] = [2, 3, 6, 9]
    return {
        "image": jnp.asarray(rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)),
        "boxes": jnp.asarray(boxes),
        "num_boxes": jnp.asarray([2, 1, 2, 1], jnp.int32)[:n],
        "grade": jnp.asarray(np.arange(n) % 5, jnp.int32),
        "valid": jnp.ones((n,), bool),
    }


def _lesioncl(**overrides):
    c = _tiny(lesioncl_configs.get_config("demo"))
    return methods.create(_set(c, **{"lcl.patch_size": 16, "lcl.steps_per_epoch": 2, **overrides}))


def _grader(variant="demo", **overrides):
    c = _tiny(grading_configs.get_config(variant))
    return methods.create(_set(c, **{"grading.steps_per_epoch": 2, **overrides}))


def test_pretraining_step_learns_and_validates():
    method = _lesioncl()
    batch = _batch()
    state = method.init(jax.random.key(0), batch)
    step = jax.jit(method.train_step)
    new, metrics = step(state, batch, jax.random.key(1))
    assert np.isfinite(metrics["loss"]) and set(new) == set(state)
    assert 0.0 < float(metrics["loss"]) < 20.0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["net"], new["net"])
    assert all(jax.tree.leaves(changed["params"]))  # every parameter gets a gradient
    # The per-epoch cosine: constant within an epoch (2 steps), lower in the next.
    lr = [float(method.schedule(jnp.asarray(s))) for s in (0, 1, 2)]
    assert lr[0] == lr[1] > lr[2]
    per = jax.jit(method.eval_loss)(
        state, {**batch, "valid": jnp.asarray([1, 1, 1, 0], bool)}, jax.random.key(2)
    )
    assert per.shape == (4,) and per[3] == 0.0 and np.all(np.isfinite(per))


def test_whole_image_views_need_no_boxes():
    method = _lesioncl(**{"lcl.views": "whole", "data.boxes": ""})
    batch = {k: v for k, v in _batch().items() if k not in ("boxes", "num_boxes")}
    p1, p2 = method.pairs(jax.random.key(0), batch)
    assert p1.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(p1, p2)  # the views differ by their augmentations only


@pytest.mark.parametrize("variant", ["demo", "demo_linear"])
def test_grader_step_finetune_and_linear_probe(variant):
    method = _grader(variant)
    batch = _batch()
    state = method.init(jax.random.key(0), batch)
    new, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(metrics["loss"])
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["net"], new["net"])
    assert all(jax.tree.leaves(moved["params"]["fc"]))
    backbone = jax.tree.leaves(moved["params"]["backbone"]) + jax.tree.leaves(
        moved["batch_stats"]["backbone"]
    )
    if variant == "demo_linear":  # frozen backbone and statistics: only fc (and the
        assert not any(backbone)  # statistics of its feature standardisation) learns
        assert all(jax.tree.leaves(moved["batch_stats"]["probe_norm"]))
    else:
        assert all(jax.tree.leaves(moved["params"]["backbone"])) and any(backbone)
    out = jax.jit(method.score)(state, batch, jax.random.key(0))
    assert out["grade_pred"].shape == (4,)


def test_grader_selection_by_kappa_and_start_from_pretraining():
    method = _grader()
    summary = method.validation_summary(
        {"grade": np.array([0, 1, 2, 3, 4, 4]), "pred": np.array([0.1, 1.2, 1.9, 3.4, 3.6, 2.0])}
    )
    assert summary["loss"] == -summary["kappa"] and 0.5 < summary["kappa"] < 1.0
    batch = _batch()
    grader = method.init(jax.random.key(0), batch)
    pre = _lesioncl(**{"lcl.patch_size": 32}).init(jax.random.key(5), batch)
    started = checkpoint.transfer_weights(grader, pre)
    same = jax.tree.map(
        lambda a, b: bool(jnp.all(a == b)),
        started["net"]["params"]["backbone"],
        pre["net"]["params"]["backbone"],
    )
    assert all(jax.tree.leaves(same))
    assert started["net"]["params"]["fc"] is not None


def test_configs_and_bad_inputs():
    for variant in lesioncl_configs.VARIANTS:
        c = lesioncl_configs.get_config(None if variant == "paper" else variant)
        assert c.method == "lesioncl" and (c.lcl.views == "whole") == ("simclr" in variant)
    for variant in grading_configs.VARIANTS:
        c = grading_configs.get_config(None if variant == "finetune" else variant)
        assert c.grading.mode == ("linear" if "linear" in variant else "finetune")
    with pytest.raises(ValueError, match="unknown variant"):
        lesioncl_configs.get_config("fast")
    with pytest.raises(ValueError, match="lcl.views"):
        _lesioncl(**{"lcl.views": "patches"})
    with pytest.raises(ValueError, match="data.boxes"):
        _lesioncl(**{"data.boxes": ""})
    with pytest.raises(ValueError, match="data.mean"):
        _lesioncl(**{"data.mean": (0.5, 0.5, 0.5)})
    with pytest.raises(ValueError, match="grading.mode"):
        _grader(**{"grading.mode": "probe"})


def test_batch_normalised_head_option():
    """model.head_norm='batch': the head's hidden layer normalised by the batch (padding rows
    left out), a step lowers the loss, the original has no counterpart to export to, and a
    typo is a one-line error."""
    method = _lesioncl(**{"model.head_norm": "batch"})
    state = method.init(jax.random.key(0), _batch())
    assert set(state["net"]["params"]["head"]) == {"dense1", "dense1_norm", "dense2"}
    batch = _batch()
    losses, step = [], jax.jit(method.train_step)
    for _ in range(4):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0], losses
    padded = {**batch, "valid": jnp.asarray([True, True, True, False])}
    moved = {**padded, "image": padded["image"].at[3].set(1.0 - padded["image"][3])}
    a = method.eval_loss(state, padded, jax.random.key(2))
    b = method.eval_loss(state, moved, jax.random.key(2))
    np.testing.assert_allclose(np.asarray(a)[:3], np.asarray(b)[:3], rtol=1e-5)
    from jaxad.convert import lesioncl as convert_lesioncl

    with pytest.raises(ValueError, match=r"^model.head_norm='batch': LCL's head has no"):
        convert_lesioncl.networks(method.config)
    with pytest.raises(ValueError, match=r"^config.model.head_norm='bn' is not one of"):
        _lesioncl(**{"model.head_norm": "bn"})


def test_cpu_ynnpack_option_compiles_xla_kernels():
    """The ResNet configs compile with XLA's own CPU dots and convolutions
    (`model.cpu_ynnpack=False`): no YNNPACK fusion where jaxlib's default has one, the same
    values to rounding; other backends and the other methods' configs get no compiler options."""
    from configs import lesion2void

    lcl = methods.create(lesioncl_configs.get_config("demo"))
    grader = methods.create(grading_configs.get_config("demo_linear"))
    options = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    assert methods.compiler_options(lcl, "cpu") == methods.compiler_options(grader, "cpu")
    assert methods.compiler_options(lcl, "cpu") == options
    assert methods.compiler_options(lcl, "tpu") is None
    assert methods.compiler_options(methods.create(lesion2void.get_config()), "cpu") is None

    def f(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y.reshape(-1, 8) @ w[0, 0].T

    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))
    plain, ours = jax.jit(f), methods.jit(lcl, f)
    assert "ynn_fusion" not in ours.lower(x, w).compile().as_text()
    np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-4, atol=1e-3)
    if "ynn_fusion" not in plain.lower(x, w).compile().as_text():
        pytest.skip("this jaxlib fuses nothing into YNNPACK by default: the option is moot")
