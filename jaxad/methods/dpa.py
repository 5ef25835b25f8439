"""The MOOD 2020 Deep Perceptual Autoencoder: one 2-D model per region, task and slicing axis.

Training (the solution's mood/dpa, a single 128 x 128 stage without progressive growing):

- data: the slices along `dpa.axis` (`mood/<region>_axis<a>`), resized to `data.image_size`
  128 and normalised to [-1, 1] (x * 2 - 1: `data.mean` = `data.std` = 0.5, checked); no
  augmentation;
- network: `jaxad.models.dpa.Autoencoder` (residual9, `model.nf` = `model.latent_dim`);
- loss: the mean over the batch of the relative perceptual L1 at one VGG19 layer
  (`dpa.vgg_layer`, 'r32' or 'r42'): mean |f(x) - f(x_rec)| / sg(mean |f(x)|) with one
  denominator per slice, computed from the real slice (`jaxad.ops.perceptual`). Before the
  VGG the slices are copied to 3 channels and mapped back to [0, 1] (the reconstruction is not
  clamped), with no ImageNet normalisation;
- the VGG19 is frozen: its params sit in the state under "vgg", outside the optimiser. They
  come from `dpa.vgg_weights`: a SimCLR workdir (its best validated state, else its latest;
  `init_runs` names it, so the loop loads it with `jaxad.checkpoint.load_run` and hands it to
  `init_from` before the first step, `init` holding the fixed-seed random VGG until then), a
  .npz (`jaxad.methods.simclr.load_vgg_params`), or "" for random weights with a fixed seed;
  `model.vgg_width` is 64 (VGG19), or a CPU demo's SimCLR width, which the weights must have;
- Adam(`optim.learning_rate`) with PyTorch's defaults, no schedule, no weight decay;
- validation on the fold-0 slices (`data.val_split`) every 10000 steps, early stopping with
  patience 3 and min_delta 0.002 (the shared loop's `config.validation`);
- divergence: the original aborts as soon as a batch loss exceeds 1e9 (`dpa.max_loss`; 0
  turns the rule off). Here such a step returns a NaN loss and NaN parameters, so every later
  loss is NaN too and the loop stops with its non-finite-loss error at the next logged step
  (`log_every`), before anything is saved: the last checkpoint and the best state stay as
  they were.

Scoring (2-D, per slice): the pixelwise relative perceptual error averaged over channels with
the slice's own denominator (the training loss's), bilinearly upsampled to the image size
(`perceptual.perceptual_map`); the image score is the maximum of the map. The 3-D submission
uses one denominator per volume instead (`jaxad.mood.inference`).

Precision (`model.dtype`, `jaxad.precision`): in bfloat16 the autoencoder and the frozen VGG19
compute in bfloat16 (the VGG's weights stay float32 in the state); the reconstruction is cast
to float32 before it goes into the VGG with the real slice, and the VGG features are cast to
float32 before the relative perceptual L1, whose denominators mean |f(x)| per slice, ratios,
means and maps stay float32. The 3-D MOOD inference (`jaxad.mood.inference`, one denominator
per volume) builds its own networks and computes in float32.

The state is {"step", "ae": {"params"}, "opt", "vgg": {"params"}}; `inference_state` keeps
"ae" and "vgg", which is all the 3-D inference restores. A missing `dpa.vgg_weights` path does
not stop `init` (a restored checkpoint brings its own VGG, e.g. in the submission image): the
state then holds random VGG weights, and `train_step` refuses to train with them.

Starting from other runs (`init_from`, for `dpa.vgg_weights` and `config.init_from.workdir`):
a SimCLR run gives the VGG19; another DPA run gives its autoencoder and VGG19 (same `model.nf`,
`model.latent_dim` and `model.vgg_width`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxad import precision, writers
from jaxad.methods import simclr
from jaxad.methods.base import Method
from jaxad.models.dpa import Autoencoder
from jaxad.models.vgg import VGG19Features
from jaxad.ops import conv, perceptual

VGG_LAYERS = ("r32", "r42")
TASKS = ("pixel", "sample")
REGIONS = ("brain", "abdom")
AXES = (0, 1, 2)


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not one of {', '.join(map(str, choices))}.")


class DPA(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.dpa
        _check_choice("dpa.vgg_layer", cfg.vgg_layer, VGG_LAYERS)
        _check_choice("dpa.task", cfg.task, TASKS)
        _check_choice("dpa.region", cfg.region, REGIONS)
        _check_choice("dpa.axis", int(cfg.axis), AXES)
        for key in ("mean", "std"):
            values = tuple(float(v) for v in config.data[key])
            if any(v != 0.5 for v in values):
                raise ValueError(
                    f"config.data.{key}={values}: the DPA works on slices mapped to [-1, 1] "
                    "(x * 2 - 1), i.e. mean and std 0.5."
                )
        self.layer = cfg.vgg_layer
        self.vgg_weights = os.fspath(cfg.vgg_weights)
        self.max_loss = float(cfg.max_loss)
        fast = conv.resolve_fast_kernel_grad(config.model.fast_conv_grad)
        dtype = precision.model_dtype(config)
        self.ae = Autoencoder(
            nf=config.model.nf,
            latent_dim=config.model.latent_dim,
            channels=config.data.channels,
            image_size=config.data.image_size,
            dtype=dtype,
            fast_conv_grad=fast,
        )
        # Frozen: only gradients with respect to its input are taken, never its kernels.
        self.vgg_width = int(config.model.vgg_width)
        self.vgg = VGG19Features(width=self.vgg_width, dtype=dtype)
        opt = config.optim
        self.tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
        self._vgg_missing = False

    # --- state -------------------------------------------------------------------------------
    def initial_vgg_params(self) -> dict:
        """The frozen VGG's params from `dpa.vgg_weights` (see the module docstring)."""
        path = self.vgg_weights
        if not path:
            writers.logger.warning(
                "dpa.vgg_weights is empty: the perceptual loss uses a random VGG19 (seed %d), "
                "not SimCLR-trained weights as the solution does.",
                simclr.RANDOM_VGG_SEED,
            )
            return simclr.random_vgg_params(self.vgg_width)
        if os.path.isdir(path):  # a SimCLR run: `init_from` brings its weights
            return simclr.random_vgg_params(self.vgg_width)
        if not os.path.exists(path):
            self._vgg_missing = True
            writers.logger.warning(
                "dpa.vgg_weights=%s does not exist: random VGG19 weights stand in until a "
                "checkpoint is restored; training needs the file.",
                path,
            )
            return simclr.random_vgg_params(self.vgg_width)
        # Read on the host even when `init` is being traced: the weights become constants.
        with jax.ensure_compile_time_eval():
            host = simclr.load_vgg_params(path, self.vgg_width)
        self.check_vgg_width(host, path)
        return jax.tree.map(jnp.asarray, host)

    def check_vgg_width(self, params: dict, where: str) -> None:
        """A clear error when VGG19 weights from `where` do not have `model.vgg_width`."""
        expected = jax.eval_shape(lambda: simclr.random_vgg_params(self.vgg_width))
        shapes = jax.tree.map(np.shape, params)
        if shapes != jax.tree.map(lambda s: s.shape, expected):
            got = shapes["conv1_1"]["kernel"][-1] if "conv1_1" in shapes else "?"
            raise ValueError(
                f"the VGG19 weights in {where} have width {got}, not model.vgg_width="
                f"{self.vgg_width}; set --config.model.vgg_width={got}."
            )

    def init(self, key: jax.Array, batch: dict) -> dict:
        params = self.ae.init(key, batch["image"][:1])["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "ae": {"params": params},
            "opt": self.tx.init(params),
            "vgg": {"params": self.initial_vgg_params()},
        }

    def inference_state(self, state: dict) -> dict:
        return {"ae": state["ae"], "vgg": state["vgg"]}

    # --- starting from other runs ------------------------------------------------------------
    def init_runs(self) -> list[str]:
        """`dpa.vgg_weights` when it names a run's workdir (a folder), whose VGG19 to take."""
        return [self.vgg_weights] if os.path.isdir(self.vgg_weights) else []

    def init_from(self, state: dict, run: Any) -> dict:
        """The VGG19 of a SimCLR run, or the autoencoder and VGG19 of another DPA run.

        The run named by `dpa.vgg_weights` must be a SimCLR run (a clear error otherwise).
        """
        is_vgg_run = os.path.abspath(run.workdir) == os.path.abspath(self.vgg_weights)
        if run.config.method == "dpa" and not is_vgg_run:
            return self._from_dpa_run(state, run)
        features = simclr.vgg_params_from_run(run)  # a clear error for other methods
        self.check_vgg_width(features, run.workdir)
        return {**state, "vgg": {"params": _placed_like(features, state["vgg"]["params"])}}

    def _from_dpa_run(self, state: dict, run: Any) -> dict:
        """`config.init_from` with another DPA run: its autoencoder and its VGG19."""
        ae, vgg = run.state["ae"]["params"], run.state["vgg"]["params"]
        _check_same_shapes(ae, state["ae"]["params"], run.workdir, "model.nf, model.latent_dim")
        self.check_vgg_width(vgg, run.workdir)
        return {
            **state,
            "ae": {"params": _placed_like(ae, state["ae"]["params"])},
            "vgg": {"params": _placed_like(vgg, state["vgg"]["params"])},
        }

    # --- loss --------------------------------------------------------------------------------
    def features(self, vgg_params, images: jax.Array) -> jax.Array:
        """The `dpa.vgg_layer` activation of [-1, 1] images (`perceptual.vgg_input`)."""
        x = perceptual.vgg_input(images)
        out = self.vgg.apply({"params": vgg_params}, x, (self.layer,))[self.layer]
        return precision.as_float32(out)

    def real_and_rec_features(self, ae_params, vgg_params, images: jax.Array):
        """VGG features of the images and of their reconstructions (one VGG pass for both)."""
        rec = precision.as_float32(self.ae.apply({"params": ae_params}, images))
        feats = self.features(vgg_params, jnp.concatenate([images, rec], axis=0))
        n = images.shape[0]
        return feats[:n], feats[n:]

    def per_example_loss(self, ae_params, vgg_params, images: jax.Array) -> jax.Array:
        """[B] relative perceptual L1, one denominator per slice."""
        f_real, f_rec = self.real_and_rec_features(ae_params, vgg_params, images)
        return perceptual.relative_perceptual_l1(f_real, f_rec, per="sample")

    # --- training ----------------------------------------------------------------------------
    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        del key  # deterministic: no augmentation, no dropout
        if self._vgg_missing:
            raise FileNotFoundError(
                f"dpa.vgg_weights={self.vgg_weights} does not exist: train SimCLR first "
                "(configs/simclr_vgg19.py) and give its workdir, give a .npz of VGG19 weights, "
                "or set --config.dpa.vgg_weights='' for random VGG19 weights."
            )
        vgg_params = jax.lax.stop_gradient(state["vgg"]["params"])

        def loss_fn(params):
            return self.per_example_loss(params, vgg_params, batch["image"]).mean()

        params = state["ae"]["params"]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = self.tx.update(grads, state["opt"], params)
        params = optax.apply_updates(params, updates)
        if self.max_loss > 0:
            # The original's abort on a loss above 1e9 (see the module docstring).
            diverged = ~(loss <= self.max_loss)
            params = jax.tree.map(lambda p: jnp.where(diverged, jnp.nan, p), params)
            loss = jnp.where(diverged, jnp.nan, loss)
        new_state = {
            "step": state["step"] + 1,
            "ae": {"params": params},
            "opt": opt,
            "vgg": state["vgg"],
        }
        return new_state, {"loss": loss}

    def eval_loss(self, state: dict, batch: dict, key: jax.Array) -> jax.Array:
        """[B] the training loss of each example (0 for padding rows)."""
        del key
        loss = self.per_example_loss(state["ae"]["params"], state["vgg"]["params"], batch["image"])
        return _zero_padding(loss, batch)

    # --- scoring -----------------------------------------------------------------------------
    def score(self, state: dict, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """`map` [B, S, S]: the per-slice perceptual map; `score` [B]: its maximum."""
        del key
        images = batch["image"]
        f_real, f_rec = self.real_and_rec_features(
            state["ae"]["params"], state["vgg"]["params"], images
        )
        maps = perceptual.perceptual_map(f_real, f_rec, images.shape[1:3], per="sample")
        maps = _zero_padding(maps, batch)
        return {"map": maps, "score": maps.max(axis=(1, 2))}


def _placed_like(new: Any, old: Any) -> Any:
    """`new`'s arrays on the devices (shardings) of the `old` arrays they replace."""
    return jax.tree.map(lambda n, o: jax.device_put(n, getattr(o, "sharding", None)), new, old)


def _check_same_shapes(new: Any, old: Any, where: str, keys: str) -> None:
    """A clear error when another run's network has other shapes than this config's."""
    if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, old):
        raise ValueError(f"the network in {where} has other shapes than this config's ({keys}).")


def _zero_padding(values: jax.Array, batch: dict) -> jax.Array:
    """Zeros on padding rows: blank images, whose features can be all zero (0 / 0)."""
    if "valid" not in batch:
        return values
    valid = batch["valid"].reshape((-1,) + (1,) * (values.ndim - 1))
    return jnp.where(valid, values, 0.0)


def create(config: ml_collections.ConfigDict) -> Any:
    return DPA(config)
