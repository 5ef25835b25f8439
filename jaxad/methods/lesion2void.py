"""Lesion2Void (ISBI 2022): reconstruct erased lattice patches of normal fundus images.

Training: a regular lattice of `patch` x `patch` squares (period `grid`, random global offset)
is replaced by U(-1, 1) noise; a U-Net reconstructs the image and is trained with L1 on the
erased field-of-view pixels plus a PatchGAN least-squares adversarial term (weight 0.1).
Scoring: the absolute residual inside the erased squares, averaged over the 36 test offsets,
is the pixel map; the image score is the original's post-processing (green channel, circle,
Otsu, connected components ranked 30-99, sum) computed on the host.

Faithful defaults, with the fixes as flags (see configs/lesion2void.py):
- one lattice offset and one noise map per batch, shared by all images and channels;
- the L1 is averaged over all elements, not over the masked ones (`loss_norm`);
- the FOV mask is not flipped with the image (`data.flip_fov`, handled by the pipeline);
- the discriminator's batch norm is in training mode in all three of its forward passes.

Precision (`model.dtype`, `jaxad.precision`): in bfloat16 the U-Net and the PatchGAN compute
in bfloat16; their outputs are cast to float32 before the L1 and the least-squares losses, the
residual maps and the image scores, and the batch norms' statistics are reduced in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxad import precision
from jaxad.methods.base import Method
from jaxad.models.patchgan import PatchGAN
from jaxad.models.unet import UNet
from jaxad.ops import conv, fundus_score, lattice


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with coupled L2 weight decay, as `torch.optim.Adam(weight_decay=...)`."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
    )


def reconstruction_loss(pred, target, weight, norm: str) -> jax.Array:
    """L1 on weighted pixels: mean over all elements (`all`, faithful) or over the weight."""
    err = jnp.abs(pred - target) * weight
    if norm == "all":
        return err.mean()
    return err.sum() / jnp.maximum(jnp.broadcast_to(weight, err.shape).sum(), 1.0)


def lsgan_loss(logits, target: float) -> jax.Array:
    return jnp.mean((logits - target) ** 2)


IMAGE_SCORES = ("postprocess", "max", "mean")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not one of {', '.join(choices)}.")


class Lesion2Void(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        _check_choice("l2v.loss_norm", config.l2v.loss_norm, ("all", "mask"))
        _check_choice("score.image_score", config.score.image_score, IMAGE_SCORES)
        self.cfg = config.l2v
        self.channels = config.data.channels
        # 'auto' is resolved here, once, for the backend the models are built on.
        fast = conv.resolve_fast_kernel_grad(config.model.fast_conv_grad)
        dtype = precision.model_dtype(config)
        self.generator = UNet(
            out_channels=config.data.channels,
            width=config.model.width,
            dtype=dtype,
            fast_conv_grad=fast,
        )
        self.discriminator = PatchGAN(
            width=config.model.disc_width, n_layers=3, dtype=dtype, fast_conv_grad=fast
        )
        self.g_opt = make_optimizer(config.optim)
        self.d_opt = make_optimizer(config.optim)
        self.score_cfg = config.score

    # --- state -------------------------------------------------------------------------------
    def init(self, key: jax.Array, batch: dict) -> dict:
        kg, kd = jax.random.split(key)
        x = batch["image"][:1]
        g = self.generator.init(kg, x, train=False)
        d = self.discriminator.init(kd, x, train=False)
        return {
            "step": jnp.zeros((), jnp.int32),
            "g": {"params": g["params"], "batch_stats": g["batch_stats"]},
            "d": {"params": d["params"], "batch_stats": d["batch_stats"]},
            "g_opt": self.g_opt.init(g["params"]),
            "d_opt": self.d_opt.init(d["params"]),
        }

    def inference_state(self, state: dict) -> dict:
        return {"step": state["step"], "g": state["g"]}

    # --- training ----------------------------------------------------------------------------
    def masked_input(self, key, images):
        """Erases one random lattice (shared by the batch) with U(-1, 1) noise."""
        kp, kn = jax.random.split(key)
        _, h, w, _ = images.shape
        row, col = lattice.phase_to_offsets(lattice.random_phase(kp, self.cfg.grid), self.cfg.grid)
        mask = lattice.lattice_mask(h, w, row, col, grid=self.cfg.grid, patch=self.cfg.patch)
        noise = jax.random.uniform(kn, (h, w), minval=-1.0, maxval=1.0)
        return lattice.fill_masked(images, mask, noise), mask

    def _disc(self, d_params, d_stats, x):
        out, upd = self.discriminator.apply(
            {"params": d_params, "batch_stats": d_stats}, x, train=True, mutable=["batch_stats"]
        )
        return precision.as_float32(out), upd["batch_stats"]

    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        x, fov = batch["image"], batch["fov"][..., None]
        noisy, mask = self.masked_input(key, x)
        weight = mask[None, :, :, None] * fov

        def generate(g_params):
            out, upd = self.generator.apply(
                {"params": g_params, "batch_stats": state["g"]["batch_stats"]},
                noisy,
                train=True,
                mutable=["batch_stats"],
            )
            return precision.as_float32(out), upd["batch_stats"]

        # One generator forward; its VJP is reused for the generator update after the critic's.
        fake, g_vjp, g_stats = jax.vjp(generate, state["g"]["params"], has_aux=True)

        # Discriminator step on real and detached fake (batch norm updated by each pass).
        def d_loss_fn(d_params):
            real_logits, stats = self._disc(d_params, state["d"]["batch_stats"], x)
            fake_logits, stats = self._disc(d_params, stats, jax.lax.stop_gradient(fake))
            loss = 0.5 * (lsgan_loss(real_logits, 1.0) + lsgan_loss(fake_logits, 0.0))
            return loss, stats

        (d_loss, d_stats), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            state["d"]["params"]
        )
        d_updates, d_opt = self.d_opt.update(d_grads, state["d_opt"], state["d"]["params"])
        d_params = optax.apply_updates(state["d"]["params"], d_updates)

        # Generator step against the updated critic (its third forward pass).
        def g_loss_fn(out):
            rec = reconstruction_loss(out, x, weight, self.cfg.loss_norm)
            logits, stats = self._disc(d_params, d_stats, out)
            adv = lsgan_loss(logits, 1.0)
            return rec + self.cfg.adv_weight * adv, (rec, adv, stats)

        (g_loss, (rec, adv, d_stats)), d_fake = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
        (g_grads,) = g_vjp(d_fake)
        g_updates, g_opt = self.g_opt.update(g_grads, state["g_opt"], state["g"]["params"])
        g_params = optax.apply_updates(state["g"]["params"], g_updates)
        new_state = {
            "step": state["step"] + 1,
            "g": {"params": g_params, "batch_stats": g_stats},
            "d": {"params": d_params, "batch_stats": d_stats},
            "g_opt": g_opt,
            "d_opt": d_opt,
        }
        metrics = {"loss": g_loss, "rec_loss": rec, "adv_loss": adv, "d_loss": d_loss}
        return new_state, metrics

    # --- scoring -----------------------------------------------------------------------------
    def residual(self, state: dict, images: jax.Array, key: jax.Array) -> jax.Array:
        """Mean over the test lattices of |x - G(x~)| inside each erased lattice: [B,H,W,C].

        The sum is divided by the number of test lattices (36), not by each pixel's coverage,
        as the original does; pixels no lattice reaches (the last rows/columns) stay 0.
        """
        _, h, w, _ = images.shape
        phases = lattice.test_phases(self.cfg.grid, self.cfg.test_step)
        variables = {"params": state["g"]["params"], "batch_stats": state["g"]["batch_stats"]}

        def one(args):
            i, phase = args
            row, col = lattice.phase_to_offsets(phase, self.cfg.grid)
            mask = lattice.lattice_mask(h, w, row, col, grid=self.cfg.grid, patch=self.cfg.patch)
            noise = jax.random.uniform(jax.random.fold_in(key, i), (h, w), minval=-1.0, maxval=1.0)
            out = self.generator.apply(
                variables, lattice.fill_masked(images, mask, noise), train=False
            )
            out = precision.as_float32(out)
            return jnp.abs(images - out) * mask[None, :, :, None]

        idx = jnp.arange(phases.shape[0])
        per_mask = jax.lax.map(one, (idx, phases), batch_size=self.cfg.score_chunk)
        return per_mask.sum(0) / phases.shape[0]

    def score(self, state: dict, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """The residual map (mean over channels) and the device-side image score.

        `score` is the maximum of the map inside the field of view (`image_score='max'`) or its
        mean there (`'mean'`); `'postprocess'` replaces it on the host (`image_scores`).
        """
        res = self.residual(state, batch["image"], key)
        pixel_map = res.mean(-1)
        inside = pixel_map * batch["fov"]
        if self.score_cfg.image_score == "max":
            score = inside.max((1, 2))
        else:
            score = inside.sum((1, 2)) / jnp.maximum(batch["fov"].sum((1, 2)), 1.0)
        return {"map": pixel_map, "score": score, "residual": res}

    def image_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The configured image score: the original post-processing, or the device-side one."""
        kind = self.score_cfg.image_score
        if kind == "postprocess":
            return fundus_score.postprocess_scores(
                outputs["residual"],
                channel=self.score_cfg.channel,
                radius=self.score_cfg.radius or None,
                rank_lo=self.score_cfg.rank_lo,
                rank_hi=self.score_cfg.rank_hi,
            )
        return outputs["score"]


def create(config: ml_collections.ConfigDict) -> Any:
    return Lesion2Void(config)
