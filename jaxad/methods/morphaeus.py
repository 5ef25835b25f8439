"""MorphAEus (Bercea et al., MICCAI 2023): a deformable autoencoder for chest X-rays.

An autoencoder reconstructs a pseudo-healthy prior x̂ of the input x; a deformer reads its
encoder and decoder features and predicts a velocity field v whose exponential warps the prior
to the input's anatomy, x̃ = x̂ ∘ exp(v). Normal anatomical variation is absorbed by the warp,
so the residual |x − x̃| is left with what a healthy chest cannot be deformed into.

Training (the original's MorphTrainer, fact sheet §2.3), per batch:

- L_rec = MSE(x̂, x) + α PL(x̂, x): on the unwarped prior; PL is the VGG19 perceptual loss at
  relu1_1, 2_1, 3_1, 4_1 on the grey image repeated to 3 channels without ImageNet
  normalisation (`jaxad.ops.perceptual.vgg_layers_mse`), the VGG19 frozen in the state;
- after `warmup_epochs` epochs (epoch > 10): + δ [½ (NCC(x, x̃) + NCC(x̂, x ∘ exp(−v)))
  + β R(v)], the symmetric local NCC (9 x 9) and the gradient-L2 smoothness of the velocity
  (`jaxad.ops.deform`), β = clip(β_max · epoch / max_iter, 1e-3, β_max) per epoch. Before the
  warm-up ends the morph terms are multiplied by 0: the deformer gets no gradient and its flow
  stays near its zero initialisation, as in the original;
- Adam 5e-4, no schedule; epochs are `steps_per_epoch` steps (0: training images // batch
  size, counted once and logged), so the schedule is in the original's units.

BatchNorm (`morphaeus.bn_mode`): the original trains with every BN layer in eval mode (its
trainer switches the model to eval when it copies it for testing and never back), so BN is a
learned affine over the initial statistics (mean 0, variance 1). 'frozen', the default,
reproduces that: it is what the published numbers come from and it makes the training step
independent of the batch composition. 'train' is ordinary BatchNorm (batch statistics in
training, running averages at test).

Scoring (§2.5): map |x − x̃| at the model's resolution, image score its mean; validation loss
½ [MSE(x̂, x) + MSE(x̃, x)] per image, with early stopping on it (`config.validation`).

`morphaeus.morph_trains_autoencoder` (True, as the original): the morph terms' gradients reach
the autoencoder through the warped prior and the features the deformer reads. False keeps them
to the deformer (`jaxad.models.morphaeus.MorphAEus.detach_autoencoder`): the local NCC is blind
to intensity and to the sign of the local correlation, so in short trainings its gradient, 20x
the MSE's, wiped the lung fields out of the prior (demo, 400 steps).

Precision (`model.dtype`, `jaxad.precision`): in bfloat16 the encoder, decoder and deformer
compute in bfloat16 with float32 BatchNorm statistics. What stays float32: the prior's sigmoid,
the velocity field, its integration (scaling and squaring) and both warps (sub-pixel
coordinates: bfloat16 has 8 bits of mantissa, a 128-pixel coordinate would be rounded to 0.5
px), the local NCC (windowed means and variances, whose differences cancel) and every loss term;
the VGG19 of the perceptual loss computes in bfloat16 and its features are compared in float32
(`jaxad.ops.perceptual.vgg_layers_mse`).

The plain autoencoder ("MorphAEus-woPLM") is the same network without the deformer
(`morphaeus.deform=False`, α = 0). `morphaeus.train_plain=True` trains one alongside in the
same run (own parameters and optimiser, the same batches), so that one evaluation compares
both: its map and score come out of `score` as `plain_map` / `plain_map_score`. When the morph
terms train the deformer only, MorphAEus's own autoencoder is already a plain autoencoder (its
parameters get exactly the plain loss's gradient; tested), so `prior_map` |x − x̂| is the plain
autoencoder's map from the very network that MorphAEus warps: the comparison isolates the
deformation, at half the training cost.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxad import precision, writers
from jaxad.methods.base import Method
from jaxad.models import vgg_weights
from jaxad.models.morphaeus import MorphAEus as Network
from jaxad.ops import conv, deform, perceptual

BN_MODES = ("frozen", "train")


def beta_at(epoch: jax.Array, beta_max: float, max_iter: float) -> jax.Array:
    """The smoothness weight of `epoch`: β_max · epoch / max_iter clipped to [1e-3, β_max]."""
    return jnp.clip(beta_max * epoch / max_iter, 1e-3, beta_max)


def mse(a: jax.Array, b: jax.Array, axes: tuple[int, ...] | None = None) -> jax.Array:
    return jnp.mean(jnp.square(a - b), axis=axes)


class MorphAEus(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.morphaeus
        if cfg.bn_mode not in BN_MODES:
            raise ValueError(f"config.morphaeus.bn_mode={cfg.bn_mode!r} is not one of {BN_MODES}.")
        if config.data.channels != 1:
            raise ValueError(
                f"MorphAEus reads grey images: set data.channels=1 (got {config.data.channels}); "
                "RGB files are converted to grey when read."
            )
        if tuple(config.data.mean) != (0.0,) or tuple(config.data.std) != (1.0,):
            raise ValueError(
                "MorphAEus works on [0, 1] images: set data.mean=(0.0,), data.std=(1.0,)."
            )
        self.config, self.cfg = config, cfg
        fast = conv.resolve_fast_kernel_grad(config.model.fast_conv_grad)
        self.bn_train = cfg.bn_mode == "train"
        widths = tuple(int(w) for w in config.model.widths)
        self.dtype = precision.model_dtype(config)
        kw = dict(widths=widths, bn_mode=cfg.bn_mode, dtype=self.dtype, fast_conv_grad=fast)
        detach = not cfg.morph_trains_autoencoder
        self.net = Network(deform=bool(cfg.deform), detach_autoencoder=detach, **kw)
        self.plain = Network(deform=False, **kw) if cfg.train_plain else None
        opt = config.optim
        self.tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
        self._steps_per_epoch = int(cfg.steps_per_epoch)

    # --- schedule ----------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        """`morphaeus.steps_per_epoch`, else training images // batch size (counted once)."""
        if not self._steps_per_epoch:
            from jaxad.data import pipeline

            n = pipeline.num_examples(self.config.data, self.config.data.train_split)
            self._steps_per_epoch = max(n // self.config.batch_size, 1)
            writers.log_info(
                "one epoch is %d steps (%d training images // batch %d): the morph terms start "
                "after epoch %d (step %d)",
                self._steps_per_epoch,
                n,
                self.config.batch_size,
                self.cfg.warmup_epochs,
                (self.cfg.warmup_epochs + 1) * self._steps_per_epoch,
            )
        return self._steps_per_epoch

    def schedule(self, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(epoch, morph on, β) of the update that follows `step` updates."""
        epoch = step // self.steps_per_epoch()
        on = (epoch > self.cfg.warmup_epochs).astype(jnp.float32)
        return epoch, on, beta_at(epoch.astype(jnp.float32), self.cfg.beta, self.cfg.max_iter)

    # --- state -------------------------------------------------------------------------------
    def _init_net(self, net, key: jax.Array, x: jax.Array) -> dict:
        variables = net.init(key, x, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def init(self, key: jax.Array, batch: dict) -> dict:
        k_net, k_plain = jax.random.split(key)
        x = jnp.zeros((1, *batch["image"].shape[1:3], 1), jnp.float32)
        net = self._init_net(self.net, k_net, x)
        vgg = {}  # no perceptual loss (α = 0 for both networks): no VGG19 at all
        if self.cfg.alpha or (self.plain is not None and self.cfg.plain_alpha):
            with jax.ensure_compile_time_eval():
                vgg = vgg_weights.vgg19_params_or_random(
                    self.cfg.vgg_weights, width=int(self.config.model.vgg_width)
                )
        state = {
            "step": jnp.zeros((), jnp.int32),
            "net": net,
            "opt": self.tx.init(net["params"]),
            "vgg": {"params": jax.tree.map(jnp.asarray, vgg)},
        }
        if self.plain is not None:
            plain = self._init_net(self.plain, k_plain, x)
            state["plain"] = plain
            state["plain_opt"] = self.tx.init(plain["params"])
        return state

    def inference_state(self, state: dict) -> dict:
        return {k: v for k, v in state.items() if not k.endswith("opt")}

    # --- networks ----------------------------------------------------------------------------
    def _apply(self, net, variables: dict, x: jax.Array, train: bool) -> tuple[dict, dict]:
        """(outputs, new batch_stats): BN statistics move only in 'train' mode while training."""
        v = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        if train and self.bn_train:
            out, updates = net.apply(v, x, train=True, mutable=["batch_stats"])
            return precision.as_float32(out), updates["batch_stats"]
        return precision.as_float32(net.apply(v, x, train=train)), variables["batch_stats"]

    def perceptual(self, vgg_params, a: jax.Array, b: jax.Array) -> jax.Array:
        return perceptual.vgg_layers_mse(vgg_params, a, b, dtype=self.dtype)

    def losses(self, out: dict, x: jax.Array, vgg_params, alpha: float, step) -> dict:
        """The original's terms for one network's outputs (`loss` is their weighted sum)."""
        prior = out["prior"]
        terms = {"mse": mse(prior, x), "perceptual": jnp.zeros((), jnp.float32)}
        rec = terms["mse"]
        if alpha:
            terms["perceptual"] = self.perceptual(vgg_params, prior, x)
            rec = rec + alpha * terms["perceptual"]
        if "warped" not in out:
            return {**terms, "loss": rec}
        epoch, on, beta = self.schedule(step)
        target = prior if self.cfg.morph_trains_autoencoder else jax.lax.stop_gradient(prior)
        ncc = 0.5 * (
            deform.local_ncc_loss(x, out["warped"]) + deform.local_ncc_loss(target, out["reversed"])
        )
        smooth = deform.gradient_l2(out["velocity"])
        morph = ncc + beta * smooth
        loss = rec + self.cfg.delta * on * morph
        return {**terms, "ncc": ncc, "smooth": smooth, "beta": beta, "morph_on": on, "loss": loss}

    # --- training ----------------------------------------------------------------------------
    def _grads(self, net, variables, x, vgg, alpha, step):
        """Gradients of the loss of `net` (with all its terms), its terms and new statistics."""

        def loss_fn(params):
            out, stats = self._apply(net, {**variables, "params": params}, x, train=True)
            terms = self.losses(out, x, vgg, alpha, step)
            return terms["loss"], (terms, stats)

        grads, (terms, stats) = jax.grad(loss_fn, has_aux=True)(variables["params"])
        return grads, terms, stats

    def _update(self, net, variables, opt, x, vgg, alpha, step):
        """One Adam step of `net`. The warm-up is the morph terms weighted by 0, not a
        `lax.cond` that skips them: on CPU a step inside a cond ran 4x slower (3.9 s against
        0.95 s at 64 px, batch 16), more than the deformer's backward pass costs."""
        grads, terms, stats = self._grads(net, variables, x, vgg, alpha, step)
        updates, opt = self.tx.update(grads, opt, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, "batch_stats": stats}, opt, terms

    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        del key  # deterministic: no augmentation, no dropout
        x, step, vgg = batch["image"], state["step"], state["vgg"]["params"]
        net, opt, metrics = self._update(
            self.net, state["net"], state["opt"], x, vgg, self.cfg.alpha, step
        )
        new = {**state, "step": step + 1, "net": net, "opt": opt}
        if self.plain is not None:
            plain, plain_opt, plain_terms = self._update(
                self.plain, state["plain"], state["plain_opt"], x, vgg, self.cfg.plain_alpha, step
            )
            new.update(plain=plain, plain_opt=plain_opt)
            metrics = {**metrics, "plain_loss": plain_terms["loss"]}
        metrics["epoch"] = self.schedule(step)[0]
        return new, metrics

    # --- validation and scoring --------------------------------------------------------------
    def _reconstruct(self, state: dict, x: jax.Array) -> dict:
        out, _ = self._apply(self.net, state["net"], x, train=False)
        return out

    def eval_loss(self, state: dict, batch: dict, key: jax.Array) -> jax.Array:
        """[B] ½ [MSE(x̂, x) + MSE(x̃, x)] per image (the original's validation loss)."""
        del key
        x = batch["image"]
        out = self._reconstruct(state, x)
        warped = out.get("warped", out["prior"])
        loss = 0.5 * (mse(out["prior"], x, (1, 2, 3)) + mse(warped, x, (1, 2, 3)))
        return jnp.where(batch["valid"], loss, 0.0) if "valid" in batch else loss

    def score(self, state: dict, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """`map` |x − x̃| [B, H, W] and its mean `score`; with the deformer, also `prior_map`
        |x − x̂| (the same autoencoder without the warp) and its mean `prior_map_score`."""
        del key
        x = batch["image"]
        out = self._reconstruct(state, x)
        warped = out.get("warped", out["prior"])
        amap = jnp.abs(x - warped)[..., 0]
        result = {"map": amap, "score": amap.mean(axis=(1, 2))}
        if "warped" in out:
            prior_map = jnp.abs(x - out["prior"])[..., 0]
            result.update(prior_map=prior_map, prior_map_score=prior_map.mean(axis=(1, 2)))
        if self.plain is not None:
            plain, _ = self._apply(self.plain, state["plain"], x, train=False)
            plain_map = jnp.abs(x - plain["prior"])[..., 0]
            result.update(plain_map=plain_map, plain_map_score=plain_map.mean(axis=(1, 2)))
        return result

    def panels(self, state: dict, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """The prior, the warped prior, the deformation as a warped grid, the residual, and the
        separate plain autoencoder's residual or else the unwarped prior's."""
        del key
        x = batch["image"]
        out = self._reconstruct(state, x)
        pictures = {"1 prior": out["prior"][..., 0]}
        if "warped" in out:
            pictures["2 warped prior"] = out["warped"][..., 0]
            grid = deform.warp(grid_lines(x.shape), out["displacement"])
            pictures["3 deformation"] = grid[..., 0]
        pictures["4 residual_map"] = jnp.abs(x - out.get("warped", out["prior"]))[..., 0]
        if self.plain is not None:
            plain, _ = self._apply(self.plain, state["plain"], x, train=False)
            pictures["5 plain AE residual_map"] = jnp.abs(x - plain["prior"])[..., 0]
        elif "warped" in out:
            pictures["5 unwarped residual_map"] = jnp.abs(x - out["prior"])[..., 0]
        return pictures


def grid_lines(shape: tuple[int, ...], every: int = 0) -> jax.Array:
    """[B, H, W, 1] white lines every `every` px (0: H // 16) on black, for picturing a warp."""
    b, h, w = shape[:3]
    every = every or max(h // 16, 2)
    rows = (jnp.arange(h) % every == every // 2)[:, None]
    cols = (jnp.arange(w) % every == every // 2)[None, :]
    lines = (rows | cols).astype(jnp.float32)
    return jnp.broadcast_to(lines[None, :, :, None], (b, h, w, 1))


def create(config: ml_collections.ConfigDict) -> Any:
    return MorphAEus(config)
