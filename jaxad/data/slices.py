"""Turning 3-D volumes into the 2-D training slices of the MOOD DPA solution.

The MOOD 2020 DPA solution (Shvetsova et al.) cut every volume into all of its slices along one
axis, resized each slice to 256 x 256 with MONAI's default "area" mode and dropped slices with
fewer than 4000 positive pixels (mostly air). These are small pure numpy functions, shared by
the `mood` tfds builder (`data_builders/mood`) and the reader of a user's own NIfTI volumes
(`jaxad.data.nifti`), so that both prepare slices the same way:

- `area_resize`: adaptive average pooling, what MONAI's and torch's "area" mode compute.
- `max_resize`: adaptive max pooling over the same windows, for label masks: a pixel is
  anomalous if any voxel it covers is, so small anomalies survive downsampling.
- `keep_slice`: the filter.
- `slice_along`, `prepare_slice`: the steps put together for one slice.
- `binarize_label`: MOOD's voxel labels as the official evaluation reads them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The solution's defaults (save_2D.py: `-r 256`, filter on, threshold 4000 at 256 x 256).
SIZE = 256
MIN_NONZERO = 4000


def pooling_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """The [start, end) input range of each output pixel of adaptive pooling.

    torch's rule: start = floor(i * n_in / n_out), end = ceil((i + 1) * n_in / n_out). Windows
    tile the input when n_out divides n_in, overlap by one pixel otherwise, and repeat input
    pixels when upsampling (n_out > n_in).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"Cannot pool {n_in} pixels into {n_out}.")
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


def _pool_axis(x: np.ndarray, axis: int, n_out: int, reduce: Callable) -> np.ndarray:
    """Adaptive pooling of `x` along one axis with `reduce` (np.mean or np.max)."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if n_in % n_out == 0:  # Equal, disjoint windows: one reshape, no Python loop.
        shape = x.shape[:axis] + (n_out, n_in // n_out) + x.shape[axis + 1 :]
        return reduce(x.reshape(shape), axis=axis + 1)
    windows = pooling_windows(n_in, n_out)
    if reduce is np.mean and max(end - start for start, end in windows) < _SEQUENTIAL:
        return _window_means(x, axis, windows)
    return _pool_windows(x, axis, windows, reduce)


def _pool_windows(
    x: np.ndarray, axis: int, windows: list[tuple[int, int]], reduce: Callable
) -> np.ndarray:
    """`reduce` over each window, one numpy call per window: the reference `_window_means`
    must equal."""
    parts = [
        reduce(np.take(x, range(start, end), axis=axis), axis=axis, keepdims=True)
        for start, end in windows
    ]
    return np.concatenate(parts, axis=axis)


# numpy sums fewer than 8 float32 values one after the other from 0 (its pairwise summation
# only splits longer runs), so windows shorter than this can be summed in that order for all
# windows at once.
_SEQUENTIAL = 8


def _window_means(x: np.ndarray, axis: int, windows: list[tuple[int, int]]) -> np.ndarray:
    """float32 means over windows shorter than `_SEQUENTIAL`, equal to the bit to `np.mean`.

    The k-th values of all windows are added in one call, in numpy's order (from +0, first to
    last), then divided by the window lengths: a few numpy calls instead of one per window,
    e.g. 256 -> 224 or 240 -> 256 pixels.
    """
    starts = np.array([start for start, _ in windows])
    lengths = np.array([end - start for start, end in windows])
    rows = np.moveaxis(np.asarray(x, dtype=np.float32), axis, 0)
    shape = (-1,) + (1,) * (rows.ndim - 1)
    total = np.zeros((len(windows),) + rows.shape[1:], np.float32)
    for k in range(int(lengths.max())):
        taken = rows[np.minimum(starts + k, rows.shape[0] - 1)]
        np.add(total, taken, out=total, where=(lengths > k).reshape(shape))
    means = total / lengths.astype(np.float32).reshape(shape)
    return np.moveaxis(means, 0, axis)


def area_resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """float32 [h, w] adaptive average pooling of a 2-D `image` (MONAI/torch "area" mode).

    Each output pixel is the mean of its input window (`pooling_windows` on each axis). The
    windows are rectangles, so pooling rows then columns gives the same means. Computed in
    float32, as MONAI does whatever the input dtype.
    """
    h, w = (size, size) if isinstance(size, int) else size
    out = np.asarray(image, dtype=np.float32)
    out = _pool_axis(_pool_axis(out, 0, h, np.mean), 1, w, np.mean)
    return np.array(out, dtype=np.float32)  # A copy even when nothing was pooled.


def max_resize(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Adaptive max pooling of a 2-D `mask` over the windows of `area_resize` (same dtype)."""
    h, w = (size, size) if isinstance(size, int) else size
    out = _pool_axis(_pool_axis(np.asarray(mask), 0, h, np.max), 1, w, np.max)
    return np.array(out)


def keep_slice(image: np.ndarray, min_nonzero: int = MIN_NONZERO) -> bool:
    """Whether a slice has at least `min_nonzero` pixels > 0 (the solution's filter).

    The solution counts positive pixels, which for MOOD's non-negative intensities are the
    non-zero ones; apply it after resizing, as the threshold is a count at that size.
    """
    return int(np.count_nonzero(image > 0)) >= min_nonzero


def slice_along(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D slice `index` of a 3-D volume along `axis` (a view, no copy)."""
    if volume.ndim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"Need a 3-D volume and an axis in 0-2, got {volume.shape}, {axis}.")
    return volume[(slice(None),) * axis + (index,)]


def prepare_slice(
    image: np.ndarray, size: int | None = SIZE, min_nonzero: int | None = MIN_NONZERO
) -> np.ndarray | None:
    """A training slice: `area_resize` to `size` (None: keep the size), then the filter.

    Returns the float32 slice, or None if it has fewer than `min_nonzero` positive pixels
    (None: no filter).
    """
    out = area_resize(image, size) if size else np.array(image, dtype=np.float32)
    if min_nonzero is not None and not keep_slice(out, min_nonzero):
        return None
    return out


def binarize_label(label: np.ndarray) -> np.ndarray:
    """uint8 voxel labels in {0, 1} as MOOD's evaluation reads them: rint, clip to [0, 1], == 1."""
    return (np.clip(np.rint(label), 0, 1) == 1).astype(np.uint8)
