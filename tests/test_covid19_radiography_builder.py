"""Builds the COVID-19 Radiography dataset from fake raw files in the real layout, reads it back."""

import hashlib
import re
import shutil

import builder_testing
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs.common import data_config
from data_builders import common
from data_builders.covid19_radiography import Builder, fake_data, normal_split
from data_builders.covid19_radiography import covid19_radiography_dataset_builder as covid
from jaxad.data import build as build_lib
from jaxad.data import pipeline, sources

DATASET = "COVID-19_Radiography_Dataset"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("covid_raw")
    return root, fake_data.write(root)


@pytest.fixture(scope="module")
def data_dir(raw, tmp_path_factory):
    """Builds `morphaeus` from Python and `all` through the command line."""
    out = tmp_path_factory.mktemp("tfds")
    return builder_testing.build_both_ways(
        raw[0], out, ["covid19_radiography/morphaeus"], "covid19_radiography/all", cli_workers=2
    )


def _sources(data_dir, config):
    return tfds.data_source(f"covid19_radiography/{config}", data_dir=data_dir, download=False)


def _number(name):
    return int(name.rsplit("-", 1)[1])


MORPHAEUS_SIZES = {"train": 16, "validation": 2, "test": 2, "test_opacity": 5, "test_covid": 2474}


@pytest.mark.parametrize(
    "config, sizes",
    [
        ("morphaeus", MORPHAEUS_SIZES),
        ("all", dict(MORPHAEUS_SIZES, test_covid_other=1142, test_viral=3)),
    ],
)
def test_split_sizes(raw, data_dir, config, sizes):
    got = {split: len(source) for split, source in _sources(data_dir, config).items()}
    assert got == raw[1]["sizes"][config] == sizes


# Each split's class, and which file numbers it holds.
SPLIT_CLASSES = {
    "train": ("normal", None),
    "validation": ("normal", None),
    "test": ("normal", None),
    "test_opacity": ("lung_opacity", range(1, 6)),
    "test_covid": ("covid", range(1143, 3617)),
    "test_covid_other": ("covid", range(1, 1143)),
    "test_viral": ("viral_pneumonia", range(1, 4)),
}


def test_examples(raw, data_dir):
    dataset = raw[1]["root"]
    ids = {}
    for split, source in _sources(data_dir, "all").items():
        cls, numbers = SPLIT_CLASSES[split]
        folder = covid.CLASSES[covid.CLASS_NAMES.index(cls)]
        ids[split] = set()
        for i, example in enumerate(source):
            name = example["id"].decode()
            ids[split].add(name)
            assert covid.CLASS_NAMES[example["class"]] == cls and name.startswith(folder + "-")
            assert example["label"] == int(cls != "normal")
            if i >= 40:  # The pixels of the first 40 of each split are enough.
                continue
            assert example["image"].shape == example["fov"].shape == (16, 16, 1)
            assert example["image"].dtype == example["fov"].dtype == np.uint8
            pixels = np.asarray(Image.open(dataset / folder / "images" / f"{name}.png"))
            channel0 = pixels if pixels.ndim == 2 else pixels[..., 0]
            np.testing.assert_array_equal(example["image"][..., 0], channel0)
            # The 12 px mask's two lung rectangles, scaled to 16 px; the gap between them stays.
            fov = example["fov"][..., 0]
            assert set(np.unique(fov)) == {0, 1}
            assert fov[4:12, 2:6].all() and fov[4:12, 10:14].all()
            assert not fov[:, 7:9].any() and not fov[[0, 15]].any()
        if numbers is not None:
            assert {_number(n) for n in ids[split]} == set(numbers)
    normal = {f"Normal-{n}" for n in range(1, 21)}
    assert ids["train"] | ids["validation"] | ids["test"] == normal
    assert normal_split(normal) == {s: ids[s] for s in ("train", "validation", "test")}
    # Channel 0 of RGB (7), RGBA (11) and greyscale+alpha (13) files was compared above.
    assert {"Normal-7", "Normal-11", "Normal-13"} <= normal


def test_morphaeus_config_holds_the_same_images(data_dir):
    for split, source in _sources(data_dir, "morphaeus").items():
        other = _sources(data_dir, "all")[split]
        assert sorted(ex["id"] for ex in source) == sorted(ex["id"] for ex in other)


def test_normal_split_rule_at_full_size():
    names = [f"Normal-{n}" for n in range(1, 10193)]
    split = normal_split(names)
    assert {k: len(v) for k, v in split.items()} == {
        "train": 8154,
        "validation": 1019,
        "test": 1019,
    }
    assert set().union(*split.values()) == set(names)
    assert not split["train"] & split["validation"] and not split["validation"] & split["test"]
    assert normal_split(reversed(names)) == split
    assert normal_split(names, seed=0)["test"] != split["test"]


def test_normal_split_rule_known_answer():
    names = [f"Normal-{n}" for n in range(1, 26)]  # int(0.1 * 25) = 2 test and 2 validation

    def rank(name):
        return hashlib.sha256(f"2109/{name}".encode()).hexdigest()

    ranked = sorted(names, key=rank)
    assert normal_split(names) == {
        "test": set(ranked[:2]),
        "validation": set(ranked[2:4]),
        "train": set(ranked[4:]),
    }
    assert normal_split(names[:9]) == {"train": set(names[:9]), "validation": set(), "test": set()}


def test_jaxad_reads_it(data_dir):
    src = sources.TfdsSource(
        "covid19_radiography/morphaeus", "test+test_opacity", data_dir=data_dir
    )
    records = [src[i] for i in range(len(src))]
    assert sorted(r["label"] for r in records) == [0, 0, 1, 1, 1, 1, 1]
    for rec in records:
        assert rec["image"].shape == (16, 16, 1) and rec["fov"].shape == (16, 16)
        assert 0 < rec["fov"].mean() < 1 and not rec["has_mask"] and not rec["mask"].any()
    cfg = data_config()
    cfg.update(
        dict(
            name="covid",
            tfds_name="covid19_radiography/morphaeus",
            data_dir=str(data_dir),
            image_size=8,
            channels=1,
            mean=(0.0,),
            std=(1.0,),
            num_workers=0,
            num_threads=2,
            prefetch=2,
        )
    )
    batches = list(
        pipeline.eval_batches(
            cfg, "test+test_opacity", local_batch_size=4, process_index=0, process_count=1
        )
    )
    assert len(batches) == 2 and batches[1]["valid"].tolist() == [True, True, True, False]
    assert batches[0]["image"].shape == (4, 8, 8, 1) and batches[0]["image"].max() <= 1.0
    assert 0 < batches[0]["fov"].mean() < 1


def test_rebuild_is_a_noop(data_dir, tmp_path):
    builder_testing.assert_rebuild_is_a_noop("covid19_radiography/morphaeus", data_dir, tmp_path)


def _copy(raw, tmp_path):
    """A copy of the raw folder made of hard links (fast); replace files, never edit them."""
    return builder_testing.broken_copy(raw[0], tmp_path / "raw", hard_links=True) / DATASET


def test_manual_dir_may_be_the_dataset_folder(raw, tmp_path):
    dataset = _copy(raw, tmp_path)
    shutil.rmtree(dataset / "Viral Pneumonia")  # not needed by `morphaeus`
    builder = build_lib.build("covid19_radiography", dataset, tmp_path / "out")
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == MORPHAEUS_SIZES


@pytest.mark.parametrize(
    "missing",
    [
        "Normal/images",
        "Lung_Opacity/masks",
        "Normal/images/Normal-7.png",
        "Normal/masks/Normal-3.png",
        "COVID/images/COVID-3616.png",
    ],
)
def test_missing_file_is_named(raw, tmp_path, missing):
    dataset = _copy(raw, tmp_path)
    path = dataset / missing
    builder_testing.remove_path(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as error:
        build_lib.build("covid19_radiography", dataset.parent, tmp_path / "out")
    assert "Expected manual_dir layout" in str(error.value)


def test_viral_pneumonia_is_needed_by_all(raw, tmp_path):
    dataset = _copy(raw, tmp_path)
    shutil.rmtree(dataset / "Viral Pneumonia" / "images")
    with pytest.raises(FileNotFoundError, match="Viral Pneumonia folder not found"):
        build_lib.build("covid19_radiography/all", dataset, tmp_path / "out")


def test_unexpected_file_name_is_named(raw, tmp_path):
    dataset = _copy(raw, tmp_path)
    stray = dataset / "Normal" / "images" / "Normal-1 (1).png"
    shutil.copy(dataset / "Normal" / "images" / "Normal-1.png", stray)
    with pytest.raises(common.RawDataError, match=re.escape(f"Unexpected file {stray}")):
        build_lib.build("covid19_radiography", dataset, tmp_path / "out")


def test_release_counts_are_checked(raw, caplog):
    records = covid._list_class(raw[1]["root"], "Normal")
    assert [r.name for r in records] == [f"Normal-{n}" for n in range(1, 21)]
    assert "has 20 images, the release MorphAEus used has 10192" in caplog.text
    caplog.clear()
    covid._list_class(raw[1]["root"], "COVID")
    assert "release" not in caplog.text


@pytest.mark.parametrize(
    "corrupt", ["Normal/images/Normal-5.png", "Lung_Opacity/masks/Lung_Opacity-2.png"]
)
def test_corrupt_file_is_named(raw, tmp_path, corrupt):
    dataset = _copy(raw, tmp_path)
    builder_testing.truncate_file(dataset / corrupt)
    with pytest.raises(common.RawDataError, match=re.escape(f"Cannot read {dataset / corrupt}")):
        build_lib.build("covid19_radiography", dataset, tmp_path / "out")
    assert not (tmp_path / "out" / "covid19_radiography" / "morphaeus" / "1.0.0").exists()


def test_corrupt_file_is_skipped_and_counted(raw, tmp_path, caplog):
    dataset = _copy(raw, tmp_path)
    path = dataset / "Lung_Opacity" / "images" / "Lung_Opacity-4.png"
    builder_testing.truncate_file(path)
    builder = build_lib.build("covid19_radiography", dataset, tmp_path / "out", on_corrupt="skip")
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == dict(MORPHAEUS_SIZES, test_opacity=4)
    assert f"skipped 1 corrupt file(s), e.g. {path}" in caplog.text


def test_builder_class_resolves_names():
    assert build_lib.builder_class("covid19_radiography/all") is Builder
    assert set(Builder.builder_configs) == {"morphaeus", "all"}
