"""Builds IDRiD from fake raw files in the real layout and reads it back, with tfds and jaxad."""

import io
import re
import shutil

import builder_testing
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs.common import data_config
from data_builders import common
from data_builders.idrid import Builder, fake_data, idrid_dataset_builder, lesion_boxes
from jaxad.data import build as build_lib
from jaxad.data import fundus, pipeline, sources

CONFIGS = ("segmentation", "segmentation_512", "grading", "grading_512")
SEG_IMAGES = "A. Segmentation/1. Original Images"
SEG_TRUTH = "A. Segmentation/2. All Segmentation Groundtruths"
GRADE_IMAGES = "B. Disease Grading/1. Original Images"
TRAIN_LABELS = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("idrid_raw")
    return root, fake_data.write(root)


@pytest.fixture(scope="module")
def data_dir(raw, tmp_path_factory):
    """Builds three configs from Python and grading_512 through the command line."""
    python = [f"idrid/{config}" for config in CONFIGS[:3]]
    return builder_testing.build_both_ways(
        raw[0],
        tmp_path_factory.mktemp("tfds"),
        python,
        "idrid/grading_512",
        num_workers=2,
        cli_workers=2,
        cli_prints="train 5, test 3",
    )


def _examples(data_dir, config):
    sources_ = tfds.data_source(f"idrid/{config}", data_dir=data_dir, download=False)
    return {split: list(source) for split, source in sources_.items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_split_sizes(raw, data_dir, config):
    sources_ = tfds.data_source(f"idrid/{config}", data_dir=data_dir, download=False)
    assert {split: len(source) for split, source in sources_.items()} == raw[1]["sizes"][config]


def _photo(root, split, name):
    split_folder = {"train": "a. Training Set", "test": "b. Testing Set"}[split]
    with Image.open(root / SEG_IMAGES / split_folder / f"{name}.jpg") as img:
        return img.convert("RGB")


def test_segmentation_native_keeps_the_crop_of_every_mask(raw, data_dir):
    root, info = raw
    for split, examples in _examples(data_dir, "segmentation").items():
        for ex in examples:
            name = ex["id"].decode()
            truth = info["segmentation"][name]
            assert truth["split"] == split
            left, top, right, bottom = ex["crop_box"].tolist()
            # The crop is the retina's box: the clipped disc spans the photo's full height.
            assert (top, bottom) == (0, 120) and 10 <= left <= 20 and 160 <= right <= 170
            assert ex["image"].shape == (120, right - left, 3) and ex["image"].dtype == np.uint8
            np.testing.assert_allclose(
                ex["image"],
                np.asarray(_photo(root, split, name).crop((left, top, right, bottom))),
                atol=12,
            )
            union = np.zeros((120, right - left), bool)
            for code in idrid_dataset_builder.MASKS:
                want = truth["masks"][code][top:bottom, left:right]
                got = ex[f"mask_{code.lower()}"]
                assert got.shape == (*want.shape, 1) and got.dtype == np.uint8
                np.testing.assert_array_equal(got[..., 0], want)
                if code != "OD":
                    union |= want
            np.testing.assert_array_equal(ex["mask"][..., 0], union)
            assert ex["label"] == int(union.any())
            want_boxes = truth["boxes"] - np.float32([left, top, left, top])
            np.testing.assert_array_equal(ex["boxes"], want_boxes)
            assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape[1:] == (4,)
            assert ex["box_classes"].tolist() == truth["classes"]
            assert set(np.unique(ex["fov"])) == {0, 1} and ex["fov"][60, 70, 0] == 1
    labels = {
        ex["id"].decode(): ex["label"]
        for exs in _examples(data_dir, "segmentation").values()
        for ex in exs
    }
    assert labels == {"IDRiD_01": 1, "IDRiD_02": 1, "IDRiD_03": 1, "IDRiD_04": 1, "IDRiD_05": 0}


def test_segmentation_512_scales_boxes_and_keeps_every_lesion(raw, data_dir):
    root, info = raw
    for split, examples in _examples(data_dir, "segmentation_512").items():
        for ex in examples:
            name = ex["id"].decode()
            truth = info["segmentation"][name]
            left, top, right, bottom = ex["crop_box"].tolist()
            sx, sy = 512 / (right - left), 512 / (bottom - top)
            assert ex["image"].shape == (512, 512, 3)
            # The image is the border crop the EyePACS and EyeQ builders store.
            want_image = np.asarray(fundus.crop_border(_photo(root, split, name)), np.float32)
            assert np.abs(ex["image"] - want_image).mean() < 2
            want = (truth["boxes"] - np.float32([left, top, left, top])) * [sx, sy, sx, sy]
            np.testing.assert_allclose(ex["boxes"], want, rtol=1e-6)
            assert ex["box_classes"].tolist() == truth["classes"]
            for code in idrid_dataset_builder.MASKS:
                native = truth["masks"][code][top:bottom, left:right]
                got = ex[f"mask_{code.lower()}"][..., 0].astype(bool)
                # "any": every output pixel a lesion pixel overlaps is set (among them the one
                # holding its top-left corner), and no others.
                rows, cols = np.nonzero(native)
                assert got[(rows * sy).astype(int), (cols * sx).astype(int)].all()
                assert got.sum() <= native.sum() * (np.ceil(sx) + 1) * (np.ceil(sy) + 1)
                assert got.any() == native.any()


def test_resize_mask_known_answers():
    resize = idrid_dataset_builder._resize_mask
    one = np.zeros((4, 4), bool)
    one[0, 0] = True
    np.testing.assert_array_equal(resize(one, 2, "any")[..., 0], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(resize(one, 2, "majority")[..., 0], [[0, 0], [0, 0]])
    block = np.zeros((4, 4), bool)
    block[0:2, 0:1] = block[2:4, 2:4] = True  # half of one output pixel, all of another
    np.testing.assert_array_equal(resize(block, 2, "majority")[..., 0], [[1, 0], [0, 1]])
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True  # overlaps all four output pixels, a ninth of each
    np.testing.assert_array_equal(resize(centre, 2, "any")[..., 0], np.ones((2, 2)))
    np.testing.assert_array_equal(resize(centre, 2, "majority")[..., 0], np.zeros((2, 2)))
    assert resize(one, None, "any").shape == (4, 4, 1)


def test_lesion_boxes_follow_the_contour_rule():
    mask = np.zeros((20, 30), bool)
    mask[0:2, 0:3] = True  # at the corner: x1 and y1 become -1
    mask[5:10, 5:10] = True  # a square ring ...
    mask[6:9, 6:9] = False
    mask[7, 7] = True  # ... with a dot in its hole: no box of its own
    mask[12, 20] = mask[13, 21] = True  # diagonal neighbours: one 8-connected region
    mask[12, 25] = mask[14, 25] = True  # a row apart: two regions
    np.testing.assert_array_equal(
        lesion_boxes(mask),
        [[-1, -1, 3, 2], [4, 4, 10, 10], [19, 11, 22, 14], [24, 11, 26, 13], [24, 13, 26, 15]],
    )
    assert lesion_boxes(np.zeros((5, 5), bool)).shape == (0, 4)


@pytest.mark.parametrize("config", ["grading", "grading_512"])
def test_grading_examples(raw, data_dir, config):
    root, info = raw
    for split, examples in _examples(data_dir, config).items():
        assert {ex["id"].decode() for ex in examples} == set(info["grading"][split])
        for ex in examples:
            grade, edema = info["grading"][split][ex["id"].decode()]
            assert (ex["grade"], ex["macular_edema"], ex["label"]) == (grade, edema, int(grade > 0))
            left, top, right, bottom = ex["crop_box"].tolist()
            shape = (512, 512, 3) if config.endswith("512") else (120, right - left, 3)
            assert ex["image"].shape == shape and ex["fov"].shape == (*shape[:2], 1)
            assert "mask" not in ex


def test_read_without_builder_code(data_dir):
    builder = tfds.builder_from_directory(data_dir / "idrid" / "segmentation" / "1.0.0")
    features = builder.info.features
    assert features["image"].shape == (None, None, 3)
    assert features["boxes"].shape == (None, 4)
    assert builder.info.supervised_keys == ("image", "mask")
    assert "porwal2018idrid" in builder.info.citation
    assert builder.as_data_source(split="test")[0]["mask_od"].shape[-1] == 1


def _data_cfg(data_dir, name):
    cfg = data_config()
    cfg.update(
        {
            "name": "idrid",
            "tfds_name": name,
            "data_dir": str(data_dir),
            "image_size": 32,
            "channels": 3,
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "num_workers": 0,
            "num_threads": 1,
        }
    )
    return cfg


def test_jaxad_reads_masks_and_labels(data_dir):
    source = sources.TfdsSource("idrid/segmentation", "test", data_dir=data_dir)
    records = {r["id"]: r for r in (source[i] for i in range(len(source)))}
    assert records["IDRiD_04"]["has_mask"] and records["IDRiD_04"]["mask"].ndim == 2
    assert records["IDRiD_04"]["mask"].max() == 1 and records["IDRiD_05"]["mask"].max() == 0
    assert (records["IDRiD_04"]["label"], records["IDRiD_05"]["label"]) == (1, 0)
    assert records["IDRiD_04"]["grade"] == -1

    cfg = _data_cfg(data_dir, "idrid/segmentation")
    (batch,) = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=4, process_count=1, process_index=0)
    )
    assert batch["image"].shape == (4, 32, 32, 3) and batch["mask"].shape == (4, 32, 32)
    assert batch["valid"].tolist() == [True, True, False, False]
    assert sorted(batch["label"].tolist()) == [-1, -1, 0, 1]  # two padding rows

    grading = sources.TfdsSource("idrid/grading_512", "train", data_dir=data_dir)
    record = grading[0]
    assert not record["has_mask"] and record["grade"] in range(5) and record["fov"].max() == 1
    (batch,) = list(
        pipeline.eval_batches(
            _data_cfg(data_dir, "idrid/grading_512"),
            "test",
            local_batch_size=3,
            process_count=1,
            process_index=0,
        )
    )
    assert batch["image_uint8"].dtype == np.uint8 and batch["valid"].all()


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("idrid/segmentation", data_dir, tmp_path)


def _broken_copy(raw, tmp_path, remove=None, truncate=None):
    return builder_testing.broken_copy(raw[0], tmp_path / "raw", remove=remove, truncate=truncate)


@pytest.mark.parametrize(
    "config, missing",
    [
        ("segmentation", f"{SEG_IMAGES}/b. Testing Set"),
        ("segmentation", f"{SEG_TRUTH}/a. Training Set/4. Soft Exudates"),
        ("grading", TRAIN_LABELS),
        ("grading", f"{GRADE_IMAGES}/b. Testing Set/IDRiD_002.jpg"),
    ],
)
def test_missing_file_is_named(raw, tmp_path, config, missing):
    root = _broken_copy(raw, tmp_path, remove=missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / missing))) as error:
        build_lib.build(f"idrid/{config}", root, tmp_path / "out")
    assert "Expected manual_dir layout" in str(error.value)
    assert not (tmp_path / "out" / "idrid" / config / "1.0.0").exists()


@pytest.mark.parametrize(
    "header, row, message",
    [
        ("Image name,Retinopathy grade,Risk of macular edema ", None, None),  # no trailing cells
        ("Image name,DR grade,Risk of macular edema ", None, "lacks the column(s) ['Retino"),
        (None, "IDRiD_002,x,0", ":3: column 'Retinopathy grade' is not a number: 'x'"),
        (None, "IDRiD_002,7,0", ":3: expected an image name, a grade 0-4 and an oedema risk 0-2"),
        (None, "IDRiD_001,1,0", ":3: image 'IDRiD_001' is listed twice"),
    ],
)
def test_label_file_is_checked(raw, tmp_path, header, row, message):
    root = _broken_copy(raw, tmp_path)
    path = root / TRAIN_LABELS
    lines = path.read_text().splitlines()
    lines[0] = header or lines[0]
    lines[2] = row or lines[2]
    path.write_text("\n".join(lines) + "\n")
    if message is None:
        builder = build_lib.build("idrid/grading", root, tmp_path / "out")
        assert builder.info.splits["train"].num_examples == 5
        return
    with pytest.raises(common.RawDataError, match=re.escape(str(path))) as error:
        build_lib.build("idrid/grading", root, tmp_path / "out")
    assert message in str(error.value)


def test_unmatched_mask_file_is_named(raw, tmp_path):
    root = _broken_copy(raw, tmp_path)
    stray = root / SEG_TRUTH / "b. Testing Set/1. Microaneurysms/IDRiD_99_MA.tif"
    shutil.copy(root / SEG_TRUTH / "b. Testing Set/1. Microaneurysms/IDRiD_04_MA.tif", stray)
    with pytest.raises(common.RawDataError, match=re.escape(f"Unexpected mask file {stray}")):
        build_lib.build("idrid/segmentation", root, tmp_path / "out")


@pytest.mark.parametrize(
    "corrupt",
    [
        f"{SEG_IMAGES}/a. Training Set/IDRiD_02.jpg",
        f"{SEG_TRUTH}/b. Testing Set/3. Hard Exudates/IDRiD_04_EX.tif",
    ],
)
def test_corrupt_file_is_named(raw, tmp_path, corrupt):
    root = _broken_copy(raw, tmp_path, truncate=corrupt)
    with pytest.raises(common.RawDataError, match=re.escape(f"Cannot read {root / corrupt}")):
        build_lib.build("idrid/segmentation", root, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out" / "idrid" / "segmentation" / "1.0.0").exists()


def test_corrupt_files_are_skipped_and_counted(raw, tmp_path, caplog):
    photo = f"{SEG_IMAGES}/a. Training Set/IDRiD_02.jpg"
    root = _broken_copy(raw, tmp_path, truncate=photo)
    # A mask whose size is not its photo's is as unusable as an undecodable one.
    mask = root / SEG_TRUTH / "b. Testing Set/5. Optic Disc/IDRiD_05_OD.tif"
    Image.new("RGB", (90, 60)).save(mask)
    builder = build_lib.build("idrid/segmentation", root, tmp_path / "out", on_corrupt="skip")
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["test"].num_examples == 1
    assert f"train: skipped 1 corrupt file(s), e.g. {root / photo}" in caplog.text
    assert f"test: skipped 1 corrupt file(s), e.g. {mask}" in caplog.text
    assert "the mask is 90x60, its photo 180x120" in caplog.text


def test_fake_data_scales(tmp_path):
    info = fake_data.write(tmp_path, width=360, height=240, segmentation=(1, 1), grading=(0, 2))
    assert info["sizes"]["grading_512"] == {"train": 0, "test": 2}
    truth = info["segmentation"]["IDRiD_01"]
    assert truth["masks"]["MA"].shape == (240, 360)
    np.testing.assert_array_equal(lesion_boxes(truth["masks"]["EX"]), truth["boxes"][3:5])
    with Image.open(tmp_path / SEG_IMAGES / "a. Training Set/IDRiD_01.jpg") as img:
        assert img.size == (360, 240)
    with Image.open(
        io.BytesIO(
            (
                tmp_path / SEG_TRUTH / "a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif"
            ).read_bytes()
        )
    ) as img:
        assert img.mode == "RGB" and np.asarray(img.convert("L")).max() == 76


def test_builder_class_resolves_names():
    assert build_lib.builder_class("idrid") is Builder
    assert build_lib.builder_class("idrid/grading_512") is Builder
    assert Builder.builder_configs["segmentation_512"].image_size == 512
