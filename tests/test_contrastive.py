"""The supervised contrastive loss (`jaxad.ops.contrastive`) against a loop over anchors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxad.methods.simclr import nt_xent_per_example
from jaxad.ops.contrastive import supcon_loss, supcon_loss_per_example


def _unit(rng, n, d):
    z = rng.normal(size=(n, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def reference(features, labels=None, temperature=0.07, base_temperature=0.07, valid=None):
    """SupCon by its definition, anchor by anchor, in float64: [V B, D] view-major rows."""
    z = np.asarray(features, np.float64)
    n = z.shape[0]
    b = n // 2
    item = np.arange(n) % b
    classes = item if labels is None else np.asarray(labels)[item]
    keep = np.ones(b, bool) if valid is None else np.asarray(valid)
    losses = []
    for i in range(n):
        if not keep[item[i]]:
            continue
        others = [a for a in range(n) if a != i and keep[item[a]]]
        denominator = sum(np.exp(z[i] @ z[a] / temperature) for a in others)
        positives = [p for p in others if classes[p] == classes[i]]
        logs = [np.log(np.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]
        losses.append(-(temperature / base_temperature) * np.mean(logs))
    return np.mean(losses)


def test_unlabelled_loss_is_nt_xent_by_definition():
    rng = np.random.default_rng(0)
    z = _unit(rng, 12, 8)
    got = supcon_loss(jnp.asarray(z))
    np.testing.assert_allclose(got, reference(z), rtol=1e-5)
    # Another temperature, and base_temperature scaling the loss.
    got = supcon_loss(jnp.asarray(z), temperature=0.5, base_temperature=0.25)
    np.testing.assert_allclose(got, reference(z, None, 0.5, 0.25), rtol=1e-5)


def test_labels_with_repeated_classes():
    rng = np.random.default_rng(1)
    z = _unit(rng, 16, 5)
    labels = np.array([0, 1, 0, 2, 1, 1, 3, 0])
    got = supcon_loss(jnp.asarray(z), jnp.asarray(labels))
    np.testing.assert_allclose(got, reference(z, labels), rtol=1e-5)
    # Distinct labels are the unlabelled loss.
    np.testing.assert_allclose(
        supcon_loss(jnp.asarray(z), jnp.arange(8)), supcon_loss(jnp.asarray(z)), rtol=1e-6
    )


def test_views_layout_equals_stacked_rows():
    """SupCon's [B, V, D] input is the same loss as view-major [V B, D] rows."""
    rng = np.random.default_rng(2)
    z = _unit(rng, 10, 4)
    views = np.stack([z[:5], z[5:]], axis=1)
    labels = np.array([1, 0, 1, 2, 0])
    np.testing.assert_allclose(
        supcon_loss(jnp.asarray(views), jnp.asarray(labels)),
        supcon_loss(jnp.asarray(z), jnp.asarray(labels)),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="n_views"):
        supcon_loss(jnp.zeros((7, 4)))


def test_equals_the_simclr_nt_xent_with_padding():
    rng = np.random.default_rng(3)
    z1, z2 = _unit(rng, 6, 8), _unit(rng, 6, 8)
    valid = np.array([True, True, False, True, True, False])
    for mask in (None, valid):
        ours = supcon_loss_per_example(
            jnp.concatenate([z1, z2]), temperature=0.07, valid=None if mask is None else mask
        )
        simclr = nt_xent_per_example(
            jnp.asarray(z1), jnp.asarray(z2), 0.07, None if mask is None else jnp.asarray(mask)
        )
        np.testing.assert_allclose(ours, simclr, rtol=1e-5, atol=1e-6)
    # Padding is left out everywhere: the loss is that of the valid rows alone.
    z = np.concatenate([z1, z2])
    labels = np.array([0, 1, 0, 0, 1, 2])
    got = supcon_loss(jnp.asarray(z), jnp.asarray(labels), valid=jnp.asarray(valid))
    np.testing.assert_allclose(got, reference(z, labels, valid=valid), rtol=1e-5)
    kept = np.concatenate([z1[valid], z2[valid]])
    np.testing.assert_allclose(got, reference(kept, labels[valid]), rtol=1e-5)


def test_jit_and_gradients_stay_finite_with_only_padding():
    rng = np.random.default_rng(4)
    z = jnp.asarray(_unit(rng, 8, 4))
    valid = jnp.array([True, False, False, False])
    loss, grad = jax.jit(jax.value_and_grad(lambda f: supcon_loss(f, valid=valid)))(z)
    assert np.isfinite(loss) and np.isfinite(np.asarray(grad)).all()
    loss, grad = jax.value_and_grad(lambda f: supcon_loss(f, valid=jnp.zeros(4, bool)))(z)
    assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all()
