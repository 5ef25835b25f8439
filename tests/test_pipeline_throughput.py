"""Host throughput options of the training pipeline: several crops per decoded image, and
lesion-based CL's patch pairs cut on the host."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override
from PIL import Image
from test_pipeline import image_ids, make_cfg, make_folder, take

from configs import lesioncl as lesioncl_configs
from jaxad import methods
from jaxad.data import pipeline
from jaxad.lesions import boxes as box_files
from jaxad.ops import lesion_augment


def _iterator(cfg, batch: int, seed: int = 0):
    return pipeline.train_iterator(
        cfg, "train", local_batch_size=batch, seed=seed, process_index=0, process_count=1
    )


def _crop_cfg(root, **kw):
    return make_cfg(
        root, channels=1, mean=(0.0,), std=(1.0,), crop_size=12, hflip=False, vflip=False, **kw
    )


def test_several_crops_per_decoded_image_mixed_across_batches(tmp_path):
    root = make_folder(tmp_path / "ds", 6, mode="L", size=(23, 17))
    cfg = _crop_cfg(root, crops_per_image=4)
    batches = take(_iterator(cfg, batch=3), 8)
    assert all(b["image"].shape == (3, 12, 12, 1) for b in batches)
    ids = [image_ids(b) for b in batches]
    # A window of 4 batches holds the 4 crops of each of 3 decoded images, and nothing else.
    for window in (ids[:4], ids[4:]):
        flat = [i for batch in window for i in batch]
        counts = {i: flat.count(i) for i in set(flat)}
        assert len(counts) == 3 and set(counts.values()) == {4}, window
    # The crops are shuffled across the batches of a window: no batch is one image's crops.
    assert any(len(set(batch)) > 1 for batch in ids)
    # One crop per read (the default) reads a new image for every row.
    flat = [i for b in take(_iterator(_crop_cfg(root), batch=3), 2) for i in image_ids(b)]
    assert len(set(flat)) == 6


def test_several_crops_resume_exactly(tmp_path):
    root = make_folder(tmp_path / "ds", 5, mode="L", size=(23, 17))
    cfg = _crop_cfg(root, crops_per_image=3)
    it = _iterator(cfg, batch=2, seed=3)
    take(it, 4)  # into the middle of a window
    state = json.loads(json.dumps(it.get_state()))  # as grain's checkpoint handler stores it
    expected = take(it, 6)
    again = _iterator(cfg, batch=2, seed=3)
    again.set_state(state)
    for a, b in zip(expected, take(again, 6), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_several_crops_need_crops(tmp_path):
    root = make_folder(tmp_path / "ds", 3, mode="L")
    with pytest.raises(ValueError, match="data.crops_per_image=2"):
        _iterator(make_cfg(root, crops_per_image=2), batch=2)
    with pytest.raises(ValueError, match="data.crops_per_image=0"):
        _iterator(_crop_cfg(root, crops_per_image=0), batch=2)


def test_conflicting_settings_fail_before_any_read(tmp_path, monkeypatch):
    """A wrong combination is reported before the source is opened or a cache is built."""
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "ds", 3, mode="L")

    def no_source(*args, **kwargs):
        raise AssertionError("the source was opened")

    monkeypatch.setattr(pipeline.sources, "get_source", no_source)
    for cfg, message in [
        (make_cfg(root, crops_per_image=2, decoded_cache=True), "data.crops_per_image=2"),
        (_crop_cfg(root, decoded_cache=True), "data.decoded_cache keeps images resized"),
        (make_cfg(root, boxes="b.json", hflip=True), "data.boxes with data.hflip"),
    ]:
        with pytest.raises(ValueError, match=message):
            _iterator(cfg, batch=2)
    assert not (tmp_path / "cache").exists()


def test_patch_start_is_the_same_rule_on_host_and_device():
    rng = np.random.default_rng(0)
    u = rng.random(500, dtype=np.float32)
    lo = rng.uniform(-5, 60, 500).astype(np.float32)
    hi = lo + rng.uniform(0.5, 40, 500).astype(np.float32)
    for extent, size in ((64, 16), (40, 48)):  # also a patch larger than the axis
        device = lesion_augment.patch_start(
            jnp.asarray(u), jnp.asarray(lo), jnp.asarray(hi), extent, size
        )
        host = lesion_augment.patch_start(u, lo, hi, extent, size, xp=np)
        assert host.dtype == np.int32
        np.testing.assert_array_equal(host, np.asarray(device))


def _lesion_folder(root, n: int = 4, size: int = 40):
    """Dark photos, each with one bright 5 x 4 lesion whose box the box file gives."""
    folder = root / "train" / "good"
    folder.mkdir(parents=True)
    boxes = {}
    for i in range(n):
        image = np.full((size, size, 3), 20, np.uint8)
        x, y = 3 + 8 * i, 30 - 7 * i
        image[y : y + 4, x : x + 5] = 250
        Image.fromarray(image).save(folder / f"{i}.png")
        boxes[f"train/good/{i}.png"] = np.asarray([[x, y, x + 5, y + 4, 0.9, 0]], np.float32)
    box_files.write_boxes(root / "boxes.json", boxes)
    return root


def _pair_cfg(root, patch: int = 16):
    return make_cfg(
        root,
        image_size=40,
        hflip=False,
        vflip=False,
        boxes=str(root / "boxes.json"),
        box_threshold=0.5,
        box_max_side=16.0,
        box_margin=0.0,
        lesion_pairs=patch,
    )


def test_lesion_pairs_cut_on_the_host_hold_the_lesion(tmp_path):
    root = _lesion_folder(tmp_path / "ds")
    batches = take(_iterator(_pair_cfg(root), batch=4), 5)
    for b in batches:
        assert set(b) == {"pairs", "label", "grade"}  # no whole photo leaves the host
        assert b["pairs"].dtype == np.uint8 and b["pairs"].shape == (4, 2, 16, 16, 3)
        # Each patch holds its image's whole 5 x 4 lesion (both placements), in uint8.
        np.testing.assert_array_equal((b["pairs"][..., 0] == 250).sum(axis=(2, 3)), 20)
    # The two placements are drawn independently: they differ in some pairs.
    assert any(not np.array_equal(p[0], p[1]) for b in batches for p in b["pairs"])


def test_lesion_pairs_need_boxes(tmp_path):
    root = _lesion_folder(tmp_path / "ds")
    cfg = _pair_cfg(root)
    cfg.boxes = ""
    with pytest.raises(ValueError, match="data.lesion_pairs needs lesion boxes"):
        _iterator(cfg, batch=2)


def _tiny_lesioncl(**overrides):
    c = lesioncl_configs.get_config("demo")
    tiny = {
        "model.depth": 18,
        "model.width": 4,
        "model.fast_conv_grad": False,
        "data.image_size": 32,
        "batch_size": 4,
        "lcl.patch_size": 16,
        "lcl.steps_per_epoch": 2,
    }
    return override(c, {**tiny, **overrides})


def test_lesioncl_trains_on_host_pairs():
    config = _tiny_lesioncl(**{"data.lesion_pairs": 16})
    method = methods.create(config)
    batch = methods.example_batch(config, 4)
    assert set(batch) == {"pairs", "label", "grade"}
    rng = np.random.default_rng(0)
    batch["pairs"] = rng.integers(0, 256, batch["pairs"].shape, dtype=np.uint8)
    p1, p2 = method.pairs(jax.random.key(0), batch)
    np.testing.assert_allclose(p1, batch["pairs"][:, 0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(p2, batch["pairs"][:, 1] / 255.0, rtol=1e-6)
    state = method.init(jax.random.key(0), batch)
    new, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert 0.0 < float(metrics["loss"]) < 20.0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["net"], new["net"])
    assert all(jax.tree.leaves(changed["params"]))


@pytest.mark.parametrize(
    "overrides", [{"data.lesion_pairs": 8}, {"data.lesion_pairs": 16, "lcl.views": "whole"}]
)
def test_lesioncl_refuses_host_pairs_of_another_size(overrides):
    with pytest.raises(ValueError, match="data.lesion_pairs"):
        methods.create(_tiny_lesioncl(**overrides))


def test_decoded_cache_gives_the_same_pairs_without_decoding_again(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "cache"))
    root = _lesion_folder(tmp_path / "ds")
    plain = take(_iterator(_pair_cfg(root), batch=4, seed=5), 3)
    cfg = _pair_cfg(root)
    cfg.decoded_cache = True
    first = take(_iterator(cfg, batch=4, seed=5), 3)  # decodes and fills the cache
    files = sorted(p.name.split(".")[-1] for p in (tmp_path / "cache" / "decoded").iterdir())
    assert files == ["boxes", "done", "grade", "image", "label", "num_boxes"]

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    again = take(_iterator(cfg, batch=4, seed=5), 3)  # headers only: the boxes' image sizes
    for a, b, c in zip(plain, first, again, strict=True):
        for key in ("pairs", "label", "grade"):
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])


def test_decoded_cache_gives_the_same_batches(tmp_path, monkeypatch):
    """Resized images, masks and soft FOVs as the pipeline makes them, flips on top."""
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split in ("train/good", "test/good"):
        (root / split).mkdir(parents=True)
        for i in range(5):
            image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / f"{i}.png")
    cfg = make_cfg(root, image_size=16, fov="circle")
    plain = take(_iterator(cfg, batch=3, seed=2), 4)
    cfg.decoded_cache = True
    first, again = (
        take(_iterator(cfg, batch=3, seed=2), 4),
        take(_iterator(cfg, batch=3, seed=2), 4),
    )
    assert 0 < plain[0]["fov"].mean() < 1 and len(np.unique(plain[0]["fov"])) > 2  # soft edges
    for a, b, c in zip(plain, first, again, strict=True):
        assert a.keys() == b.keys() == c.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])


def test_decoded_cache_refuses_crops_and_float_images(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "ds", 3, mode="L")
    with pytest.raises(ValueError, match="data.decoded_cache keeps images resized"):
        _iterator(_crop_cfg(root, decoded_cache=True), batch=2)
    from jaxad.data import decoded_cache

    class FloatSource:
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": np.zeros((4, 4, 1), np.float16), "label": 0, "grade": 0}

    with pytest.raises(ValueError, match="keeps 8-bit images.*float16.*decoded_cache=False"):
        decoded_cache.DecodedCache(FloatSource(), make_cfg(root, channels=1), "train")


def test_decoded_cache_is_rebuilt_when_the_data_change(tmp_path):
    from jaxad.data import decoded_cache, sources

    root = _lesion_folder(tmp_path / "ds")
    cfg = _pair_cfg(root)

    def prefix():
        src = sources.get_source(cfg, "train")
        return decoded_cache.DecodedCache(src, cfg, "train", directory=str(tmp_path)).prefix

    first = prefix()
    assert prefix() == first
    image = root / "train" / "good" / "0.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image)  # an edited image
    second = prefix()
    assert second != first
    cfg.image_size = 32  # another size
    assert prefix() not in (first, second)
