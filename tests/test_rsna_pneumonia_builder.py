"""Builds the RSNA Pneumonia dataset from fake raw files in the real layout and reads it back."""

import hashlib
import re

import builder_testing
import numpy as np
import pydicom
import pytest
import tensorflow_datasets as tfds

from configs.common import data_config
from data_builders import common
from data_builders.rsna_pneumonia import Builder, RsnaPneumoniaConfig, fake_data, split_normal
from data_builders.rsna_pneumonia import rsna_pneumonia_dataset_builder as rsna
from jaxad.data import build as build_lib
from jaxad.data import pipeline, sources

LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna_raw")
    return root, fake_data.write(root)


@pytest.fixture(scope="module")
def data_dir(raw, tmp_path_factory):
    """Builds `native` from Python and `256` through the command line."""
    out = tmp_path_factory.mktemp("tfds")
    return builder_testing.build_both_ways(
        raw[0], out, ["rsna_pneumonia/native"], "rsna_pneumonia/256", cli_workers=2
    )


def _sources(data_dir, config):
    return tfds.data_source(f"rsna_pneumonia/{config}", data_dir=data_dir, download=False)


def _box_mask(size, boxes):
    """The union of (x, y, w, h) boxes, whole pixels covered by any part of a box."""
    rows, cols = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for x, y, w, h in boxes:
        mask |= (cols + 1 > x) & (cols < x + w) & (rows + 1 > y) & (rows < y + h)
    return mask.astype(np.uint8)


@pytest.mark.parametrize("config", ["native", "256"])
def test_split_sizes(raw, data_dir, config):
    sizes = {split: len(source) for split, source in _sources(data_dir, config).items()}
    assert (
        sizes
        == raw[1]["sizes"][config]
        == {
            "train": 10,
            "validation": 1,
            "test": 5,
            "test_not_normal": 4,
        }
    )


@pytest.mark.parametrize("config, size", [("native", 64), ("256", 256)])
def test_examples(raw, data_dir, config, size):
    root, info = raw
    patients = info["patients"]
    scale = size / info["image_size"]
    ids = {}
    for split, source in _sources(data_dir, config).items():
        ids[split] = set()
        for example in source:
            patient = example["id"].decode()
            truth = patients[patient]
            ids[split].add(patient)
            assert example["image"].shape == example["mask"].shape == (size, size, 1)
            assert example["image"].dtype == example["mask"].dtype == np.uint8
            boxes = np.asarray(truth["boxes"], np.float32).reshape(-1, 4) * scale
            np.testing.assert_allclose(example["boxes"], boxes)
            np.testing.assert_array_equal(example["mask"][..., 0], _box_mask(size, boxes))
            assert rsna.CLASS_NAMES[example["class"]] == truth["class"]
            assert example["label"] == int(truth["class"] != "normal")
            assert example["sex"].decode() == truth["sex"]
            assert example["view"].decode() == truth["view"]
            assert example["age"] == truth["age"]
            pixels = pydicom.dcmread(root / "stage_2_train_images" / f"{patient}.dcm").pixel_array
            if config == "native":
                np.testing.assert_array_equal(example["image"][..., 0], pixels)
            else:  # Resized: the same picture, brighter inside the opacity boxes.
                small = example["image"][::4, ::4, 0].astype(float)
                assert np.corrcoef(small.ravel(), pixels.ravel())[0, 1] > 0.9
    kinds = {p: t["class"] for p, t in patients.items()}
    normal = {p for p, kind in kinds.items() if kind == "normal"}
    assert ids["train"] | ids["validation"] | ids["test"] >= normal
    assert not ids["train"] & (ids["validation"] | ids["test"])
    assert not ids["validation"] & ids["test"]
    normal_test = ids["test"] & normal
    assert len(normal_test) == 1 and normal_test == ids["test_not_normal"] & normal
    assert ids["test"] - normal == {p for p, k in kinds.items() if k == "lung_opacity"}
    assert ids["test_not_normal"] - normal == {p for p, k in kinds.items() if k == "not_normal"}


def test_read_without_builder_code(data_dir):
    builder = tfds.builder_from_directory(data_dir / "rsna_pneumonia" / "256" / "1.0.0")
    features = builder.info.features
    assert set(features) == {"image", "mask", "boxes", "class", "label", "sex", "age", "view", "id"}
    assert features["image"].shape == features["mask"].shape == (256, 256, 1)
    assert features["class"].names == ["normal", "not_normal", "lung_opacity"]
    assert features["label"].names == ["normal", "abnormal"]
    assert builder.info.supervised_keys == ("image", "label")
    assert all(ex["label"] == 0 for ex in builder.as_data_source(split="train"))


def test_jaxad_reads_it(raw, data_dir):
    src = sources.TfdsSource("rsna_pneumonia/native", "test", data_dir=data_dir)
    assert len(src) == 5
    records = [src[i] for i in range(len(src))]
    for rec in records:
        assert rec["image"].shape == (64, 64, 1) and rec["mask"].shape == (64, 64)
        assert rec["has_mask"] and rec["fov"].all() and rec["grade"] == -1
        assert rec["mask"].any() == bool(rec["label"])
    assert sorted(r["label"] for r in records) == [0, 1, 1, 1, 1]
    cfg = data_config()
    cfg.update(
        dict(
            name="rsna",
            tfds_name="rsna_pneumonia/native",
            data_dir=str(data_dir),
            image_size=32,
            channels=1,
            mean=(0.5,),
            std=(0.25,),
            num_workers=0,
            num_threads=2,
            prefetch=2,
        )
    )
    batches = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=4, process_index=0, process_count=1)
    )
    assert len(batches) == 2 and batches[1]["valid"].tolist() == [True, False, False, False]
    assert batches[0]["image"].shape == (4, 32, 32, 1) and batches[0]["mask"].shape == (4, 32, 32)
    ids = [i for b in batches for i, v in zip(b["id"], b["valid"], strict=True) if v]
    assert sorted(ids) == sorted(r["id"] for r in records)


def test_split_rule_known_answers():
    names = [f"patient-{i}" for i in range(20)]
    config = RsnaPneumoniaConfig(name="x", val_fraction=0.1, test_fraction=0.1, seed=3)

    def rank(name):
        return hashlib.sha256(f"3/{name}".encode()).hexdigest()

    ranked = sorted(names, key=rank)  # the order hash_split documents
    split = split_normal(names, config)
    assert split["test"] == set(ranked[:2]) and split["validation"] == set(ranked[2:4])
    assert split["train"] == set(ranked[4:])
    assert split_normal(names[::-1], config) == split
    # Raising the validation fraction keeps the test set and the validation images.
    more = split_normal(names, RsnaPneumoniaConfig(name="y", val_fraction=0.2, seed=3))
    assert more["test"] == split["test"] and more["validation"] > split["validation"]


@pytest.mark.parametrize(
    "text, years", [("51", 51), ("051Y", 51), ("", -1), ("006M", -1), ("abc", -1)]
)
def test_age(text, years):
    assert rsna._age(text) == years


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("rsna_pneumonia/native", data_dir, tmp_path)


def _copy(raw, tmp_path):
    return builder_testing.broken_copy(raw[0], tmp_path / "raw")


def _first_patient(raw, kind):
    return next(p for p, t in raw[1]["patients"].items() if t["class"] == kind)


@pytest.mark.parametrize("missing", [LABELS, CLASSES, "stage_2_train_images", "dicom"])
def test_missing_file_is_named(raw, tmp_path, missing):
    root = _copy(raw, tmp_path)
    if missing == "dicom":
        missing = f"stage_2_train_images/{_first_patient(raw, 'not_normal')}.dcm"
    path = root / missing
    builder_testing.remove_path(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as error:
        build_lib.build("rsna_pneumonia", root, tmp_path / "out")
    assert "Expected manual_dir layout" in str(error.value)
    assert not (tmp_path / "out" / "rsna_pneumonia" / "native" / "1.0.0").exists()


def _edit(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_missing_column_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    _edit(root / LABELS, "height,Target", "height,Label")
    with pytest.raises(
        common.RawDataError, match=rf"{re.escape(str(root / LABELS))} lacks .*Target"
    ):
        build_lib.build("rsna_pneumonia", root, tmp_path / "out")


@pytest.mark.parametrize(
    "file, old, new, message",
    [
        (LABELS, ".0,1\n", ".0,yes\n", r":\d+: column 'Target' is not a number: 'yes'"),
        (LABELS, ".0,1\n", ".0,2\n", r":\d+: needs a patientId and Target 0 or 1"),
        (LABELS, ".0,1\n", ".0e999,1\n", r":\d+: need finite x, y and width, height > 0"),
        (LABELS, ",,,,,0\n", ",3.0,,,,0\n", r":\d+: a Target 0 row must have empty x"),
        (CLASSES, ",Normal\n", ",Healthy\n", r":\d+: unknown class 'Healthy'"),
        (CLASSES, ",Lung Opacity\n", ",Normal\n", r"two classes|only 'Lung Opacity'"),
    ],
)
def test_bad_csv_value_is_named(raw, tmp_path, file, old, new, message):
    root = _copy(raw, tmp_path)
    _edit(root / file, old, new)
    with pytest.raises(common.RawDataError, match=re.escape(str(root / file)) + ".*" + message):
        build_lib.build("rsna_pneumonia", root, tmp_path / "out")


def test_bad_box_value_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    patient = _first_patient(raw, "lung_opacity")
    x, *_ = raw[1]["patients"][patient]["boxes"][0]
    _edit(root / LABELS, f"{patient},{x},", f"{patient},left,")
    lines = (root / LABELS).read_text().splitlines()
    line = next(i for i, row in enumerate(lines, start=1) if ",left," in row)
    with pytest.raises(
        common.RawDataError,
        match=re.escape(f"{root / LABELS}:{line}: column 'x' is not a number: 'left'"),
    ):
        build_lib.build("rsna_pneumonia", root, tmp_path / "out")


def test_patient_in_one_csv_only_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    patient = _first_patient(raw, "normal")
    lines = (root / CLASSES).read_text().splitlines(keepends=True)
    (root / CLASSES).write_text("".join(li for li in lines if not li.startswith(patient)))
    with pytest.raises(common.RawDataError, match=f"{re.escape(str(root / CLASSES))}.*{patient}"):
        build_lib.build("rsna_pneumonia", root, tmp_path / "out")


def test_corrupt_dicom_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    path = root / "stage_2_train_images" / f"{_first_patient(raw, 'lung_opacity')}.dcm"
    builder_testing.truncate_file(path)
    with pytest.raises(common.RawDataError, match=re.escape(f"Cannot read {path}")):
        build_lib.build("rsna_pneumonia", root, tmp_path / "out")
    assert not (tmp_path / "out" / "rsna_pneumonia" / "native" / "1.0.0").exists()


def test_corrupt_dicom_is_skipped_and_counted(raw, tmp_path, caplog):
    root = _copy(raw, tmp_path)
    path = root / "stage_2_train_images" / f"{_first_patient(raw, 'lung_opacity')}.dcm"
    builder_testing.truncate_file(path)
    builder = build_lib.build("rsna_pneumonia", root, tmp_path / "out", on_corrupt="skip")
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == dict(raw[1]["sizes"]["native"], test=4)
    assert f"skipped 1 corrupt file(s), e.g. {path}" in caplog.text


def test_builder_class_resolves_names():
    assert build_lib.builder_class("rsna_pneumonia/256") is Builder
    assert set(Builder.builder_configs) == {"native", "256"}
