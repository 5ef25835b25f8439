"""The MOOD 2020 DPA submission pipeline: axis models -> pixel maps or sample scores per volume.

For each NIfTI volume and each trained axis model (axis a, the slicing axis it was trained on):

1. Slice selection: a slice along a is kept when the SUM of its intensities at native
   resolution exceeds 4000 (`min_intensity_sum`; it is not the training filter's pixel count).
   The submission's 4000 is its training filter's (4000 positive pixels of a 256^2 slice), for
   MOOD's 256^3 and 512^3 volumes. By default (`"auto"`) each axis model uses its own training
   filter (`data.min_nonzero`), scaled down by the slice area when the volume's slices are
   smaller than the slices it was filtered at (`data.resize`; 0: the volumes' own size, taken
   as the same): 4000 for MOOD's volumes as in the submission, 1000 for 128^3 volumes, and the
   model's own threshold for models trained without the resize. A fixed 4000 would drop every
   slice of a 128^3 volume in [0, 1] (their largest sum is about 3,900).
2. Each kept slice is resized to the model's input size (128) with Pillow's bilinear filter,
   which widens its triangle kernel when downsampling (antialiasing): `jax.image.resize(...,
   "linear", antialias=True)` computes the same, to float32 rounding. Then x -> 2x - 1.
3. Reconstruction and VGG19 features of the slice and of its reconstruction, in jitted batches of
   `batch_size` slices (the last one padded, so every model compiles once per volume shape).
4. The pixelwise relative perceptual L1 with ONE denominator per volume (the mean |f(x)| over all
   kept slices, channels and positions; the solution's 3-D mode), averaged over channels and
   resized bilinearly (align_corners=False) to the input size.
5. Zero maps for the skipped slices, the slice index moved back to axis a, and a trilinear resize
   WITHOUT antialiasing (PyTorch's `interpolate`) to the intermediate cube (128^3).
6. Over the models: Sum += pred, Cnt += (pred > 0); P = Sum / (Cnt + (Cnt == 0)) / 100, the
   mean over the models positive at a voxel, scaled into [0, 1] where the official evaluation
   clips.

Sample task: max(P) written as `str(float)` to `OUT/<file name>.txt`. Pixel task: P resized
trilinearly (align_corners=False) to the input's shape, written as float32 NIfTI with the
input's affine and header to `OUT/<file name>`.

Everything after reading runs on the device; Python loops only over models and chunks of slices.

Open choices (the default reproduces the submission):
- `contiguous_slices=True`: the original counts skipped slices as "before" the first kept one or
  "after" it and re-inserts them there, i.e. it assumes the kept slices are contiguous. A skipped
  slice between kept ones shifts every later map by one position. The submission ran this way,
  so it is the default; `False` puts every map at its own slice position (the same whenever the
  kept slices are contiguous, as in most scans).
- A model that keeps no slice of a volume contributes nothing (zero map, not counted in Cnt);
  the original stops with an error on such a volume.
- The maps are accumulated in float32 (the original adds float32 maps into float64 arrays); the
  difference is below float32 rounding of the result.
- Volumes are read as float32 (`get_fdata(dtype=float32)`); the original reads float64 and casts
  each slice to float32, the same values unless the file stores scaled integers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxad import paths as jpaths  # `paths` names lists of volumes here.
from jaxad.models.dpa import Autoencoder
from jaxad.models.vgg import LAYER_NAMES, VGG19Features
from jaxad.ops import perceptual

TASKS = ("pixel", "sample")
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# The submission's settings (submission_data/configs/*.yaml and predict_3d.py).
MIN_INTENSITY_SUM = 4000.0
TRAIN_RESIZE = 256  # the side of the slices the submission's training filter counted on
AUTO = "auto"  # `Options.min_intensity_sum`: each model's own training filter (see above)
CUBE_SIZE = 128
BATCH_SIZE = 128
SCALE = 100.0


class InputError(ValueError):
    """A bad input folder or volume; the message is one line naming the path."""


@dataclasses.dataclass(frozen=True)
class AxisModel:
    """One trained axis model: autoencoder and frozen VGG19 parameters plus their settings."""

    axis: int
    ae: Any  # `Autoencoder` params.
    vgg: Any  # `VGG19Features` params.
    nf: int = 128
    latent_dim: int = 128
    vgg_layer: str = "r32"
    image_size: int = 128
    name: str = ""
    vgg_width: int = 64  # `VGG19Features.width`: 64 is VGG19 (smaller only in CPU demos)
    # The training slice filter (`data.min_nonzero` positive pixels after resizing to
    # `data.resize`, 0: no resize), from which "auto" slice selection derives its threshold.
    min_nonzero: float = MIN_INTENSITY_SUM
    train_resize: int = TRAIN_RESIZE

    def __post_init__(self):
        if self.axis not in (0, 1, 2):
            raise ValueError(f"{self.name or 'model'}: axis must be 0, 1 or 2, got {self.axis}.")
        if self.vgg_layer not in LAYER_NAMES:
            raise ValueError(f"{self.name or 'model'}: unknown VGG19 layer {self.vgg_layer!r}.")

    @property
    def spec(self) -> tuple[int, int, int, str, int]:
        """What the compiled network depends on, besides the parameters."""
        return (self.nf, self.latent_dim, self.image_size, self.vgg_layer, self.vgg_width)


@dataclasses.dataclass(frozen=True)
class Options:
    """Pipeline settings; the defaults are the submission's."""

    cube_size: int = CUBE_SIZE
    batch_size: int = BATCH_SIZE
    # Keep a slice when its intensity sum exceeds this; None keeps every slice (the original's
    # do_not_process_small_area=False); "auto": each model's training filter, see `threshold`.
    min_intensity_sum: float | str | None = AUTO
    contiguous_slices: bool = True  # The original's re-insertion; see the module docstring.
    scale: float = SCALE

    def __post_init__(self):
        if self.cube_size < 1 or self.batch_size < 1:
            raise ValueError(f"cube_size and batch_size must be positive: {self}.")
        if isinstance(self.min_intensity_sum, str) and self.min_intensity_sum != AUTO:
            raise ValueError(
                f"min_intensity_sum must be a number, None or {AUTO!r}, "
                f"got {self.min_intensity_sum!r}."
            )


def threshold(model: AxisModel, shape: Sequence[int], options: Options = Options()) -> float | None:
    """The intensity-sum threshold of `model`'s slices of a volume of `shape` (None: keep all).

    "auto": the model's training filter scaled by min(1, slice area / area it was filtered
    at), so that MOOD's 256^2 and 512^2 slices get the submission's 4000 and smaller volumes a
    proportionally smaller threshold.
    """
    if options.min_intensity_sum != AUTO:
        return options.min_intensity_sum
    if model.train_resize <= 0:
        return float(model.min_nonzero)
    h, w = (n for a, n in enumerate(shape) if a != model.axis)
    return float(model.min_nonzero) * min(1.0, h * w / model.train_resize**2)


# ---------------------------------------------------------------------------------------------
# Slice selection
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="axis")
def _slice_sums(volume: jax.Array, axis: int) -> jax.Array:
    others = tuple(a for a in range(3) if a != axis)
    return volume.sum(axis=others)


def slice_sums(volume: jax.Array, axis: int) -> np.ndarray:
    """float32 intensity sum of every slice along `axis` (the original sums float32 slices)."""
    return np.asarray(_slice_sums(volume, axis))


def select_slices(
    sums: np.ndarray, min_intensity_sum: float | None, contiguous: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(kept slice indices, the position each kept slice's map takes in the stacked volume).

    `contiguous` reproduces the original: with z = the number of skipped slices before the first
    kept one, kept slice k goes to position z + k, whatever gaps lie between kept slices.
    Otherwise each map stays at its own slice index.
    """
    sums = np.asarray(sums)
    keep = np.ones(sums.shape, bool) if min_intensity_sum is None else sums > min_intensity_sum
    kept = np.flatnonzero(keep)
    if contiguous and kept.size:
        return kept, kept[0] + np.arange(kept.size)
    return kept, kept.copy()


# ---------------------------------------------------------------------------------------------
# Device stages
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("axis", "size"))
def _gather_slices(volume: jax.Array, idx: jax.Array, axis: int, size: int) -> jax.Array:
    """Slices `idx` along `axis` -> [n, size, size, 1] network inputs in [-1, 1].

    Pillow's antialiased bilinear resize of each slice (rows = the lower remaining axis), then
    torchvision's Normalize(0.5, 0.5): (x - 0.5) / 0.5, which equals 2x - 1 exactly in float.
    """
    slices = jnp.moveaxis(jnp.take(volume, idx, axis=axis), axis, 0)
    x = jax.image.resize(slices, (idx.shape[0], size, size), "linear", antialias=True)
    return (x * 2.0 - 1.0)[..., None]


@functools.partial(jax.jit, static_argnames="spec")
def _slice_errors(
    ae: Any,
    vgg: Any,
    x: jax.Array,
    dest: jax.Array,
    errors: jax.Array,
    means: jax.Array,
    spec: tuple[int, int, int, str, int],
) -> tuple[jax.Array, jax.Array]:
    """Scatters one chunk's per-slice numerators and feature means into the volume buffers.

    errors [D, h, w]: mean_c |f(x) - f(x_rec)| at row `dest`; means [D]: mean |f(x)| of each
    slice. Padding rows have dest = D and are dropped. With equal-sized slices the volume
    denominator is the mean of the slice means.
    """
    nf, latent_dim, image_size, layer, vgg_width = spec
    rec = Autoencoder(nf=nf, latent_dim=latent_dim, image_size=image_size).apply({"params": ae}, x)
    features = VGG19Features(width=vgg_width)
    f_x = features.apply({"params": vgg}, perceptual.vgg_input(x), (layer,))[layer]
    f_rec = features.apply({"params": vgg}, perceptual.vgg_input(rec), (layer,))[layer]
    numerator = jnp.abs(f_x - f_rec).mean(axis=-1)
    # Nested means keep the float32 sums short.
    slice_means = jnp.abs(f_x).mean(axis=-1).mean(axis=-1).mean(axis=-1)
    errors = errors.at[dest].set(numerator, mode="drop")
    means = means.at[dest].set(slice_means, mode="drop")
    return errors, means


def resize_trilinear(x: jax.Array, shape: Sequence[int]) -> jax.Array:
    """PyTorch's `interpolate(mode='trilinear', align_corners=False)` (no antialiasing).

    Output index i samples (i + 0.5) * n_in / n_out - 0.5, clamped to the edge voxels, with two
    taps per axis, when downsampling too (jax's linear resize without antialias is exactly this).
    """
    return jax.image.resize(x, tuple(shape), method="linear", antialias=False)


@functools.partial(jax.jit, static_argnames=("axis", "image_size", "cube_size"))
def _accumulate(
    errors: jax.Array,
    means: jax.Array,
    n_kept: jax.Array,
    total: jax.Array,
    count: jax.Array,
    axis: int,
    image_size: int,
    cube_size: int,
) -> tuple[jax.Array, jax.Array]:
    """One model's error volume -> its cube map, added to (Sum, Cnt)."""
    pred = axis_prediction(errors, means, n_kept, axis, image_size, cube_size)
    return total + pred, count + (pred > 0)


def axis_prediction(
    errors: jax.Array,
    means: jax.Array,
    n_kept: jax.Array | int,
    axis: int,
    image_size: int,
    cube_size: int,
) -> jax.Array:
    """Stacked slice errors [D, h, w] (zero rows for skipped slices) -> [cube]^3 map.

    Divides by the volume denominator (the mean of the `n_kept` kept slices' feature means),
    resizes each slice map bilinearly to `image_size`, moves the slice index back to `axis` and
    resizes trilinearly to the cube. Rows without a kept slice stay zero through both resizes
    of their own slice; the trilinear resize then blends neighbouring slices.
    """
    denominator = means.sum() / n_kept
    maps = perceptual.resize_bilinear(errors / denominator, (image_size, image_size))
    return resize_trilinear(jnp.moveaxis(maps, 0, axis), (cube_size,) * 3)


@functools.partial(jax.jit, static_argnames="scale")
def combine(total: jax.Array, count: jax.Array, scale: float = SCALE) -> jax.Array:
    """P = Sum / (Cnt + (Cnt == 0)) / scale: the mean over the models positive at each voxel."""
    return total / (count + (count == 0)) / scale


@functools.partial(jax.jit, static_argnames="shape")
def resize_to_input(p: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The pixel output: P resized trilinearly to the input volume's shape (MONAI's Resize)."""
    return resize_trilinear(p, shape)


# ---------------------------------------------------------------------------------------------
# One volume
# ---------------------------------------------------------------------------------------------


def model_errors(
    volume: jax.Array, model: AxisModel, options: Options
) -> tuple[jax.Array, jax.Array, int]:
    """(errors [D, h, w], slice means [D], number of kept slices) of one model on a volume.

    D is the volume's size along the model's axis; rows stay zero where no map goes.
    """
    axis, size = model.axis, model.image_size
    depth = volume.shape[axis]
    sums = slice_sums(volume, axis)
    limit = threshold(model, volume.shape, options)
    kept, dest = select_slices(sums, limit, options.contiguous_slices)
    h, w = _feature_size(size, model.vgg_layer)
    errors = jnp.zeros((depth, h, w), jnp.float32)
    means = jnp.zeros((depth,), jnp.float32)
    chunk = options.batch_size
    for start in range(0, kept.size, chunk):
        idx = np.zeros(chunk, np.int32)  # Padding rows read slice 0 and are dropped.
        to = np.full(chunk, depth, np.int32)  # Out of range: dropped by the scatter.
        part = slice(start, min(start + chunk, kept.size))
        idx[: part.stop - part.start] = kept[part]
        to[: part.stop - part.start] = dest[part]
        x = _gather_slices(volume, jnp.asarray(idx), axis, size)
        errors, means = _slice_errors(
            model.ae, model.vgg, x, jnp.asarray(to), errors, means, model.spec
        )
    return errors, means, int(kept.size)


@functools.cache
def _feature_size(size: int, layer: str) -> tuple[int, int]:
    """Spatial size of the VGG19 activation `layer` for `size` x `size` inputs."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    net = VGG19Features()
    params = jax.eval_shape(lambda x: net.init(jax.random.key(0), x), x)["params"]
    out = jax.eval_shape(lambda p, x: net.apply({"params": p}, x, (layer,))[layer], params, x)
    return out.shape[1], out.shape[2]


def predict_volume(
    volume: np.ndarray | jax.Array, models: Sequence[AxisModel], options: Options = Options()
) -> jax.Array:
    """The averaged, scaled [cube]^3 map P of one 3-D volume (on the device)."""
    return predict_volume_counted(volume, models, options)[0]


def predict_volume_counted(
    volume: np.ndarray | jax.Array, models: Sequence[AxisModel], options: Options = Options()
) -> tuple[jax.Array, list[int]]:
    """`predict_volume` and the number of slices each model kept."""
    volume = jnp.asarray(volume, jnp.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {volume.shape}.")
    cube = (options.cube_size,) * 3
    total = jnp.zeros(cube, jnp.float32)
    count = jnp.zeros(cube, jnp.float32)
    kept = []
    for model in models:
        errors, means, n_kept = model_errors(volume, model, options)
        kept.append(n_kept)
        if n_kept == 0:
            continue  # Nothing to reconstruct: a zero map, which Cnt does not count.
        total, count = _accumulate(
            errors,
            means,
            jnp.float32(n_kept),
            total,
            count,
            model.axis,
            model.image_size,
            options.cube_size,
        )
    return combine(total, count, options.scale), kept


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def list_volumes(input_dir: str) -> list[str]:
    """Sorted paths of the NIfTI files in `input_dir`; any other entry is an error.

    The challenge's container gets a folder of volumes only, so anything else means a wrong
    mount; failing before any work is done says so at once.
    """
    if not jpaths.path(input_dir).is_dir():
        raise InputError(f"{input_dir}: input folder does not exist or is not a folder.")
    names = sorted(jpaths.names(input_dir))
    for name in names:
        path = os.path.join(input_dir, name)
        if not (name.endswith(NIFTI_SUFFIXES) and jpaths.path(path).is_file()):
            raise InputError(f"{path}: not a NIfTI file (.nii or .nii.gz); remove it.")
    if not names:
        raise InputError(f"{input_dir}: no NIfTI volumes (.nii or .nii.gz) in the input folder.")
    return [os.path.join(input_dir, n) for n in names]


def check_volume(path: str):
    """The loaded (lazy) NIfTI image of `path` after checking it is a 3-D real-valued volume."""
    import nibabel as nib

    from jaxad.data import nifti

    try:  # A gs:// volume is read into memory whole.
        image = nifti.load_remote(jpaths.path(path)) if jpaths.is_remote(path) else nib.load(path)
    except Exception as e:  # nibabel raises several types for a bad header.
        raise InputError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e}).") from e
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI-1/2 image ({type(image).__name__}).")
    if len(image.shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {image.shape}.")
    dtype = np.dtype(image.get_data_dtype())
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {dtype} is not a real number type.")
    return image


def read_volume(image) -> np.ndarray:
    """float32 voxels of a checked image (scaling applied); decoding errors name the file."""
    try:
        return np.asarray(image.get_fdata(dtype=np.float32, caching="unchanged"))
    except Exception as e:  # Truncated or corrupt data: zlib, EOF and nibabel errors.
        name = image.get_filename() or "a volume"
        raise InputError(f"{name}: cannot read the voxels ({type(e).__name__}: {e}).") from e


def write_pixel(path: str, p: np.ndarray, image) -> None:
    """float32 NIfTI of `p` with the input image's affine and header (no intensity scaling)."""
    out = type(image)(np.asarray(p, np.float32), image.affine, image.header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    with jpaths.local_target(path) as local:  # nibabel writes file names only.
        out.to_filename(local)


def write_sample(path: str, score: float) -> None:
    jpaths.path(path).write_text(str(float(score)))


def predict_files(
    paths: Sequence[str],
    output_dir: str,
    models: Sequence[AxisModel],
    *,
    task: str,
    options: Options = Options(),
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Writes the `task` output of every volume in `paths`; returns the written paths."""
    from jaxad import writers

    if task not in TASKS:
        raise ValueError(f"task must be 'pixel' or 'sample', got {task!r}.")
    if not models:
        raise ValueError("no axis models given.")
    images = [check_volume(p) for p in paths]  # All headers first: fail before any work.
    jpaths.makedirs(output_dir)
    written = []
    for path, image in zip(paths, images, strict=True):
        t0 = time.perf_counter()
        volume = read_volume(image)
        p, kept = predict_volume_counted(volume, models, options)
        name = os.path.basename(path)
        if task == "sample":
            out = os.path.join(output_dir, name + ".txt")
            write_sample(out, float(jnp.max(p)))
        else:
            out = os.path.join(output_dir, name)
            write_pixel(out, np.asarray(resize_to_input(p, tuple(volume.shape))), image)
        written.append(out)
        if log:
            counts = ", ".join(f"axis {m.axis}: {n}" for m, n in zip(models, kept, strict=True))
            log(f"{name}: slices kept {counts}; {time.perf_counter() - t0:.1f} s -> {out}")
        for model, n in zip(models, kept, strict=True):
            if n == 0:
                writers.logger.warning(
                    "%s: no slice along axis %d passes the slice filter (intensity sum > %s) of "
                    "model %s, which adds nothing to its map; lower --min_intensity_sum.",
                    path,
                    model.axis,
                    threshold(model, volume.shape, options),
                    model.name or model.axis,
                )
    return written


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _params(tree: Any) -> Any:
    """Accepts either a params tree or flax variables {"params": ...}."""
    if isinstance(tree, dict) and set(tree) == {"params"}:
        return tree["params"]
    return tree


def load_axis_models(model_dirs: Sequence[str]) -> list[AxisModel]:
    """The inference state of each finished `jaxad.methods.dpa` run (workdir) in `model_dirs`.

    `jaxad.checkpoint.load_run` reads `config.json` and restores the best validated state
    (`workdir/best`, which the loop keeps when `config.validation` is on, as the solution kept
    its best model) or, without one, the latest checkpoint.
    """
    from jaxad import checkpoint, parallel

    mesh = parallel.make_mesh()
    return [
        axis_model(checkpoint.load_run(workdir, prefer="best", mesh=mesh)) for workdir in model_dirs
    ]


def _on_this_device(tree: Any) -> Any:
    """A replicated state as arrays of this process's first device.

    With several processes each one predicts other volumes, so its computations must not span
    the other processes' devices, as the restored (globally replicated) arrays do.
    """
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def axis_model(run: Any) -> AxisModel:
    """The `AxisModel` of a loaded DPA run (`jaxad.checkpoint.Run`)."""
    config, inference = run.config, run.state
    if "dpa" not in config:
        raise InputError(f"{run.workdir} is a run of method {config.method!r}, not a DPA model.")
    return AxisModel(
        axis=int(config.dpa.axis),
        ae=_on_this_device(_params(inference["ae"])),
        vgg=_on_this_device(_params(inference["vgg"])),
        nf=int(config.model.nf),
        latent_dim=int(config.model.latent_dim),
        vgg_layer=str(config.dpa.vgg_layer),
        image_size=int(config.data.image_size),
        name=str(run.workdir),
        vgg_width=int(config.model.vgg_width),
        min_nonzero=float(config.data.get("min_nonzero", MIN_INTENSITY_SUM)),
        train_resize=int(config.data.get("resize", TRAIN_RESIZE)),
    )


def random_axis_models(
    key: jax.Array,
    axes: Sequence[int],
    *,
    nf: int = 128,
    latent_dim: int = 128,
    vgg_layer: str = "r32",
    image_size: int = 128,
) -> list[AxisModel]:
    """Randomly initialised axis models (one shared VGG), for benchmarks and tests."""
    ae_key, vgg_key = jax.random.split(key)
    vgg = VGG19Features().init(vgg_key, jnp.zeros((1, image_size, image_size, 3)))["params"]
    ae = Autoencoder(nf=nf, latent_dim=latent_dim, image_size=image_size)
    x = jnp.zeros((1, image_size, image_size, 1))
    return [
        AxisModel(
            axis=a,
            ae=ae.init(jax.random.fold_in(ae_key, i), x)["params"],
            vgg=vgg,
            nf=nf,
            latent_dim=latent_dim,
            vgg_layer=vgg_layer,
            image_size=image_size,
            name=f"random_axis_{a}",
        )
        for i, a in enumerate(axes)
    ]


def predict_folder(
    input_dir: str,
    output_dir: str,
    *,
    task: str,
    model_dirs: Sequence[str],
    batch_size: int = BATCH_SIZE,
    contiguous_slices: bool = True,
    min_intensity_sum: float | str | None = AUTO,
) -> list[str]:
    """Scores every volume in `input_dir` with the axis models in `model_dirs` (the CLI's entry).

    Pixel: `OUT/<name>` float32 NIfTI of the input's shape; sample: `OUT/<name>.txt`. With
    several processes (`jax.distributed`), process i predicts and writes the volumes
    i::process_count (in sorted order) and returns those; the function returns when every
    process has finished.
    """
    from jaxad import writers

    writers.setup_logging()
    if task not in TASKS:
        raise ValueError(f"task must be 'pixel' or 'sample', got {task!r}.")
    paths = list_volumes(input_dir)
    for path in paths:  # Headers before the (slow) model loading.
        check_volume(path)
    models = load_axis_models(model_dirs)
    options = Options(
        batch_size=batch_size,
        contiguous_slices=contiguous_slices,
        min_intensity_sum=min_intensity_sum,
    )
    writers.log_info(
        "%d volumes, %d axis models (axes %s)",
        len(paths),
        len(models),
        ",".join(str(m.axis) for m in models),
    )
    for model in models:
        writers.log_info(
            "axis %d model %s: slice filter %s",
            model.axis,
            model.name,
            f"intensity sum > {options.min_intensity_sum}"
            if options.min_intensity_sum != AUTO
            else f"its training filter ({model.min_nonzero:g} at "
            f"{model.train_resize or 'native'} px), scaled to the slice area",
        )
    mine = paths[jax.process_index() :: jax.process_count()]
    if jax.process_count() > 1:
        writers.log_info(
            "process %d of %d: %d of the %d volumes",
            jax.process_index(),
            jax.process_count(),
            len(mine),
            len(paths),
        )
    written = predict_files(
        mine,
        output_dir,
        models,
        task=task,
        options=options,
        log=lambda msg: writers.log_info("%s", msg),
    )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxad.mood predict")  # Every volume is written.
    return written
