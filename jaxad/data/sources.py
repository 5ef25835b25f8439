"""The data source of a config: ``get_source(data_cfg, split)``, looked up by ``data.name``.

Every source yields jaxad's common record (`jaxad.data.records`). The kinds:

- ``"folder"``: `FolderSource` over an MVTec-layout folder at ``data.root`` (`jaxad.data.folder`).
- ``"nifti_folder"``: slices of the NIfTI volumes under ``data.root`` (`jaxad.data.nifti`).
- ``"demo"``: a demo generated locally once, by ``data.demo`` (`DEMOS`).
- any other name: a prepared tfds dataset, `TfdsSource` (`jaxad.data.tfds_source`).

`SOURCES` maps the names to factories, each of which imports what only its kind needs (nibabel,
the demo generators, tensorflow_datasets) when it is called, so that reading a folder never
loads them. The keys a factory reads, with their defaults, are declared in
``configs/common.py:data_config()``.

The classes and helpers of the source modules are re-exported here, so ``sources.FolderSource``,
``sources.TfdsSource``, ``sources.ImageReadError`` and the like keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from jaxad.data.records import ConcatSource, ImageReadError, Source
from jaxad.data.tfds_source import (
    DatasetNotPreparedError,
    TfdsSource,
    default_tfds_data_dir,
    not_prepared_message,
)

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
    "ImageListSource",
    "ImageReadError",
    "Source",
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


def _folder_source(root: Any, data_cfg, split: str) -> FolderSource:
    return FolderSource(
        root,
        split,
        channels=data_cfg.channels,
        val_fraction=data_cfg.val_fraction,
        fov=data_cfg.fov,
    )


def _folder(data_cfg, split: str) -> FolderSource:
    """``"folder"``: `FolderSource` over ``data.root`` with ``data.channels``, ``val_fraction``
    and ``fov``."""
    if not data_cfg.root:
        raise ValueError("data.name='folder' needs data.root, the path of an MVTec-layout folder")
    return _folder_source(data_cfg.root, data_cfg, split)


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
    if len(names) > 1:
        return ConcatSource([TfdsSource(n, split, data_dir=data_dir) for n in names])
    return TfdsSource(names[0], split, data_dir=data_dir)


# ``data.name`` -> factory; a name not listed is a tfds dataset (`_tfds`).
SOURCES: dict[str, Factory] = {"folder": _folder, "nifti_folder": _nifti_folder, "demo": _demo}


def get_source(data_cfg, split: str) -> Source:
    """The source of ``split`` described by ``data_cfg`` (an ml_collections ConfigDict): the
    factory `SOURCES` lists for ``data_cfg.name``, else a tfds dataset.

    ``"a+b"`` reads splits ``a`` and ``b`` as one source, in that order (e.g. the normal test
    images with one anomalous set: ``"test+test_opacity"``).
    """
    make = SOURCES.get(data_cfg.name, _tfds)
    parts = [p.strip() for p in split.split("+") if p.strip()]
    if len(parts) > 1:
        return ConcatSource([make(data_cfg, p) for p in parts])
    return make(data_cfg, split)
