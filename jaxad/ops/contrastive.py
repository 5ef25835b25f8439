"""The supervised contrastive loss (Khosla et al. 2020), which LCL trains with and no labels.

For N = V x B embeddings, V views of B items stacked view by view (all of view 1, then all of
view 2, ...), every embedding is an anchor ("contrast_mode all"). The positives P(i) of anchor
i are the other embeddings with its label (without labels: the other views of its own item);
the denominator runs over all N - 1 other embeddings:

    l_i = -(temperature / base_temperature) / |P(i)| sum_{p in P(i)}
          log( exp(z_i . z_p / temperature) / sum_{a != i} exp(z_i . z_a / temperature) )

and the loss is the mean of l_i. With two views and no labels, P(i) is the other view of item
i and this is SimCLR's NT-Xent (`jaxad.methods.simclr.nt_xent_per_example`), which is how LCL
calls it (labels=None, temperature = base_temperature = 0.07). The embeddings are used as given:
LCL's projection head L2-normalises them (`jaxad.models.resnet.ProjectionHead`).

Each row's logits are shifted by their maximum before the exponentials (inside `logsumexp`),
as the original does for stability; the shift cancels in the ratio. A `valid` mask [B] drops
padded items everywhere: as anchors, positives and negatives. Pure `jnp`, shapes static, so it
runs under `jit`, `grad` and sharding (the [N, N] similarity matrix is gathered whole).
"""

import jax
import jax.numpy as jnp


def _views(features: jax.Array, n_views: int) -> jax.Array:
    """[V, B, D] from [V B, D] (view-major rows) or SupCon's [B, V, D]."""
    if features.ndim == 3:
        return jnp.swapaxes(features, 0, 1)
    if features.ndim != 2 or features.shape[0] % n_views:
        raise ValueError(
            f"features must be [B, V, D] or [V * B, D] with V = n_views = {n_views}, "
            f"got shape {features.shape}."
        )
    return features.reshape(n_views, features.shape[0] // n_views, features.shape[1])


def supcon_loss_per_example(
    features: jax.Array,
    labels: jax.Array | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    valid: jax.Array | None = None,
    n_views: int = 2,
) -> jax.Array:
    """Each item's share of the loss: the mean of its V anchors' l_i, [B] (0 where not valid).

    `features`: [V * B, D] with rows view by view (view-1 batch, then view-2 batch), or [B, V, D]
    as SupCon takes them. `labels`: [B] integer classes (None: each item is its own class).
    `valid`: [B] bool, False for padding rows. The mean of the result over the valid items is
    `supcon_loss`.
    """
    z = _views(features, n_views).astype(jnp.float32)
    v, b, d = z.shape
    z = z.reshape(v * b, d)
    logits = z @ z.T / temperature
    valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
    item = jnp.tile(jnp.arange(b), v)
    keep = valid[item]
    classes = item if labels is None else jnp.asarray(labels)[item]
    others = ~jnp.eye(v * b, dtype=bool) & keep[None, :]
    positive = others & (classes[:, None] == classes[None, :])
    masked = jnp.where(others, logits, -jnp.inf)
    # A row with no other valid embedding (padding only) gets a finite dummy, keeping NaN out of
    # the gradients; its anchor is dropped below.
    masked = jnp.where(others.any(axis=1, keepdims=True), masked, 0.0)
    log_denominator = jax.nn.logsumexp(masked, axis=1)
    log_prob = logits - log_denominator[:, None]
    n_positive = positive.sum(axis=1)
    mean_log_prob = jnp.where(positive, log_prob, 0.0).sum(axis=1) / jnp.maximum(n_positive, 1)
    anchor = -(temperature / base_temperature) * mean_log_prob
    # An anchor without positives (only possible when padding removed them) adds nothing.
    anchor = jnp.where(keep & (n_positive > 0), anchor, 0.0)
    return anchor.reshape(v, b).mean(axis=0)


def supcon_loss(
    features: jax.Array,
    labels: jax.Array | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    *,
    valid: jax.Array | None = None,
    n_views: int = 2,
) -> jax.Array:
    """The supervised contrastive loss (scalar), mean over the valid anchors; see the module
    docstring and `supcon_loss_per_example` for the arguments."""
    per_item = supcon_loss_per_example(
        features,
        labels,
        temperature=temperature,
        base_temperature=base_temperature,
        valid=valid,
        n_views=n_views,
    )
    if valid is None:
        return per_item.mean()
    count = jnp.asarray(valid).astype(jnp.float32).sum()
    return per_item.sum() / jnp.maximum(count, 1.0)
