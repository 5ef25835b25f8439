"""Builds EyePACS from fake raw files in the real layout and reads it back, with tfds and jaxad."""

import re

import builder_testing
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.common import data_config
from data_builders import common
from data_builders.eyepacs import Builder, fake_data
from jaxad.data import build as build_lib
from jaxad.data import pipeline, sources


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("eyepacs_raw")
    return root, fake_data.write(root)


@pytest.fixture(scope="module")
def data_dir(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfds")
    build_lib.build("eyepacs/crop_512", raw[0], out, num_workers=2)
    return out


def test_split_sizes(raw, data_dir):
    sources_ = tfds.data_source("eyepacs/crop_512", data_dir=data_dir, download=False)
    sizes = {split: len(source) for split, source in sources_.items()}
    assert sizes == raw[1]["sizes"]["crop_512"] == {"train": 8, "validation": 4, "test": 6}


def test_examples(raw, data_dir):
    examples = raw[1]["examples"]
    seen = set()
    for split, source in tfds.data_source("eyepacs", data_dir=data_dir, download=False).items():
        for ex in source:
            name = ex["id"].decode()
            seen.add(name)
            assert examples[name] == (split, ex["grade"])
            assert ex["label"] == int(ex["grade"] > 0)
            patient, eye = name.split("_")
            assert (ex["patient_id"], ex["eye"]) == (int(patient), ["left", "right"].index(eye))
            assert ex["image"].shape == (512, 512, 3) and ex["image"].dtype == np.uint8
            assert ex["fov"].shape == (512, 512, 1) and set(np.unique(ex["fov"])) == {0, 1}
            # The fake disc fills the crop: the mask covers the centre, not the corners.
            assert ex["fov"][256, 256, 0] == 1 and ex["fov"][0, 0, 0] == 0
            assert ex["image"][256, 256].max() > 100
    assert seen == set(examples)


def test_usage_decides_validation_and_test(raw):
    """Kaggle's Public rows are validation, its Private rows test, whatever the file order."""
    root, info = raw
    lines = (root / "retinopathy_solution.csv").read_text().splitlines()
    usage = {line.split(",")[0]: line.split(",")[2] for line in lines[1:]}
    for name, (split, _) in info["examples"].items():
        if name in usage:
            assert split == {"Public": "validation", "Private": "test"}[usage[name]]
    assert [line.split(",")[0] for line in lines[1:4]] == ["11_left", "11_right", "16_left"]


def test_read_without_builder_code(data_dir):
    builder = tfds.builder_from_directory(data_dir / "eyepacs" / "crop_512" / "1.0.0")
    features = builder.info.features
    assert set(features) == {"image", "fov", "label", "grade", "patient_id", "eye", "id"}
    assert features["grade"].num_classes == 5 and features["eye"].names == ["left", "right"]
    assert builder.info.supervised_keys == ("image", "grade")
    assert "kaggle2015diabetic" in builder.info.citation


def test_jaxad_reads_it(data_dir):
    source = sources.TfdsSource("eyepacs/crop_512", "validation", data_dir=data_dir)
    record = source[0]
    assert record["image"].shape == (512, 512, 3) and record["fov"].shape == (512, 512)
    assert not record["has_mask"] and record["grade"] in range(5)
    assert record["label"] == int(record["grade"] > 0)
    cfg = data_config()
    cfg.update(
        {
            "name": "eyepacs",
            "tfds_name": "eyepacs/crop_512",
            "data_dir": str(data_dir),
            "image_size": 32,
            "channels": 3,
            "mean": (0.4, 0.3, 0.2),
            "std": (0.3, 0.2, 0.2),
            "num_workers": 0,
            "num_threads": 1,
        }
    )
    batches = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=4, process_index=0, process_count=1)
    )
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 32, 32, 3)
    assert batches[1]["valid"].tolist() == [True, True, False, False]
    labels = [int(v) for b in batches for v, ok in zip(b["label"], b["valid"], strict=True) if ok]
    assert len(labels) == 6 and set(labels) <= {0, 1}


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("eyepacs", data_dir, tmp_path)


def _broken_copy(raw, tmp_path, remove=None, truncate=None):
    return builder_testing.broken_copy(raw[0], tmp_path / "raw", remove=remove, truncate=truncate)


@pytest.mark.parametrize(
    "missing", ["trainLabels.csv", "retinopathy_solution.csv", "test", "train/17_right.jpeg"]
)
def test_missing_file_is_named(raw, tmp_path, missing):
    root = _broken_copy(raw, tmp_path, remove=missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / missing))) as error:
        build_lib.build("eyepacs", root, tmp_path / "out")
    assert "Expected manual_dir layout" in str(error.value)
    assert not (tmp_path / "out" / "eyepacs" / "crop_512" / "1.0.0").exists()


@pytest.mark.parametrize(
    "file, index, line, message",
    [
        ("trainLabels.csv", 0, "image,grade", "lacks the column(s) ['level']"),
        ("retinopathy_solution.csv", 0, "image,level", "lacks the column(s) ['Usage']"),
        ("trainLabels.csv", 1, "10_left,x", ":2: column 'level' is not a number: 'x'"),
        ("trainLabels.csv", 1, "10_left,5", ":2: level must be 0-4, got '5'"),
        ("trainLabels.csv", 1, "10_up,1", ":2: image '10_up' is not of the form"),
        ("trainLabels.csv", 1, "10_right,1", ":3: image '10_right' is listed twice"),
        ("retinopathy_solution.csv", 2, "1_left,0,Hidden", ":3: Usage must be Public or Private"),
    ],
)
def test_bad_label_file_is_named(raw, tmp_path, file, index, line, message):
    root = _broken_copy(raw, tmp_path)
    lines = (root / file).read_text().splitlines()
    lines[index] = line
    (root / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(common.RawDataError, match=re.escape(str(root / file))) as error:
        build_lib.build("eyepacs", root, tmp_path / "out")
    assert message in str(error.value)


def test_corrupt_photo_is_named(raw, tmp_path):
    root = _broken_copy(raw, tmp_path, truncate="test/6_left.jpeg")
    with pytest.raises(common.RawDataError, match=re.escape(f"Cannot read {root}/test/6_left")):
        build_lib.build("eyepacs", root, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out" / "eyepacs" / "crop_512" / "1.0.0").exists()


def test_command_line_skips_and_counts_corrupt_photos(raw, tmp_path):
    root = _broken_copy(raw, tmp_path, truncate="test/6_left.jpeg")
    result = builder_testing.build_cli(
        "eyepacs/crop_512", root, tmp_path / "out", "--on_corrupt=skip", "--num_workers=2"
    )
    assert "train 8, validation 4, test 5" in result.stdout
    assert f"skipped 1 corrupt file(s), e.g. {root / 'test/6_left.jpeg'}" in result.stderr


def test_builder_class_resolves_names():
    assert build_lib.builder_class("eyepacs") is Builder
    assert build_lib.builder_class("eyepacs/crop_512") is Builder
