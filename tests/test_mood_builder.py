"""Builds MOOD from fake NIfTI volumes in the real layout and reads it back."""

import concurrent.futures
import functools
import re
import weakref

import builder_testing
import grain
import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs.common import data_config
from data_builders import common
from data_builders.mood import Builder, MoodConfig, fake_data, hash_folds
from data_builders.mood import mood_dataset_builder as mood
from jaxad.data import build as build_lib
from jaxad.data import pipeline, slices, sources, splits

CONFIGS = [f"{r}_volumes" for r in ("brain", "abdom")] + [
    f"{r}_axis{a}" for r in ("brain", "abdom") for a in range(3)
]
CLI_CONFIG = "abdom_volumes"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Brain with the solution's fold file (16^3 volumes), abdomen with hashed folds (32^3)."""
    root = tmp_path_factory.mktemp("mood_raw")
    brain = fake_data.write(root, region="brain", fold_file=True)
    abdom = fake_data.write(root, region="abdom")
    info = {key: {**brain[key], **abdom[key]} for key in brain}
    return root, info


@pytest.fixture(scope="module")
def data_dir(raw, tmp_path_factory):
    """Every config built from Python, but one through the command line."""
    out = tmp_path_factory.mktemp("tfds")
    python = [f"mood/{config}" for config in CONFIGS if config != CLI_CONFIG]
    return builder_testing.build_both_ways(
        raw[0], out, python, f"mood/{CLI_CONFIG}", num_workers=2, cli_workers=1
    )


@functools.cache
def _nifti(path: str) -> np.ndarray:
    return nib.load(path).get_fdata(dtype=np.float32)


def _raw_volume(root, region, volume_id):
    """The fake volume and its voxel labels (zeros for training volumes) as written."""
    if volume_id.startswith("toy"):
        image = _nifti(str(root / region / "toy" / f"{volume_id}.nii.gz"))
        labels = _nifti(str(root / region / "toy_label" / "pixel" / f"{volume_id}.nii.gz"))
        return image, labels.astype(np.uint8)
    image = _nifti(str(root / region / f"{region}_train" / f"{volume_id}.nii.gz"))
    return image, np.zeros(image.shape, np.uint8)


@pytest.mark.parametrize("config", CONFIGS)
def test_split_sizes(raw, data_dir, config):
    _, info = raw
    built = tfds.data_source(f"mood/{config}", data_dir=data_dir, download=False)
    assert {split: len(source) for split, source in built.items()} == info["sizes"][config]


@pytest.mark.parametrize("region", ["brain", "abdom"])
def test_volumes(raw, data_dir, region):
    root, info = raw
    built = tfds.data_source(f"mood/{region}_volumes", data_dir=data_dir, download=False)
    size = info["size"][region]
    folds = info["folds"][region]
    for split, source in built.items():
        ids = set()
        for example in source:
            volume_id = example["id"].decode()
            ids.add(volume_id)
            image, labels = _raw_volume(root, region, volume_id)
            assert example["image"].dtype == np.float16
            assert example["image"].shape == (size, size, size)
            np.testing.assert_array_equal(example["image"], image.astype(np.float16))
            np.testing.assert_array_equal(example["mask"], labels)
            np.testing.assert_array_equal(example["affine"], info["affine"][region])
            np.testing.assert_array_equal(example["shape"], [size] * 3)
            if split == "toy":
                assert example["fold"] == -1
                assert example["label"] == info["toy_labels"][region][volume_id]
                assert example["mask"].any() == bool(example["label"])
            else:
                assert example["fold"] == folds[volume_id]
                assert example["label"] == 0
        if split == "toy":
            assert ids == set(info["toy_labels"][region])
        else:
            assert ids == {v for v, fold in folds.items() if (fold == 0) == (split == "validation")}


def test_folds_from_file_or_hash(raw, data_dir):
    _, info = raw
    # brain: the fold file's (3 i + 1) % 10, so fold 0 is 00003; abdom: the hash's fold 0.
    assert [v for v, fold in info["folds"]["brain"].items() if fold == 0] == ["00003"]
    assert [v for v, fold in info["folds"]["abdom"].items() if fold == 0] == ["00004"]
    for region, want in (("brain", {"00003"}), ("abdom", {"00004"})):
        source = tfds.data_source(
            f"mood/{region}_axis0", split="validation", data_dir=data_dir, download=False
        )
        assert {ex["volume"].decode() for ex in source} == want


@pytest.mark.parametrize("config", [c for c in CONFIGS if "axis" in c])
def test_slices(raw, data_dir, config):
    """Slices equal the hand-resized raw slices: upsampling by f repeats each pixel f x f."""
    root, info = raw
    region, axis = config.split("_axis")[0], int(config[-1])
    factor = 256 // info["size"][region]
    built = tfds.data_source(f"mood/{config}", data_dir=data_dir, download=False)
    anomalous = 0
    for split, source in built.items():
        for example in source:
            volume_id, index = example["volume"].decode(), int(example["slice"])
            assert example["id"].decode() == f"{volume_id}_{index}"
            image, labels = _raw_volume(root, region, volume_id)
            want = np.take(image, index, axis=axis).repeat(factor, 0).repeat(factor, 1)
            assert example["image"].dtype == np.float16
            assert example["image"].shape == (256, 256, 1)
            np.testing.assert_array_equal(example["image"][..., 0], want.astype(np.float16))
            assert np.count_nonzero(example["image"] > 0) >= 4000
            mask = np.take(labels, index, axis=axis).repeat(factor, 0).repeat(factor, 1)
            assert example["mask"].dtype == np.uint8
            np.testing.assert_array_equal(example["mask"][..., 0], mask)
            assert example["label"] == int(mask.any())
            if split == "toy":
                assert example["volume_label"] == info["toy_labels"][region][volume_id]
                assert example["fold"] == -1
                anomalous += example["label"]
            else:
                assert example["volume_label"] == 0 and example["label"] == 0
                assert example["fold"] == info["folds"][region][volume_id]
    box = fake_data.anomaly_box(info["size"][region])
    assert anomalous == 2 * (box.stop - box.start)  # toy_0 and toy_2 hold the cube


def test_read_without_builder_code(data_dir):
    builder = tfds.builder_from_directory(data_dir / "mood" / "brain_axis1" / "1.0.0")
    features = builder.info.features
    assert set(features) == {
        "image",
        "mask",
        "label",
        "volume_label",
        "id",
        "volume",
        "slice",
        "fold",
    }
    assert features["image"].shape == (256, 256, 1)
    assert features["image"].np_dtype == np.float16
    assert features["label"].names == ["normal", "anomalous"]
    assert builder.info.supervised_keys == ("image", "label")
    volumes = tfds.builder_from_directory(data_dir / "mood" / "abdom_volumes" / "1.0.0")
    assert volumes.info.features["image"].shape == (None, None, None)
    assert volumes.as_data_source(split="toy")[0]["image"].dtype == np.float16


def test_read_through_jaxad_and_grain(raw, data_dir):
    """jaxad's TfdsSource and pipeline read the float16 slices as floats; grain reads them raw."""
    _, info = raw
    source = sources.TfdsSource("mood/brain_axis2", "toy", data_dir=data_dir)
    assert len(source) == info["sizes"]["brain_axis2"]["toy"]
    records = [source[i] for i in range(len(source))]
    raw_source = tfds.data_source("mood/brain_axis2", split="toy", data_dir=data_dir)
    for i in (0, len(source) - 1):
        assert records[i]["image"].dtype == np.float32 and records[i]["image"].shape[-1] == 1
        np.testing.assert_array_equal(records[i]["image"], raw_source[i]["image"])
    assert all(r["has_mask"] and r["mask"].shape == (256, 256) for r in records)
    assert {int(r["label"]) for r in records} == {0, 1}
    assert all(int(r["label"]) == int(r["mask"].any()) for r in records)
    assert all(re.fullmatch(r"toy_\d_\d+", r["id"]) for r in records)

    tfds_source = tfds.data_source(
        "mood/brain_axis2", split="train", data_dir=data_dir, download=False
    )
    batch = next(iter(grain.MapDataset.source(tfds_source).batch(4)))
    assert batch["image"].shape == (4, 256, 256, 1) and batch["image"].dtype == np.float16
    assert batch["label"].tolist() == [0, 0, 0, 0]

    # The DPA solution's training transform: 128 px, x -> 2x - 1 on the [0, 1] intensities.
    cfg = data_config()
    cfg.update(
        dict(
            name="mood",
            tfds_name="mood/brain_axis2",
            data_dir=str(data_dir),
            image_size=128,
            channels=1,
            mean=(0.5,),
            std=(0.5,),
            num_workers=0,
            num_threads=2,
            prefetch=2,
        )
    )
    batch = next(pipeline.eval_batches(cfg, "toy", local_batch_size=2))
    assert batch["image"].shape == (2, 128, 128, 1) and batch["image"].dtype == np.float32
    # As the solution: a float ('F') Pillow image resized bilinearly, then normalised.
    first = Image.fromarray(records[0]["image"][..., 0], "F").resize((128, 128), Image.BILINEAR)
    np.testing.assert_allclose(batch["image"][0, ..., 0], 2 * np.asarray(first) - 1, atol=1e-6)


def _prepare(builder, root):
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(root), try_download_gcs=False),
    )
    return builder


def test_downsampling_config(raw, tmp_path):
    """abdom slices area-resized 32 -> 16 (as 512 -> 256), float32, another validation fold."""
    root, info = raw
    config = MoodConfig(
        name="abdom_axis2_half",
        region="abdom",
        axis=2,
        resize=16,
        min_nonzero=60,
        val_fold=2,
        dtype="float32",
    )
    builder = Builder(config=config, data_dir=tmp_path, file_format="array_record")
    _prepare(builder, root)
    built = builder.as_data_source()
    assert {v for v, fold in info["folds"]["abdom"].items() if fold == 2} == {"00003"}
    assert {ex["volume"].decode() for ex in built["validation"]} == {"00003"}
    filtered = 0
    for source in built.values():
        kept = set()
        for example in source:
            image, labels = _raw_volume(root, "abdom", example["volume"].decode())
            index = int(example["slice"])
            kept.add((example["volume"].decode(), index))
            blocks = image[:, :, index].reshape(16, 2, 16, 2)
            assert example["image"].dtype == np.float32
            np.testing.assert_allclose(
                example["image"][..., 0], blocks.mean(axis=(1, 3)), rtol=1e-6
            )
            label_blocks = labels[:, :, index].reshape(16, 2, 16, 2)
            np.testing.assert_array_equal(example["mask"][..., 0], label_blocks.max(axis=(1, 3)))
            assert np.count_nonzero(example["image"] > 0) >= 60
        for volume_id in {v for v, _ in kept}:
            image, _ = _raw_volume(root, "abdom", volume_id)
            for index in range(image.shape[2]):
                positive = image[:, :, index].reshape(16, 2, 16, 2).any(axis=(1, 3)).sum()
                assert ((volume_id, index) in kept) == (positive >= 60)
                filtered += positive < 60
    assert filtered > 0


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("mood/brain_axis0", data_dir, tmp_path)


def test_manual_dir_may_be_the_region_folder(raw, tmp_path):
    root, info = raw
    builder = build_lib.build("mood/brain_volumes", root / "brain", tmp_path)
    sizes = {split: s.num_examples for split, s in builder.info.splits.items()}
    assert sizes == info["sizes"]["brain_volumes"]


class _EagerExecutor:
    """Runs each task the moment it is submitted: the worst case for read-ahead memory."""

    def __init__(self, max_workers):
        del max_workers

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future


def test_at_most_two_volumes_in_memory(raw, tmp_path, monkeypatch):
    """Volumes are read one at a time (plus one ahead for slices), however many workers."""
    root, info = raw
    alive, peak, reads = [0], [0], []
    read_volume = mood._read_volume

    def counting_read(path, dtype):
        image, affine, value_range = read_volume(path, dtype)
        if "toy_label" not in str(path):  # Count images, not the toy cases' labels.
            reads.append(path)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(image, lambda: alive.__setitem__(0, alive[0] - 1))
        return image, affine, value_range

    monkeypatch.setattr(mood, "_read_volume", counting_read)
    monkeypatch.setattr(mood, "ThreadPoolExecutor", _EagerExecutor)
    n_volumes = sum(info["sizes"]["abdom_volumes"].values())
    for config in ("abdom_axis1", "abdom_volumes"):
        reads.clear()
        peak[0] = 0
        build_lib.build(f"mood/{config}", root, tmp_path, num_workers=4)
        assert len(reads) == n_volumes
        assert peak[0] == 2, config


def _broken_copy(raw, tmp_path):
    root, _ = raw
    return builder_testing.broken_copy(root / "brain", tmp_path / "raw" / "brain").parent


@pytest.mark.parametrize(
    "missing",
    [
        "brain/brain_train",
        "brain/brain_train/00007.nii.gz",  # listed in the fold file
        "brain/toy_label/pixel/toy_2.nii.gz",
        "brain/toy_label/sample/toy_1.nii.gz.txt",
    ],
)
def test_missing_file_is_named(raw, tmp_path, missing):
    root = _broken_copy(raw, tmp_path)
    path = root / missing
    builder_testing.remove_path(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_lib.build("mood/brain_axis0", root, tmp_path / "out")
    assert not (tmp_path / "out" / "mood" / "brain_axis0" / "1.0.0").exists()


@pytest.mark.parametrize(
    "file, text, error",
    [
        ("train_folds_10.csv", "filename,fold\n00000.nii.gz,1\n", r"lacks the column\(s\)"),
        ("train_folds_10.csv", "filename,test_fold\n00000.nii.gz,x\n", "is not a number: 'x'"),
        ("train_folds_10.csv", "filename,test_fold\n00000.nii.gz,12\n", "test_fold must be 0-9"),
        ("train_folds_10.csv", "filename,test_fold\n00000.nii.gz,1\n", "does not list .*00001"),
        ("toy_label/sample/toy_3.nii.gz.txt", "maybe\n", "is not a number: 'maybe'"),
        ("toy_label/sample/toy_3.nii.gz.txt", "2\n", "must be 0 or 1"),
    ],
)
def test_malformed_file_is_named(raw, tmp_path, file, text, error):
    root = _broken_copy(raw, tmp_path)
    path = root / "brain" / file
    path.write_text(text)
    with pytest.raises(common.RawDataError, match=re.escape(str(path)) + ".*" + error):
        build_lib.build("mood/brain_volumes", root, tmp_path / "out")


@pytest.mark.parametrize("problem", ["truncated", "2-D"])
def test_unreadable_volume_is_named(raw, tmp_path, problem):
    root = _broken_copy(raw, tmp_path)
    path = root / "brain" / "brain_train" / "00005.nii.gz"
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), path)
    with pytest.raises(common.RawDataError, match=re.escape(f"Cannot read {path}")) as err:
        build_lib.build("mood/brain_volumes", root, tmp_path / "out")
    if problem == "2-D":
        assert "expected a 3-D volume" in str(err.value)
    assert not (tmp_path / "out" / "mood" / "brain_volumes" / "1.0.0").exists()


def test_unreadable_volume_is_skipped_and_counted(raw, tmp_path, caplog):
    root = _broken_copy(raw, tmp_path)
    path = root / "brain" / "brain_train" / "00005.nii.gz"  # fold 6: train
    path.write_bytes(path.read_bytes()[:200])
    builder = build_lib.build("mood/brain_axis2", root, tmp_path / "out", on_corrupt="skip")
    _, info = raw
    source = builder.as_data_source(split="train")
    assert "00005" not in {ex["volume"].decode() for ex in source}
    assert 0 < len(source) < info["sizes"]["brain_axis2"]["train"]
    assert f"skipped 1 corrupt file(s), e.g. {path}" in caplog.text


def test_intensities_outside_unit_range_are_kept_and_logged(raw, tmp_path, caplog):
    root = _broken_copy(raw, tmp_path)
    path = root / "brain" / "brain_train" / "00002.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32) * 2, image.affine), path)
    builder = build_lib.build("mood/brain_volumes", root, tmp_path / "out")
    example = next(ex for ex in builder.as_data_source(split="train") if ex["id"] == b"00002")
    assert example["image"].max() > 1.5
    assert f"{path} has intensities in [0, " in caplog.text
    assert "1 volume(s) outside [0, 1]" in caplog.text


# --- jaxad/data/slices.py ---------------------------------------------------------------------


def test_area_resize_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(slices.area_resize(x, 2), [[2.5, 4.5], [10.5, 12.5]])
    # 5 -> 3 pixels: windows [0, 2), [1, 4), [3, 5) on each axis (torch's adaptive pooling).
    assert slices.pooling_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    y = np.arange(25, dtype=np.float32).reshape(5, 5)
    rows = [y[0:2].mean(0), y[1:4].mean(0), y[3:5].mean(0)]
    want = [[r[0:2].mean(), r[1:4].mean(), r[3:5].mean()] for r in rows]
    np.testing.assert_allclose(slices.area_resize(y, 3), want)
    np.testing.assert_array_equal(slices.area_resize(y, (1, 5)), y.mean(0, keepdims=True))
    # Upsampling repeats pixels; the same size is an identity (but a float32 copy).
    np.testing.assert_array_equal(
        slices.area_resize(x[:2, :2], 4), x[:2, :2].repeat(2, 0).repeat(2, 1)
    )
    same = slices.area_resize(x.astype(np.float16), 4)
    assert same.dtype == np.float32 and np.array_equal(same, x)


def test_max_resize_keeps_small_anomalies():
    mask = np.zeros((8, 8), np.uint8)
    mask[5, 2] = 1
    assert slices.area_resize(mask, 4)[2, 1] == 0.25
    want = np.zeros((4, 4), np.uint8)
    want[2, 1] = 1
    np.testing.assert_array_equal(slices.max_resize(mask, 4), want)
    assert slices.max_resize(mask, 3).dtype == np.uint8
    assert slices.max_resize(mask, 3)[1:, 0:2].any()  # windows [1, 4) and [2, 6) hold 5, 2


def test_filter_threshold():
    image = np.zeros((256, 256), np.float32)
    image.flat[:4000] = 0.5
    assert slices.keep_slice(image) and slices.prepare_slice(image) is not None
    image.flat[0] = -0.5  # Negative intensities do not count, as in the solution.
    assert not slices.keep_slice(image) and slices.prepare_slice(image) is None
    assert slices.prepare_slice(image, min_nonzero=None) is not None
    assert slices.keep_slice(image, 3999)


def test_slice_along_and_labels():
    volume = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(slices.slice_along(volume, 1, 2), volume[:, 2, :])
    np.testing.assert_array_equal(slices.slice_along(volume, 2, 3), volume[:, :, 3])
    with pytest.raises(ValueError, match="3-D volume"):
        slices.slice_along(volume[0], 0, 0)
    labels = np.array([0.4, 0.6, 1.4, 2.0, -1.0])
    np.testing.assert_array_equal(slices.binarize_label(labels), [0, 1, 1, 1, 0])


def test_hash_folds_known_answer():
    names = [f"{i:05d}.nii.gz" for i in range(10)]
    folds = hash_folds(names, 10, seed=0)
    assert {name[:5]: fold for name, fold in folds.items()} == {
        "00004": 0,
        "00003": 1,
        "00006": 2,
        "00009": 3,
        "00001": 4,
        "00002": 5,
        "00008": 6,
        "00000": 7,
        "00007": 8,
        "00005": 9,
    }
    assert hash_folds(names[::-1], 10, seed=0) == folds
    assert hash_folds(names, 10, seed=1) != folds
    many = [f"{i:05d}.nii.gz" for i in range(800)]
    many_folds = hash_folds(many, 10, seed=0)
    assert np.bincount(list(many_folds.values())).tolist() == [80] * 10
    # Fold 0 is the 10 % that splits.hash_split holds out with the same seed.
    assert {n for n, f in many_folds.items() if f == 0} == splits.hash_split(many, 0.1, seed=0)


def test_builder_class_resolves_names():
    assert build_lib.builder_class("mood") is Builder
    assert build_lib.builder_class("mood/abdom_axis1") is Builder
    assert set(Builder.builder_configs) == set(CONFIGS)
