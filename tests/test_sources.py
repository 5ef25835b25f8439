"""Tests for jaxad.data.sources: MVTec-layout folders, tfds array_record datasets, dispatch."""

import dataclasses
import pathlib
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs.common import data_config
from jaxad.data import pipeline, sources

W, H = 37, 29  # Odd sizes on purpose.


def _save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(value: int, mode: str) -> np.ndarray:
    """A constant image with a bright top-left corner (so orientation is visible)."""
    shape = (H, W, 3) if mode == "RGB" else (H, W)
    a = np.full(shape, value, np.uint8)
    a[:3, :5] = 255
    return a


def _mask(seed: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[seed : seed + 6, 2 * seed : 2 * seed + 9] = 255
    return m


def make_mvtec(root: pathlib.Path, mode: str = "RGB", n_train: int = 10) -> pathlib.Path:
    """train/good (n_train), test/good (2), test/crack (3, two masks), test/hole (1, a mask)."""
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", _image((10 + 20 * i) % 250, mode))
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    _save(root / "test" / "good" / "000.png", _image(1, mode))
    _save(root / "test" / "good" / "001.PNG", _image(2, mode))  # Extensions are case-insensitive.
    for i in range(3):
        _save(root / "test" / "crack" / f"{i:03d}.png", _image(100 + i, mode))
    for i in range(2):  # crack/002 has no mask.
        _save(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", _mask(i + 1))
    _save(root / "test" / "hole" / "000.bmp", _image(200, mode))
    _save(root / "ground_truth" / "hole" / "000_mask.png", _mask(5))
    return root


# ---------------------------------------------------------------------------------------------
# FolderSource
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_train_records(tmp_path, mode, channels):
    root = make_mvtec(tmp_path / "ds", mode)
    src = sources.FolderSource(root, "train", channels=channels, val_fraction=0.0)
    assert len(src) == 10
    rec = src[3]
    assert set(rec) == {"image", "mask", "fov", "label", "grade", "has_mask", "id"}
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (H, W, channels)
    assert rec["image"][H - 1, W - 1].tolist() == [70] * channels  # 10 + 20 * 3
    assert rec["image"][0, 0].tolist() == [255] * channels
    assert rec["mask"].dtype == np.uint8 and rec["mask"].shape == (H, W) and not rec["mask"].any()
    assert rec["fov"].dtype == np.uint8 and rec["fov"].shape == (H, W) and rec["fov"].all()
    assert rec["label"] == 0 and rec["label"].dtype == np.int32
    assert rec["grade"] == -1 and rec["grade"].dtype == np.int32
    assert rec["has_mask"] == np.bool_(True)  # A normal image's ground truth is an empty mask.
    assert rec["id"] == "train/good/003.png"


def test_folder_test_split_labels_and_masks(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    src = sources.FolderSource(root, "test", channels=3)
    ids = [src[i]["id"] for i in range(len(src))]
    assert ids == [
        "test/crack/000.png",
        "test/crack/001.png",
        "test/crack/002.png",
        "test/good/000.png",
        "test/good/001.PNG",
        "test/hole/000.bmp",
    ]
    assert src.labels.tolist() == [1, 1, 1, 0, 0, 1]
    assert [src[i]["label"] for i in range(len(src))] == [1, 1, 1, 0, 0, 1]
    crack0 = src[0]
    assert crack0["has_mask"] and np.array_equal(crack0["mask"], (_mask(1) > 0).astype(np.uint8))
    assert set(np.unique(crack0["mask"])) == {0, 1}
    crack2 = src[2]  # Anomalous but no mask file: flagged, zeros.
    assert not crack2["has_mask"] and not crack2["mask"].any()
    good = src[3]
    assert good["has_mask"] and not good["mask"].any()
    hole = src[5]
    assert hole["has_mask"] and np.array_equal(hole["mask"], (_mask(5) > 0).astype(np.uint8))


def test_folder_validation_holdout_is_disjoint_and_seeded(tmp_path):
    root = make_mvtec(tmp_path / "ds", n_train=20)
    train = sources.FolderSource(root, "train", channels=3)
    val = sources.FolderSource(root, "validation", channels=3)
    assert len(val) == 2 and len(train) == 18
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(
        str(p) for p in (root / "train" / "good").glob("*.png")
    )
    again = sources.FolderSource(root, "validation", channels=3)
    assert again.paths == val.paths
    # val_fraction=0: the whole of train/good trains (the MVTec protocol), validation is empty.
    assert len(sources.FolderSource(root, "train", channels=3, val_fraction=0.0)) == 20
    assert len(sources.FolderSource(root, "validation", channels=3, val_fraction=0.0)) == 0


def test_folder_validation_folder_is_used_when_present(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    for i in range(3):
        _save(root / "val" / "good" / f"v{i}.png", _image(5, "RGB"))
    train = sources.FolderSource(root, "train", channels=3)
    val = sources.FolderSource(root, "validation", channels=3)
    assert len(train) == 10 and len(val) == 3
    assert val[0]["id"] == "val/good/v0.png" and val[0]["label"] == 0


def test_folder_16bit_greyscale_is_scaled(tmp_path):
    root = tmp_path / "ds"
    (root / "train" / "good").mkdir(parents=True)
    a = np.full((H, W), 65535, np.uint16)
    a[0, 0] = 257 * 100
    Image.fromarray(a).save(root / "train" / "good" / "a.png")
    rec = sources.FolderSource(root, "train", channels=1)[0]
    assert rec["image"][0, 0, 0] == 100 and rec["image"][1, 1, 0] == 255


def test_folder_missing_root_is_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        sources.FolderSource(missing, "train", channels=3)
    msg = str(e.value)
    assert str(missing) in msg and "train/good" in msg and "\n" not in msg


def test_folder_missing_train_good(tmp_path):
    root = tmp_path / "ds"
    (root / "test" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train/good"):
        sources.FolderSource(root, "test", channels=3)


def test_folder_empty_train_good(tmp_path):
    root = tmp_path / "ds"
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError) as e:
        sources.FolderSource(root, "train", channels=3)
    assert str(root / "train" / "good") in str(e.value) and "\n" not in str(e.value)


def test_folder_missing_test_folder(tmp_path):
    root = tmp_path / "ds"
    _save(root / "train" / "good" / "a.png", _image(1, "RGB"))
    with pytest.raises(FileNotFoundError, match="test"):
        sources.FolderSource(root, "test", channels=3)


def test_folder_corrupt_image_names_the_file(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    bad = root / "train" / "good" / "999.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    src = sources.FolderSource(root, "train", channels=3, val_fraction=0.0)
    assert src.paths[-1] == str(bad)
    src[0]  # The other images still read.
    with pytest.raises(sources.ImageReadError) as e:
        src[len(src) - 1]
    assert str(bad) in str(e.value)


def test_folder_unknown_split(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    with pytest.raises(ValueError, match="unknown split"):
        sources.FolderSource(root, "train_abnormal", channels=3)


# ---------------------------------------------------------------------------------------------
# TfdsSource, with a tiny array_record dataset built in tmp_path
# ---------------------------------------------------------------------------------------------

TFDS_NAME = "jaxad_test_fundus"


@dataclasses.dataclass(eq=False)
class _Config(tfds.core.BuilderConfig):
    dtype: Any = np.uint8


class JaxadTestFundus(tfds.core.GeneratorBasedBuilder):
    """Five 9x11 RGB examples; config 'masked' also has lesion masks, 'float' float16 images."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        _Config(name="plain"),
        _Config(name="masked"),
        _Config(name="float", dtype=np.float16),  # e.g. MRI slices in [0, 1]
    ]

    def _info(self):
        features = {
            "image": tfds.features.Tensor(shape=(9, 11, 3), dtype=self.builder_config.dtype),
            "fov": tfds.features.Tensor(shape=(9, 11, 1), dtype=np.uint8),
            "label": np.int64,
            "grade": np.int64,
            "id": tfds.features.Text(),
        }
        if self.builder_config.name == "masked":
            features["mask"] = tfds.features.Tensor(shape=(9, 11, 1), dtype=np.uint8)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
        for i in range(n):
            fov = np.zeros((9, 11, 1), np.uint8)
            fov[1:-1, 2:-2] = 1
            ex = {
                "image": np.full((9, 11, 3), 40 * i, np.uint8).astype(self.builder_config.dtype),
                "fov": fov,
                "label": int(i > 0),
                "grade": i,
                "id": f"img{i}",
            }
            if self.builder_config.name == "masked":
                mask = np.zeros((9, 11, 1), np.uint8)
                mask[i, :] = 1
                ex["mask"] = mask
            yield i, ex


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    for config in ("plain", "masked", "float"):
        JaxadTestFundus(
            config=config, data_dir=str(data_dir), file_format="array_record"
        ).download_and_prepare()
    return data_dir


def test_tfds_records(tfds_dir):
    src = sources.TfdsSource(f"{TFDS_NAME}/plain", "train", data_dir=tfds_dir)
    assert len(src) == 5
    recs = [src[i] for i in range(5)]
    assert sorted(r["id"] for r in recs) == [f"img{i}" for i in range(5)]
    rec = next(r for r in recs if r["id"] == "img2")
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (9, 11, 3)
    assert rec["image"].max() == 80
    assert rec["fov"].dtype == np.uint8 and rec["fov"].shape == (9, 11)
    assert rec["fov"].sum() == 7 * 7 and rec["fov"][0, 0] == 0
    assert rec["mask"].shape == (9, 11) and not rec["mask"].any() and not rec["has_mask"]
    assert rec["label"] == 1 and rec["label"].dtype == np.int32
    assert rec["grade"] == 2 and rec["grade"].dtype == np.int32
    assert isinstance(rec["id"], str)


def test_tfds_float_images_stay_float(tfds_dir):
    src = sources.TfdsSource(f"{TFDS_NAME}/float", "train", data_dir=tfds_dir)
    rec = next(src[i] for i in range(5) if src[i]["id"] == "img2")
    assert rec["image"].dtype == np.float32 and rec["image"].max() == 80
    cfg = _cfg(name="x", tfds_name=f"{TFDS_NAME}/float", data_dir=str(tfds_dir), mean=(0,) * 3)
    batch = next(pipeline.eval_batches(cfg, "train", local_batch_size=5))
    assert batch["image"].dtype == np.float32 and batch["image_uint8"].dtype == np.uint8


def test_tfds_masks(tfds_dir):
    src = sources.TfdsSource(f"{TFDS_NAME}/masked", "test", data_dir=tfds_dir)
    assert len(src) == 3
    for rec in (src[i] for i in range(3)):
        i = int(rec["id"][-1])
        assert rec["has_mask"] and rec["mask"].shape == (9, 11)
        assert rec["mask"][i].all() and rec["mask"].sum() == 11


def test_tfds_not_prepared_says_how_to_build(tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(sources.DatasetNotPreparedError) as e:
        sources.TfdsSource(f"{TFDS_NAME}/plain", "train", data_dir=empty)
    msg = str(e.value)
    assert f"python -m jaxad.data.build {TFDS_NAME}/plain --manual_dir=PATH" in msg
    assert f"--data_dir={empty}" in msg and "'plain'" in msg and ":demo" in msg


def test_tfds_eyeq_not_prepared_points_to_the_layout(tmp_path):
    with pytest.raises(sources.DatasetNotPreparedError) as e:
        sources.TfdsSource("eyeq/good", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "python -m jaxad.data.build eyeq/good" in msg and str(tmp_path) in msg
    assert "PATH holds the raw files laid out as data_builders/eyeq/README.md says" in msg


# ---------------------------------------------------------------------------------------------
# get_source
# ---------------------------------------------------------------------------------------------


def _cfg(**kw):
    base = dict(
        name="folder",
        root="",
        data_dir="",
        tfds_name="",
        image_size=8,
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        hflip=True,
        vflip=True,
        flip_fov=False,
        num_workers=0,
        num_threads=2,
        prefetch=2,
    )
    base.update(kw)
    cfg = data_config()
    cfg.update(base)
    return cfg


def test_get_source_folder(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    src = sources.get_source(_cfg(root=str(root), channels=1), "test")
    assert isinstance(src, sources.FolderSource) and len(src) == 6
    assert src[0]["image"].shape == (H, W, 1)
    with pytest.raises(ValueError, match="data.root"):
        sources.get_source(_cfg(root=""), "train")


def test_get_source_demo_generates_then_reads_a_folder(tmp_path, monkeypatch):
    from jaxad.data import demo

    calls = []

    def fake_ensure(root=None, *, seed=0):
        calls.append(root)
        return make_mvtec(tmp_path / "demo")

    monkeypatch.setattr(demo, "ensure_fundus_demo", fake_ensure)
    src = sources.get_source(_cfg(name="demo"), "test")
    assert isinstance(src, sources.FolderSource) and len(src) == 6 and calls == [None]
    sources.get_source(_cfg(name="demo", root=str(tmp_path / "here")), "train")
    assert calls[-1] == str(tmp_path / "here")


def test_get_source_looks_kinds_up_in_tables(tmp_path, monkeypatch):
    """`SOURCES` by data.name (anything else: tfds) and `DEMOS` by data.demo, lazily imported."""
    from jaxad.data import brain_phantom, nifti, phantom

    assert set(sources.SOURCES) == {"folder", "graded_folder", "nifti_folder", "demo"}
    assert list(sources.DEMOS) == ["fundus", "phantom", "brain", "cxr", "dr"]
    monkeypatch.setattr(phantom, "ensure_phantom_demo", lambda root: make_mvtec(tmp_path / "p"))
    src = sources.get_source(_cfg(name="demo", demo="phantom", channels=1), "test")
    assert isinstance(src, sources.FolderSource) and src.root == tmp_path / "p"
    # The brain demo is read as a NIfTI folder over its training volumes.
    monkeypatch.setattr(brain_phantom, "ensure_brain_demo", lambda root: tmp_path / "b")
    monkeypatch.setattr(nifti, "source_from_config", lambda cfg, split: (cfg.root, split))
    cfg = _cfg(name="demo", demo="brain")
    assert sources.get_source(cfg, "train") == (str(tmp_path / "b" / "train"), "train")
    assert cfg.root == ""  # The caller's config is left alone.
    kinds = r"'fundus', 'phantom', 'brain', 'cxr' or 'dr'"
    with pytest.raises(ValueError, match=r"data.demo='mri': use " + kinds):
        sources.get_source(_cfg(name="demo", demo="mri"), "train")
    # A new kind is one entry.
    monkeypatch.setitem(sources.SOURCES, "mine", lambda cfg, split: ["record"])
    assert sources.get_source(_cfg(name="mine"), "test") == ["record"]


def test_names_of_the_source_modules_are_reexported():
    from jaxad.data import folder, fov, records, tfds_source

    assert sources.ImageReadError is records.ImageReadError
    assert sources.ConcatSource is records.ConcatSource
    assert sources.FolderSource is folder.FolderSource and sources.read_image is folder.read_image
    assert sources.TfdsSource is tfds_source.TfdsSource
    assert sources.field_of_view is fov.field_of_view


def test_folder_field_of_view(fundus_root, tmp_path):
    """data.fov: EyeQ's fitted circle per fundus photo, Lesion2Void's circle, or ones."""
    eyeq = sources.FolderSource(fundus_root, "test", channels=3, fov="eyeq")[0]["fov"]
    circle = sources.FolderSource(fundus_root, "test", channels=3, fov="circle")[0]["fov"]
    assert eyeq.dtype == circle.dtype == np.uint8 and eyeq.shape == circle.shape == (64, 64)
    assert 0.5 < eyeq.mean() < 0.95 and 0.5 < circle.mean() < 0.95
    with pytest.raises(ValueError, match="data.fov='eyes' is not one of ones, eyeq, circle"):
        sources.FolderSource(fundus_root, "test", channels=3, fov="eyes")
    blank = tmp_path / "blank"
    _save(blank / "train" / "good" / "0.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(sources.ImageReadError, match=r"no field of view found in .*0\.png"):
        sources.FolderSource(blank, "train", channels=3, fov="eyeq")[0]


def test_get_source_tfds(tfds_dir):
    cfg = _cfg(name="fundus_test", tfds_name=f"{TFDS_NAME}/plain", data_dir=str(tfds_dir))
    src = sources.get_source(cfg, "train")
    assert isinstance(src, sources.TfdsSource) and len(src) == 5
    # Without tfds_name the name itself is the tfds name.
    src = sources.get_source(_cfg(name=f"{TFDS_NAME}/masked", data_dir=str(tfds_dir)), "test")
    assert len(src) == 3


def test_get_source_unknown_unprepared_name(tmp_path):
    cfg = _cfg(name="no_such_dataset", data_dir=str(tmp_path))
    with pytest.raises(sources.DatasetNotPreparedError, match="python -m jaxad.data.build"):
        sources.get_source(cfg, "train")


def test_tfds_through_the_pipeline(tfds_dir):
    cfg = _cfg(name="x", tfds_name=f"{TFDS_NAME}/masked", data_dir=str(tfds_dir), channels=1)
    cfg.mean, cfg.std = (0.0,), (1.0,)
    it = pipeline.train_iterator(
        cfg, "train", local_batch_size=4, seed=0, process_index=0, process_count=1
    )
    b = next(it)
    assert b["image"].shape == (4, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["fov"].shape == (4, 8, 8) and 0 < b["fov"].mean() < 1
    assert b["mask"].shape == (4, 8, 8) and b["mask"].any()
    assert b["label"].dtype == np.int32 and b["grade"].dtype == np.int32
    batches = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=2, process_index=0, process_count=1)
    )
    assert len(batches) == 2 and batches[1]["valid"].tolist() == [True, False]
    assert sorted(batches[0]["id"].tolist() + batches[1]["id"][:1].tolist()) == [
        "img0",
        "img1",
        "img2",
    ]
    assert pipeline.num_examples(cfg, "test") == 3


def test_comma_separated_tfds_names_are_concatenated(tfds_dir):
    cfg = _cfg(name="x", tfds_name=f"{TFDS_NAME}/plain, {TFDS_NAME}/float", data_dir=str(tfds_dir))
    src = sources.get_source(cfg, "train")
    assert isinstance(src, sources.ConcatSource) and len(src) == 10
    assert [src[i]["image"].dtype for i in (0, 4, 5, 9)] == [np.uint8] * 2 + [np.float32] * 2
    with pytest.raises(IndexError):
        src[10]
