"""Lattice masks of Lesion2Void (noise2self-style masking).

A mask is a regular lattice of `patch` x `patch` squares repeating every `grid` pixels, shifted by
a global offset (the "phase"). Training draws one random phase per batch, blanks the squares with
noise and asks the network to reconstruct them; testing averages the residuals over a fixed set of
phases that cover the image evenly.

Conventions of the reference code, kept here:
- a square's top-left (i, j) must satisfy i % grid == offset_row, j % grid == offset_col and,
  strictly, i < H - patch and j < W - patch; at 224 px with patch 16 the last row and column are
  never masked, rows and columns 216-222 only by offsets 9-15 and so never by the test phases;
- a phase index k in [0, grid^2) splits into offset_row = k % grid, offset_col = (k // grid) % grid;
- one mask and one noise map are shared by every image and channel of a batch.

All functions are pure and jittable; offsets and phases may be traced, sizes must be static.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _axis_cover(size: int, offset: jax.Array, grid: int, patch: int) -> jax.Array:
    """Bool [size]: positions covered by a square whose start is a valid lattice top-left."""
    position = jnp.arange(size)
    is_start = (position % grid == offset) & (position < size - patch)
    # Position r is covered if some start lies in (r - patch, r]: a windowed count of starts.
    starts_up_to = jnp.cumsum(is_start)
    starts_before_window = jnp.concatenate([jnp.zeros(patch, starts_up_to.dtype), starts_up_to])
    return starts_up_to - starts_before_window[:size] > 0


def lattice_mask(
    height: int,
    width: int,
    offset_row: jax.Array | int,
    offset_col: jax.Array | int,
    *,
    grid: int = 48,
    patch: int = 16,
) -> jax.Array:
    """Float32 [height, width] mask, 1 on the lattice squares of the given offsets (in [0, grid)).

    The squares form a product set of row and column starts, so the mask is the outer product of the
    two covered axes.
    """
    rows = _axis_cover(height, offset_row, grid, patch)
    cols = _axis_cover(width, offset_col, grid, patch)
    return (rows[:, None] & cols[None, :]).astype(jnp.float32)


def phase_to_offsets(k: jax.Array | int, grid: int) -> tuple[jax.Array, jax.Array]:
    """(offset_row, offset_col) of phase k: rows take k % grid, columns (k // grid) % grid."""
    k = jnp.asarray(k)
    return k % grid, (k // grid) % grid


def random_phase(key: jax.Array, grid: int) -> jax.Array:
    """A phase drawn uniformly from [0, grid^2), as int32 scalar."""
    return jax.random.randint(key, (), 0, grid * grid, dtype=jnp.int32)


def test_phases(grid: int = 48, step: int = 8) -> jax.Array:
    """Int32 [n] phases, ascending, whose row and column offsets are both multiples of `step`.

    The reference uses step = patch / 2: 36 phases at grid 48, offsets {0, 8, ..., 40} per axis. It
    selects k % step == 0 and (k // grid) % step == 0, the same set when `step` divides `grid`.
    """
    k = np.arange(grid * grid)
    keep = ((k % grid) % step == 0) & (((k // grid) % grid) % step == 0)
    return jnp.asarray(k[keep], dtype=jnp.int32)


# Keeps pytest from collecting this function when a test module imports it by name.
test_phases.__test__ = False


def fill_masked(images: jax.Array, mask: jax.Array, noise: jax.Array) -> jax.Array:
    """Replaces the masked pixels of [B, H, W, C] `images` by `noise`, leaving the others unchanged.

    `mask` and `noise` are [H, W] and shared by every image and channel, as in the reference (which
    fills with one U(-1, 1) map in normalised units). The blend is exact for a 0/1 mask.
    """
    mask = mask[:, :, None].astype(images.dtype)
    noise = noise[:, :, None].astype(images.dtype)
    return images * (1 - mask) + noise * mask
