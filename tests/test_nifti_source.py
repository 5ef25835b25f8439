"""Tests for jaxad.data.nifti: slices of a folder of NIfTI volumes, cut as the mood builder does."""

import pathlib
import pickle

import nibabel as nib
import numpy as np
import pytest

from configs.common import data_config
from data_builders.mood import mood_dataset_builder as mood
from jaxad.data import nifti, pipeline, records, sources, splits

RESIZE = 8
MIN_NONZERO = 20


def _box_volume(shape, box, seed: int) -> np.ndarray:
    """Random intensities in (0.1, 1) inside `box`, zeros elsewhere, plus a small dot in slice 0."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[box] = rng.uniform(0.1, 1.0, size=data[box].shape)
    data[0, :2, :2] = 0.9  # 4 pixels: at most 1 after resizing, under the filter's threshold.
    return data


def _save(path: pathlib.Path, data: np.ndarray, dtype=None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.eye(4))
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


@pytest.fixture()
def folder(tmp_path) -> pathlib.Path:
    root = tmp_path / "vols"
    _save(root / "cube.nii.gz", _box_volume((16, 16, 16), np.s_[3:13, 2:14, 4:12], 0))
    _save(root / "sub" / "wide.nii.gz", _box_volume((12, 20, 16), np.s_[2:10, 3:17, 1:15], 1))
    return root


def _source(root, split="all", **kw):
    kw = {"axis": 0, "resize": RESIZE, "min_nonzero": MIN_NONZERO, "cache_dir": False, **kw}
    return nifti.NiftiFolderSource(root, split, **kw)


def _builder_examples(path: pathlib.Path, vol_id: str, axis: int, size, min_nonzero) -> list:
    """What the mood builder's slice config yields for this volume."""
    image, affine, value_range = mood._read_volume(path, np.dtype(np.float16))
    volume = mood._Volume(vol_id, path, 0)
    loaded = mood._Loaded(image, None, affine, value_range)
    examples = [
        mood._slice_example(
            i, volume=volume, loaded=loaded, axis=axis, size=size, min_nonzero=min_nonzero
        )
        for i in range(image.shape[axis])
    ]
    return [ex for ex in examples if ex is not None]


def test_kept_slices_per_axis_and_filter(folder):
    # cube: the box spans 10 / 12 / 8 positions along axes 0 / 1 / 2; every slice through it has
    # >= 24 positive pixels after 2x2 area pooling, the others at most 1.
    expected_cube = {0: list(range(3, 13)), 1: list(range(2, 14)), 2: list(range(4, 12))}
    for axis, kept in expected_cube.items():
        src = _source(folder, axis=axis)
        cube = [i for rel, i in src.entries if rel == "cube.nii.gz"]
        assert cube == kept
        unfiltered = _source(folder, axis=axis, filter=False)
        assert [i for rel, i in unfiltered.entries if rel == "cube.nii.gz"] == list(range(16))
        # And exactly the builder's choice, for both volumes.
        for rel, vol_id in (("cube.nii.gz", "cube"), ("sub/wide.nii.gz", "sub/wide")):
            ref = _builder_examples(folder / rel, vol_id, axis, RESIZE, MIN_NONZERO)
            assert [i for r, i in src.entries if r == rel] == [ex["slice"] for ex in ref]
    # Native size: cube slices hold 10 x 8 = 80 positive pixels (kept at >= 80, not at 81), wide
    # ones 8 x 14 = 112.
    assert len(_source(folder, axis=1, resize=None, min_nonzero=80)) == 12 + 14
    assert len(_source(folder, axis=1, resize=None, min_nonzero=81)) == 14


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_records_equal_the_builders_slices(folder, axis):
    src = _source(folder, axis=axis)
    ref = _builder_examples(folder / "cube.nii.gz", "cube", axis, RESIZE, MIN_NONZERO)
    ref += _builder_examples(folder / "sub/wide.nii.gz", "sub/wide", axis, RESIZE, MIN_NONZERO)
    assert len(src) == len(ref) > 0
    for k, ex in enumerate(ref):
        rec = src[k]
        assert rec["id"] == ex["id"]
        assert rec["image"].dtype == np.float32 and rec["image"].shape == (RESIZE, RESIZE, 1)
        np.testing.assert_array_equal(rec["image"], ex["image"].astype(np.float32))
        assert rec["mask"].shape == (RESIZE, RESIZE) and not rec["mask"].any()
        assert rec["fov"].all() and rec["label"] == 0 and rec["grade"] == -1
        assert rec["has_mask"] == np.bool_(False)


def test_values_are_float16_rounded_area_means(folder):
    """Independent of the slices module: 16 -> 8 is a mean over 2 x 2 blocks."""
    data = nib.load(str(folder / "cube.nii.gz")).get_fdata(dtype=np.float32).astype(np.float16)
    src = _source(folder, axis=2)
    k = src.entries.index(("cube.nii.gz", 5))
    block = data[:, :, 5].astype(np.float32).reshape(8, 2, 8, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(src[k]["image"][..., 0], block.astype(np.float16), rtol=0, atol=0)
    # float32: neither the volume nor the slice is rounded to float16.
    data32 = nib.load(str(folder / "cube.nii.gz")).get_fdata(dtype=np.float32)
    full = _source(folder, axis=2, resize=None, dtype="float32")
    rec = full[full.entries.index(("cube.nii.gz", 5))]
    np.testing.assert_array_equal(rec["image"][..., 0], data32[:, :, 5])


def test_split_by_volume_is_disjoint_and_seeded(tmp_path):
    root = tmp_path / "vols"
    names = [f"v{i}.nii.gz" for i in range(6)]
    for i, name in enumerate(names):
        _save(root / name, _box_volume((16, 16, 16), np.s_[3:13, 2:14, 4:12], i))
    train = _source(root, "train", val_fraction=0.34, seed=3)
    val = _source(root, "validation", val_fraction=0.34, seed=3)
    assert set(val.volumes) == splits.hash_split(names, 0.34, 3) and len(val.volumes) == 2
    assert set(train.volumes) | set(val.volumes) == set(names)
    assert not set(train.volumes) & set(val.volumes)
    train_ids = {train[i]["id"].rsplit("_", 1)[0] for i in range(len(train))}
    val_ids = {val[i]["id"].rsplit("_", 1)[0] for i in range(len(val))}
    assert not train_ids & val_ids and len(train) + len(val) == len(_source(root))
    assert _source(root, "validation", val_fraction=0.34, seed=4).volumes != val.volumes
    # A small fraction still holds out one volume; zero holds out none.
    assert len(_source(root, "validation", val_fraction=0.01).volumes) == 1
    assert len(_source(root, "train", val_fraction=0.0).volumes) == 6


def test_bad_folders_and_files(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _source(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no NIfTI volumes"):
        _source(empty)
    flat = _save(folder / "flat.nii.gz", np.ones((16, 16), np.float32))
    with pytest.raises(records.BadFilesError, match=r"flat\.nii\.gz is not 3-D"):
        _source(folder)
    flat.write_bytes(b"not a volume")
    with pytest.raises(records.BadFilesError, match=r"cannot read volume .*flat\.nii\.gz"):
        _source(folder)
    flat.unlink()
    with pytest.raises(ValueError, match="axis"):
        _source(folder, axis=3)
    with pytest.raises(ValueError, match="split"):
        _source(folder, "test")


def test_index_cache_and_volume_cache(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _source(folder, axis=1, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 2
    reads = []
    real_read = nifti.read_volume

    def counting_read(path, dtype="float16"):
        reads.append(pathlib.Path(path).name)
        return real_read(path, dtype)

    monkeypatch.setattr(nifti, "read_volume", counting_read)
    second = _source(folder, axis=1, cache_dir=cache, cache_volumes=1, slice_cache=False)
    assert second.entries == first.entries and reads == []  # Indexed from the cache.
    # Without the slice cache, records read their volume on demand and keep the last one.
    n_cube = sum(rel == "cube.nii.gz" for rel, _ in second.entries)
    for k in range(len(second)):
        second[k]
    assert reads == ["cube.nii.gz", "wide.nii.gz"]
    second[0]
    assert reads[-1] == "cube.nii.gz" and len(reads) == 3 and n_cube > 1
    # Other options or a changed file are indexed anew.
    _source(folder, axis=2, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 4
    # Workers get a copy without the decoded volumes.
    clone = pickle.loads(pickle.dumps(second))
    np.testing.assert_array_equal(clone[3]["image"], second[3]["image"])


def test_uncompressed_files_are_read_slice_by_slice(tmp_path, monkeypatch):
    root = tmp_path / "vols"
    data = _box_volume((16, 16, 16), np.s_[3:13, 2:14, 4:12], 5)
    _save(root / "plain.nii", data)
    _save(root / "scaled.nii", data, dtype=np.int16)  # Stored with a scale factor.
    assert nib.load(str(root / "scaled.nii")).dataobj.slope != 1
    src = _source(root, axis=1)
    reads = []
    real_read = nifti.read_volume
    monkeypatch.setattr(
        nifti, "read_volume", lambda p, d="float16": reads.append(p) or real_read(p, d)
    )
    for name in ("plain", "scaled"):
        ref = _builder_examples(root / f"{name}.nii", name, 1, RESIZE, MIN_NONZERO)
        recs = [src[k] for k, (rel, _) in enumerate(src.entries) if rel == f"{name}.nii"]
        assert [r["id"] for r in recs] == [ex["id"] for ex in ref]
        for r, ex in zip(recs, ref, strict=True):
            np.testing.assert_array_equal(r["image"], ex["image"].astype(np.float32))
    assert [pathlib.Path(p).name for p in reads] == ["scaled.nii"]  # Only it is decoded whole.


def test_every_bad_volume_is_named_at_once_or_left_out(folder):
    _save(folder / "flat.nii.gz", np.ones((16, 16), np.float32))
    (folder / "junk.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(records.BadFilesError) as e:
        _source(folder)
    line = str(e.value)
    assert "\n" not in line and line.startswith("2 of the 4 volumes of NIfTI folder")
    assert "flat.nii.gz is not 3-D" in line and "junk.nii.gz" in line and "on_corrupt" in line

    skipped = _source(folder, on_corrupt="skip")
    assert sorted(pathlib.Path(p).name for p in skipped.skipped) == ["flat.nii.gz", "junk.nii.gz"]
    assert skipped.volumes == ["cube.nii.gz", "sub/wide.nii.gz"]
    (folder / "flat.nii.gz").unlink()
    (folder / "junk.nii.gz").unlink()
    clean = _source(folder)
    assert skipped.entries == clean.entries and len(skipped) == len(clean) > 0
    np.testing.assert_array_equal(
        skipped[len(skipped) - 1]["image"], clean[len(clean) - 1]["image"]
    )
    assert sources.skipped_files(skipped) == skipped.skipped


def _data_cfg(root, **kw):
    base = dict(
        name="nifti_folder",
        root=str(root),
        axis=0,
        resize=RESIZE,
        min_nonzero=MIN_NONZERO,
        filter=True,
        val_fraction=0.5,
        image_size=RESIZE,
        channels=1,
        mean=(0.5,),
        std=(0.5,),
        hflip=False,
        vflip=False,
        flip_fov=False,
        num_workers=0,
        num_threads=2,
        prefetch=2,
    )
    base.update(kw)
    cfg = data_config()
    cfg.update(base)
    return cfg


def test_through_get_source_and_eval_batches(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "jaxad_data"))
    cfg = _data_cfg(folder)
    src = sources.get_source(cfg, "validation")
    assert isinstance(src, nifti.NiftiFolderSource) and len(src.volumes) == 1
    assert list((tmp_path / "jaxad_data" / "nifti_index").glob("*.json"))  # The default cache.
    batches = list(
        pipeline.eval_batches(
            cfg, "validation", local_batch_size=4, process_index=0, process_count=1
        )
    )
    n = len(src)
    assert len(batches) == -(-n // 4)
    images = np.concatenate([b["image"] for b in batches])[:n]
    expected = np.stack([(src[k]["image"] - 0.5) / 0.5 for k in range(n)])
    assert images.shape == (n, RESIZE, RESIZE, 1)
    np.testing.assert_allclose(images, expected, atol=1e-6)
    ids = np.concatenate([b["id"] for b in batches])[:n].tolist()
    assert ids == [src[k]["id"] for k in range(n)]
    assert pipeline.num_examples(cfg, "train") + n == len(_source(folder))
    with pytest.raises(ValueError, match="data.axis"):
        sources.get_source(_data_cfg(folder, axis=None), "train")
    with pytest.raises(ValueError, match="data.root"):
        sources.get_source(_data_cfg("", axis=0), "train")


def test_several_axes_are_read_as_one_source(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "jaxad_data"))
    src = sources.get_source(_data_cfg(folder, axis="0,1,2"), "train")
    per_axis = [sources.get_source(_data_cfg(folder, axis=a), "train") for a in (0, 1, 2)]
    assert isinstance(src, records.ConcatSource)
    assert len(src) == sum(len(s) for s in per_axis)
    assert src[len(per_axis[0])]["id"] == per_axis[1][0]["id"]
    # As the command line gives --config.data.axis=0,2: a tuple.
    pair = sources.get_source(_data_cfg(folder, axis=(0, 2)), "train")
    assert [len(p) for p in pair.parts] == [len(per_axis[0]), len(per_axis[2])]
    with pytest.raises(ValueError, match="data.axis"):
        sources.get_source(_data_cfg(folder, axis="0,3"), "train")
