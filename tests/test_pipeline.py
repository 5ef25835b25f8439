"""Tests for jaxad.data.transforms and the grain pipelines in jaxad.data.pipeline."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from configs.common import data_config
from jaxad.data import pipeline, transforms


def value_of(i: int) -> int:
    """Grey level of image i in the fake folders: every image is constant and distinct."""
    return 10 + 20 * i


def make_folder(root: pathlib.Path, n: int, *, mode: str = "RGB", size=(23, 17)) -> pathlib.Path:
    """An MVTec-layout folder whose train/good and test/good hold n constant images each."""
    w, h = size
    for split in ("train", "test"):
        folder = root / split / "good"
        folder.mkdir(parents=True)
        for i in range(n):
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(np.full(shape, value_of(i), np.uint8)).save(folder / f"{i:03d}.png")
    return root


def make_cfg(root, **kw):
    base = dict(
        name="folder",
        root=str(root),
        data_dir="",
        tfds_name="",
        val_fraction=0.0,
        image_size=8,
        channels=3,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
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


def image_ids(batch) -> list[int]:
    """Recovers which constant image each row of a batch is (mean 0, std 1 normalisation)."""
    levels = np.rint(batch["image"].mean(axis=(1, 2, 3)) * 255).astype(int)
    return [(v - 10) // 20 for v in levels]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------


def _record(h=20, w=30, c=3):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    return {
        "image": rng.integers(0, 256, (h, w, c), dtype=np.uint8),
        "mask": ((xx < w // 3) & (yy < h // 2)).astype(np.uint8),
        "fov": (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 0.8).astype(
            np.uint8
        ),
        "label": np.int32(1),
        "grade": np.int32(-1),
        "has_mask": np.bool_(True),
        "id": "x",
    }


@pytest.mark.parametrize("c", [1, 3])
def test_resize_record(c):
    rec = _record(c=c)
    out = transforms.resize_record(rec, 12)
    assert out["image"].shape == (12, 12, c) and out["image"].dtype == np.uint8
    mode = "RGB" if c == 3 else "L"
    pil = Image.fromarray(rec["image"] if c == 3 else rec["image"][..., 0], mode)
    expected = np.asarray(pil.resize((12, 12), Image.BILINEAR)).reshape(12, 12, c)
    np.testing.assert_array_equal(out["image"], expected)
    assert out["mask"].shape == (12, 12) and out["mask"].dtype == np.uint8
    assert set(np.unique(out["mask"])) == {0, 1}  # Nearest: no new values.
    assert out["fov"].shape == (12, 12) and out["fov"].dtype == np.float32
    assert out["fov"].min() == 0.0 and out["fov"].max() == 1.0
    assert ((out["fov"] > 0) & (out["fov"] < 1)).any()  # Soft edges.
    fov255 = Image.fromarray(rec["fov"] * 255).resize((12, 12), Image.BILINEAR)
    np.testing.assert_array_equal(out["fov"], np.asarray(fov255, np.float32) / 255)
    assert out["label"] == 1 and out["id"] == "x" and rec["image"].shape == (20, 30, c)
    assert transforms.resize_record(rec, (10, 14))["image"].shape == (10, 14, c)


def test_resize_is_antialiased():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
    small = transforms.resize_image(checker, 8)
    # Without antialiasing, bilinear sampling of a 1-pixel checkerboard gives 0s and 255s.
    assert np.all(np.abs(small.astype(int) - 128) <= 2)


def test_normalize():
    img = np.array([[[0, 255, 51]]], np.uint8)
    out = transforms.normalize(img, (0.5, 0.5, 0.2), (0.25, 0.5, 0.1))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-2.0, 1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        transforms.normalize(img, (0.5,), (0.5,))


def test_to_channels():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    assert transforms.to_channels(grey, 3).shape == (2, 3, 3)
    np.testing.assert_array_equal(transforms.to_channels(grey, 3)[..., 2], grey[..., 0])
    rgb = np.full((2, 3, 3), 200, np.uint8)
    assert transforms.to_channels(rgb, 1).tolist() == np.full((2, 3, 1), 200).tolist()


def test_high_bit_depth_images_keep_their_precision():
    """uint16 and float images are resized and normalised in unit scale, not through 8 bits."""
    rng = np.random.default_rng(0)
    unit = rng.random((32, 24, 1)).astype(np.float32)
    as_u16 = np.round(unit * 65535).astype(np.uint16)
    for image in (unit.astype(np.float16), as_u16):
        small = transforms.resize_image(transforms.to_channels(image, 1), (8, 6))
        assert small.dtype == np.float32 and small.shape == (8, 6, 1)
        # Pillow's float-mode bilinear equals its 8-bit one up to the 8-bit rounding.
        ref = transforms.resize_image(transforms.to_uint8(image), (8, 6)) / 255.0
        np.testing.assert_allclose(small, ref, atol=1 / 255 + 1e-3)
        # 1/65535 steps survive, which 8 bits would round away.
        out = transforms.normalize(transforms.to_channels(image, 1), (0.5,), (0.5,))
        np.testing.assert_allclose(
            out, 2 * unit - 1, atol=2e-3 if image.dtype == np.float16 else 1e-4
        )
    rgb = rng.random((4, 5, 3)).astype(np.float32)
    grey = transforms.to_channels(rgb, 1)
    np.testing.assert_allclose(grey[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
    assert transforms.to_uint8(np.array([[[-0.5, 0.5, 2.0]]], np.float32)).tolist() == [
        [[0, 128, 255]]
    ]
    with pytest.raises(ValueError, match="uint8, uint16 or float"):
        transforms.to_channels(np.zeros((2, 2, 1), np.int32), 1)


def _flip_of(a, b):
    """Which of the four flips turns a into b (None if none does)."""
    for axes in ((), (1,), (0,), (0, 1)):
        if np.array_equal(np.flip(a, axes) if axes else a, b):
            return axes
    return None


@pytest.mark.parametrize("flip_fov", [False, True])
def test_random_flips(flip_fov):
    rec = transforms.resize_record(_record(), 16)
    seen = set()
    for seed in range(32):
        out = transforms.random_flips(
            rec, np.random.default_rng(seed), hflip=True, vflip=True, flip_fov=flip_fov
        )
        axes = _flip_of(rec["image"], out["image"])
        assert axes is not None
        seen.add(axes)
        assert _flip_of(rec["mask"], out["mask"]) is not None
        np.testing.assert_array_equal(
            out["mask"], np.flip(rec["mask"], axes) if axes else rec["mask"]
        )
        if flip_fov:
            np.testing.assert_array_equal(
                out["fov"], np.flip(rec["fov"], axes) if axes else rec["fov"]
            )
        else:
            np.testing.assert_array_equal(out["fov"], rec["fov"])  # The original's behaviour.
    assert seen == {(), (1,), (0,), (0, 1)}
    same = transforms.random_flips(
        rec, np.random.default_rng(0), hflip=False, vflip=False, flip_fov=True
    )
    np.testing.assert_array_equal(same["image"], rec["image"])


# ---------------------------------------------------------------------------------------------
# train_iterator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1), ("L", 3)])
def test_train_batch_shapes_and_values(tmp_path, mode, channels):
    root = make_folder(tmp_path / "ds", 6, mode=mode)
    cfg = make_cfg(root, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
    it = pipeline.train_iterator(
        cfg, "train", local_batch_size=4, seed=0, process_index=0, process_count=1
    )
    b = next(it)
    assert set(b) == {"image", "fov", "mask", "label", "grade"}
    assert b["image"].shape == (4, 8, 8, channels) and b["image"].dtype == np.float32
    assert b["fov"].shape == (4, 8, 8) and b["fov"].dtype == np.float32
    assert b["mask"].shape == (4, 8, 8) and b["mask"].dtype == np.float32
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
    assert b["grade"].shape == (4,) and b["grade"].dtype == np.int32
    assert np.all(b["fov"] == 1.0) and not b["mask"].any()
    assert b["label"].tolist() == [0] * 4 and b["grade"].tolist() == [-1] * 4
    levels = (b["image"][:, 0, 0, 0] * 0.25 + 0.5) * 255
    assert set(np.rint(levels).astype(int)) <= {value_of(i) for i in range(6)}


def test_train_epochs_cover_the_data_and_reshuffle(tmp_path):
    root = make_folder(tmp_path / "ds", 8)
    it = pipeline.train_iterator(
        make_cfg(root), "train", local_batch_size=4, seed=0, process_index=0, process_count=1
    )
    epochs = [sum((image_ids(b) for b in take(it, 2)), []) for _ in range(3)]
    for ids in epochs:
        assert sorted(ids) == list(range(8))
    assert len({tuple(ids) for ids in epochs}) > 1


def test_train_is_deterministic_per_seed(tmp_path):
    root = make_folder(tmp_path / "ds", 8)
    cfg = make_cfg(root)

    def batches(seed):
        it = pipeline.train_iterator(
            cfg, "train", local_batch_size=4, seed=seed, process_index=0, process_count=1
        )
        return take(it, 4)

    a = batches(0)
    assert_same_batches(a, batches(0))
    assert [image_ids(b) for b in a] != [image_ids(b) for b in batches(1)]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_train_resume_from_state(tmp_path, num_workers):
    root = make_folder(tmp_path / "ds", 7, size=(31, 19))
    # Non-constant content, so that flips show in the batches.
    for p in (root / "train" / "good").glob("*.png"):
        a = np.asarray(Image.open(p)).copy()
        a[:4, :6] = 255
        Image.fromarray(a).save(p)
    cfg = make_cfg(root, num_workers=num_workers)

    def make():
        return pipeline.train_iterator(
            cfg, "train", local_batch_size=3, seed=5, process_index=0, process_count=1
        )

    it = make()
    take(it, 2)
    state = it.get_state()
    expected = take(it, 4)
    resumed = make()
    resumed.set_state(state)
    got = take(resumed, 4)
    assert_same_batches(expected, got)
    if num_workers:
        it.close()
        resumed.close()


def test_train_processes_read_disjoint_shards(tmp_path):
    root = make_folder(tmp_path / "ds", 10)
    cfg = make_cfg(root)
    seen = []
    for index in range(2):
        it = pipeline.train_iterator(
            cfg, "train", local_batch_size=5, seed=0, process_index=index, process_count=2
        )
        seen.append(image_ids(next(it)))  # One batch is one epoch of this process's shard.
        assert sorted(image_ids(next(it))) == sorted(seen[-1])
    assert len(set(seen[0])) == 5 and len(set(seen[1])) == 5
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(10))


def test_train_config_errors(tmp_path):
    root = make_folder(tmp_path / "ds", 2)
    with pytest.raises(ValueError, match="data.mean and data.std"):
        pipeline.train_iterator(
            make_cfg(root, mean=(0.5,)),
            "train",
            local_batch_size=2,
            seed=0,
            process_index=0,
            process_count=1,
        )
    with pytest.raises(ValueError, match="too few"):
        pipeline.train_iterator(
            make_cfg(root), "train", local_batch_size=2, seed=0, process_index=2, process_count=3
        )


# ---------------------------------------------------------------------------------------------
# eval_batches
# ---------------------------------------------------------------------------------------------


def _eval_all(cfg, batch_size, process_count, split="test"):
    return [
        list(
            pipeline.eval_batches(
                cfg,
                split,
                local_batch_size=batch_size,
                process_index=i,
                process_count=process_count,
            )
        )
        for i in range(process_count)
    ]


@pytest.mark.parametrize(
    "n,batch_size,process_count", [(10, 4, 2), (10, 4, 3), (3, 4, 4), (8, 4, 1)]
)
def test_eval_padding_covers_every_example_once(tmp_path, n, batch_size, process_count):
    root = make_folder(tmp_path / "ds", n)
    cfg = make_cfg(root)
    per_process = _eval_all(cfg, batch_size, process_count)
    expected = pipeline.num_eval_batches(n, batch_size, process_count)
    assert [len(b) for b in per_process] == [expected] * process_count
    ids = []
    for batches in per_process:
        for b in batches:
            assert b["valid"].shape == (batch_size,) and b["valid"].dtype == bool
            ids += b["id"][b["valid"]].tolist()
            pad = ~b["valid"]
            assert b["id"][pad].tolist() == [""] * pad.sum()
            assert (b["label"][pad] == -1).all() and not b["image_uint8"][pad].any()
    assert sorted(ids) == [f"test/good/{i:03d}.png" for i in range(n)]


def test_eval_two_processes_ten_examples(tmp_path):
    root = make_folder(tmp_path / "ds", 10)
    p0, p1 = _eval_all(make_cfg(root), 4, 2)
    assert len(p0) == len(p1) == 2
    assert [b["valid"].sum() for b in p0] == [4, 1] and [b["valid"].sum() for b in p1] == [4, 1]


def test_eval_batch_contents(tmp_path):
    root = make_folder(tmp_path / "ds", 3, mode="L", size=(13, 21))
    # Left half bright: a flip would show.
    for p in (root / "test" / "good").glob("*.png"):
        a = np.asarray(Image.open(p)).copy()
        a[:, :6] = 250
        Image.fromarray(a).save(p)
    cfg = make_cfg(root, channels=1, mean=(0.5,), std=(0.5,), image_size=10)
    (b,) = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=4, process_index=0, process_count=1)
    )
    assert b["id"].dtype == object and b["id"].tolist()[:3] == [
        f"test/good/{i:03d}.png" for i in range(3)
    ]
    assert b["image"].shape == (4, 10, 10, 1) and b["image"].dtype == np.float32
    assert b["image_uint8"].shape == (4, 10, 10, 1) and b["image_uint8"].dtype == np.uint8
    assert b["fov"].shape == (4, 10, 10) and b["mask"].shape == (4, 10, 10)
    assert b["has_mask"].dtype == bool and b["has_mask"].tolist() == [True] * 3 + [False]
    assert b["label"].tolist() == [0, 0, 0, -1] and b["grade"].tolist() == [-1] * 4
    original = np.asarray(Image.open(root / "test" / "good" / "001.png"))
    resized = np.asarray(Image.fromarray(original).resize((10, 10), Image.BILINEAR))
    np.testing.assert_array_equal(b["image_uint8"][1, ..., 0], resized)  # Resized, never flipped.
    np.testing.assert_allclose(b["image"][1], (b["image_uint8"][1] / 255 - 0.5) / 0.5, atol=1e-6)
    # Deterministic: a second pass gives the same batch.
    (again,) = list(
        pipeline.eval_batches(cfg, "test", local_batch_size=4, process_index=0, process_count=1)
    )
    np.testing.assert_array_equal(again["image"], b["image"])


def test_num_examples(tmp_path):
    root = make_folder(tmp_path / "ds", 5)
    assert pipeline.num_examples(make_cfg(root), "test") == 5
    assert pipeline.num_examples(make_cfg(root), "train") == 5
    assert pipeline.num_examples(make_cfg(root, val_fraction=0.2), "train") == 4


def test_random_crop_at_native_resolution_rejects_background():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 1), np.uint8)
    image[30:, 50:] = 200  # the only tissue: a corner
    mask = np.zeros((40, 60), np.uint8)
    mask[35, 55] = 1
    rec = {"image": image, "mask": mask, "fov": np.ones((40, 60), np.uint8), "label": 0}
    for _ in range(20):
        out = transforms.random_crop(rec, rng, 16, min_max=0.005)
        assert out["image"].shape == (16, 16, 1) and out["mask"].shape == (16, 16)
        assert out["image"].max() == 200  # every crop holds some tissue
        assert out["fov"].dtype == np.float32
    # Without rejection, background crops occur; the crop is taken, not resized.
    maxima = {transforms.random_crop(rec, rng, 16, min_max=0.0)["image"].max() for _ in range(50)}
    assert maxima == {0, 200}
    # An image smaller than the crop is first resized so that its short side fits.
    small = dict(rec, image=image[:10, :20], mask=mask[:10, :20], fov=rec["fov"][:10, :20])
    out = transforms.random_crop(small, rng, 16, min_max=0.0)
    assert out["image"].shape == (16, 16, 1)


def test_train_batches_of_crops(tmp_path):
    """crop_size: batches of native-resolution crops, whatever data.image_size says."""
    root = make_folder(tmp_path / "ds", 3, mode="L", size=(23, 17))
    cfg = make_cfg(root, channels=1, mean=(0.0,), std=(1.0,), crop_size=12, crop_min_max=0.0)
    b = next(
        pipeline.train_iterator(
            cfg, "train", local_batch_size=3, seed=0, process_index=0, process_count=1
        )
    )
    assert b["image"].shape == (3, 12, 12, 1) and b["fov"].shape == (3, 12, 12)
    # Constant images, cropped not resized: every crop holds exactly its image's grey level.
    levels = np.rint(b["image"][..., 0] * 255)
    assert all(len(np.unique(level)) == 1 for level in levels)
