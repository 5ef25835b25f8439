"""PICARD (Konz et al., MedIA 2023): pluralistic inpainting of normal tissue, scored by MCD.

Training (on `window_size` crops of normal images, mapped to [-1, 1]): a DeepFill-v1 inpainter
(`jaxad.models.picard.Generator`, coarse and fine networks) fills a random box with WGAN-GP local
and global critics, as the original trainer does:

- the box: `box_size` square, top/left uniform in {0, ..., window_size - box_size - 1} (the
  original's `randint(0, 128)`), one box for the whole batch when `mask_batch_same`; the hole is
  the box shrunk per sample by d_h, d_w in {0, ..., max_delta // 2} on each side (96-128 px);
  masked input = image * (1 - hole);
- the "local" images are the box region (not the hole) of the image and of the inpaintings
  x_k * hole + image * (1 - hole); sd is the spatial discounting mask
  max(g^min(i, box - i), g^min(j, box - j)) (`spatial_discounting_mask`);
- generator: L_G = l1_loss_alpha * l1 + ae_loss_alpha * ae + gan_loss_alpha * wgan_g with
  l1 = coarse_l1_alpha * mean|sd (local x1_inp - local gt)| + mean|sd (local x2_inp - local gt)|,
  ae = coarse_l1_alpha * mean|(x1 - gt)(1 - hole)| + mean|(x2 - gt)(1 - hole)| (means over all
  elements) and wgan_g = -mean D_l(local x2_inp) - global_wgan_loss_alpha * mean D_g(x2_inp);
- critics: L_D = wgan_d + wgan_gp_lambda * (GP_l + GP_g), wgan_d = mean(D_l(fake) - D_l(real))
  + global_wgan_loss_alpha * mean(D_g(fake) - D_g(real)) on the detached fine inpainting,
  GP = mean_b (||grad_x D(a real + (1 - a) fake)||_2 - 1)^2 with the gradient flattened per
  sample and a ~ U(0, 1) per sample, drawn separately for each critic (`gradient_penalty`);
- schedule: the critics are updated every step, the generator on steps whose 1-based number
  (state step + 1) is a multiple of `n_critic`; the generator's loss is taken with the critics'
  parameters before this step's critic update, as in the original's single forward pass. On
  accelerators a `lax.cond` skips the generator's gradient on critic-only steps; on CPU it is
  computed every step and discarded, because XLA's CPU backend runs that conditional about 20x
  slower than the same code inline;
- `critic_gets_generator_grad` (default True, the original): on generator steps the original
  back-propagates L_G before the critic optimiser's step, so the critics' update also contains
  gan_loss_alpha * d(wgan_g)/d(critic params); False drops that term;
- one Adam for the generator and one for both critics (lr 1e-4, betas 0.5, 0.9); no dropout.

Scoring: each `window_size` window (with its centred `box_size` square blanked) is completed
`num_completions` (M) times with channel dropout switched on (`sample=True`; p = `drop_rate` in
`dropout_layers`); the completion pasted in the hole and the window outside. For the centre y
and the completions' centres y_m, with d_m = ||y - y_m||_2 over all C * box * box values
(`_image`) or over the local critic's flattened trunk features (`_feature`): MCD = min_m d_m,
MeanCD = mean, MedCD = the lower of the two middle values for even M (torch.median). The
window scores form a grid (stride `stride`) that `jaxad.ops.heatmap.place` turns into a map
(`placement`, see that module). Window i of an image (row-major in the grid) draws its M dropout
patterns from `split(fold_in(key, i), M)`, so the map does not depend on `window_batch`.

Per-window normalisation: the original maps each window from [0, 1] with x * 2 - 1
(`yuetal18_normalizer`), the same for every window; no min-max. `dense_map` does that to unit
scale images, and `score` expects batches normalised with mean 0.5 and std 0.5, which is the
same map (checked against `config.data.mean` / `std`).

Image score (`score`): the maximum of the map, i.e. the highest window score up to the
interpolation's overshoot (the original defines no image score).

Metrics of `train_step`: `loss` = L_D (computed every step); `wgan_d`, `gp` (GP_l + GP_g,
unweighted), and the generator's terms `l1`, `ae`, `wgan_g`, `g_loss` for the current
parameters, also computed on critic-only steps (they cost no extra network pass).

Precision (`model.dtype`, `jaxad.precision`): in bfloat16 the generator and the critics
compute in bfloat16, except the contextual attention, which runs in float32 (its cosine scores
are multiplied by 10 before a softmax over every background patch, where bfloat16's 8-bit
mantissa would blur the weights); the completions and critic scores are cast to float32 before
the L1, WGAN and gradient-penalty terms (the penalty's input gradient and its norm are float32)
and before the completion distances (MCD, also in the critic's feature space).

Config keys read (paper defaults):

- `data.channels` (1: grayscale DBT); `data.mean`, `data.std` (all 0.5: the [-1, 1] map
  above).
- `model.width` (ngf 32), `model.critic_width` (ndf 32),
  `model.fast_conv_grad` ('auto'; `jaxad.ops.conv.resolve_fast_kernel_grad`),
  `model.dtype` ('auto'; `jaxad.precision`).
- `picard.window_size` 256: training crop and scoring window (a multiple of 16).
- `picard.box_size` 128: training box, test hole and local critic input (a multiple of 16).
- `picard.max_delta` 32: the hole shrinks by up to max_delta // 2 on each side.
- `picard.mask_batch_same` True: one box per batch.
- `picard.spatial_discounting_gamma` 0.9 (1.0 disables the discounting).
- `picard.coarse_l1_alpha` 1.2, `picard.l1_loss_alpha` 1.2, `picard.ae_loss_alpha` 1.2,
  `picard.global_wgan_loss_alpha` 1.0, `picard.gan_loss_alpha` 0.001,
  `picard.wgan_gp_lambda` 10.0.
- `picard.n_critic` 5; `picard.critic_gets_generator_grad` True.
- `picard.drop_rate` 0.5; `picard.dropout_layers` 'faithful' ('intended', 'all' or a tuple of
  layer names, see `jaxad.models.picard`); `picard.per_sample_attention_mask` False (the
  contextual attention uses the batch's first mask, as the original).
- `picard.num_completions` 10 (M); `picard.metrics` ('MCD_image', 'MCD_feature'), any of
  `METRICS`; `picard.image_metric` 'MCD_image' (the metric of the map and image score).
- `picard.stride` 32; `picard.cover_border` False (True adds a last window flush with the
  border when the stride does not reach it); `picard.placement` 'centred' ('stretch': the
  original's grid stretched bicubically over the image, misaligned; 'averaged': each window's
  score averaged over its pixels).
- `picard.window_batch` 32: windows per compiled call of the scorer (M times as many generator
  samples); memory scales with it, the map does not change.
- `picard.sampling` 'auto': how the M completions of a window batch are computed: 'vmap' (one
  generator pass on window_batch x M samples), 'map' (a `lax.map` over the M completions: M
  passes on window_batch samples, a working set M times smaller), or 'auto' (`resolve_sampling`:
  'map' on CPU, 'vmap' on accelerators). Same keys, same completions whichever runs.
- `picard.ignore_black_regions` False (the original's default): True skips every window that
  holds an exactly black pixel (`black_windows`) in `dense_map`: such windows are not computed
  and score 0 in the grid, as the original ('averaged' placement: they add nothing to the
  average and pixels covered by skipped windows only are 0). `score` applies the same rule to
  its values but, being one fixed-shape jitted call, still computes every window.
- `optim.learning_rate` 1e-4, `optim.b1` 0.5, `optim.b2` 0.9, `optim.eps` 1e-8 (Adam, both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxad import precision
from jaxad.methods.base import Method
from jaxad.models.picard import Generator, GlobalCritic, LocalCritic, compose
from jaxad.ops import conv, heatmap

METRICS = (
    "MCD_image",
    "MCD_feature",
    "MeanCD_image",
    "MeanCD_feature",
    "MedCD_image",
    "MedCD_feature",
)


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not one of {', '.join(map(str, choices))}.")


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam as `torch.optim.Adam(lr, betas=(b1, b2))`: no weight decay, no schedule."""
    return optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def spatial_discounting_mask(size: int, gamma: float) -> np.ndarray:
    """[size, size] float32: max(gamma^min(i, size - i), gamma^min(j, size - j))."""
    i = np.arange(size)
    d = np.asarray(gamma, np.float64) ** np.minimum(i, size - i)
    return np.maximum(d[:, None], d[None, :]).astype(np.float32)


def training_masks(
    key: jax.Array, batch: int, size: int, box: int, max_delta: int, same_box: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random boxes and holes: (top [B], left [B], hole [B, size, size, 1] float32).

    top/left are uniform in {0, ..., size - box - 1}, shared by the batch if `same_box`; the
    hole is the box shrunk by per-sample d_h, d_w in {0, ..., max_delta // 2} on each side.
    """
    k_box, k_delta = jax.random.split(key)
    corners = jax.random.randint(k_box, (1 if same_box else batch, 2), 0, size - box)
    corners = jnp.broadcast_to(corners, (batch, 2))
    deltas = jax.random.randint(k_delta, (batch, 2), 0, max_delta // 2 + 1)
    low, high = corners + deltas, corners + box - deltas
    pixels = jnp.arange(size)
    inside = [(pixels >= low[:, a, None]) & (pixels < high[:, a, None]) for a in (0, 1)]
    hole = inside[0][:, :, None] & inside[1][:, None, :]
    return corners[:, 0], corners[:, 1], hole[..., None].astype(jnp.float32)


def box_crops(images: jax.Array, top: jax.Array, left: jax.Array, box: int, same_box: bool):
    """[B, box, box, C]: each image's box region (one slice when the box is shared)."""
    if same_box:
        n, _, _, c = images.shape
        return jax.lax.dynamic_slice(images, (0, top[0], left[0], 0), (n, box, box, c))
    return jax.vmap(
        lambda im, t, lt: jax.lax.dynamic_slice(im, (t, lt, 0), (box, box, im.shape[-1]))
    )(images, top, left)


def _norm(x: jax.Array) -> jax.Array:
    """L2 norm over the last axis with a zero (not NaN) derivative at 0, as torch.norm."""
    sq = jnp.sum(x * x, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def gradient_penalty(
    critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array, alpha: jax.Array
) -> jax.Array:
    """mean_b (||d critic / d x_hat||_2 - 1)^2 at x_hat = alpha real + (1 - alpha) fake.

    `alpha` is [B, 1, 1, 1]; the gradient of each sample is flattened before its norm.
    """
    x_hat = alpha * real + (1.0 - alpha) * fake
    grads = jax.grad(lambda v: critic(v).sum())(x_hat)
    return jnp.mean((_norm(grads.reshape(grads.shape[0], -1)) - 1.0) ** 2)


def reduce_distances(distances: jax.Array, kind: str) -> jax.Array:
    """[N, M] completion distances -> [N]: 'MCD' min, 'MeanCD' mean, 'MedCD' lower median."""
    if kind == "MCD":
        return distances.min(axis=1)
    if kind == "MeanCD":
        return distances.mean(axis=1)
    if kind == "MedCD":
        return jnp.sort(distances, axis=1)[:, (distances.shape[1] - 1) // 2]
    raise ValueError(f"unknown distance reduction {kind!r}.")


def window_keys(key: jax.Array, first_index, count: int) -> jax.Array:
    """[count] keys fold_in(key, first_index + i): each window's own randomness."""
    indices = jnp.asarray(first_index, jnp.uint32) + jnp.arange(count, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


SAMPLING = ("vmap", "map", "auto")


def resolve_sampling(setting: str, backend: str | None = None) -> str:
    """'vmap' or 'map': how the M completions run; 'auto' picks per backend (default: JAX's).

    'auto' is 'map' on CPU, from bench/picard.py on the 2-core CPU VM (paper model, 256 px
    windows, M = 10, idle machine, 2026-12-06; bench/README.md): 'map' 4.61 s against 'vmap'
    6.48 s per call at window batch 1 (1.41x), 24.0 s against 27.6 s at window batch 4 (1.15x),
    identical scores: XLA's CPU convolutions run at the same rate at batch 1, and the M-fold
    larger working set only costs cache. 'vmap' on GPU and TPU, where one launch on
    window_batch x M samples keeps the device busy (not measured here).
    """
    if setting not in SAMPLING:
        raise ValueError(f"config.picard.sampling={setting!r} is not one of {', '.join(SAMPLING)}.")
    if setting == "auto":
        return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"
    return setting


def is_black(minimum) -> bool:
    """The original's skip rule for one window: its smallest value, mapped with x * 2 - 1 in
    float32 as the networks see it, is exactly -1 (a pixel of exactly 0 in any channel)."""
    return bool(np.float32(np.float64(minimum) * 2.0 - 1.0) == -1.0)


def black_windows(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, window: int):
    """[n_r, n_c] bool: the windows `ignore_black_regions` skips (`is_black` of each window)."""
    return np.array(
        [[is_black(image[r : r + window, c : c + window].min()) for c in cols] for r in rows],
        dtype=bool,
    ).reshape(len(rows), len(cols))


class Picard(Method):
    """The method object the shared loop drives (see `jaxad.methods.base.Method`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.picard
        self.cfg = cfg
        self.channels = int(config.data.channels)
        self.window = int(cfg.window_size)
        self.box = int(cfg.box_size)
        self.stride = int(cfg.stride)
        self.num_completions = int(cfg.num_completions)
        self.window_batch = int(cfg.window_batch)
        self.same_box = bool(cfg.mask_batch_same)
        if self.window % 16 or self.box % 16 or not 0 < self.box < self.window:
            raise ValueError(
                f"config.picard.window_size ({self.window}) and box_size ({self.box}) must be "
                "multiples of 16 with box_size < window_size."
            )
        if not 0 <= cfg.max_delta // 2 < self.box // 2:
            raise ValueError(f"config.picard.max_delta={cfg.max_delta} leaves no hole.")
        for key in ("n_critic", "num_completions", "window_batch", "stride"):
            if int(cfg[key]) < 1:
                raise ValueError(f"config.picard.{key} must be at least 1, got {cfg[key]}.")
        for metric in cfg.metrics:
            _check_choice("picard.metrics", metric, METRICS)
        _check_choice("picard.image_metric", cfg.image_metric, METRICS)
        _check_choice("picard.placement", cfg.placement, heatmap.MODES)
        for stat in ("mean", "std"):
            values = config.data[stat]
            if any(float(v) != 0.5 for v in np.ravel(values)):
                raise ValueError(
                    f"config.data.{stat}={values}: PICARD's networks take x * 2 - 1 of unit-scale "
                    "images, i.e. mean 0.5 and std 0.5 for every channel."
                )
        # The metrics computed by one scorer call: the requested ones and the map's.
        self.metrics = tuple(dict.fromkeys((*cfg.metrics, cfg.image_metric)))
        self.image_metric = cfg.image_metric
        self.sampling = resolve_sampling(cfg.get("sampling", "auto"))
        self.ignore_black_regions = bool(cfg.get("ignore_black_regions", False))

        fast = conv.resolve_fast_kernel_grad(config.model.fast_conv_grad)
        # How generator steps are skipped on critic-only steps: a `lax.cond`, except on the CPU
        # backend, where the step is computed every time and selected (see `train_step`).
        self.select_generator_step = jax.default_backend() == "cpu"
        layers = cfg.dropout_layers
        dtype = precision.model_dtype(config)
        self.generator = Generator(
            channels=self.channels,
            width=config.model.width,
            drop_rate=cfg.drop_rate,
            dropout_layers=layers if isinstance(layers, str) else tuple(layers),
            per_sample_mask=cfg.per_sample_attention_mask,
            dtype=dtype,
            fast_conv_grad=fast,
        )
        critic = dict(
            channels=self.channels,
            width=config.model.critic_width,
            dtype=dtype,
            fast_conv_grad=fast,
        )
        self.local_critic = LocalCritic(input_size=self.box, **critic)
        self.global_critic = GlobalCritic(input_size=self.window, **critic)
        self.g_opt = make_optimizer(config.optim)
        self.d_opt = make_optimizer(config.optim)
        self.sd_mask = spatial_discounting_mask(self.box, cfg.spatial_discounting_gamma)
        # Compiled once per window count; `grid_scores` always sends `window_batch` windows.
        self.window_scores = jax.jit(self.window_scores)
        self.window_scores_at = jax.jit(self.window_scores_at)

    # --- state -------------------------------------------------------------------------------
    def init(self, key: jax.Array, batch: dict) -> dict:
        """The state; shapes come from the config (`window_size`), not from the batch."""
        del batch
        kg, kl, kd = jax.random.split(key, 3)
        x = jnp.zeros((1, self.window, self.window, self.channels))
        g = self.generator.init(kg, x, jnp.zeros((*x.shape[:3], 1)), sample=False)["params"]
        d_local = self.local_critic.init(kl, x[:, : self.box, : self.box])["params"]
        d_global = self.global_critic.init(kd, x)["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "g": {"params": g},
            "d_local": {"params": d_local},
            "d_global": {"params": d_global},
            "g_opt": self.g_opt.init(g),
            "d_opt": self.d_opt.init({"local": d_local, "global": d_global}),
        }

    def inference_state(self, state: dict) -> dict:
        """Scoring needs the generator and the local critic (the feature space)."""
        return {"step": state["step"], "g": state["g"], "d_local": state["d_local"]}

    # --- training ----------------------------------------------------------------------------
    def _reconstruction_terms(self, x1, x2, gt, hole, top, left) -> tuple[jax.Array, jax.Array]:
        """(l1, ae): the discounted box L1 and the known-region L1 of both stages."""
        alpha = self.cfg.coarse_l1_alpha
        crop = lambda im: box_crops(im, top, left, self.box, self.same_box)  # noqa: E731
        sd = jnp.asarray(self.sd_mask)[None, :, :, None]
        local_gt = crop(gt)
        l1 = alpha * jnp.mean(jnp.abs(sd * (crop(compose(gt, x1, hole)) - local_gt)))
        l1 += jnp.mean(jnp.abs(sd * (crop(compose(gt, x2, hole)) - local_gt)))
        known = 1.0 - hole
        ae = alpha * jnp.mean(jnp.abs((x1 - gt) * known)) + jnp.mean(jnp.abs((x2 - gt) * known))
        return l1, ae

    def _critics(self, d_params: dict, local: jax.Array, whole: jax.Array):
        return precision.as_float32(
            (
                self.local_critic.apply({"params": d_params["local"]}, local),
                self.global_critic.apply({"params": d_params["global"]}, whole),
            )
        )

    def train_step(self, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        cfg = self.cfg
        gt = batch["image"]
        n, height, width, channels = gt.shape
        if (height, width, channels) != (self.window, self.window, self.channels):
            raise ValueError(
                f"PICARD trains on [B, {self.window}, {self.window}, {self.channels}] crops "
                f"(picard.window_size, data.channels), got {gt.shape}."
            )
        k_mask, k_local, k_global = jax.random.split(key, 3)
        top, left, hole = training_masks(
            k_mask, n, self.window, self.box, cfg.max_delta, self.same_box
        )
        x = gt * (1.0 - hole)
        crop = lambda im: box_crops(im, top, left, self.box, self.same_box)  # noqa: E731

        def generate(g_params):
            out = self.generator.apply({"params": g_params}, x, hole, sample=False)
            return precision.as_float32(out)

        (x1, x2), g_vjp = jax.vjp(generate, state["g"]["params"])
        fake = jax.lax.stop_gradient(compose(x, x2, hole))
        real_local, fake_local = crop(gt), crop(fake)
        d_params = {"local": state["d_local"]["params"], "global": state["d_global"]["params"]}
        ga = cfg.global_wgan_loss_alpha

        def d_loss_fn(dp):
            # Real and fake in one critic batch, as the original (no batch statistics).
            pred_l, pred_g = self._critics(
                dp, jnp.concatenate([real_local, fake_local]), jnp.concatenate([gt, fake])
            )
            real_l, fake_l, real_g, fake_g = pred_l[:n], pred_l[n:], pred_g[:n], pred_g[n:]
            wgan_d = jnp.mean(fake_l - real_l) + ga * jnp.mean(fake_g - real_g)
            alpha_l = jax.random.uniform(k_local, (n, 1, 1, 1))
            alpha_g = jax.random.uniform(k_global, (n, 1, 1, 1))
            critic_l = lambda v: precision.as_float32(  # noqa: E731
                self.local_critic.apply({"params": dp["local"]}, v)
            )
            critic_g = lambda v: precision.as_float32(  # noqa: E731
                self.global_critic.apply({"params": dp["global"]}, v)
            )
            gp = gradient_penalty(critic_l, real_local, fake_local, alpha_l)
            gp += gradient_penalty(critic_g, gt, fake, alpha_g)
            # The generator's adversarial term for the same parameters, for the metrics.
            wgan_g = -jnp.mean(fake_l) - ga * jnp.mean(fake_g)
            return wgan_d + cfg.wgan_gp_lambda * gp, (wgan_d, gp, wgan_g)

        (d_loss, (wgan_d, gp, wgan_g)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d_params
        )
        l1, ae = self._reconstruction_terms(x1, x2, gt, hole, top, left)
        g_loss = cfg.l1_loss_alpha * l1 + cfg.ae_loss_alpha * ae + cfg.gan_loss_alpha * wgan_g

        def g_loss_fn(outputs, dp):
            y1, y2 = outputs
            rec_l1, rec_ae = self._reconstruction_terms(y1, y2, gt, hole, top, left)
            inpainted = compose(x, y2, hole)
            pred_l, pred_g = self._critics(dp, crop(inpainted), inpainted)
            adversarial = -jnp.mean(pred_l) - ga * jnp.mean(pred_g)
            return (
                cfg.l1_loss_alpha * rec_l1
                + cfg.ae_loss_alpha * rec_ae
                + cfg.gan_loss_alpha * adversarial
            )

        def generator_step(_):
            d_outputs, d_critics = jax.grad(g_loss_fn, argnums=(0, 1))((x1, x2), d_params)
            (g_grads,) = g_vjp(d_outputs)
            updates, g_opt = self.g_opt.update(g_grads, state["g_opt"], state["g"]["params"])
            critic_grads = d_grads
            if cfg.critic_gets_generator_grad:
                critic_grads = jax.tree.map(jnp.add, d_grads, d_critics)
            return optax.apply_updates(state["g"]["params"], updates), g_opt, critic_grads

        def critic_only(_):
            return state["g"]["params"], state["g_opt"], d_grads

        is_g_step = (state["step"] + 1) % cfg.n_critic == 0
        if self.select_generator_step:
            # XLA's CPU backend ran the generator step as a `lax.cond` branch about 20x slower
            # than inline (7 s against 0.36 s for a whole demo step): compute it every step
            # and keep it on generator steps.
            pick = lambda new, old: jnp.where(is_g_step, new, old)  # noqa: E731
            new = generator_step(None)
            old = critic_only(None)
            g_params, g_opt, d_grads = jax.tree.map(pick, new, old)
        else:
            g_params, g_opt, d_grads = jax.lax.cond(is_g_step, generator_step, critic_only, None)
        d_updates, d_opt = self.d_opt.update(d_grads, state["d_opt"], d_params)
        d_params = optax.apply_updates(d_params, d_updates)
        new_state = {
            "step": state["step"] + 1,
            "g": {"params": g_params},
            "d_local": {"params": d_params["local"]},
            "d_global": {"params": d_params["global"]},
            "g_opt": g_opt,
            "d_opt": d_opt,
        }
        metrics = {
            "loss": d_loss,
            "wgan_d": wgan_d,
            "gp": gp,
            "l1": l1,
            "ae": ae,
            "wgan_g": wgan_g,
            "g_loss": g_loss,
        }
        return new_state, metrics

    # --- window scores -----------------------------------------------------------------------
    def test_mask(self) -> np.ndarray:
        """[window, window, 1] float32: the centred `box_size` square, PICARD's test hole."""
        lo = (self.window - self.box) // 2
        mask = np.zeros((self.window, self.window, 1), np.float32)
        mask[lo : lo + self.box, lo : lo + self.box] = 1.0
        return mask

    def _check_windows(self, windows: jax.Array) -> None:
        expected = (self.window, self.window, self.channels)
        if windows.ndim != 4 or tuple(windows.shape[1:]) != expected:
            raise ValueError(
                f"windows must be [N, {', '.join(map(str, expected))}], got {tuple(windows.shape)}."
            )

    def _completions(self, g_params, windows: jax.Array, keys: jax.Array) -> jax.Array:
        mask = jnp.asarray(self.test_mask(), windows.dtype)
        masked = windows * (1.0 - mask)

        def one(x, k):  # one window, one dropout key
            _, x2 = self.generator.apply(
                {"params": g_params}, x[None], mask[None], sample=True, rngs={"dropout": k}
            )
            return compose(x, precision.as_float32(x2[0]), mask)

        split = jax.vmap(lambda k: jax.random.split(k, self.num_completions))(keys)  # [N, M]
        if self.sampling == "vmap":  # one pass on N x M samples
            return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(masked, split)
        # 'map': completion m of every window per step, M passes on N samples.
        samples = jax.lax.map(lambda k: jax.vmap(one)(masked, k), split.T)
        return jnp.swapaxes(samples, 0, 1)

    def completions(self, state: dict, windows: jax.Array, key: jax.Array, first_index=0):
        """[N, M, S, S, C]: M completions of each window (hole: the centred box), in [-1, 1].

        Window i uses the keys `split(fold_in(key, first_index + i), M)`; outside the hole each
        completion equals its window.
        """
        self._check_windows(windows)
        keys = window_keys(key, first_index, windows.shape[0])
        return self._completions(state["g"]["params"], windows, keys)

    def _keyed_scores(self, state: dict, windows: jax.Array, keys: jax.Array) -> dict:
        samples = self._completions(state["g"]["params"], windows, keys)
        lo, hi = (self.window - self.box) // 2, (self.window + self.box) // 2
        truth, centres = windows[:, lo:hi, lo:hi], samples[:, :, lo:hi, lo:hi]
        n, m = centres.shape[:2]
        distances = {}
        if any(k.endswith("_image") for k in self.metrics):
            diff = (truth[:, None] - centres).reshape(n, m, -1)
            distances["image"] = _norm(diff)
        if any(k.endswith("_feature") for k in self.metrics):
            variables = {"params": state["d_local"]["params"]}
            features = lambda v: precision.as_float32(  # noqa: E731
                self.local_critic.apply(variables, v, method="features")
            ).reshape(v.shape[0], -1)
            f_truth = features(truth)
            f_centres = features(centres.reshape(n * m, *centres.shape[2:])).reshape(n, m, -1)
            distances["feature"] = _norm(f_truth[:, None] - f_centres)
        out = {}
        for metric in self.metrics:
            kind, space = metric.split("_")
            out[metric] = reduce_distances(distances[space], kind)
        return out

    def window_scores(
        self, state: dict, windows: jax.Array, key: jax.Array, first_index=0
    ) -> dict[str, jax.Array]:
        """{metric: [N]} for windows [N, S, S, C] in [-1, 1]; pure, jitted on the instance.

        Computes the configured `metrics` and `image_metric` in one pass (one set of M
        completions per window, keys as in `completions`).
        """
        self._check_windows(windows)
        return self._keyed_scores(state, windows, window_keys(key, first_index, len(windows)))

    def window_scores_at(
        self, state: dict, windows: jax.Array, key: jax.Array, indices: jax.Array
    ) -> dict[str, jax.Array]:
        """As `window_scores`, window i keyed by `fold_in(key, indices[i])`: windows need not be
        consecutive in the grid (`ignore_black_regions` leaves some out)."""
        self._check_windows(windows)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            key, jnp.asarray(indices, jnp.uint32)
        )
        return self._keyed_scores(state, windows, keys)

    # --- dense heatmaps ----------------------------------------------------------------------
    def _check_image(self, image) -> np.ndarray:
        image = np.asarray(image, np.float32)
        if image.ndim == 2 and self.channels == 1:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] != self.channels:
            raise ValueError(
                f"expected an [H, W, {self.channels}] image (data.channels={self.channels}), "
                f"got shape {image.shape}."
            )
        if min(image.shape[:2]) < self.window:
            raise ValueError(
                f"the image ({image.shape[0]}x{image.shape[1]}) is smaller than PICARD's "
                f"{self.window}x{self.window} window (picard.window_size)."
            )
        return image

    def grid(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The window corners (rows, cols) used for a height x width image."""
        return heatmap.window_grid(
            height, width, self.window, self.stride, cover_border=self.cfg.cover_border
        )

    def grid_scores(self, state: dict, image, key: jax.Array) -> dict[str, np.ndarray]:
        """{metric: [n_r, n_c]} window scores of one unit-scale [H, W, C] image.

        Windows are cut on the host and sent `window_batch` at a time (the last chunk padded)
        through one compiled scorer, so device memory is bounded by the chunk. With
        `ignore_black_regions` the windows `black_windows` finds are not sent and score 0.
        """
        return self._grid_scores(state, image, key)[0]

    def _grid_scores(self, state: dict, image, key: jax.Array):
        """(scores as `grid_scores`, [n_r, n_c] bool of the computed windows or None: all)."""
        image = self._check_image(image)
        rows, cols = self.grid(*image.shape[:2])
        corners = [(r, c) for r in rows for c in cols]
        computed = None
        todo = np.arange(len(corners))
        if self.ignore_black_regions:
            computed = ~black_windows(image, rows, cols, self.window)
            todo = np.flatnonzero(computed.ravel())
        params = {"g": state["g"], "d_local": state["d_local"]}
        values = {m: np.zeros(len(corners), np.float32) for m in self.metrics}
        for start in range(0, todo.size, self.window_batch):
            part = todo[start : start + self.window_batch]
            windows = np.zeros((self.window_batch, self.window, self.window, self.channels))
            indices = np.zeros(self.window_batch, np.uint32)  # grid indices: the windows' keys
            indices[: part.size] = part
            for i, j in enumerate(part):
                r, c = corners[j]
                windows[i] = image[r : r + self.window, c : c + self.window]
            windows = (windows * 2.0 - 1.0).astype(np.float32)  # the original's x * 2 - 1
            scores = self.window_scores_at(params, windows, key, indices)
            for metric in self.metrics:
                values[metric][part] = np.asarray(scores[metric])[: part.size]
        grids = {m: v.reshape(rows.size, cols.size) for m, v in values.items()}
        return grids, computed

    def _place(self, grid, computed, height: int, width: int):
        """The map of a score grid; `computed` (bool grid or None) as the original treats skips.

        Skipped windows hold 0 in the grid, which 'centred' and 'stretch' interpolate as any
        score; 'averaged' leaves them out of the average (0 where no computed window covers).
        """

        def place(g):
            return heatmap.place(
                g,
                height,
                width,
                self.window,
                self.stride,
                self.cfg.placement,
                cover_border=self.cfg.cover_border,
            )

        if computed is None or self.cfg.placement != "averaged":
            return place(grid)
        xp = jnp if isinstance(grid, jax.Array) else np
        weight = place(xp.asarray(computed, grid.dtype))
        total = place(grid * computed)
        covered = weight > 0
        return xp.where(covered, total / xp.where(covered, weight, 1), 0).astype(xp.float32)

    def dense_map(self, state: dict, image, key: jax.Array, metric: str | None = None):
        """[H, W] float32 anomaly map of one unit-scale [H, W, C] image (H, W >= window).

        `metric` defaults to `picard.image_metric` (it must be among the computed ones).
        """
        metric = metric or self.image_metric
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} is not computed; computed: {self.metrics}.")
        grids, computed = self._grid_scores(state, image, key)
        height, width = np.shape(image)[:2]
        return self._place(grids[metric], computed, height, width)

    # --- the protocol's scoring --------------------------------------------------------------
    def score(self, state: dict, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """The dense map of each image ([-1, 1], mean/std 0.5) and its maximum as image score.

        Image b is scored as `dense_map(image_b, fold_in(key, b))` would: the same windows,
        keys and placement, here inside one jitted function (`window_batch` windows per
        iteration of a `lax.map`).
        """
        images = batch["image"]
        n, height, width, channels = images.shape
        if channels != self.channels or min(height, width) < self.window:
            raise ValueError(
                f"PICARD scores [B, H, W, {self.channels}] images with H, W >= {self.window}, "
                f"got {images.shape}."
            )
        rows, cols = self.grid(height, width)
        per_image = rows.size * cols.size
        b = np.repeat(np.arange(n), per_image)
        j = np.tile(np.arange(per_image), n)
        r, c = rows[j // cols.size], cols[j % cols.size]
        keys = jax.vmap(lambda bi, ji: jax.random.fold_in(jax.random.fold_in(key, bi), ji))(
            jnp.asarray(b, jnp.uint32), jnp.asarray(j, jnp.uint32)
        )
        params = {"g": state["g"], "d_local": state["d_local"]}
        size = (1, self.window, self.window, channels)

        def one(args):
            bi, ri, ci, ki = args
            window = jax.lax.dynamic_slice(images, (bi, ri, ci, 0), size)
            out = {k: v[0] for k, v in self._keyed_scores(params, window, ki[None]).items()}
            # `ignore_black_regions`: the same values as `dense_map` (computed all the same).
            out["computed"] = jnp.min(window) != -1.0
            return out

        xs = (jnp.asarray(b, jnp.int32), jnp.asarray(r, jnp.int32), jnp.asarray(c, jnp.int32), keys)
        scores = jax.lax.map(one, xs, batch_size=self.window_batch)
        grid = scores[self.image_metric].reshape(n, rows.size, cols.size)
        computed = None
        if self.ignore_black_regions:
            computed = scores["computed"].reshape(grid.shape)
            grid = jnp.where(computed, grid, 0.0)
        pixel_map = self._place(grid, computed, height, width)
        return {"map": pixel_map, "score": pixel_map.max(axis=(1, 2))}


def create(config: ml_collections.ConfigDict) -> Picard:
    return Picard(config)
