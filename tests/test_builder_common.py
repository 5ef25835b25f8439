"""The helpers every dataset builder shares."""

import re
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from data_builders import common
from jaxad.data import build as build_lib
from jaxad.data import sources, splits

REPO = Path(__file__).resolve().parents[1]


def test_builders_split_with_jaxads_hash_splits():
    """The builders' `common.hash_*` are `jaxad.data.splits`', which splits NIfTI folders too."""
    assert common.hash_rank is splits.hash_rank and common.hash_split is splits.hash_split
    assert common.hash_splits is splits.hash_splits


def test_hash_split_is_seeded_and_order_free():
    names = [f"{i}_left" for i in range(200)]
    chosen = splits.hash_split(names, 0.1, seed=0)
    assert len(chosen) == 20 and chosen <= set(names)
    assert splits.hash_split(names[::-1], 0.1, seed=0) == chosen
    assert splits.hash_split(names, 0.1, seed=1) != chosen


def test_hash_rank_known_answer():
    names = [f"n{i}" for i in range(10)]
    ranked = ["n1", "n0", "n5", "n8", "n4", "n6", "n7", "n3", "n9", "n2"]
    assert splits.hash_rank(names, seed=0) == ranked
    assert splits.hash_rank(names[::-1] + names[:3], seed=0) == ranked  # order and repeats
    assert splits.hash_rank(names, seed=1)[:3] == ["n6", "n1", "n2"]
    assert splits.hash_split(names, 0.3, seed=0) == set(ranked[:3])


def test_hash_splits_cuts_consecutive_blocks():
    names = [f"n{i}" for i in range(10)]
    ranked = splits.hash_rank(names, seed=0)
    blocks = splits.hash_splits(names, {"test": 0.2, "validation": 0.3}, seed=0, rest="train")
    assert blocks == {
        "test": {"n1", "n0"},
        "validation": {"n5", "n8", "n4"},
        "train": set(ranked[5:]),
    }
    assert blocks["test"] | blocks["validation"] == splits.hash_split(names, 0.5, seed=0)
    # Each cut rounds its running total half to even: 1.5 -> 2 and 2.5 -> 2.
    blocks = splits.hash_splits(names, {"test": 0.15, "validation": 0.1}, seed=0, rest="train")
    assert blocks == {"test": {"n1", "n0"}, "validation": set(), "train": set(ranked[2:])}
    assert splits.hash_splits([], {"a": 0.5}, seed=0, rest="b") == {"a": set(), "b": set()}


def test_parse_numbers_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "boxes.csv"
    assert common.parse_float("2.5", path, 2, "x") == 2.5
    assert common.parse_float("1e3", path, 2, "x") == 1000.0
    assert common.parse_int("3.0", path, 2, "x") == 3
    for parse in (common.parse_float, common.parse_int):
        with pytest.raises(common.RawDataError) as error:
            parse("left", path, 7, "x")
        assert str(error.value) == f"{path}:7: column 'x' is not a number: 'left'"


def test_unreadable_holds_the_path_and_the_error():
    error = OSError("truncated")
    failure = common.Unreadable(epath.Path("/x.png"), error)
    assert (failure.path, failure.error) == (epath.Path("/x.png"), error)
    assert failure == common.Unreadable(epath.Path("/x.png"), error)


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


def test_require_listed_files_names_the_first_missing_one(tmp_path):
    folder = epath.Path(tmp_path / "train")
    paths = [folder / f"{i}.jpeg" for i in range(4)]
    with pytest.raises(FileNotFoundError) as error:
        common.require_listed_files(folder, paths, "labels.csv", "LAYOUT", what="Photo folder")
    assert str(error.value) == f"Photo folder not found: {folder}\nLAYOUT"
    folder.mkdir()
    for path in paths[::2]:
        path.write_bytes(b"")
    common.require_listed_files(folder, paths[::2], "labels.csv", "LAYOUT", what="Photo folder")
    with pytest.raises(FileNotFoundError) as error:
        common.require_listed_files(folder, paths, "labels.csv", "LAYOUT", what="Photo folder")
    assert str(error.value) == (
        f"Image not found: {paths[1]} (2 of the 4 photos listed in labels.csv are missing from "
        f"{folder}).\nLAYOUT"
    )


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
