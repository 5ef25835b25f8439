"""Diabetic-retinopathy grading of whole fundus photos, the downstream task of lesion-based CL.

A ResNet regresses the grade (0-4) of a whole photo with one output and the MSE loss; grades
are read off at the half-integer thresholds -0.5, 0.5, ..., 3.5 (round and clip) and scored by
quadratic weighted kappa (the `grading` evaluator). Settings of PYCLS's `eyepacs.yaml`, which
the LCL authors evaluate with (fact sheet B8): 512 px, SGD lr 1e-3 with Nesterov momentum 0.9
and coupled weight decay 5e-4, cosine over 25 epochs stepped per epoch, batch 16, flips,
brightness/contrast 0.2, RandomResizedCrop (0.87-1.15, 0.7-1.3), rotation ±180 and translation
0.2 with black fill (`jaxad.ops.lesion_augment.GRADING`, on device).

- `grading.mode='finetune'` trains everything (the paper's "transfer capacity" evaluation);
  'linear' is the linear probe, which PYCLS does not have (B8, B10.9): the backbone and its
  BatchNorm statistics stay frozen and only the new fc learns.
- The start: `config.init_from.workdir` (a lesion-based CL or SimCLR run: its "backbone"),
  `grading.imagenet_weights` (a torchvision state dict file), or random.
- Model selection by validation kappa (`validation_outputs` / `validation_summary`: the loop
  keeps the state with the best kappa, `config.validation`), and the test split is evaluated
  with it. (PYCLS also reports the final state's test kappa; here that is a second run of
  `--config.mode=eval` on the latest checkpoint.)
- `data.label_fraction` trains on a class-stratified fraction of the labels.
- Precision (`model.dtype`, `jaxad.precision`): in bfloat16 the ResNet computes in bfloat16
  with float32 BatchNorm statistics; the one-output fc (and the probe's BatchNorm) read the
  pooled features in float32 (a grade regressed in bfloat16 would be rounded to 1/32 near 4),
  so the prediction, the MSE and the kappa are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.typing import DTypeLike

from jaxad import precision
from jaxad.evals import grading
from jaxad.methods import lesioncl
from jaxad.methods.base import Method
from jaxad.models import resnet
from jaxad.models.layers import BatchNorm
from jaxad.models.vgg import TorchDense
from jaxad.ops import conv, lesion_augment

MODES = ("finetune", "linear")


class Grader(nn.Module):
    """ResNet backbone ("backbone", as lesion-based CL's) and a one-output fc ("fc").

    With a frozen backbone (the linear probe) the features are standardised first by a
    BatchNorm without scale or offset ("probe_norm", statistics from the training batches):
    a linear fit by SGD on raw pooled ReLU features (norm ~20, per-dimension means ~10x their
    spread) diverges at a rate that lets it learn, and the right rate would depend on the init.
    """

    depth: int = 50
    width: int = 64
    frozen_backbone: bool = False
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = resnet.ResNet(
            depth=self.depth,
            width=self.width,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            name="backbone",
        )(x, train and not self.frozen_backbone)
        h = h.astype(jnp.float32)  # the regression head in float32 (module docstring)
        if self.frozen_backbone:
            h = jax.lax.stop_gradient(h)
            h = BatchNorm(
                use_running_average=not train, use_scale=False, use_bias=False, name="probe_norm"
            )(h)
        return TorchDense(1, name="fc")(h)[:, 0].astype(jnp.float32)


class DRGrading(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.grading
        if cfg.mode not in MODES:
            raise ValueError(f"config.grading.mode={cfg.mode!r} is not one of {MODES}.")
        lesioncl.check_unit_images(config)
        self.config, self.cfg = config, cfg
        self.linear = cfg.mode == "linear"
        self.aug = lesion_augment.GRADING
        self.eval_norm = lesion_augment.LesionAugment(
            hflip_p=0.0,
            vflip_p=0.0,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
            degrees=0.0,
            translate=(0.0, 0.0),
            grayscale_p=0.0,
        )
        self.net = Grader(
            depth=int(config.model.depth),
            width=int(config.model.width),
            frozen_backbone=self.linear,
            dtype=precision.model_dtype(config),
            fast_conv_grad=conv.resolve_fast_kernel_grad(config.model.fast_conv_grad),
        )
        self.schedule = lesioncl.EpochSchedule(config, int(cfg.t_max), int(cfg.steps_per_epoch))
        tx = lesioncl.sgd(config.optim, self.schedule)
        if self.linear:  # only fc learns: no update, and no weight decay, for the backbone
            tx = optax.multi_transform(
                {"train": tx, "frozen": optax.set_to_zero()},
                lambda p: {k: ("train" if k == "fc" else "frozen") for k in p},
            )
        self.tx = tx

    def init(self, key: jax.Array, batch: dict) -> dict:
        size = batch["image"].shape[1]
        variables = self.net.init(key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
        backbone = lesioncl.imagenet_backbone(
            self.cfg.imagenet_weights, int(self.config.model.depth), self.net.width
        )
        variables = lesioncl.with_backbone(variables, backbone)
        net = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        return {"step": jnp.zeros((), jnp.int32), "net": net, "opt": self.tx.init(net["params"])}

    def inference_state(self, state: dict) -> dict:
        return {"step": state["step"], "net": state["net"]}

    def _normalize(self, images: jax.Array) -> jax.Array:
        return lesion_augment.normalize(images, self.eval_norm)

    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        net = state["net"]
        x = lesion_augment.views(key, batch["image"], self.aug)
        target = batch["grade"].astype(jnp.float32)

        def loss_fn(params):
            # Linear probe: the backbone runs in eval mode, so only probe_norm's statistics move.
            v = {**net, "params": params}
            pred, updates = self.net.apply(v, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.square(pred - target)), updates["batch_stats"]

        return lesioncl.optimizer_step(state, loss_fn, self.tx, self.schedule)

    def predict(self, state: dict, images: jax.Array) -> jax.Array:
        """[B] regression outputs of [0, 1] images (no augmentation)."""
        return self.net.apply(state["net"], self._normalize(images), train=False)

    def score(self, state: dict, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """`grade_pred` [B], the regression output (the `grading` evaluator's input)."""
        del key
        return {"grade_pred": self.predict(state, batch["image"])}

    # --- model selection by validation kappa ---------------------------------------------------
    def validation_outputs(self, state: dict, batch: dict, key: jax.Array) -> dict:
        del key
        return {"pred": self.predict(state, batch["image"]), "grade": batch["grade"]}

    def validation_summary(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Kappa and accuracy of the validation split; `loss` (minimised) is -kappa."""
        m = grading.grading_metrics(outputs["grade"], outputs["pred"])
        return {"loss": -m["kappa"], "kappa": m["kappa"], "accuracy": m["accuracy"]}


def create(config: ml_collections.ConfigDict) -> Any:
    return DRGrading(config)
