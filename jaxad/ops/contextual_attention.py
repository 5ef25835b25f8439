"""Contextual attention (Yu et al. 2018) with PICARD's settings, batched and jittable.

The layer fills the hole of a feature map with a soft copy of known-region patches. PICARD's fine
generator applies it to one 64 x 64 map (f = b, 1/4 of the 256 x 256 window) with kernel 3,
stride 1, rate 2, a 3 x 3 fusion and softmax scale 10:

1. raw patches: 4 x 4 patches of b every 2 pixels, zero "same" padding as TensorFlow pads (an odd
   total puts the extra row/column at the bottom/right): L = (H/2)(W/2) patches of C x 4 x 4;
2. f and b are downsampled by 2 (nearest: every second pixel, from 0);
3. the L matching filters are the 3 x 3 patches (stride 1, same padding) of the downsampled b;
4. the mask (at image resolution, 4x the feature size, 1 in the hole) is downsampled by 8
   (nearest) and a patch is valid iff the mean of its 3 x 3 mask patch (zero-padded) is 0; the
   original takes the mask of the first sample for the whole batch;
5. each filter is divided by sqrt(sum(w^2 + 1e-4)), the 1e-4 added per element, and correlated
   with the same-padded downsampled f: scores [L, P] for P = L foreground positions (the
   foreground is not normalised, so a score is not a cosine);
6. fusion: the [L, P] matrix is correlated with the 3 x 3 identity (a sum over its diagonal
   neighbours, in the flattened row-major index, so neighbours wrap across image rows), then
   both spatial index pairs are read column-major, fused again and put back;
7. scores are multiplied by the validity, softmaxed over L with scale 10 (invalid patches keep a
   score of 0 and so a share of the softmax) and multiplied by the validity again;
8. the raw patches are pasted with the attention weights: a transposed conv (stride 2, padding 1)
   of the [L, H/2, W/2] attention map with the raw patches as kernels, divided by 4.

The original loops over the batch and builds a colour flow image of the argmax offsets on the
CPU; the flow image is only a visualisation and is not computed here. Here the matching (step 5)
and the paste (step 8) are batched matrix products, patches are strided slices and the transposed
conv's overlap-add is four padded sums, so the layer vectorises over the batch and differentiates
with matrix products. Sizes: the feature map must have an even height and width and the mask
4x its size (the original is only used at 256 x 256 windows; any multiple of 8 works here).
Memory per sample: the score matrix has (HW/4)^2 entries (1 M at 64 x 64) and the paste product
(HW/4) x 16C (2 M at C = 128).
"""

import jax
import jax.numpy as jnp

RATE = 2  # matching at 1/RATE scale; raw patches are 2 * RATE wide, taken every RATE pixels
KSIZE = 3  # matching patch size (stride 1)
MASK_SCALE = 4 * RATE  # image resolution / matching resolution
EPSILON = 1e-4  # added to every squared filter element before the norm


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" zero padding (low, high) of one axis; the extra pixel goes high."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    return total // 2, total - total // 2


def patches(x: jax.Array, kernel: int, stride: int) -> jax.Array:
    """[N, H, W, C] -> [N, Ho, Wo, k, k, C]: k x k patches every `stride` pixels, same padding."""
    pads = [same_pads(x.shape[axis], kernel, stride) for axis in (1, 2)]
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho = (x.shape[1] - kernel) // stride + 1
    wo = (x.shape[2] - kernel) // stride + 1
    rows = []
    for i in range(kernel):
        cols = [
            x[:, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride]
            for j in range(kernel)
        ]
        rows.append(jnp.stack(cols, axis=3))
    return jnp.stack(rows, axis=3)


def _diagonal_sum(scores: jax.Array) -> jax.Array:
    """[N, L, P] correlated with the 3 x 3 identity, zero "same" padding (step 6)."""
    padded = jnp.pad(scores, ((0, 0), (1, 1), (1, 1)))
    return padded[:, :-2, :-2] + padded[:, 1:-1, 1:-1] + padded[:, 2:, 2:]


def fuse(scores: jax.Array, height: int, width: int) -> jax.Array:
    """Step 6 on [N, L, P] scores, L and P both row-major over `height` x `width` positions."""
    n = scores.shape[0]
    scores = _diagonal_sum(scores)
    # Read both index pairs column-major (a transpose of the H and W roles), fuse, read back.
    swapped = scores.reshape(n, height, width, height, width).transpose(0, 2, 1, 4, 3)
    swapped = _diagonal_sum(swapped.reshape(n, width * height, width * height))
    swapped = swapped.reshape(n, width, height, width, height).transpose(0, 2, 1, 4, 3)
    return swapped.reshape(n, height * width, height * width)


def valid_patches(mask: jax.Array) -> jax.Array:
    """[N, 8h, 8w, 1] mask -> [N, h w] float, 1 where the 3 x 3 matching patch is fully known."""
    small = mask[:, ::MASK_SCALE, ::MASK_SCALE, :]
    windows = patches(small, KSIZE, 1)  # [N, h, w, 3, 3, 1]
    valid = windows.mean(axis=(3, 4, 5)) == 0
    return valid.reshape(mask.shape[0], -1).astype(mask.dtype)


def overlap_add(blocks: jax.Array) -> jax.Array:
    """[N, h, w, 4, 4, C] -> [N, 2h, 2w, C]: 4 x 4 blocks placed every 2 pixels, cropped by 1.

    This is the data movement of a transposed conv with kernel 4, stride 2 and padding 1: block
    (i, j) lands at rows 2i - 1 ... 2i + 2 and columns 2j - 1 ... 2j + 2. Each kernel offset
    a = 2q + r lands on output phase r shifted by q blocks, so each of the four phases is a sum of
    four shifted block maps, and the phases interleave into the output.
    """
    n, h, w, _, _, c = blocks.shape
    blocks = blocks.reshape(n, h, w, 2, 2, 2, 2, c)  # a -> (q, r), b -> (t, s)
    phases = 0
    for q in (0, 1):
        for t in (0, 1):
            shifted = blocks[:, :, :, q, :, t]  # [N, h, w, r, s, C]
            phases = phases + jnp.pad(
                shifted, ((0, 0), (q, 1 - q), (t, 1 - t), (0, 0), (0, 0), (0, 0))
            )
    full = phases.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h + 2, 2 * w + 2, c)
    return full[:, 1:-1, 1:-1]


def contextual_attention(
    f: jax.Array,
    b: jax.Array,
    mask: jax.Array,
    *,
    softmax_scale: float = 10.0,
    fuse_scores: bool = True,
    per_sample_mask: bool = False,
) -> jax.Array:
    """Fills foreground `f` with attention-weighted patches of background `b` (steps 1-8).

    `f`, `b`: [N, H, W, C] features (H, W even; PICARD passes the same map twice). `mask`:
    [N, 4H, 4W, 1] at image resolution, 1 in the hole. By default every sample uses the validity
    of `mask[0]`, as the original does (in PICARD's inference all masks of a batch are equal; in
    its training the hole shrinks per sample, so the attention of other samples sees sample 0's
    hole). `per_sample_mask=True` uses each sample's own mask. Returns [N, H, W, C].
    """
    n, height, width, channels = f.shape
    if b.shape != f.shape:
        raise ValueError(f"f and b must have the same shape, got {f.shape} and {b.shape}.")
    if height % RATE or width % RATE:
        raise ValueError(f"contextual attention needs an even feature size, got {height}x{width}.")
    if mask.shape != (n, MASK_SCALE // RATE * height, MASK_SCALE // RATE * width, 1):
        raise ValueError(
            f"mask must be [N, {MASK_SCALE // RATE}H, {MASK_SCALE // RATE}W, 1] for features "
            f"{f.shape}, got {mask.shape}."
        )
    h, w = height // RATE, width // RATE

    raw = patches(b, 2 * RATE, RATE).reshape(n, h * w, -1)  # step 1: [N, L, 16 C]
    f_small, b_small = f[:, ::RATE, ::RATE], b[:, ::RATE, ::RATE]  # step 2
    filters = patches(b_small, KSIZE, 1).reshape(n, h * w, -1)  # step 3: [N, L, 9 C]
    if not per_sample_mask:  # step 4
        mask = mask[:1]
    valid = valid_patches(mask.astype(f.dtype))[:, :, None]  # [N or 1, L, 1]

    norms = jnp.sqrt(jnp.sum(filters**2 + EPSILON, axis=-1, keepdims=True))  # step 5
    queries = patches(f_small, KSIZE, 1).reshape(n, h * w, -1)  # [N, P, 9 C]
    scores = jnp.einsum("nlk,npk->nlp", filters / norms, queries)  # [N, L, P]
    if fuse_scores:  # step 6
        scores = fuse(scores, h, w)

    scores = scores * valid  # step 7
    attention = jax.nn.softmax(scores.astype(jnp.float32) * softmax_scale, axis=1)
    attention = attention.astype(f.dtype) * valid

    pasted = jnp.einsum("nlp,nlk->npk", attention, raw)  # step 8
    pasted = pasted.reshape(n, h, w, 2 * RATE, 2 * RATE, channels)
    return overlap_add(pasted) / 4.0
