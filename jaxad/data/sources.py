"""The data source of a config: ``get_source(data_cfg, split)``, looked up by ``data.name``.

Every source yields jaxad's common record (`jaxad.data.records`). The kinds:

- ``"folder"``: `FolderSource` over an MVTec-layout folder at ``data.root`` (`jaxad.data.folder`).
- ``"graded_folder"``: `GradedFolderSource` over ``<data.root>/<split>/<grade>/`` folders
  (`jaxad.data.graded_folder`), e.g. EyePACS for DR grading.
- ``"nifti_folder"``: slices of the NIfTI volumes under ``data.root`` (`jaxad.data.nifti`).
- ``"demo"``: a demo generated locally once, by ``data.demo`` (`DEMOS`).
- any other name: a prepared tfds dataset, `TfdsSource` (`jaxad.data.tfds_source`).

The training split (``data.train_split``) of any of them can be cut to a labelled fraction,
``data.label_fraction``, per grade (`SubsetSource`, `jaxad.data.splits.stratified_fraction`).
With ``data.boxes``, every split keeps the images with lesion boxes, each record carrying them
(`jaxad.data.lesion_boxes.BoxedSource`).

`SOURCES` maps the names to factories, each of which imports what only its kind needs (nibabel,
the demo generators, tensorflow_datasets) when it is called, so that reading a folder never
loads them. The keys a factory reads, with their defaults, are declared in
``configs/common.py:data_config()``.

Folder data (``"folder"``, ``"graded_folder"`` and the demos read as them) are verified when
their source is made, under ``data.on_corrupt`` (`jaxad.data.folder.check_images`);
`check_data` does it for every split a run reads, before its first training step.

The classes and helpers of the source modules are re-exported here, so ``sources.FolderSource``,
``sources.TfdsSource``, ``sources.ImageReadError`` and the like keep working.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from jaxad.data import folder, splits
from jaxad.data.folder import (
    FOLDER_LAYOUT,
    HOLDOUT_SEED,
    IMAGE_EXTENSIONS,
    FolderSource,
    ImageListSource,
    read_image,
    read_mask,
)
from jaxad.data.fov import FOV_KINDS, check_fov_kind, field_of_view
from jaxad.data.graded_folder import GradedFolderSource
from jaxad.data.records import ConcatSource, ImageReadError, Source
from jaxad.data.tfds_source import (
    DatasetNotPreparedError,
    TfdsSource,
    default_tfds_data_dir,
    not_prepared_message,
)
from jaxad.paths import check_backend

__all__ = [
    "DEMOS",
    "FOLDER_LAYOUT",
    "FOV_KINDS",
    "HOLDOUT_SEED",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "ConcatSource",
    "DatasetNotPreparedError",
    "FolderSource",
    "GradedFolderSource",
    "ImageListSource",
    "ImageReadError",
    "Source",
    "SubsetSource",
    "TfdsSource",
    "check_fov_kind",
    "default_tfds_data_dir",
    "field_of_view",
    "get_source",
    "not_prepared_message",
    "read_image",
    "read_mask",
]

# A factory makes the source of one split from the data config (an ml_collections ConfigDict).
Factory = Callable[[Any, str], Source]


def _min_side(data_cfg) -> int:
    """The shortest image side training accepts: a quarter of the model's input."""
    return folder.min_side_for(int(getattr(data_cfg, "crop_size", 0) or data_cfg.image_size))


def _folder_source(root: Any, data_cfg, split: str) -> FolderSource:
    return FolderSource(
        root,
        split,
        channels=data_cfg.channels,
        val_fraction=data_cfg.val_fraction,
        fov=data_cfg.fov,
        on_corrupt=getattr(data_cfg, "on_corrupt", ""),
        min_side=_min_side(data_cfg),
    )


def _folder(data_cfg, split: str) -> FolderSource:
    """``"folder"``: `FolderSource` over ``data.root`` with ``data.channels``, ``val_fraction``
    and ``fov``."""
    if not data_cfg.root:
        raise ValueError("data.name='folder' needs data.root, the path of an MVTec-layout folder")
    return _folder_source(data_cfg.root, data_cfg, split)


def _graded_folder_source(root: Any, data_cfg, split: str) -> Source:
    src = GradedFolderSource(root, split, channels=data_cfg.channels, fov=data_cfg.fov)
    on_corrupt = getattr(data_cfg, "on_corrupt", "")
    if not on_corrupt:
        return src
    what = f"split {split!r} of {src.root}"
    paths = src.paths
    info = folder.check_images(paths, what=what)
    problems = [info[p].problem(_min_side(data_cfg)) for p in paths]
    bad = [i for i, problem in enumerate(problems) if problem]
    messages = [f"{paths[i]}: {problems[i]}" for i in bad]
    if folder.apply_on_corrupt(messages, on_corrupt, what, total=len(src)):
        return src
    kept = SubsetSource(src, sorted(set(range(len(src))) - set(bad)))
    kept.skipped = [epath.Path(paths[i]).relative_to(src.root).as_posix() for i in bad]
    return kept


def _graded_folder(data_cfg, split: str) -> Source:
    """``"graded_folder"``: `GradedFolderSource` over ``data.root`` with ``data.channels`` and
    ``fov``."""
    if not data_cfg.root:
        raise ValueError(
            "data.name='graded_folder' needs data.root, the path of a folder holding "
            "<split>/<grade>/ image folders"
        )
    return _graded_folder_source(data_cfg.root, data_cfg, split)


def _nifti_folder(data_cfg, split: str) -> Source:
    """``"nifti_folder"``: `jaxad.data.nifti.NiftiFolderSource`, slices along ``data.axis`` of
    the NIfTI volumes under ``data.root`` (see `jaxad.data.nifti.source_from_config`)."""
    from jaxad.data import nifti  # Only NIfTI data need nibabel.

    return nifti.source_from_config(data_cfg, split)


def _fundus_demo(data_cfg, split: str) -> FolderSource:
    """Fundus photos with synthetic lesions (`jaxad.data.demo`), read as a folder."""
    from jaxad.data import demo

    return _folder_source(demo.ensure_fundus_demo(data_cfg.root or None), data_cfg, split)


def _phantom_demo(data_cfg, split: str) -> FolderSource:
    """Greyscale phantoms (`jaxad.data.phantom`), read as a folder."""
    from jaxad.data import phantom

    return _folder_source(phantom.ensure_phantom_demo(data_cfg.root or None), data_cfg, split)


def _cxr_demo(data_cfg, split: str) -> FolderSource:
    """Procedural chest X-rays with opacities (`jaxad.data.cxr_phantom`), read as a folder."""
    from jaxad.data import cxr_phantom

    return _folder_source(cxr_phantom.ensure_cxr_demo(data_cfg.root or None), data_cfg, split)


def _dr_demo(data_cfg, split: str) -> Source:
    """Fundus photos with DR grades 0-4 (`jaxad.data.dr_demo`), read as ``"graded_folder"``."""
    from jaxad.data import dr_demo

    return _graded_folder_source(dr_demo.ensure_dr_demo(data_cfg.root or None), data_cfg, split)


def _brain_demo(data_cfg, split: str) -> Source:
    """Procedural brain MRI volumes (`jaxad.data.brain_phantom`): the normal training population
    under ``train/``, read as ``"nifti_folder"``."""
    from jaxad.data import brain_phantom, nifti

    root = brain_phantom.ensure_brain_demo(data_cfg.root or None)
    cfg = data_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.root = str(root / "train")
    return nifti.source_from_config(cfg, split)


# ``data.demo`` -> factory. Each generates its data once (in ``data.root`` if set, else a cache
# folder) and is a cheap check afterwards.
DEMOS: dict[str, Factory] = {
    "fundus": _fundus_demo,
    "phantom": _phantom_demo,
    "brain": _brain_demo,
    "cxr": _cxr_demo,
    "dr": _dr_demo,
}


def _demo(data_cfg, split: str) -> Source:
    """``"demo"``: the generated data named by ``data.demo`` (`DEMOS`)."""
    make = DEMOS.get(data_cfg.demo)
    if make is None:
        kinds = [repr(k) for k in DEMOS]
        raise ValueError(f"data.demo={data_cfg.demo!r}: use {', '.join(kinds[:-1])} or {kinds[-1]}")
    return make(data_cfg, split)


def _tfds(data_cfg, split: str) -> Source:
    """Any other name: `TfdsSource` of ``data.tfds_name`` (or ``data.name``), read from
    ``data.data_dir`` (default: the tfds data_dir). A comma-separated list of names is read as
    one `ConcatSource` (e.g. ``"mood/brain_axis0,mood/brain_axis1"``)."""
    names = [n.strip() for n in (data_cfg.tfds_name or data_cfg.name).split(",") if n.strip()]
    data_dir = data_cfg.data_dir or None
    if data_dir:
        check_backend(data_dir)  # tfds reads gs:// data_dirs too, given gcsfs.
    if len(names) > 1:
        return ConcatSource([TfdsSource(n, split, data_dir=data_dir) for n in names])
    return TfdsSource(names[0], split, data_dir=data_dir)


# ``data.name`` -> factory; a name not listed is a tfds dataset (`_tfds`).
SOURCES: dict[str, Factory] = {
    "folder": _folder,
    "graded_folder": _graded_folder,
    "nifti_folder": _nifti_folder,
    "demo": _demo,
}


def get_source(data_cfg, split: str) -> Source:
    """The source of ``split`` described by ``data_cfg`` (an ml_collections ConfigDict): the
    factory `SOURCES` lists for ``data_cfg.name``, else a tfds dataset.

    ``"a+b"`` reads splits ``a`` and ``b`` as one source, in that order (e.g. the normal test
    images with one anomalous set: ``"test+test_opacity"``).

    The training split, ``split == data_cfg.train_split``, keeps only a labelled fraction when
    ``data_cfg.label_fraction`` < 1 (`apply_label_fraction`); every other split is whole.
    """
    make = SOURCES.get(data_cfg.name, _tfds)
    parts = [p.strip() for p in split.split("+") if p.strip()]
    if len(parts) > 1:
        src = ConcatSource([make(data_cfg, p) for p in parts])
    else:
        src = make(data_cfg, split)
    if split == getattr(data_cfg, "train_split", "train"):
        src = apply_label_fraction(src, data_cfg, split)
    if getattr(data_cfg, "boxes", ""):
        from jaxad.data import lesion_boxes

        src = lesion_boxes.BoxedSource(src, data_cfg, split)
    return src


# ``data.name`` of the sources whose files `check_data` verifies before training, and the demos
# read as folders (the brain demo is NIfTI volumes).
_CHECKED_KINDS = ("folder", "graded_folder", "demo")
_FOLDER_DEMOS = ("fundus", "phantom", "cxr", "dr")


def run_splits(config) -> list[str]:
    """The splits a training run reads: training, validation (when on) and every evaluator's."""
    out = [config.data.train_split]
    if config.validation.every:
        out.append(config.data.val_split)
    if config.eval.enabled:
        for ecfg in config.evals.values():
            out.append(ecfg.split or config.eval.split or config.data.test_split)
    return list(dict.fromkeys(out))


def check_data(config, splits: list[str] | None = None) -> dict[str, int]:
    """Verifies the files of every split the run reads (`run_splits`), before training.

    Folder data only (`_CHECKED_KINDS`; tfds datasets were checked when built, NIfTI volumes
    are checked, under the same policy, when their source indexes them, also before training).
    Each bad file is handled by ``data.on_corrupt``: 'fail' raises one ValueError naming the bad
    files, 'skip' leaves them out. Returns ``{"skipped_files": n}``, the number left out (for
    the log and eval/metrics.json), or {} for other data.
    """
    data_cfg = config.data
    if data_cfg.name not in _CHECKED_KINDS or not getattr(data_cfg, "on_corrupt", ""):
        return {}
    if data_cfg.name == "demo" and data_cfg.demo not in _FOLDER_DEMOS:
        return {}
    from jaxad import writers

    start = time.perf_counter()
    counts, skipped, bad = [], 0, []
    for split in splits or run_splits(config):
        try:
            src = get_source(data_cfg, split)
        except folder.BadFilesError as e:  # Look at every split, then name all bad files.
            bad += [m for m in e.bad if m not in bad]
            continue
        n = len(skipped_files(src))
        skipped += n
        counts.append(f"{split} {len(src)}" + (f" ({n} left out)" if n else ""))
    if bad:
        raise folder.BadFilesError(f"{len(bad)} image files of {data_cfg.root or 'the data'}", bad)
    writers.log_info(
        "data checked in %.1f s: %s images", time.perf_counter() - start, ", ".join(counts)
    )
    return {"skipped_files": skipped}


def skipped_files(src: Source) -> list[str]:
    """The bad files a source left out under data.on_corrupt='skip' (its parts' too)."""
    out = list(getattr(src, "skipped", []))
    for part in getattr(src, "parts", []):
        out += skipped_files(part)
    inner = getattr(src, "source", None)
    if inner is not None:
        out += skipped_files(inner)
    return out


# ---------------------------------------------------------------------------------------------
# Label fractions
# ---------------------------------------------------------------------------------------------


class SubsetSource:
    """The records ``indices`` of a source, in that order (e.g. a labelled fraction)."""

    def __init__(self, source: Source, indices: Any):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.source[int(self.indices[index])]

    @property
    def grades(self) -> np.ndarray:
        """Grades of the kept records (int32), in record order."""
        return source_grades(self.source)[self.indices]

    def __repr__(self) -> str:
        return f"SubsetSource({self.source!r}, len={len(self)})"


def source_grades(src: Source) -> np.ndarray:
    """The grade of every record of `src` (int32, -1 for none), in record order.

    From the source's ``grades`` when it has them (`GradedFolderSource`, `SubsetSource`); -1 for
    the sources that carry no grades (`FolderSource`, `ImageListSource`); the parts' grades for a
    `ConcatSource`; otherwise read record by record (a tfds dataset: this decodes every image).
    """
    if hasattr(src, "grades"):
        return np.asarray(src.grades, dtype=np.int32)
    if isinstance(src, FolderSource | ImageListSource):
        return np.full(len(src), -1, np.int32)
    if isinstance(src, ConcatSource):
        return np.concatenate([source_grades(p) for p in src.parts])
    logging.info("reading the %d records of %r for their grades", len(src), src)
    return np.array([int(src[i]["grade"]) for i in range(len(src))], dtype=np.int32)


def apply_label_fraction(src: Source, data_cfg, split: str) -> Source:
    """``src`` cut to ``data_cfg.label_fraction`` of its records per grade, or ``src`` when the
    fraction is 1 (or unset).

    The kept records are `splits.stratified_fraction(grades, fraction, seed)` with seed
    ``data_cfg.label_fraction_seed`` (default 0): per grade, ``round(fraction * n_grade)`` and
    at least one, the same ones on every run and machine with the same numpy. The count kept is
    logged. A source without grades (all -1) is an error: a fraction of it would not be a
    fraction of labels.
    """
    fraction = float(getattr(data_cfg, "label_fraction", 1.0))
    if fraction == 1.0:
        return src
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.label_fraction must be in (0, 1], got {fraction}")
    grades = source_grades(src)
    if len(grades) and (grades < 0).all():
        raise ValueError(
            f"data.label_fraction={fraction} needs graded training data, but split {split!r} of "
            f"data.name={data_cfg.name!r} has no grades"
        )
    seed = int(getattr(data_cfg, "label_fraction_seed", 0))
    keep = splits.stratified_fraction(grades, fraction, seed)
    values, kept = np.unique(grades[keep], return_counts=True)
    per_grade = ", ".join(f"grade {v}: {k}" for v, k in zip(values, kept, strict=True))
    logging.info(
        "data.label_fraction=%g (seed %d) keeps %d of the %d records of split %r (%s)",
        fraction,
        seed,
        len(keep),
        len(grades),
        split,
        per_grade,
    )
    return SubsetSource(src, keep)
