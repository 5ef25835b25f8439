"""grain input pipelines: host-local training and evaluation batches from a data source.

Training (`train_iterator`)::

    source -> process shard -> shuffle (seeded) -> repeat forever (reshuffled each epoch)
      -> resize + random flips + normalise (seeded per record) -> batch -> read threads
      -> optional worker processes

Evaluation (`eval_batches`): the process shard in a fixed order, resized and normalised without
augmentation, in batches whose last rows are padding (``valid`` False). Every process yields the
same number of batches, so collective computations over a global batch stay in lock-step.

Each process reads the records ``process_index::process_count`` of the split, so processes see
disjoint records that together cover the split.

Fields read from ``data_cfg`` (an ml_collections ConfigDict; every key and its default is
declared in ``configs/common.py:data_config()``):

- always: ``name`` (and what `jaxad.data.sources.get_source` reads for it), ``image_size``,
  ``channels`` (1 or 3), ``mean`` and ``std`` (one value per channel), ``num_workers`` (worker
  processes, 0: read in this process), ``num_threads`` (read threads per process) and
  ``prefetch`` (batches read ahead per process);
- training only: ``hflip``, ``vflip``, ``flip_fov``, ``crop_size`` (> 0: train on random crops
  of that size at the image's own resolution instead of resizing whole images,
  `transforms.random_crop`), ``crop_min_max`` (its background rejection threshold),
  ``crops_per_image`` (crops cut from each decoded image, mixed across batches) and
  ``lesion_pairs`` (> 0: cut lesion-based CL's two patches of that size on the host,
  `lesion_pair_example`) and ``decoded_cache`` (decode each 8-bit image once per machine and
  keep it resized on local disk, `jaxad.data.decoded_cache`; not with ``crop_size``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from jaxad.data import sources, transforms

# Keys of a training batch: numbers only, ready for jax.
TRAIN_KEYS = ("image", "fov", "mask", "label", "grade")


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def _image_options(data_cfg) -> dict[str, Any]:
    """Checks and returns the options shared by training and evaluation."""
    channels = int(data_cfg.channels)
    mean = tuple(float(m) for m in data_cfg.mean)
    std = tuple(float(s) for s in data_cfg.std)
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"data.mean and data.std need {channels} values (data.channels), got {mean} and {std}"
        )
    return {"size": int(data_cfg.image_size), "channels": channels, "mean": mean, "std": std}


def _read_options(data_cfg) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=int(data_cfg.num_threads), prefetch_buffer_size=int(data_cfg.prefetch)
    )


def _allow_unparsed_absl_flags() -> None:
    """Lets grain's worker processes start when absl flags were never parsed (tests, notebooks).

    grain 0.2.18 reads the absl flag ``--grain_enable_multiprocess_worker_profiling`` when it starts
    workers and fails with UnparsedFlagAccessError outside ``absl.app.run`` (google/grain#1355,
    fixed after 0.2.18). Marking that one flag as given keeps its default value (False) and leaves
    every other flag alone; a later parse of the command line still sets it.
    """
    from absl import flags

    name = "grain_enable_multiprocess_worker_profiling"
    if not flags.FLAGS.is_parsed() and name in flags.FLAGS:
        flags.FLAGS[name].present = max(flags.FLAGS[name].present, 1)


def _with_workers(ds: grain.IterDataset, data_cfg) -> grain.IterDataset:
    num_workers = int(data_cfg.num_workers)
    if num_workers > 0:
        _allow_unparsed_absl_flags()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return ds


def _resized(rec: dict[str, Any], *, size: int, channels: int) -> dict[str, Any]:
    rec = dict(rec, image=transforms.to_channels(rec["image"], channels))
    return transforms.resize_record(rec, size)


def _train_example(
    rec: dict[str, Any],
    rng: np.random.Generator,
    *,
    size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    hflip: bool,
    vflip: bool,
    flip_fov: bool,
    crop_size: int = 0,
    crop_min_max: float = 0.0,
) -> dict[str, np.ndarray]:
    if crop_size:
        rec = dict(rec, image=transforms.to_channels(rec["image"], channels))
        rec = transforms.random_crop(rec, rng, crop_size, min_max=crop_min_max)
    elif not rec.get("resized"):  # (`decoded_cache.DecodedCache` records already are)
        rec = _resized(rec, size=size, channels=channels)
    rec = transforms.random_flips(rec, rng, hflip=hflip, vflip=vflip, flip_fov=flip_fov)
    return {
        "image": transforms.normalize(rec["image"], mean, std),
        "fov": np.ascontiguousarray(rec["fov"], dtype=np.float32),
        "mask": rec["mask"].astype(np.float32),
        "label": np.int32(rec["label"]),
        "grade": np.int32(rec["grade"]),
        **_boxes_of(rec),
    }


def _boxes_of(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Lesion boxes (`jaxad.data.lesion_boxes`), already in the resized image's pixels."""
    return {k: rec[k] for k in ("boxes", "num_boxes") if k in rec}


def lesion_pair_example(
    rec: dict[str, Any], rng: np.random.Generator, *, size: int, channels: int, patch: int
) -> dict[str, np.ndarray]:
    """Lesion-based CL's positive pair cut on the host: ``pairs`` uint8 [2, patch, patch, C].

    The law of `jaxad.ops.lesion_augment.pair_origins` (one of the record's boxes uniformly, two
    independent placements around it by B4's rule, zeros past the bottom/right edges), drawn
    from numpy's generator. Only the two patches, the label and the grade leave the host: 16x
    fewer bytes than the resized photo for 128 px patches of a 512 px photo, in uint8, and no
    normalisation of the whole photo (the method scales the patches to [0, 1] on device).
    """
    from jaxad.ops import lesion_augment

    image = transforms.to_channels(np.asarray(rec["image"]), channels)
    image = transforms.to_uint8(transforms.resize_image(image, size))  # as `_resized` does
    n = max(int(rec["num_boxes"]), 1)
    box = np.asarray(rec["boxes"][int(rng.integers(0, n))], np.float32)
    pairs = np.zeros((2, patch, patch, image.shape[-1]), np.uint8)
    for k in range(2):
        u = rng.random(2, dtype=np.float32)
        top = lesion_augment.patch_start(u[1], box[1], box[3], size, patch, xp=np)
        left = lesion_augment.patch_start(u[0], box[0], box[2], size, patch, xp=np)
        cut = image[top : top + patch, left : left + patch]
        pairs[k, : cut.shape[0], : cut.shape[1]] = cut
    return {"pairs": pairs, "label": np.int32(rec["label"]), "grade": np.int32(rec["grade"])}


def _several(rec: dict[str, Any], rng: np.random.Generator, *, fn, count: int) -> list[dict]:
    """``count`` training examples from one decoded record (e.g. several crops of one slice)."""
    return [fn(rec, rng) for _ in range(count)]


class _Unstack(grain.experimental.FlatMapTransform):
    """Yields the examples of `_several`'s list one by one."""

    def __init__(self, count: int):
        self.max_fan_out = count

    def flat_map(self, element: list[dict]) -> list[dict]:
        return element


def _eval_example(
    rec: dict[str, Any],
    *,
    size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> dict[str, Any]:
    rec = _resized(rec, size=size, channels=channels)
    return {
        "image": transforms.normalize(rec["image"], mean, std),
        "image_uint8": transforms.to_uint8(rec["image"]),
        "fov": rec["fov"].astype(np.float32),
        "mask": rec["mask"].astype(np.float32),
        "label": np.int32(rec["label"]),
        "grade": np.int32(rec["grade"]),
        "has_mask": np.bool_(rec["has_mask"]),
        "id": str(rec["id"]),
        "valid": np.bool_(True),
        **_boxes_of(rec),
    }


def _padding_example(*, size: int, channels: int) -> dict[str, Any]:
    return {
        "image": np.zeros((size, size, channels), np.float32),
        "image_uint8": np.zeros((size, size, channels), np.uint8),
        "fov": np.zeros((size, size), np.float32),
        "mask": np.zeros((size, size), np.float32),
        "label": np.int32(-1),
        "grade": np.int32(-1),
        "has_mask": np.bool_(False),
        "id": "",
        "valid": np.bool_(False),
    }


def _example_fn(data_cfg, opts: dict[str, Any], patch: int):
    """The per-record training transform: lesion pairs, or crop/resize + flips + normalise."""
    if patch:
        if not getattr(data_cfg, "boxes", ""):
            raise ValueError("data.lesion_pairs needs lesion boxes: set data.boxes too")
        return functools.partial(
            lesion_pair_example, size=opts["size"], channels=opts["channels"], patch=patch
        )
    return functools.partial(
        _train_example,
        **opts,
        hflip=bool(data_cfg.hflip),
        vflip=bool(data_cfg.vflip),
        flip_fov=bool(data_cfg.flip_fov),
        crop_size=int(data_cfg.crop_size),
        crop_min_max=float(data_cfg.crop_min_max),
    )


def train_iterator(
    data_cfg,
    split: str,
    *,
    local_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """An endless iterator of this process's augmented training batches.

    Each batch is a dict of numpy arrays: ``image`` float32 [B, S, S, C] (normalised), ``fov``
    float32 [B, S, S] in [0, 1], ``mask`` float32 [B, S, S], ``label`` int32 [B] and ``grade``
    int32 [B], with B = ``local_batch_size`` and S = ``data_cfg.image_size`` (or
    ``data_cfg.crop_size`` when set); with ``data_cfg.boxes``, also ``boxes`` float32
    [B, K, 4] and ``num_boxes`` int32 [B] (`jaxad.data.lesion_boxes`).

    The order and the augmentation depend only on ``seed``, the process index and count, and the
    data: two iterators built alike yield the same batches. The iterator supports ``get_state()``
    and ``set_state(state)`` (a small dict to save with a checkpoint); after ``set_state`` it
    yields exactly the batches that followed the saved state, provided the data, the config and
    the process layout are unchanged (with ``num_workers`` > 0 the state holds one position per
    worker, so ``num_workers`` must match too). Batches are never padded: epochs run into each
    other, and each epoch is a new permutation of this process's shard.

    Args:
      data_cfg: data config (see the module docstring for the fields read).
      split: split name of the source, e.g. "train".
      local_batch_size: examples per batch on this process.
      seed: shuffling and augmentation seed.
      process_index: this process (default ``jax.process_index()``).
      process_count: number of processes (default ``jax.process_count()``).
    """
    process_index, process_count = _process(process_index, process_count)
    opts = _image_options(data_cfg)
    # (getattr: configs saved before these keys existed read as their defaults)
    crops = int(getattr(data_cfg, "crops_per_image", 1))
    patch = int(getattr(data_cfg, "lesion_pairs", 0))
    cache = bool(getattr(data_cfg, "decoded_cache", False))
    # Settings that cannot work together fail before any file is read or cache written.
    if cache and int(data_cfg.crop_size):
        raise ValueError(
            "data.decoded_cache keeps images resized to data.image_size; data.crop_size crops "
            "them at full resolution: set data.decoded_cache=False (or data.crops_per_image)"
        )
    if getattr(data_cfg, "boxes", "") and (data_cfg.hflip or data_cfg.vflip or data_cfg.crop_size):
        raise ValueError(
            "data.boxes with data.hflip, data.vflip or data.crop_size: the boxes would not follow "
            "the image; flip on device after the patches are cut (lesion-based CL does)."
        )
    if crops < 1 or (crops > 1 and not int(data_cfg.crop_size)):
        raise ValueError(
            f"data.crops_per_image={crops}: use 1, or more than 1 together with data.crop_size"
        )
    src = sources.get_source(data_cfg, split)
    if cache:
        from jaxad.data import decoded_cache

        # One sparse file per field for the split; this process fills the slots it reads.
        src = decoded_cache.DecodedCache(src, data_cfg, split, maps=not patch)
    ds = grain.MapDataset.source(src)[process_index::process_count]
    if len(ds) == 0:
        raise ValueError(
            f"split {split!r} of data {data_cfg.name!r} has {len(src)} examples, too few for "
            f"{process_count} processes"
        )
    # One seed per process, so that processes do not repeat each other's flips.
    local_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    fn = _example_fn(data_cfg, opts, patch)
    ds = ds.seed(local_seed).shuffle().repeat()
    if crops == 1:
        ds = ds.random_map(fn).batch(local_batch_size, drop_remainder=True)
        ds = ds.to_iter_dataset(_read_options(data_cfg))
    else:
        # Decode once, cut `crops` crops, then mix them over a window of `crops` batches, so a
        # batch holds crops of many images (checkpointable: grain's flat map and window
        # shuffle keep their positions in get_state).
        ds = ds.random_map(functools.partial(_several, fn=fn, count=crops))
        ds = grain.experimental.FlatMapIterDataset(
            ds.to_iter_dataset(_read_options(data_cfg)), _Unstack(crops)
        )
        ds = grain.experimental.WindowShuffleIterDataset(
            ds, window_size=crops * local_batch_size, seed=local_seed
        )
        ds = ds.batch(local_batch_size, drop_remainder=True)
    return iter(_with_workers(ds, data_cfg))


def num_examples(data_cfg, split: str) -> int:
    """Number of examples in ``split`` (all processes together)."""
    return len(sources.get_source(data_cfg, split))


def num_eval_batches(n_examples: int, local_batch_size: int, process_count: int) -> int:
    """Batches each process yields in `eval_batches` for a split of ``n_examples``."""
    return math.ceil(math.ceil(n_examples / process_count) / local_batch_size)


def eval_batches(
    data_cfg,
    split: str,
    *,
    local_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's evaluation batches: fixed order, no augmentation, padded.

    Each batch has the training fields (``image``, ``fov``, ``mask``, ``label``, ``grade``; no
    flips) plus ``image_uint8`` uint8 [B, S, S, C] (resized, not normalised, for overlays),
    ``has_mask`` bool [B], ``id`` object [B] of str and ``valid`` bool [B].

    Process ``i`` reads records ``i::process_count``. Rows past the end of its shard are padding
    (``valid`` False, zeros, label and grade -1, id ""): records are never repeated or dropped.
    Every process yields ``num_eval_batches(len(split), local_batch_size, process_count)``
    batches, whole padding batches included, so that collectives stay in lock-step.

    The source is opened when this function is called (so a missing dataset fails here); the
    images are read as the iterator advances.
    """
    src = sources.get_source(data_cfg, split)
    return source_batches(
        src,
        data_cfg,
        local_batch_size=local_batch_size,
        process_index=process_index,
        process_count=process_count,
    )


def source_batches(
    src,
    data_cfg,
    *,
    local_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """`eval_batches` over any random-access source of common records (e.g. for prediction)."""
    process_index, process_count = _process(process_index, process_count)
    opts = _image_options(data_cfg)
    n_batches = num_eval_batches(len(src), local_batch_size, process_count)
    ds = grain.MapDataset.source(src)[process_index::process_count]
    ds = ds.map(functools.partial(_eval_example, **opts))
    ds = _with_workers(ds.to_iter_dataset(_read_options(data_cfg)), data_cfg)
    pad = _padding_example(size=opts["size"], channels=opts["channels"])
    if getattr(data_cfg, "boxes", ""):
        pad.update(boxes=np.zeros((int(data_cfg.max_boxes), 4), np.float32), num_boxes=np.int32(0))
    return _padded_batches(ds, n_batches, local_batch_size, pad)


def _padded_batches(
    examples, n_batches: int, batch_size: int, pad: dict[str, Any]
) -> Iterator[dict[str, np.ndarray]]:
    it = iter(examples)
    exhausted = False
    for _ in range(n_batches):
        rows = []
        while not exhausted and len(rows) < batch_size:
            try:
                rows.append(next(it))
            except StopIteration:
                exhausted = True
        rows += [pad] * (batch_size - len(rows))
        yield _stack(rows)


def _stack(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {}
    for key in rows[0]:
        if key == "id":
            ids = np.empty(len(rows), dtype=object)
            ids[:] = [r["id"] for r in rows]
            batch[key] = ids
        else:
            batch[key] = np.stack([r[key] for r in rows])
    return batch
