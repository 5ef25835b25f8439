"""SimCLR pre-training of VGG19 on MOOD slices: the perceptual-loss network of the DPA.

External data (ImageNet weights) was not allowed in MOOD 2020, so the DPA solution trained its
VGG19 with SimCLR on the challenge's own slices (the SimCLR fork, config exp_1_mood.yaml):

- data: the training slices along all three axes of both regions (folds 1-9), as grey images
  in [0, 1] copied to 3 channels, without mean/std normalisation (batches are mapped back to
  that scale with `data.mean` / `data.std`, 0 and 1 in configs/simclr_vgg19.py);
- two views per slice, drawn on device in `train_step` from the step's key
  (`jaxad.ops.augment`: random resized crop to `simclr.crop_size` 96, flip, brightness and
  contrast jitter, Gaussian blur);
- `SimCLRModel` (VGG19 conv stack, adaptive pool to 7x7, projection 25088 -> 2048 -> 256;
  71,931,200 parameters); both views go through it as one batch, equivalent to the original's
  two passes since nothing in the network depends on the batch;
- NT-Xent with cosine similarity and temperature 0.5 (`jaxad.ops.perceptual.nt_xent`);
- Adam lr 3e-4 with PyTorch's coupled weight decay 1e-5 (added to the gradient);
- learning rate: `simclr.lr_schedule='cosine_epochs'` (default, the original):
  CosineAnnealingLR with T_max = int(steps per epoch / `t_max_decrease` 10) counted in epochs,
  stepped once per epoch from the end of epoch `epoch_warmup` 1, i.e. the learning rate of
  epoch e is lr (1 + cos(pi t / T_max)) / 2 with t = max(0, e - 1). With about 2700 steps per
  epoch T_max is about 270 epochs, so over 80 epochs it only falls to about 0.8 lr.
  'constant' keeps lr. Steps per epoch are `simclr.steps_per_epoch`, or when 0 the training
  split's size // batch_size (the loop's epochs, the original's drop_last loader);
- validation (`eval_loss`): each example's share of the NT-Xent of its validation batch, with
  views drawn from the loop's fixed validation keys; the loop keeps the best state in
  `workdir/best` when `config.validation.every` is one epoch, as the original saved its model
  whenever the epoch's validation loss improved. The original drew new views at every
  validation (so its loss was noisier) and dropped the last incomplete batch; here that batch
  counts, its padding rows excluded from the negatives;
- head: the fork's (no normalisation) by default; `model.head_norm='batch'` normalises its hidden
  layer by the batch's statistics (the SimCLR paper's head), which keeps the embeddings from
  collapsing where the brightness jitter on mostly black slices collapses the fork's (README);
- collapse: the training metrics include `spread`, the embedding spread across the batch, and
  `collapse_level` gives log(2B - 1), the NT-Xent of identical embeddings; the loop warns when
  the loss stays there (`jaxad.collapse`, settings `config.collapse`);
- no anomaly map: the method has no `score` (the evaluators check for it), and its config
  runs no anomaly evaluation;
- precision (`model.dtype`, `jaxad.precision`): in bfloat16 the VGG19 and the head compute in
  bfloat16; the projections are cast to float32 before the NT-Xent, whose normalisation, logits
  (cosine / temperature), log-softmax and mean stay float32, as does the `spread` metric.

`vgg_params_from_run` hands the trained conv weights of a loaded run
(`jaxad.checkpoint.load_run`) to the DPA (`jaxad.methods.dpa`); `load_vgg_params` reads the
other sources of VGG19 weights (a `.npz`, or random ones).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxad import collapse, precision, writers
from jaxad.methods.base import Method
from jaxad.models.vgg import SimCLRModel, VGG19Features
from jaxad.ops import augment, contrastive, conv, perceptual

LR_SCHEDULES = ("cosine_epochs", "constant")
HEAD_NORMS = ("none", "batch")
# Seed of the random VGG19 used when no weights are given (the original's fallback also seeds).
RANDOM_VGG_SEED = 0


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not one of {', '.join(choices)}.")


def make_optimizer(cfg: ml_collections.ConfigDict, learning_rate) -> optax.GradientTransformation:
    """Adam with coupled L2 weight decay, as `torch.optim.Adam(weight_decay=...)`."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
    )


def cosine_epochs_lr(
    count: jax.Array,
    base_lr: float,
    steps_per_epoch: int,
    t_max_decrease: float,
    epoch_warmup: int,
) -> jax.Array:
    """The learning rate after `count` updates under the original's per-epoch cosine schedule.

    T_max = int(steps_per_epoch / t_max_decrease) epochs; the scheduler has taken
    t = max(0, epoch - epoch_warmup) steps during epoch = count // steps_per_epoch.
    """
    t_max = int(steps_per_epoch / t_max_decrease)
    if t_max < 1:
        raise ValueError(
            f"{steps_per_epoch} steps per epoch / simclr.t_max_decrease={t_max_decrease} gives "
            "T_max = 0, which the original's CosineAnnealingLR cannot use; lower "
            "simclr.t_max_decrease or set simclr.lr_schedule='constant'."
        )
    epoch = count // steps_per_epoch
    t = jnp.maximum(epoch - epoch_warmup, 0).astype(jnp.float32)
    return base_lr * 0.5 * (1.0 + jnp.cos(math.pi * t / t_max))


def nt_xent_per_example(
    z1: jax.Array, z2: jax.Array, temperature: float, valid: jax.Array | None = None
) -> jax.Array:
    """Each pair's share of NT-Xent: (CE of view 1 + CE of view 2) / 2, [N] -> mean = NT-Xent.

    Rows where `valid` is False are left out as negatives and get 0, so the valid rows' values
    are those of `jaxad.ops.perceptual.nt_xent` over the valid pairs alone.
    """
    z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    return contrastive.supcon_loss_per_example(
        z, temperature=temperature, base_temperature=temperature, valid=valid
    )


def augment_from_config(cfg: ml_collections.ConfigDict) -> augment.Augment:
    return augment.Augment(
        size=int(cfg.crop_size),
        scale=tuple(float(v) for v in cfg.crop_scale),
        ratio=tuple(float(v) for v in cfg.crop_ratio),
        flip_p=float(cfg.flip_p),
        jitter_p=float(cfg.jitter_p),
        brightness=float(cfg.brightness),
        contrast=float(cfg.contrast),
        blur_p=float(cfg.blur_p),
        blur_kernel=int(cfg.blur_kernel),
        blur_sigma=tuple(float(v) for v in cfg.blur_sigma),
    )


class SimCLR(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.simclr
        _check_choice("simclr.lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
        head_norm = config.model.get("head_norm", "none")
        _check_choice("model.head_norm", head_norm, HEAD_NORMS)
        self.config = config
        self.cfg = cfg
        self.aug = augment_from_config(cfg)
        self.mean = np.asarray(config.data.mean, np.float32)
        self.std = np.asarray(config.data.std, np.float32)
        fast = conv.resolve_fast_kernel_grad(config.model.fast_conv_grad)
        self.model = SimCLRModel(
            out_dim=config.model.out_dim,
            hidden=config.model.hidden,
            pool_size=config.model.pool_size,
            dtype=precision.model_dtype(config),
            fast_conv_grad=fast,
            width=config.model.vgg_width,
            head_norm=head_norm,
        )
        self._steps_per_epoch = int(cfg.steps_per_epoch)
        # The schedule is a function of the update count in every case, so that the optimiser
        # state has the same structure whatever the schedule.
        self.tx = make_optimizer(config.optim, self.learning_rate)

    # --- schedule ----------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        """`simclr.steps_per_epoch`, else the training split's size // batch size (read once)."""
        if not self._steps_per_epoch:
            from jaxad.data import pipeline

            n = pipeline.num_examples(self.config.data, self.config.data.train_split)
            self._steps_per_epoch = max(n // self.config.batch_size, 1)
            writers.log_info(
                "one epoch is %d steps (%d training images // batch %d); validation every %s",
                self._steps_per_epoch,
                n,
                self.config.batch_size,
                self.config.validation.every,
            )
        return self._steps_per_epoch

    def learning_rate(self, count: jax.Array) -> jax.Array:
        base = self.config.optim.learning_rate
        if self.cfg.lr_schedule == "constant":
            return jnp.full((), base, jnp.float32)
        return cosine_epochs_lr(
            count,
            base,
            self.steps_per_epoch(),
            float(self.cfg.t_max_decrease),
            int(self.cfg.epoch_warmup),
        )

    # --- state -------------------------------------------------------------------------------
    def init(self, key: jax.Array, batch: dict) -> dict:
        x = jnp.zeros((1, self.aug.size, self.aug.size, 3), jnp.float32)
        params = self.model.init(key, x)["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "model": {"params": params},
            "opt": self.tx.init(params),
        }

    def inference_state(self, state: dict) -> dict:
        return {"step": state["step"], "model": state["model"]}

    # --- training ----------------------------------------------------------------------------
    def unit_images(self, images: jax.Array) -> jax.Array:
        """Batch images back to the [0, 1] scale the augmentation and the VGG expect."""
        return images * self.std + self.mean

    def projections(
        self, params, key: jax.Array, images: jax.Array, valid: jax.Array | None = None
    ):
        """(z1, z2): the projections of two random views of each normalised image (`valid` [B]
        keeps padding rows out of a batch-normalised head's statistics)."""
        v1, v2 = augment.two_views(key, self.unit_images(images), self.aug)
        views = jnp.concatenate([v1, v2], axis=0)
        if views.shape[-1] == 1:
            views = jnp.broadcast_to(views, (*views.shape[:-1], 3))
        weights = None if valid is None else jnp.concatenate([valid, valid], axis=0)
        _, z = self.model.apply({"params": params}, views, weights)
        z = precision.as_float32(z)
        n = images.shape[0]
        return z[:n], z[n:]

    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        def loss_fn(params):
            z1, z2 = self.projections(params, key, batch["image"])
            return perceptual.nt_xent(z1, z2, self.cfg.temperature), (z1, z2)

        params = state["model"]["params"]
        (loss, (z1, z2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = self.tx.update(grads, state["opt"], params)
        new_state = {
            "step": state["step"] + 1,
            "model": {"params": optax.apply_updates(params, updates)},
            "opt": opt,
        }
        spread = collapse.embedding_spread(jnp.concatenate([z1, z2], axis=0))
        return new_state, {
            "loss": loss,
            "spread": spread,
            "lr": self.learning_rate(state["step"]),
        }

    def collapse_level(self) -> float:
        """NT-Xent of identical embeddings, log(2B - 1): what `jaxad.collapse` watches for."""
        return math.log(2 * self.config.batch_size - 1)

    def collapse_hint(self) -> str:
        """What the collapse warning suggests: the batch-normalised head when the run has not
        got it, else another seed."""
        if self.model.head_norm == "none":
            return "rerun with --config.model.head_norm=batch (or another config.seed)"
        return "rerun with another config.seed"

    def eval_loss(self, state: dict, batch: dict, key: jax.Array) -> jax.Array:
        """[B] each example's share of its batch's NT-Xent (0 for padding rows)."""
        valid = batch.get("valid")
        z1, z2 = self.projections(state["model"]["params"], key, batch["image"], valid)
        return nt_xent_per_example(z1, z2, self.cfg.temperature, valid)


def create(config: ml_collections.ConfigDict) -> Any:
    return SimCLR(config)


# --- the VGG19 weights for the DPA -----------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def random_vgg_params(width: int = 64) -> dict:
    """`VGG19Features(width)` params with torchvision's init from the fixed `RANDOM_VGG_SEED`."""
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    return VGG19Features(width=width).init(jax.random.key(RANDOM_VGG_SEED), x)["params"]


def load_vgg_params(path: str | os.PathLike, width: int = 64) -> dict:
    """`VGG19Features` params (numpy) for the perceptual loss, from `path`:

    - a `.npz` of torchvision-layout VGG19 weights (`jaxad.models.torch_import`), e.g. the
      solution's own SimCLR checkpoint converted with numpy.savez (width 64 only);
    - "" (empty): random weights of `width` with torchvision's init and a fixed seed
      (`random_vgg_params`), as the solution's feature extractor falls back to when no weights
      are given. The perceptual loss then compares random features, not SimCLR-trained ones.

    A SimCLR workdir is a run to load (`jaxad.checkpoint.load_run`), then `vgg_params_from_run`.
    """
    path = os.fspath(path)
    if not path:
        return jax.device_get(random_vgg_params(width))
    if os.path.isdir(path):
        raise ValueError(
            f"{path} is a folder: the VGG19 of a SimCLR workdir comes from "
            "vgg_params_from_run(jaxad.checkpoint.load_run(workdir)); the DPA's dpa.vgg_weights "
            "does that when training starts."
        )
    if path.endswith(".npz"):
        from jaxad.models import torch_import

        if width != 64:
            raise ValueError(f"{path}: torchvision VGG19 weights have width 64, not {width}.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG19 weights {path} not found.")
        return torch_import.load_vgg19_weights(path)
    raise FileNotFoundError(
        f"VGG19 weights {path!r} not found: give a SimCLR workdir (configs/simclr_vgg19.py), a "
        ".npz of torchvision VGG19 weights, or '' for random weights."
    )


def _check_simclr_run(run: Any) -> None:
    """A clear error when a run given for VGG19 weights is not a SimCLR run."""
    if run.config.method != "simclr":
        raise ValueError(
            f"{run.workdir} is a run of method {run.config.method!r}, not 'simclr': VGG19 "
            "weights come from a SimCLR run (configs/simclr_vgg19.py)."
        )


def vgg_params_from_run(run: Any) -> dict:
    """The `VGG19Features` params of a loaded SimCLR run (`jaxad.checkpoint.Run`).

    They are the conv stack of the state `load_run` chose (the best validated one unless told
    otherwise), as restored (on the run's mesh), at the run's own `model.vgg_width`.
    """
    _check_simclr_run(run)
    return run.state["model"]["params"]["features"]
