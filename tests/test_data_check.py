"""Folder data verified before training: bad files named at once, `data.on_corrupt`, the cache."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from configs import common
from jaxad import writers
from jaxad.data import folder, records, sources

SIZE = 40  # Images of the fixtures; the configs' input is 32 px (8 px a side at least).


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    """Each test with its own cache folder and an empty in-process memory of verdicts."""
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(folder, "_SEEN", {})
    monkeypatch.setattr(records, "_REPORTED", set())


def _save(path: pathlib.Path, size=(SIZE, SIZE), fmt: str | None = None, value: int = 90):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, format=fmt
    )
    return path


def _truncate(path: pathlib.Path) -> pathlib.Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mvtec(root: pathlib.Path, n_train: int = 6) -> pathlib.Path:
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", value=i)
    _save(root / "test" / "good" / "000.png")
    _save(root / "test" / "crack" / "000.png")
    _save(root / "ground_truth" / "crack" / "000_mask.png")
    return root


def _config(root: pathlib.Path, on_corrupt: str = "fail"):
    c = common.get_config()
    c.data.root = str(root)
    c.data.image_size = 32
    c.data.on_corrupt = on_corrupt
    c.data.val_fraction = 0.0
    c.evals.model = common.anomaly_map_eval()
    return c


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp")])
def test_truncated_files_are_found(tmp_path, fmt, suffix):
    good = _save(tmp_path / f"good.{suffix}", fmt=fmt)
    bad = _truncate(_save(tmp_path / f"bad.{suffix}", fmt=fmt))
    info = folder.check_images([good, bad])
    assert info[str(good)].problem() == "" and info[str(good)].size == (SIZE, SIZE)
    assert "cannot be decoded" in info[str(bad)].problem()


def test_far_smaller_images_are_bad_in_training(tmp_path):
    tiny = _save(tmp_path / "tiny.png", size=(10, 7))
    info = folder.check_images([tiny])[str(tiny)]
    assert info.problem() == ""  # Decodable...
    assert folder.min_side_for(224) == 56
    assert "10x7 px, far smaller" in info.problem(folder.min_side_for(224))  # ...but too small.


def test_fail_names_every_bad_file_at_once(tmp_path):
    root = _mvtec(tmp_path / "data")
    bad = _truncate(root / "train" / "good" / "001.png")
    tiny = _save(root / "train" / "good" / "zz_tiny.png", size=(10, 7))
    (root / "test" / "crack" / "000.png").write_bytes(b"not an image")
    with pytest.raises(ValueError) as e:
        sources.check_data(_config(root))
    msg = str(e.value)
    assert msg.startswith("3 image files of")  # train and test together
    assert str(bad) in msg and str(tiny) in msg and "10x7 px" in msg and "crack/000.png" in msg
    assert "data.on_corrupt='skip'" in msg and "\n" not in msg


def test_mask_of_another_size_is_bad(tmp_path):
    root = _mvtec(tmp_path / "data")
    _save(root / "ground_truth" / "crack" / "000_mask.png", size=(SIZE, SIZE - 1))
    with pytest.raises(ValueError, match="its mask .*000_mask.png is 40x39 px, the image 40x40"):
        sources.get_source(_config(root).data, "test")


def test_skip_leaves_bad_files_out_and_counts_them(tmp_path, monkeypatch):
    root = _mvtec(tmp_path / "data")
    _truncate(root / "train" / "good" / "001.png")
    (root / "test" / "crack" / "000.png").write_bytes(b"not an image")
    lines = []
    monkeypatch.setattr(writers, "log_info", lambda msg, *a: lines.append(msg % a))
    config = _config(root, "skip")
    assert sources.check_data(config) == {"skipped_files": 2}
    train = sources.get_source(config.data, "train")
    assert len(train) == 5 and train.skipped == ["train/good/001.png"]
    assert all(r != "train/good/001.png" for r in (train[i]["id"] for i in range(len(train))))
    assert sources.skipped_files(sources.get_source(config.data, "test+train")) == [
        "test/crack/000.png",
        "train/good/001.png",
    ]
    assert any("data checked" in line and "train 5 (1 left out)" in line for line in lines)


def test_skip_of_every_file_is_an_error(tmp_path):
    root = _mvtec(tmp_path / "data", n_train=1)
    _truncate(root / "train" / "good" / "000.png")
    with pytest.raises(ValueError, match="none is left"):
        sources.get_source(_config(root, "skip").data, "train")


def test_unknown_policy(tmp_path):
    root = _mvtec(tmp_path / "data")
    with pytest.raises(ValueError, match="data.on_corrupt='ignore': use one of fail, skip"):
        sources.get_source(_config(root, "ignore").data, "train")


def test_graded_folder_skip(tmp_path):
    for grade in (0, 2):
        for i in range(3):
            _save(tmp_path / "g" / "train" / str(grade) / f"{i}.png", value=grade + i)
    _truncate(tmp_path / "g" / "train" / "2" / "1.png")
    c = _config(tmp_path / "g", "skip")
    c.data.name = "graded_folder"
    src = sources.get_source(c.data, "train")
    assert len(src) == 5 and sources.skipped_files(src) == ["train/2/1.png"]
    assert list(src.grades) == [0, 0, 0, 2, 2]
    c.data.on_corrupt = "fail"
    with pytest.raises(ValueError, match="1 of the 6 image files"):
        sources.get_source(c.data, "train")


def test_verdicts_are_cached_per_file(tmp_path, monkeypatch):
    root = _mvtec(tmp_path / "data")
    config = _config(root)
    sources.check_data(config)
    cache_files = list((tmp_path / "cache" / "image_check").glob("*.json"))
    assert cache_files and all(json.loads(p.read_text())["files"] for p in cache_files)

    decoded = []
    inspect = folder._inspect
    monkeypatch.setattr(folder, "_inspect", lambda p: decoded.append(p) or inspect(p))
    monkeypatch.setattr(folder, "_SEEN", {})  # A new process: only the cache files remain.
    sources.check_data(config)
    assert decoded == []
    # A changed file (size, mtime) is decoded again, and only that one.
    changed = root / "train" / "good" / "002.png"
    data = changed.read_bytes()
    changed.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="002.png: cannot be decoded"):
        sources.check_data(config)
    assert decoded == [str(changed)]


def test_check_is_quick_for_a_few_hundred_images(tmp_path):
    paths = []
    for i in range(300):
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), i % 255, np.uint8)).save(buf, format="PNG")
        path = tmp_path / f"{i:03d}.png"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    info = folder.check_images(paths)
    assert all(not i.problem() for i in info.values())


def test_predict_warns_about_far_smaller_images_and_skips_bad_ones(tmp_path, monkeypatch):
    from jaxad import predict

    inputs = tmp_path / "in"
    _save(inputs / "a.png", size=(64, 64))
    _save(inputs / "tiny.png", size=(10, 7))
    _truncate(_save(inputs / "b.jpg", fmt="JPEG"))
    warnings = []
    monkeypatch.setattr(writers.logger, "warning", lambda msg, *a: warnings.append(msg % a))
    monkeypatch.setattr(writers, "log_info", lambda *a: None)
    config = _config(tmp_path)
    config.data.image_size = 64
    src = sources.ImageListSource(inputs, channels=3)
    with pytest.raises(ValueError, match="b.jpg: cannot be decoded"):
        predict._check_images(src, config)
    config.data.on_corrupt = "skip"
    predict._check_images(src, config)
    assert [p.name for p in src.paths] == ["a.png", "tiny.png"]
    assert any(
        "far smaller than the model's 64 px input" in w and "tiny.png (10x7)" in w for w in warnings
    )


def test_bad_file_stops_the_command_before_training(fundus_root, tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    root = tmp_path / "data"
    shutil.copytree(fundus_root, root)
    bad = [_truncate(root / "train" / "good" / "003.png"), root / "test" / "good" / "000.png"]
    bad[1].write_bytes(b"not an image")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxad.main",
            "--config=configs/lesion2void.py:demo",
            f"--workdir={tmp_path / 'w'}",
            "--config.data.name=folder",
            f"--config.data.root={root}",
            "--config.data.image_size=32",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxad: error: 2 image files of") and "data.on_corrupt='skip'" in last
    assert str(bad[0]) in out.stderr and str(bad[1]) in out.stderr
    assert "compiling the training step" not in out.stderr


@pytest.mark.slow
def test_skipped_files_are_counted_in_metrics(fundus_root, tmp_path):
    import shutil

    from conftest import tiny_config

    from jaxad import train

    root = tmp_path / "data"
    shutil.copytree(fundus_root, root)
    _truncate(root / "train" / "good" / "003.png")
    train.run(tiny_config(root, total_steps=2, **{"data.on_corrupt": "skip"}), str(tmp_path / "w"))
    metrics = json.loads((tmp_path / "w" / "eval" / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1
