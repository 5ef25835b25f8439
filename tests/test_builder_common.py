"""The helpers every dataset builder shares."""

import re
from pathlib import Path

import numpy as np
import pytest

from data_builders import common
from jaxad.data import build as build_lib
from jaxad.data import sources

REPO = Path(__file__).resolve().parents[1]


def test_hash_split_is_seeded_and_order_free():
    names = [f"{i}_left" for i in range(200)]
    chosen = common.hash_split(names, 0.1, seed=0)
    assert len(chosen) == 20 and chosen <= set(names)
    assert common.hash_split(names[::-1], 0.1, seed=0) == chosen
    assert common.hash_split(names, 0.1, seed=1) != chosen


def test_read_csv_names_the_file_and_the_columns(tmp_path):
    path = tmp_path / "labels.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(f"label file not found: {path}\nLAYOUT")):
        common.read_csv(path, ["a"], "LAYOUT", what="label file")
    path.write_text("a, b\n1, x\n2,y\n")
    assert common.read_csv(path, ["a", "b"], "LAYOUT") == [
        {"a": "1", "b": "x"},
        {"a": "2", "b": "y"},
    ]
    with pytest.raises(common.RawDataError, match=r"lacks the column\(s\) \['c'\]"):
        common.read_csv(path, ["a", "c"], "LAYOUT")
    with pytest.raises(common.RawDataError, match=re.escape(f"{path}:3: column 'b' is not")):
        common.parse_int("y", path, 3, "b")


def test_corrupt_files_policy(tmp_path, caplog):
    with pytest.raises(ValueError, match="on_corrupt='ignore'"):
        common.CorruptFiles("ignore")
    fail = common.CorruptFiles("fail")
    with pytest.raises(common.RawDataError, match=re.escape("Cannot read /x.png: truncated")):
        fail.handle("/x.png", OSError("truncated"))
    skip = common.CorruptFiles("skip")
    skip.handle("/x.png", OSError("truncated"))
    skip.handle("/y.png", OSError("truncated"))
    skip.report("train")
    assert "train: skipped 2 corrupt file(s), e.g. /x.png" in caplog.text
    assert skip.skipped == []


def test_ordered_map_keeps_order():
    for workers in (1, 3):
        got = list(common.ordered_map(lambda v: v * v, range(50), workers))
        assert got == [(i, i * i) for i in range(50)]


def test_box_mask_clips_to_the_image():
    mask = common.box_mask(6, 8, [(1, 2, 3, 2), (6.5, -1, 5, 2)])
    want = np.zeros((6, 8), np.uint8)
    want[2:4, 1:4] = 1
    want[0:1, 6:8] = 1
    np.testing.assert_array_equal(mask, want)


def test_encode_png_round_trips(tmp_path):
    import io

    from PIL import Image

    for array in (
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.arange(12, dtype=np.uint16).reshape(3, 4, 1) * 5000,
    ):
        back = np.asarray(Image.open(io.BytesIO(common.encode_png(array))))
        np.testing.assert_array_equal(back, array.reshape(3, 4))


@pytest.mark.parametrize("name", build_lib.known_builders())
def test_unprepared_dataset_names_the_build_command(name, tmp_path):
    """Every builder: reading it before it is built says how to build it and where the layout is."""
    with pytest.raises(sources.DatasetNotPreparedError) as e:
        sources.TfdsSource(name, "train", data_dir=tmp_path)
    msg = str(e.value)
    assert f"python -m jaxad.data.build {name} --manual_dir=PATH --data_dir={tmp_path}" in msg
    assert f"data_builders/{name}/README.md" in msg
    assert (REPO / "data_builders" / name / "README.md").exists()
    assert (REPO / "data_builders" / name / "CITATIONS.bib").exists()
    cls = build_lib.builder_class(name)
    assert issubclass(cls, common.ManualBuilder) and cls.MANUAL_DOWNLOAD_INSTRUCTIONS
