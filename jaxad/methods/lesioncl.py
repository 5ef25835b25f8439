"""Lesion-based contrastive learning (Huang et al., MICCAI 2021): pre-training on lesion patches.

A ResNet learns what diabetic-retinopathy graders look at by telling patches around lesions
apart: each training image contributes one of its lesion boxes per epoch, two 128 x 128 patches
that contain it (placed independently) are augmented independently, and the 2B views of a batch
go through the ResNet and the projection head in one forward pass (BatchNorm statistics over
all of them) into the contrastive loss (`jaxad.ops.contrastive.supcon_loss` without labels:
NT-Xent, τ 0.07, as the original calls SupCon without labels). Fact sheet B3-B7.

- Boxes: the records carry them (`data.boxes`, `jaxad.data.lesion_boxes`: a box file, the
  authors' predictions converted with `python -m jaxad.lesions import-pickle`, IDRiD's mask
  boxes, or the built-in candidates), rescaled to `data.image_size` (512) and filtered as B3.
- Patches and augmentations: `jaxad.ops.lesion_augment` (B4-B5), on device, one key per image.
  With `data.lesion_pairs` = `lcl.patch_size` the host cuts the two patches by the same law
  (`jaxad.data.pipeline.lesion_pair_example`) and sends them in uint8 instead of the whole
  photo: what a TPU host needs to feed its chips (bench/pipeline.py); the augmentations stay
  on device. Validation cuts on device either way.
- `lcl.views='whole'` is the whole-image SimCLR baseline of the paper (the two views are the
  whole image resized to the patch size, then the same augmentations), for comparisons at the
  same cost.
- Network: torchvision's ResNet-50 (`model.depth`, `model.width`) + the 2048-2048-128 head
  (27,966,656 parameters), ImageNet-initialised from `lcl.imagenet_weights` (a torchvision
  state dict converted to .safetensors/.npz, `jaxad.models.resnet_weights`; '' = random).
  `model.head_norm='batch'` (not LCL's) normalises the head's hidden layer by the batch, as
  SimCLR's head: the demo's small network from random weights otherwise stays near chance at
  some seeds (configs/lesioncl.py).
- Optimiser: SGD, Nesterov momentum 0.9, coupled weight decay 5e-4 on every parameter, lr 0.02
  with the original's per-epoch cosine over `num_epochs` (T_max 1000); batch 768 (the
  maintainer's number; the original config says 786).
- Validation (`config.validation`): the same loss on random patches of the validation images,
  with the training augmentations, as the original (noisy, B10.7).

Precision (`model.dtype`, `jaxad.precision`): in bfloat16 the ResNet and the head's two layers
compute in bfloat16, the BatchNorm statistics are reduced (and kept) in float32, and the head's
output is cast to float32 before its L2 normalisation; the similarity logits (/ τ 0.07, where
bfloat16 would round a cosine of 0.9 to the nearest 0.004, 0.06 in the logit), the log-softmax
and the loss's mean are float32.

The grader (`jaxad.methods.dr_grading`) starts from the backbone of a finished run
(`config.init_from.workdir`): both keep it under the key "backbone".
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.typing import DTypeLike

from jaxad import precision, writers
from jaxad.methods.base import Method
from jaxad.models import resnet, resnet_weights
from jaxad.ops import augment, contrastive, conv, lesion_augment

VIEWS = ("lesion", "whole")
HEAD_NORMS = ("none", "batch")


class ContrastiveNet(nn.Module):
    """ResNet backbone ("backbone") and projection head ("head") -> unit-norm embeddings."""

    depth: int = 50
    width: int = 64
    hidden: int = 2048
    features: int = 128
    dtype: DTypeLike | None = None
    fast_conv_grad: bool | str = False
    head_norm: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, weights: jax.Array | None = None) -> jax.Array:
        h = resnet.ResNet(
            depth=self.depth,
            width=self.width,
            dtype=self.dtype,
            fast_conv_grad=self.fast_conv_grad,
            name="backbone",
        )(x, train)
        head = resnet.ProjectionHead(
            self.hidden, self.features, dtype=self.dtype, norm=self.head_norm, name="head"
        )
        return head(h, weights)


def check_unit_images(config: ml_collections.ConfigDict) -> None:
    """The augmentations need [0, 1] images; they normalise with EyePACS's statistics last."""
    if config.data.channels != 3:
        raise ValueError(f"fundus photos are RGB: set data.channels=3 (got {config.data.channels})")
    if tuple(config.data.mean) != (0.0,) * 3 or tuple(config.data.std) != (1.0,) * 3:
        raise ValueError(
            "set data.mean=(0.0, 0.0, 0.0) and data.std=(1.0, 1.0, 1.0): the on-device "
            "augmentations work on [0, 1] images and normalise with EyePACS's statistics last."
        )


def sgd(optim: ml_collections.ConfigDict, learning_rate) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum, nesterov, weight_decay): decay added to the gradient first."""
    return optax.chain(
        optax.add_decayed_weights(float(optim.weight_decay)),
        optax.sgd(learning_rate, momentum=float(optim.momentum), nesterov=bool(optim.nesterov)),
    )


def augmentation(cfg: ml_collections.ConfigDict) -> lesion_augment.LesionAugment:
    """The views' augmentation from `config.lcl`: B5's strengths in the paper's config, softer
    in the demo's (a small network from random weights collapses under B5's, see its config).

    `color_jitter` is ColorJitter's (brightness, contrast, saturation, hue); keys a config
    lacks (runs saved before they existed) keep LCL's values.
    """
    lcl = lesion_augment.LCL
    default_jitter = (lcl.brightness, lcl.contrast, lcl.saturation, lcl.hue)
    jitter = tuple(float(v) for v in cfg.get("color_jitter", default_jitter))
    return lesion_augment.LesionAugment(
        brightness=jitter[0],
        contrast=jitter[1],
        saturation=jitter[2],
        hue=jitter[3],
        crop_scale=tuple(float(v) for v in cfg.crop_scale),
        crop_ratio=tuple(float(v) for v in cfg.crop_ratio),
        degrees=float(cfg.get("degrees", lcl.degrees)),
        translate=tuple(float(v) for v in cfg.get("translate", lcl.translate)),
        grayscale_p=float(cfg.get("grayscale_p", lcl.grayscale_p)),
    )


def cosine_per_epoch(count: jax.Array, base_lr: float, steps_per_epoch: int, t_max: int):
    """CosineAnnealingLR stepped once per epoch: base · ½ (1 + cos(π e / T_max)), e the epoch."""
    epoch = (count // steps_per_epoch).astype(jnp.float32)
    return base_lr * 0.5 * (1.0 + jnp.cos(math.pi * jnp.minimum(epoch, t_max) / t_max))


class EpochSchedule:
    """Steps per epoch from the training split (read once, logged) and the per-epoch cosine."""

    def __init__(self, config: ml_collections.ConfigDict, t_max: int, steps_per_epoch: int = 0):
        self.config, self.t_max, self._steps = config, int(t_max), int(steps_per_epoch)

    def steps_per_epoch(self) -> int:
        if not self._steps:
            from jaxad.data import pipeline

            n = pipeline.num_examples(self.config.data, self.config.data.train_split)
            self._steps = max(n // self.config.batch_size, 1)
            writers.log_info(
                "one epoch is %d steps (%d training images // batch %d); cosine over %d epochs",
                self._steps,
                n,
                self.config.batch_size,
                self.t_max,
            )
        return self._steps

    def __call__(self, count: jax.Array) -> jax.Array:
        base = float(self.config.optim.learning_rate)
        return cosine_per_epoch(count, base, self.steps_per_epoch(), self.t_max)


def imagenet_backbone(path: str, depth: int, width: int) -> dict[str, Any] | None:
    """The backbone's {params, batch_stats} from a torchvision state dict file, or None."""
    if not path:
        return None
    loaded = resnet_weights.load_torchvision_resnet(path, depth=depth, width=width)
    writers.log_info("backbone initialised from %s", path)
    return loaded.variables


def with_backbone(variables: dict, backbone: dict | None) -> dict:
    """`variables` with the backbone's params and statistics replaced by `backbone`'s."""
    if backbone is None:
        return variables
    out = {k: dict(v) for k, v in variables.items()}
    for collection in ("params", "batch_stats"):
        merged = resnet_weights.merge_into(
            {collection: out[collection]["backbone"]},
            resnet_weights.Loaded(
                params=backbone["params"] if collection == "params" else {},
                batch_stats=backbone["batch_stats"] if collection == "batch_stats" else {},
            ),
        )
        out[collection]["backbone"] = merged[collection]
    return out


def optimizer_step(state: dict, loss_fn, tx: optax.GradientTransformation, schedule):
    """One update of `state["net"]` by `loss_fn(params) -> (loss, new batch_stats)`."""
    net = state["net"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net["params"])
    updates, opt = tx.update(grads, state["opt"], net["params"])
    new = {
        "step": state["step"] + 1,
        "net": {"params": optax.apply_updates(net["params"], updates), "batch_stats": stats},
        "opt": opt,
    }
    return new, {"loss": loss, "lr": schedule(state["step"])}


class LesionCL(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.lcl
        if cfg.views not in VIEWS:
            raise ValueError(f"config.lcl.views={cfg.views!r} is not one of {VIEWS}.")
        check_unit_images(config)
        if cfg.views == "lesion" and not config.data.boxes:
            raise ValueError(
                "lesion-based CL needs lesion boxes: set config.data.boxes to a box file "
                "(python -m jaxad.lesions ...) or 'candidates'; or lcl.views='whole' (SimCLR)."
            )
        self.config, self.cfg = config, cfg
        self.size = int(cfg.patch_size)
        host_pairs = int(config.data.get("lesion_pairs", 0))  # (absent from older runs)
        if host_pairs and (cfg.views != "lesion" or host_pairs != self.size):
            raise ValueError(
                f"config.data.lesion_pairs={host_pairs}: use 0, or lcl.patch_size "
                f"({self.size}) with lcl.views='lesion' (got {cfg.views!r})."
            )
        self.aug = augmentation(cfg)
        head_norm = config.model.get("head_norm", "none")  # (absent from older runs)
        if head_norm not in HEAD_NORMS:
            raise ValueError(
                f"config.model.head_norm={head_norm!r} is not one of {HEAD_NORMS} "
                "('none': LCL's head; 'batch': its hidden layer batch-normalised)."
            )
        depth, width = int(config.model.depth), int(config.model.width)
        self.net = ContrastiveNet(
            depth=depth,
            width=width,
            hidden=int(config.model.head_hidden) or resnet.feature_dim(depth, width),
            features=int(config.model.head_features),
            dtype=precision.model_dtype(config),
            fast_conv_grad=conv.resolve_fast_kernel_grad(config.model.fast_conv_grad),
            head_norm=head_norm,
        )
        self.schedule = EpochSchedule(config, int(cfg.t_max), int(cfg.steps_per_epoch))
        self.tx = sgd(config.optim, self.schedule)

    def init(self, key: jax.Array, batch: dict) -> dict:
        x = jnp.zeros((1, self.size, self.size, 3), jnp.float32)
        variables = self.net.init(key, x, train=False)
        variables = with_backbone(
            variables,
            imagenet_backbone(
                self.cfg.imagenet_weights, int(self.config.model.depth), self.net.width
            ),
        )
        net = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        return {"step": jnp.zeros((), jnp.int32), "net": net, "opt": self.tx.init(net["params"])}

    def inference_state(self, state: dict) -> dict:
        return {"step": state["step"], "net": state["net"]}

    # --- views -------------------------------------------------------------------------------
    def pairs(self, key: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        """The two un-augmented views of each image: lesion patches, or the whole image."""
        if "pairs" in batch:  # cut on the host (data.lesion_pairs), uint8 [B, 2, P, P, 3]
            pairs = batch["pairs"].astype(jnp.float32) / 255.0
            return pairs[:, 0], pairs[:, 1]
        images = batch["image"]
        if self.cfg.views == "whole":
            box = jnp.asarray([0, 0, images.shape[1], images.shape[2]], jnp.float32)
            whole = jax.vmap(lambda x: augment.resized_crop(x, box, self.size))(images)
            return whole, whole
        return lesion_augment.lesion_pairs(
            key, images, batch["boxes"], batch["num_boxes"], self.size
        )

    def embeddings(self, net: dict, key: jax.Array, batch: dict, train: bool):
        """(embeddings [2B, D] of both views of every image, new batch statistics)."""
        k_pair, k1, k2 = jax.random.split(key, 3)
        p1, p2 = self.pairs(k_pair, batch)
        views = jnp.concatenate(
            [lesion_augment.views(k1, p1, self.aug), lesion_augment.views(k2, p2, self.aug)]
        )
        valid = batch.get("valid")
        weights = None if valid is None else jnp.concatenate([valid, valid]).astype(jnp.float32)
        if train:
            z, updates = self.net.apply(
                net, views, train=True, weights=weights, mutable=["batch_stats"]
            )
            return z, updates["batch_stats"]
        return self.net.apply(net, views, train=False, weights=weights), net["batch_stats"]

    # --- training ----------------------------------------------------------------------------
    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        net = state["net"]

        def loss_fn(params):
            z, stats = self.embeddings({**net, "params": params}, key, batch, train=True)
            return contrastive.supcon_loss(z, temperature=float(self.cfg.temperature)), stats

        return optimizer_step(state, loss_fn, self.tx, self.schedule)

    def eval_loss(self, state: dict, batch: dict, key: jax.Array) -> jax.Array:
        """[B] each image's share of its batch's contrastive loss (0 for padding rows)."""
        z, _ = self.embeddings(state["net"], key, batch, train=False)
        valid = batch.get("valid")
        per = contrastive.supcon_loss_per_example(
            z, temperature=float(self.cfg.temperature), valid=valid
        )
        return per if valid is None else jnp.where(valid, per, 0.0)


def create(config: ml_collections.ConfigDict) -> Any:
    return LesionCL(config)
