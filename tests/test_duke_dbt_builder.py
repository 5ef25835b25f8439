"""Builds BCS-DBT from fake raw files in the real layout and reads it back, with tfds and jaxad."""

import csv
import re
import shutil

import builder_testing
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from configs.common import data_config
from data_builders import common
from data_builders.duke_dbt import (
    Builder,
    DukeDbtConfig,
    duke_dbt_dataset_builder,
    fake_data,
    volumes,
)
from jaxad.data import build as build_lib
from jaxad.data import pipeline, sources

TRAIN_PATHS, TRAIN_LABELS, TRAIN_BOXES = fake_data.TABLES["train"]
VAL_PATHS, VAL_LABELS, VAL_BOXES = fake_data.TABLES["validation"]
TEST_PATHS, TEST_LABELS, TEST_BOXES = fake_data.TABLES["test"]
GRADES = ["Normal", "Actionable", "Benign", "Cancer"]
CUSTOM = DukeDbtConfig(
    name="custom",
    normal_slices=0,
    slice_step=4,
    intensity="minmax",
    box_slice_tolerance=0.5,
    unboxed_splits=True,
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("duke_dbt_raw")
    return root, fake_data.write(root)


@pytest.fixture(scope="module")
def data_dir(raw, tmp_path_factory):
    """Builds `slices` from Python and `slices5` through the command line."""
    out = tmp_path_factory.mktemp("tfds")
    return builder_testing.build_both_ways(
        raw[0], out, ["duke_dbt/slices"], "duke_dbt/slices5", num_workers=2, cli_workers=1
    )


@pytest.fixture(scope="module")
def custom(raw, tmp_path_factory):
    """Every option away from its default: all slices 4 apart, minmax, tolerance, unboxed."""
    out = tmp_path_factory.mktemp("custom")
    builder = Builder(config=CUSTOM, data_dir=out, file_format="array_record", num_workers=1)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=raw[0], try_download_gcs=False),
    )
    return builder


def _views(info):
    return {(v.patient, v.study, v.view): v for v in info["views"]}


def _expected_ids(info, split, normal_slices):
    """Example ids of a split, from the fake views and the builder's documented rules."""
    ids = set()
    for v in info["views"]:
        if v.split != split.split("_")[0]:
            continue
        name = f"{v.patient}/{v.study}/{v.view}"
        boxed = {b[4] for b in v.boxes}
        if split == "train" and v.label == "Normal":
            ids |= {f"{name}/{s}" for s in normal_slices(v.frames)}
        elif split.endswith("_unboxed") and v.label != "Normal" and not boxed:
            ids.add(f"{name}/{v.frames // 2}")
        elif split in ("train_abnormal", "validation", "test"):
            ids |= {f"{name}/{s}" for s in boxed}
            if split != "train_abnormal" and v.label == "Normal":
                ids.add(f"{name}/{v.frames // 2}")
    return ids


def _check_example(example, v, info, tolerance=0.0, scale=None):
    """One stored slice against the fake view it comes from."""
    rows, cols = info["rows"], info["cols"]
    image, mask, s = example["image"], example["mask"], int(example["slice"])
    assert image.shape == mask.shape == (rows, cols, 1)
    assert image.dtype == mask.dtype == np.uint8
    assert example["num_slices"] == v.frames
    assert example["grade"] == GRADES.index(v.label)
    assert example["label"] == int(v.label != "Normal")
    # Upright whatever the storage: the breast is on the side the view names.
    left, right = int(image[:, 0].sum()), int(image[:, -1].sum())
    assert (left > right) == v.view.startswith("l"), example["id"]
    # The slice asked for, windowed: raw 0..1024 onto 0..255 (or the volume's own range).
    col = 1 if v.view.startswith("l") else cols - 2
    top = scale or fake_data.WINDOW[1]
    assert image[rows // 2, col, 0] == round(fake_data.tissue_value(s) * 255 / top)
    boxes = [b for b in v.boxes if abs(b[4] - s) <= tolerance * v.frames]
    np.testing.assert_array_equal(example["boxes"], np.array([b[:4] for b in boxes]).reshape(-1, 4))
    assert list(example["box_class"]) == [["benign", "cancer"].index(b[5]) for b in boxes]
    assert list(example["box_slice"]) == [b[4] for b in boxes]
    assert list(example["box_ad"]) == [bool(b[6]) for b in boxes]
    want = common.box_mask(rows, cols, [b[:4] for b in boxes])
    np.testing.assert_array_equal(mask[..., 0], want)
    # The lesion drawn on this slice lies exactly under its box.
    drawn = [b for b in v.boxes if b[4] == s]
    for x, y, w, h, *_ in drawn:
        assert (image[y : y + h, x : x + w] == 255).all()
    if scale is None:  # in the window, only lesions reach 255
        assert bool(drawn) == (image == 255).any()


@pytest.mark.parametrize("config", ["slices", "slices5"])
def test_split_sizes(data_dir, raw, config):
    sizes = tfds.data_source(f"duke_dbt/{config}", data_dir=data_dir, download=False)
    assert {split: len(source) for split, source in sizes.items()} == raw[1]["sizes"][config]


@pytest.mark.parametrize(
    "config, normal_slices",
    # slices5 keeps 5 slices 4 apart: in the fake volumes (<= 17 slices), every 4th slice.
    [("slices", lambda n: [n // 2]), ("slices5", lambda n: range(n // 2 % 4, n, 4))],
)
def test_examples(data_dir, raw, config, normal_slices):
    info = raw[1]
    views = _views(info)
    sources_ = tfds.data_source(f"duke_dbt/{config}", data_dir=data_dir, download=False)
    for split, source in sources_.items():
        examples = list(source)
        ids = [ex["id"].decode() for ex in examples]
        assert set(ids) == _expected_ids(info, split, normal_slices), split
        assert len(set(ids)) == len(ids)
        for ex in examples:
            v = views[ex["patient_id"].decode(), ex["study_id"].decode(), ex["view"].decode()]
            _check_example(ex, v, info)
            if split == "train":
                assert ex["label"] == 0
            if split == "train_abnormal":
                assert ex["label"] == 1 and len(ex["boxes"])


def test_options(custom, raw):
    info = raw[1]
    views = _views(info)
    splits = custom.as_data_source()
    # validation has no abnormal view without boxes: an empty split is left out.
    assert set(splits) == {
        "train", "train_abnormal", "train_unboxed", "validation", "test", "test_unboxed"
    }  # fmt: skip
    for split, source in splits.items():
        ids = {ex["id"].decode() for ex in source}
        assert ids == _expected_ids(info, split, lambda n: range(n // 2 % 4, n, 4)), split
        for ex in source:
            v = views[ex["patient_id"].decode(), ex["study_id"].decode(), ex["view"].decode()]
            top = fake_data.LESION if v.boxes else fake_data.tissue_value(v.frames - 1)
            _check_example(ex, v, info, tolerance=0.5, scale=top)
            if split.endswith("_unboxed"):
                assert v.label == "Actionable" and ex["label"] == 1 and not ex["mask"].any()


def test_read_without_builder_code(data_dir):
    builder = tfds.builder_from_directory(data_dir / "duke_dbt" / "slices" / "1.0.0")
    features = builder.info.features
    assert set(features) == {
        "image", "mask", "label", "grade", "boxes", "box_class", "box_slice", "box_ad",
        "patient_id", "study_id", "view", "slice", "num_slices", "id",
    }  # fmt: skip
    assert features["grade"].names == ["normal", "actionable", "benign", "cancer"]
    assert features["label"].names == ["normal", "abnormal"]
    assert builder.info.supervised_keys == ("image", "label")
    assert "Mazurowski" in builder.info.citation
    example = builder.as_data_source(split="train_abnormal")[0]
    assert example["label"] == 1 and example["mask"].any()


def test_jaxad_reads_the_dataset(data_dir, raw):
    info = raw[1]
    source = sources.TfdsSource("duke_dbt/slices", "test", data_dir=data_dir)
    records = [source[i] for i in range(len(source))]
    assert len(records) == info["sizes"]["slices"]["test"]
    for r in records:
        assert r["image"].shape == (info["rows"], info["cols"], 1) and r["has_mask"]
        assert r["label"] == int(r["mask"].any()) and r["grade"] in (0, 2, 3)
    cfg = data_config()
    cfg.update(
        dict(
            name="tfds",
            tfds_name="duke_dbt/slices",
            data_dir=str(data_dir),
            image_size=32,
            channels=1,
            mean=(0.2,),
            std=(0.3,),
            num_threads=1,
            num_workers=0,
            prefetch=1,
        )
    )
    batches = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=3, process_index=0, process_count=1)
    )
    valid = np.concatenate([b["valid"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[valid]
    assert batches[0]["image"].shape == (3, 32, 32, 1)
    assert valid.sum() == len(records) and sorted(labels) == sorted(r["label"] for r in records)
    masks = np.concatenate([b["mask"] for b in batches])[valid]
    assert ((masks.reshape(len(masks), -1).max(1) > 0) == (labels == 1)).all()


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("duke_dbt/slices", data_dir, tmp_path)


def test_normal_slices():
    pick = duke_dbt_dataset_builder.normal_slices
    assert pick(9, 1, 1) == [4] and pick(10, 1, 1) == [5] and pick(1, 1, 1) == [0]
    assert pick(17, 5, 4) == [0, 4, 8, 12, 16]
    assert pick(13, 5, 4) == [2, 6, 10]  # the slices beyond the volume are dropped
    assert pick(10, 2, 3) == [5, 8]
    assert pick(13, 0, 4) == [2, 6, 10] and pick(5, 0, 1) == [0, 1, 2, 3, 4]


def test_orientation_and_scaling():
    frame = np.array([[9, 0, 0], [9, 5, 1]], np.uint16)
    np.testing.assert_array_equal(volumes.orient(frame, "lcc"), frame)
    np.testing.assert_array_equal(volumes.orient(frame, "RMLO"), frame[::-1, ::-1])
    np.testing.assert_array_equal(
        volumes.to_uint8(np.array([-5, 0, 1, 2, 4, 9]), 0, 4), [0, 0, 64, 128, 255, 255]
    )


def test_file_finder(tmp_path):
    rel = "C/P1/01-01-2000-S1-MAMMO SCREENING-111/7.000000-222/1-1.dcm"
    on_disk = tmp_path / "C/P1/01-01-2000-S1-mammo screening-111/7.000000-NA-222/1-1.dcm"
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(b"")
    finder = volumes.FileFinder(epath.Path(tmp_path))
    assert finder.find(rel, "C/P1/1.2/1.3/1-1.dcm") == on_disk
    assert finder.find(rel.replace("222", "333"), "") is None
    (tmp_path / "C/P1/1.2/1.3").mkdir(parents=True)
    (tmp_path / "C/P1/1.2/1.3/1-1.dcm").write_bytes(b"")
    classic = "C/P1/1.2/1.3/1-1.dcm"
    assert finder.find("C/P1/x/y/1-1.dcm", classic) == tmp_path / classic


def _copy(raw, tmp_path):
    return builder_testing.broken_copy(raw[0], tmp_path / "raw")


def _edit_csv(path, edit):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(edit(rows))


@pytest.mark.parametrize(
    "missing",
    [
        "BCS-DBT-labels-train-v2.csv",
        "BCS-DBT-boxes-test-v2-PHASE-2-Jan-2024.csv",
        "BCS-DBT-labels-validation-PHASE-2-Jan-2024.csv",
        "Breast-Cancer-Screening-DBT",
        "view",
    ],
)
def test_missing_file_is_named(raw, tmp_path, missing):
    root = _copy(raw, tmp_path)
    named = root / missing
    if missing == "view":  # the DICOM of a normal training view
        view = raw[1]["views"][3]
        (root / view.file).unlink()
        named = root / view.descriptive_path
    else:
        builder_testing.remove_path(named)
    with pytest.raises(FileNotFoundError, match=re.escape(str(named)) + ".*\nExpected manual_dir"):
        build_lib.build("duke_dbt/slices", root, tmp_path / "out")
    assert not (tmp_path / "out" / "duke_dbt" / "slices" / "1.0.0").exists()


def _drop_column(name):
    return lambda rows: [[c for h, c in zip(rows[0], r, strict=True) if h != name] for r in rows]


def _set(line, column, value):
    def edit(rows):
        rows[line - 1][rows[0].index(column)] = value
        return rows

    return edit


@pytest.mark.parametrize(
    "table, edit, message",
    [
        (TRAIN_LABELS, _drop_column("Cancer"), r"lacks the column\(s\) \['Cancer'\]"),
        (TRAIN_BOXES, _set(2, "Slice", "abc"), ":2: column 'Slice' is not a number"),
        (TRAIN_BOXES, _set(3, "Slice", "13"), ":3: a box needs .*0 <= Slice < VolumeSlices"),
        (TEST_LABELS, _set(3, "Benign", "1"), ":3: exactly one of"),
        (TEST_PATHS, _set(2, "View", "xcc"), ":2: needs .* View starting with l or r"),
        (TRAIN_PATHS, _set(2, "View", "lcc2"), ":2: view DBT-P00001/DBT-S00001/lcc is not in"),
        (VAL_BOXES, _set(2, "View", "lcc"), ":2: box on view .*/lcc, labelled normal"),
    ],
)
def test_bad_table_is_named(raw, tmp_path, table, edit, message):
    root = _copy(raw, tmp_path)
    _edit_csv(root / table, edit)
    with pytest.raises(common.RawDataError, match=message) as error:
        build_lib.build("duke_dbt/slices", root, tmp_path / "out")
    assert str(root / table) in str(error.value)


def test_ambiguous_table_names(raw, tmp_path):
    root = _copy(raw, tmp_path)
    shutil.copy(root / "BCS-DBT-labels-train-v2.csv", root / "BCS-DBT labels-train.csv")
    with pytest.raises(common.RawDataError, match="Several labels tables of the train set"):
        build_lib.build("duke_dbt/slices", root, tmp_path / "out")


def test_optional_splits_old_names_and_unused_files(raw, tmp_path, caplog):
    """No validation tables, a table named the older way, an unused view's file missing."""
    root = _copy(raw, tmp_path)
    for name in fake_data.TABLES["validation"]:
        (root / name).unlink()
    (root / "BCS-DBT-boxes-train-v2.csv").rename(root / "BCS-DBT boxes-train-v2.csv")
    actionable = next(v for v in raw[1]["views"] if v.label == "Actionable")
    (root / actionable.file).unlink()
    builder = build_lib.build("duke_dbt/slices", root, tmp_path / "out", num_workers=1)
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert sizes == {k: n for k, n in raw[1]["sizes"]["slices"].items() if k != "validation"}
    assert "building without the validation split" in caplog.text


def test_corrupt_volume_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    path = root / raw[1]["views"][0].file
    builder_testing.truncate_file(path)
    with pytest.raises(common.RawDataError, match=re.escape(f"Cannot read {path}")):
        build_lib.build("duke_dbt/slices", root, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out" / "duke_dbt" / "slices" / "1.0.0").exists()


def test_corrupt_volume_is_skipped_and_counted(raw, tmp_path, caplog):
    root = _copy(raw, tmp_path)
    path = root / raw[1]["views"][1].file  # RLE-encapsulated: the frame table is cut
    builder_testing.truncate_file(path)
    builder = build_lib.build("duke_dbt/slices", root, tmp_path / "out", on_corrupt="skip")
    assert builder.info.splits["train"].num_examples == raw[1]["sizes"]["slices"]["train"] - 1
    assert f"skipped 1 corrupt file(s), e.g. {path}" in caplog.text


def test_bad_config():
    with pytest.raises(ValueError, match="intensity='gamma'"):
        duke_dbt_dataset_builder._check_config(DukeDbtConfig(name="x", intensity="gamma"))
    with pytest.raises(ValueError, match="slice_step >= 1"):
        duke_dbt_dataset_builder._check_config(DukeDbtConfig(name="x", slice_step=0))


def test_builder_class_resolves_names():
    assert build_lib.builder_class("duke_dbt") is Builder
    assert build_lib.builder_class("duke_dbt/slices5") is Builder
