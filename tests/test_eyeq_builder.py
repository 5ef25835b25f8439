"""Builds the EyeQ dataset from fake raw files in the real layout and reads it back."""

import csv
import os
import re

import builder_testing
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.eyeq import Builder, fake_data
from jaxad.data import build as build_lib

TRAIN_ROWS, TEST_ROWS = fake_data.TRAIN_ROWS, fake_data.TEST_ROWS


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eyeq_raw")
    fake_data.write(root)
    return root


@pytest.fixture(scope="module")
def data_dir(raw_dir, tmp_path_factory):
    """Builds `good` from Python and `all` through the command line."""
    out = tmp_path_factory.mktemp("tfds")
    return builder_testing.build_both_ways(raw_dir, out, ["eyeq/good"], "eyeq/all")


@pytest.mark.parametrize(
    "config, sizes",
    [
        ("good", {"train": 9, "validation": 1, "train_abnormal": 4, "test": 5}),
        ("all", {"train": 12, "validation": 1, "train_abnormal": 5, "test": 7}),
    ],
)
def test_split_sizes(data_dir, config, sizes):
    sources = tfds.data_source(f"eyeq/{config}", data_dir=data_dir, download=False)
    assert {split: len(source) for split, source in sources.items()} == sizes


@pytest.mark.parametrize("config, qualities", [("good", {0}), ("all", {0, 1, 2})])
def test_examples(data_dir, config, qualities):
    sources = tfds.data_source(f"eyeq/{config}", data_dir=data_dir, download=False)
    rows = {name: (quality, grade) for name, quality, grade in TRAIN_ROWS + TEST_ROWS}
    for split, source in sources.items():
        for example in source:
            assert example["image"].shape == (512, 512, 3)
            assert example["image"].dtype == np.uint8
            assert example["fov"].shape == (512, 512, 1)
            assert set(np.unique(example["fov"])) == {0, 1}
            # The fake disc fills the crop: the mask covers the centre, not the corners.
            assert example["fov"][256, 256, 0] == 1 and example["fov"][0, 0, 0] == 0
            assert example["image"][256, 256].max() > 100
            quality, grade = rows[example["id"].decode()]
            assert (example["quality"], example["grade"]) == (quality, grade)
            assert example["quality"] in qualities
            assert example["label"] == int(grade > 0)
            if split in ("train", "validation"):
                assert example["grade"] == 0
            if split == "train_abnormal":
                assert example["grade"] > 0
    test_ids = {ex["id"].decode() for ex in sources["test"]}
    assert test_ids == {name for name, quality, _ in TEST_ROWS if quality in qualities}
    train_ids = {ex["id"].decode() for ex in sources["train"]}
    assert not train_ids & {ex["id"].decode() for ex in sources["validation"]}


def test_read_without_builder_code(data_dir):
    builder = tfds.builder_from_directory(data_dir / "eyeq" / "good" / "1.0.0")
    features = builder.info.features
    assert set(features) == {"image", "fov", "label", "grade", "quality", "id"}
    assert features["image"].shape == (512, 512, 3)
    assert features["fov"].shape == (512, 512, 1)
    assert features["grade"].num_classes == 5
    assert features["quality"].names == ["good", "usable", "reject"]
    assert features["label"].np_dtype == np.int64
    example = builder.as_data_source(split="train_abnormal")[0]
    assert example["label"] == 1


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("eyeq/good", data_dir, tmp_path)


def _broken_copy(raw_dir, tmp_path, remove=None, corrupt=None):
    return builder_testing.broken_copy(raw_dir, tmp_path / "raw", remove=remove, truncate=corrupt)


@pytest.mark.parametrize(
    "missing", ["Label_EyeQ_test.csv", "Label_EyeQ_train.csv", "test", "train/31_right.jpeg"]
)
def test_missing_file_is_named(raw_dir, tmp_path, missing):
    root = _broken_copy(raw_dir, tmp_path, remove=missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / missing))):
        build_lib.build("eyeq/good", root, tmp_path / "out")
    assert not (tmp_path / "out" / "eyeq" / "good" / "1.0.0").exists()


def test_photo_of_unused_quality_may_be_missing(raw_dir, tmp_path):
    root = _broken_copy(raw_dir, tmp_path, remove="train/42_left.jpeg")  # a "reject" photo
    builder = build_lib.build("eyeq/good", root, tmp_path / "out", num_workers=1)
    assert builder.info.splits["train"].num_examples == 9


def test_corrupt_photo_is_named(raw_dir, tmp_path):
    root = _broken_copy(raw_dir, tmp_path, corrupt="test/5_right.jpeg")
    with pytest.raises(ValueError, match=re.escape(f"Cannot read {root / 'test/5_right.jpeg'}")):
        build_lib.build("eyeq/good", root, tmp_path / "out")
    assert not (tmp_path / "out" / "eyeq" / "good" / "1.0.0").exists()


def test_corrupt_photo_is_skipped_and_counted(raw_dir, tmp_path, caplog):
    root = _broken_copy(raw_dir, tmp_path, corrupt="test/5_right.jpeg")
    builder = build_lib.build("eyeq/good", root, tmp_path / "out", on_corrupt="skip")
    assert builder.info.splits["test"].num_examples == 4  # 5 good-quality test photos, 1 corrupt
    assert "skipped 1 corrupt file(s), e.g. " + str(root / "test/5_right.jpeg") in caplog.text


def test_builder_class_resolves_names():
    assert build_lib.builder_class("eyeq") is Builder
    assert build_lib.builder_class("eyeq/all") is Builder
    assert "eyeq" in build_lib.known_builders()


def test_unknown_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown dataset 'nope'; known datasets: .*eyeq"):
        build_lib.build("nope", tmp_path, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        build_lib.main(["nope/x", f"--manual_dir={tmp_path}", f"--data_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "known datasets: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown config 'bad' of eyeq; known configs: good, all"):
        build_lib.builder_class("eyeq/bad")
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_paper_config_trains_and_evaluates_on_the_built_dataset(data_dir, tmp_path):
    """configs/lesion2void.py (EyeQ through tfds and grain), shrunk: per-grade AUROCs appear."""
    from configs import lesion2void
    from jaxad import train

    config = lesion2void.get_config()
    config.data.data_dir = str(data_dir)
    config.data.tfds_name = "eyeq/all"
    config.data.image_size, config.data.num_workers = 32, 0
    config.model.width = config.model.disc_width = 4
    config.batch_size = config.eval.batch_size = 4
    config.total_steps, config.log_every = 2, 1
    config.l2v.score_chunk = 36
    results = train.run(config, str(tmp_path))
    assert results["num_images"] == 7
    for key in ("image_auroc", "auroc_grade0_vs_2", "auroc_grade0_vs_all"):
        assert np.isfinite(results[key]), key
    assert "pixel_auroc" not in results  # EyeQ has no lesion masks
    with open(tmp_path / "eval" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and {"id", "label", "grade", "score"} <= set(rows[0])
