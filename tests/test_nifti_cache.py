"""Tests for the slice cache of jaxad.data.nifti: decoded once, the same values, bounded."""

import logging
import os
import pathlib
import pickle
import time

import nibabel as nib
import numpy as np
import pytest

from configs.common import data_config
from jaxad.data import nifti, slices

MIN_NONZERO = 20


def _volume(shape, seed: int) -> np.ndarray:
    """Intensities in (0.05, 1) in an off-centre box, zeros elsewhere."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    box = tuple(slice(n // 5, n - n // 6) for n in shape)
    data[box] = rng.uniform(0.05, 1.0, size=data[box].shape)
    return data


def _save(path: pathlib.Path, data: np.ndarray, dtype=None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.eye(4))
    if dtype is not None:
        img.set_data_dtype(dtype)  # Integers: nibabel stores them with scl_slope scaling.
    nib.save(img, str(path))
    return path


@pytest.fixture()
def folder(tmp_path) -> pathlib.Path:
    """Compressed and plain volumes, float32 and scaled int16, of unlike shapes."""
    root = tmp_path / "vols"
    _save(root / "a.nii.gz", _volume((16, 20, 18), 0))
    _save(root / "b.nii.gz", _volume((20, 16, 24), 1), dtype=np.int16)
    _save(root / "sub" / "c.nii", _volume((18, 18, 16), 2))
    _save(root / "d.nii", _volume((16, 24, 20), 3), dtype=np.int16)
    assert nib.load(str(root / "b.nii.gz")).dataobj.slope != 1
    return root


def _source(root, cache_dir, **kw):
    kw = {"axis": 0, "resize": 8, "min_nonzero": MIN_NONZERO, **kw}
    return nifti.NiftiFolderSource(root, "all", cache_dir=cache_dir, **kw)


def _records(src) -> list[dict]:
    return [src[k] for k in range(len(src))]


def _assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g["id"] == w["id"]
        assert g["image"].dtype == w["image"].dtype == np.float32
        assert g["image"].shape == w["image"].shape
        # To the bit: the same float16 values, signed zeros included.
        np.testing.assert_array_equal(g["image"].view(np.uint32), w["image"].view(np.uint32))
        for key in ("mask", "fov", "label", "grade", "has_mask"):
            np.testing.assert_array_equal(g[key], w[key])


@pytest.fixture()
def count_reads(monkeypatch):
    """Names of the volumes opened: read whole (`read_volume`) or for a slice (plain files)."""
    reads = []
    real_open = nifti._open

    def counting_open(path):
        reads.append(pathlib.Path(path).name)
        return real_open(path)

    monkeypatch.setattr(nifti, "_open", counting_open)
    return reads


@pytest.mark.parametrize(
    "options",
    [
        {"axis": 0},
        {"axis": 1, "resize": 12},  # Non-integer area windows (16 -> 12, 20 -> 12, ...).
        {"axis": 2, "resize": None, "min_nonzero": 150},
        {"axis": 1, "filter": False},
        {"axis": 2, "resize": 32, "dtype": "float32"},  # Upsampling, no float16 rounding.
    ],
)
def test_cached_records_equal_uncached(folder, tmp_path, options):
    want = _records(_source(folder, False, **options))
    cached = _source(folder, tmp_path / "cache", **options)
    # Every volume with kept slices is served from the cache.
    assert set(cached.cached_volumes) == {rel for rel, _ in cached.entries}
    _assert_same_records(_records(cached), want)
    # A second source (a later run) reads the files the first one wrote.
    _assert_same_records(_records(_source(folder, tmp_path / "cache", **options)), want)


def test_second_pass_reads_no_volume(folder, tmp_path, count_reads):
    cache = tmp_path / "cache"
    first = _source(folder, cache, axis=1)
    assert sorted(count_reads) == ["a.nii.gz", "b.nii.gz", "c.nii", "d.nii"]
    assert len(list(cache.glob("*.npy"))) == len(list(cache.glob("*.json"))) == 4
    count_reads.clear()
    second = _source(folder, cache, axis=1)
    records = _records(second)
    assert count_reads == []  # Neither indexing nor the records read a volume.
    _assert_same_records(records, _records(first))
    # Worker processes get a copy that reads the same files.
    clone = pickle.loads(pickle.dumps(second))
    _assert_same_records(_records(clone), records)
    assert count_reads == []


def test_several_axes_decode_each_volume_once(folder, tmp_path, count_reads, monkeypatch):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "data"))
    cfg = data_config()
    cfg.update(dict(name="nifti_folder", root=str(folder), axis="0,1,2", resize=8))
    cfg.update(dict(min_nonzero=MIN_NONZERO, val_fraction=0.0))
    src = nifti.source_from_config(cfg, "train")
    assert sorted(count_reads) == ["a.nii.gz", "b.nii.gz", "c.nii", "d.nii"]
    assert len(list((tmp_path / "data" / "nifti_index").glob("*.npy"))) == 4 * 3
    count_reads.clear()
    records = _records(src)
    assert count_reads == []
    want = [_records(_source(folder, False, axis=a)) for a in (0, 1, 2)]
    _assert_same_records(records, sum(want, []))
    # data.nifti_cache=False: only the index is cached, records read their volume.
    cfg.nifti_cache = False
    cfg.axis = 0
    count_reads.clear()
    src = nifti.source_from_config(cfg, "train")
    assert not src.cached_volumes and count_reads == []
    _assert_same_records(_records(src), want[0])
    assert count_reads


def test_damaged_slice_files_are_rebuilt(folder, tmp_path, count_reads):
    cache = tmp_path / "cache"
    want = _records(_source(folder, cache, axis=2))
    files = sorted(cache.glob("*.npy"))
    truncated, garbage, reshaped = files[:3]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    garbage.write_bytes(b"\x93NUMPY not a header")
    np.save(reshaped, np.zeros((3, 8, 8), np.float16))  # Whole, but not what the index says.
    count_reads.clear()
    src = _source(folder, cache, axis=2)
    assert len(count_reads) == 3 and src.cached_volumes == src.volumes
    _assert_same_records(_records(src), want)
    assert all(nifti._read_header(f) is not None for f in files)


def test_a_slice_file_removed_during_a_run_falls_back_to_the_volume(folder, tmp_path):
    cache = tmp_path / "cache"
    src = _source(folder, cache, axis=0)
    want = _records(_source(folder, False, axis=0))
    for f in cache.glob("*.npy"):
        f.unlink()  # Evicted by another run meanwhile.
    _assert_same_records(_records(src), want)
    assert src.cached_volumes == []


def _slices_bytes(src: nifti.NiftiFolderSource) -> int:
    return sum(p.stat().st_size for p, _, _ in src._slice_files.values())


def test_the_bound_evicts_least_recently_used_files_of_earlier_runs(
    tmp_path, monkeypatch, count_reads, caplog
):
    cache = tmp_path / "cache"
    roots = []
    for name in ("old", "new"):
        roots.append(tmp_path / name)
        for i in range(2):
            _save(roots[-1] / f"{name}{i}.nii.gz", _volume((16, 16, 16), i))
    old = _source(roots[0], cache)
    size = _slices_bytes(old) // 2 + 100  # One volume's file (a little more than its data).
    # Used longest ago: old0; an earlier run (before this process started) used both.
    files = {p.name: p for p, _, _ in old._slice_files.values()}
    old0 = old._slice_files["old0.nii.gz"][0]
    os.utime(old0, (time.time() - 200,) * 2)
    os.utime(old._slice_files["old1.nii.gz"][0], (time.time() - 100,) * 2)
    monkeypatch.setattr(nifti, "_STARTED", time.time() - 50)
    count_reads.clear()
    new = _source(roots[1], cache, slice_cache_gb=3 * size / 1e9)
    assert new.cached_volumes == new.volumes and not old0.exists()
    assert {p.name for p in cache.glob("*.npy")} == set(files) - {old0.name} | {
        p.name for p, _, _ in new._slice_files.values()
    }
    # old0 again: old1, used longest ago, makes room for it; then old1 does not fit, as the
    # files used by this process are kept, and is decoded per record, with the same values.
    with caplog.at_level(logging.WARNING):
        again = _source(roots[0], cache, slice_cache_gb=3 * size / 1e9)
    assert "is full" in caplog.text
    assert again.cached_volumes == ["old0.nii.gz"] and len(list(cache.glob("*.npy"))) == 3
    want = _records(_source(roots[0], False))
    count_reads.clear()
    _assert_same_records(_records(again), want)
    assert set(count_reads) == {"old1.nii.gz"}
    # A bound of zero caches nothing.
    none = _source(roots[1], tmp_path / "cache0", slice_cache_gb=0)
    assert none.cached_volumes == [] and not list((tmp_path / "cache0").glob("*.npy"))


@pytest.mark.parametrize("n_in", [12, 16, 20, 24, 48, 155, 240, 256])
@pytest.mark.parametrize("n_out", [7, 12, 16, 32, 48, 224, 256])
def test_window_means_equal_a_mean_per_window(n_in, n_out):
    """`slices.area_resize`'s vectorised windows equal numpy's mean over each window."""
    rng = np.random.default_rng(n_in * 1000 + n_out)
    x = (rng.uniform(-0.1, 1.0, (n_in, n_in + 3)) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = -0.0
    for image in (x, np.asfortranarray(x.astype(np.float16)), x[:, 1:-2].T):
        h, w = image.shape
        rows = slices._pool_windows(
            np.asarray(image, np.float32), 0, slices.pooling_windows(h, n_out), np.mean
        )
        want = slices._pool_windows(rows, 1, slices.pooling_windows(w, n_out), np.mean)
        if n_out in (h, w) or h % n_out == 0 or w % n_out == 0:
            continue  # Those axes take the reshape path, unchanged.
        got = slices.area_resize(image, n_out)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
