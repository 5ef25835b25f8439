"""Records with lesion boxes: a source's images that have boxes, each carrying them.

Lesion-based contrastive learning cuts its patches around lesion boxes (fact sheet B3-B4).
`BoxedSource` wraps any source and keeps the records whose id has boxes that survive LCL's
filter (`jaxad.lesions.boxes.filter_boxes`: rescaled to the `data.image_size` x
`data.image_size` image the pipeline makes, side <= `data.box_max_side`, score >
`data.box_threshold`, more than `data.box_margin` px inside the frame). Each record gains

- ``boxes`` float32 [`data.max_boxes`, 4]: x1, y1, x2, y2 in the resized image's pixels, the
  first ``num_boxes`` rows real, the rest zeros;
- ``num_boxes`` int32.

Images without a surviving box are dropped and counted in the log, as LCL drops them (its
sampler needs one box to cut a patch around). The boxes come from `data.boxes`:

- a box file (`jaxad.lesions.boxes.read_boxes`: JSON or CSV) whose ids are the records' ids
  (paths relative to `data.root` for folders); coordinates are in the pixels of the image as
  read, unless the file gives another size for the id (``sizes``);
- ``"candidates"``: `jaxad.lesions.candidates.lesion_candidates` on every image of the split,
  computed once and cached as a box file (``$JAXAD_DATA_DIR/boxes`` or
  ``~/.cache/jaxad/boxes``, keyed by the source, the split and the generator's settings).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any

import numpy as np
from absl import logging

from jaxad.data.records import Source

CANDIDATES = "candidates"
# Raised whenever `lesion_candidates` finds other boxes (2: the fovea skipped, sizes measured
# on the retina).
CACHE_VERSION = 2


def record_files(src: Source) -> list[pathlib.Path] | None:
    """The file of every record (folder sources), or None when the source has no files."""
    if hasattr(src, "paths"):
        return [pathlib.Path(p) for p in src.paths]
    entries = getattr(src, "_entries", None)
    if entries is not None:
        return [pathlib.Path(e[0]) for e in entries]
    return None


def ids_and_sizes(src: Source) -> tuple[list[str], list[tuple[int, int]]]:
    """Each record's id and image (width, height), from file headers where possible.

    Folder sources: ids are paths relative to the root and sizes come from the headers (no
    decoding). Other sources (tfds) are read record by record, once, which is logged.
    """
    files = record_files(src)
    if files is not None and hasattr(src, "root"):
        from PIL import Image

        root = pathlib.Path(src.root)
        sizes = []
        for path in files:
            with Image.open(path) as img:
                sizes.append(img.size)
        return [p.relative_to(root).as_posix() for p in files], sizes
    logging.info("reading the %d records of %r for their ids and sizes", len(src), src)
    ids, sizes = [], []
    for i in range(len(src)):
        rec = src[i]
        ids.append(str(rec["id"]))
        h, w = rec["image"].shape[:2]
        sizes.append((w, h))
    return ids, sizes


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("JAXAD_DATA_DIR")
    root = pathlib.Path(base) if base else pathlib.Path.home() / ".cache" / "jaxad"
    return root / "boxes"


def candidate_boxes(src: Source, split: str, ids: list[str]) -> dict[str, np.ndarray]:
    """`lesion_candidates` of every image of `src`, cached as a box file after the first call."""
    from jaxad.lesions import boxes as box_files
    from jaxad.lesions import candidates

    files = record_files(src)
    where = str(getattr(src, "root", repr(src)))
    stamp = [where, split, str(len(src)), str(CACHE_VERSION)]
    if files:
        stamp += [str(files[0]), str(os.path.getmtime(files[0]))]
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    path = _cache_dir() / f"candidates_{key}.json"
    if all(_everywhere(path.exists())):
        return box_files.read_boxes(path)
    logging.info("lesion candidates of the %d images of %s/%s (once)", len(src), where, split)
    # With several processes each finds the candidates of its share of the images.
    index, count = _process()
    mine = {}
    for i in range(index, len(ids), count):
        rec = src[i]
        mine[ids[i]] = candidates.lesion_candidates(rec["image"], fov=rec["fov"] > 0)
    found = {}
    for part in _everywhere({k: v.tolist() for k, v in mine.items()}):
        found.update({k: box_files.check_boxes(v, f"candidates of {k}") for k, v in part.items()})
    found = {image_id: found[image_id] for image_id in ids}
    box_files.write_boxes(path, found)  # Atomic, so processes sharing the folder may all write.
    logging.info("lesion candidates cached in %s", path)
    return found


def _process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def _everywhere(obj):
    """`obj` of every process (`[obj]` on one); every process calls it at the same point."""
    from jaxad import parallel

    return parallel.gather_json(obj)


class BoxedSource:
    """The records of `source` with boxes left after the filter, each with its boxes."""

    def __init__(self, source: Source, data_cfg, split: str):
        from jaxad.lesions import boxes as box_files

        self.source = source
        ids, sizes = ids_and_sizes(source)
        if data_cfg.boxes == CANDIDATES:
            found = candidate_boxes(source, split, ids)
        else:
            found = box_files.read_boxes(os.path.expanduser(data_cfg.boxes))
        self.max_boxes = int(data_cfg.max_boxes)
        self.indices, self.boxes = [], []
        missing = dropped = 0
        for i, (image_id, size) in enumerate(zip(ids, sizes, strict=True)):
            if image_id not in found:
                missing += 1
                continue
            kept = box_files.filter_boxes(
                found[image_id],
                size,
                threshold=float(data_cfg.box_threshold),
                target=int(data_cfg.image_size),
                max_side=float(data_cfg.box_max_side),
                margin=float(data_cfg.box_margin),
                swap_wh=bool(data_cfg.box_swap_wh),
            )
            if not len(kept):
                dropped += 1
                continue
            self.indices.append(i)
            self.boxes.append(kept[: self.max_boxes, :4])
        logging.info(
            "lesion boxes of %s: %d images kept, %d without a box after the filter, %d not in "
            "the box file",
            split,
            len(self.indices),
            dropped,
            missing,
        )
        if not self.indices:
            raise ValueError(
                f"no image of split {split!r} has a lesion box left after the filter "
                f"(data.boxes={data_cfg.boxes!r}, {missing} of {len(ids)} ids not in it, "
                f"box_threshold={data_cfg.box_threshold}, box_max_side={data_cfg.box_max_side}):"
                " check that the box file's ids are the records' ids, or lower box_threshold."
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = dict(self.source[self.indices[index]])
        kept = self.boxes[index]
        padded = np.zeros((self.max_boxes, 4), np.float32)
        padded[: len(kept)] = kept
        rec["boxes"] = padded
        rec["num_boxes"] = np.int32(len(kept))
        return rec

    @property
    def grades(self) -> np.ndarray:
        """Grades of the kept records (from the source's `grades`, else read record by record)."""
        if hasattr(self.source, "grades"):
            return np.asarray(self.source.grades, np.int32)[np.asarray(self.indices, np.int64)]
        return np.array([int(self[i]["grade"]) for i in range(len(self))], np.int32)
