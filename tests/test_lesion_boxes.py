"""Lesion box files, LCL's predictions pickle (read without running it), LCL's filter, tfds boxes,
and the `python -m jaxad.lesions` commands that use them."""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxad.lesions import boxes as boxes_lib
from jaxad.lesions.boxes import BoxFileError, BoxFileNotFoundError

ROOT = pathlib.Path(__file__).resolve().parents[1]

BOXES = {
    "train/2/10_left.jpeg": np.array(
        [[105.5, 211.0, 131.25, 240.0, 0.93, 1], [0.0, 12.3, 320.7, 30.1, 0.5, -1]], np.float32
    ),
    "no boxes.png": np.zeros((0, 6), np.float32),
    'odd, "id".png': np.array([[1, 2, 3, 4, 1.0, 3]], np.float32),
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m jaxad.lesions ARGS` in a fresh interpreter, as a user runs it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "jaxad.lesions", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == np.float32 and a[key].shape == (len(b[key]), 6)
        np.testing.assert_array_equal(a[key], np.asarray(b[key], np.float32).reshape(-1, 6))


# ---------------------------------------------------------------------------------------------
# Box files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_box_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"boxes{suffix}"
    boxes_lib.write_boxes(path, BOXES)
    assert_same(boxes_lib.read_boxes(path), BOXES)
    # float32 values are written in their shortest form: 12.3, not 12.300000190734863.
    assert "12.3," in path.read_text() and "12.30000" not in path.read_text()


def test_json_layout_is_the_documented_one(tmp_path):
    path = tmp_path / "boxes.json"
    boxes_lib.write_boxes(path, BOXES)
    data = json.loads(path.read_text())
    assert data["format"] == "jaxad-lesion-boxes" and data["version"] == 1
    assert data["images"]["no boxes.png"] == []
    assert data["images"]["train/2/10_left.jpeg"][0] == [105.5, 211.0, 131.25, 240.0, 0.93, 1]
    hand = tmp_path / "hand.json"
    hand.write_text(
        '{"format": "jaxad-lesion-boxes", "version": 1, "images": '
        '{"a.jpeg": [[1, 2, 3.5, 4, 0.9, 2]], "b.jpeg": []}}'
    )
    assert_same(boxes_lib.read_boxes(hand), {"a.jpeg": [[1, 2, 3.5, 4, 0.9, 2]], "b.jpeg": []})


def test_csv_with_an_image_without_boxes(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("id,x1,y1,x2,y2,score,class\na.png,1,2,3,4,0.5,0\n\nb.png,,,,,,\n")
    assert_same(boxes_lib.read_boxes(path), {"a.png": [[1, 2, 3, 4, 0.5, 0]], "b.png": []})


def _json(rows) -> str:
    return json.dumps({"format": "jaxad-lesion-boxes", "version": 1, "images": {"a.png": rows}})


@pytest.mark.parametrize(
    "name, text, needles",
    [
        ("neg.json", _json([[-1, 2, 3, 4, 0.9, 0]]), ["'a.png'", "box 0", "negative"]),
        ("inv.json", _json([[5, 2, 3, 4, 0.9, 0]]), ["'a.png'", "box 0", "x2 <= x1"]),
        ("flat.json", _json([[1, 4, 3, 4, 0.9, 0]]), ["'a.png'", "inverted or empty"]),
        ("five.json", _json([[1, 2, 3, 4, 0.9]]), ["'a.png'", "5 values, expected 6"]),
        ("class.json", _json([[1, 2, 3, 4, 0.9, 1.5]]), ["'a.png'", "not an integer"]),
        ("text.json", _json([[1, 2, 3, 4, "high", 0]]), ["'a.png'", "non-number"]),
        ("broken.json", '{"format": "jaxad-lesion-boxes", "images": {', ["not valid JSON"]),
        ("other.json", '{"images": {}}', ["not a jaxad lesion box file"]),
        ("v2.json", '{"format": "jaxad-lesion-boxes", "version": 2}', ["version 2"]),
        (
            "twice.json",
            '{"format": "jaxad-lesion-boxes", "version": 1, "images": {"a": [], "a": []}}',
            ["'a' appears twice"],
        ),
        ("neg.csv", "id,x1,y1,x2,y2,score,class\na.png,1,-2,3,4,1,0\n", ["line 2", "negative"]),
        ("inv.csv", "id,x1,y1,x2,y2,score,class\na.png,1,2,3,4,1,0\na,1,9,3,4,1,0\n", ["line 3"]),
        ("six.csv", "id,x1,y1,x2,y2,score,class\na.png,1,2,3,4,1\n", ["line 2", "6 values"]),
        ("nan.csv", "id,x1,y1,x2,y2,score,class\na.png,1,2,3,x,1,0\n", ["line 2", "non-number"]),
        ("head.csv", "image,x1,y1,x2,y2\n", ["line 1 must be the header"]),
        ("boxes.txt", "", ["must end in .json or .csv"]),
    ],
)
def test_bad_box_files_give_one_line_errors(tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BoxFileError) as info:
        boxes_lib.read_boxes(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, message


def test_missing_box_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(BoxFileNotFoundError, match="does not exist") as info:
        boxes_lib.read_boxes(path)
    assert isinstance(info.value, FileNotFoundError) and str(path) in str(info.value)


def test_write_refuses_invalid_boxes(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(BoxFileError, match="'a.png', box 1"):
        boxes_lib.write_boxes(path, {"a.png": [[1, 2, 3, 4, 1, 0], [3, 2, 1, 4, 1, 0]]})
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# LCL's pickle
# ---------------------------------------------------------------------------------------------

RELEASED = {  # The released layout: filtered boxes in 512 px coordinates, no score.
    "train": {"10_left.jpeg": [(100.5, 200.25, 130.0, 220.0), (6.0, 7.0, 8.0, 9.5)]},
    "val": {"15_right.jpeg": [(300.0, 301.0, 340.0, 350.0)], "16_left.jpeg": []},
}
# The detection script's raw output: (w, h) = the photo's (height, width), then box, conf, class.
RAW = {
    "21_left.jpeg": [(600, 800, 10.0, 20.0, 110.0, 90.0, 0.95, 1), (600, 800, 1, 2, 3, 4, 0.3, 0)]
}


def _dump(path: pathlib.Path, data, protocol: int = pickle.DEFAULT_PROTOCOL) -> pathlib.Path:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_released_pickle(tmp_path, protocol):
    path = _dump(tmp_path / "EyePACS_predictions_128_08.pkl", RELEASED, protocol)
    everything = boxes_lib.read_lcl_pickle(path)
    assert list(everything.boxes) == ["10_left.jpeg", "15_right.jpeg", "16_left.jpeg"]
    assert everything.sizes == {}
    np.testing.assert_array_equal(
        everything.boxes["10_left.jpeg"],
        np.array([[100.5, 200.25, 130, 220, 1, -1], [6, 7, 8, 9.5, 1, -1]], np.float32),
    )
    assert everything.boxes["16_left.jpeg"].shape == (0, 6)
    val = boxes_lib.read_lcl_pickle(path, split="val")
    assert list(val.boxes) == ["15_right.jpeg", "16_left.jpeg"]
    with pytest.raises(BoxFileError, match="no split 'test'; the pickle has 'train', 'val'"):
        boxes_lib.read_lcl_pickle(path, split="test")


def test_raw_detection_pickle_carries_the_photo_size(tmp_path):
    predictions = boxes_lib.read_lcl_pickle(_dump(tmp_path / "raw.pkl", RAW))
    np.testing.assert_array_equal(
        predictions.boxes["21_left.jpeg"],
        np.array([[10, 20, 110, 90, 0.95, 1], [1, 2, 3, 4, 0.3, 0]], np.float32),
    )
    assert predictions.sizes == {"21_left.jpeg": (800, 600)}  # (width, height), un-swapped.


@pytest.mark.parametrize("protocol", [3, 4])
def test_pickle_of_numpy_numbers_and_arrays(tmp_path, protocol):
    """Detector output is numpy: float32 scalars in tuples and arrays of rows both load."""
    data = {
        "train": {
            "a.jpeg": [tuple(np.float32(v) for v in (1, 2, 3, 4))],
            "b.jpeg": np.array([[5, 6, 7, 8, 0.9], [1, 1, 2, 2, 0.1]]),
        }
    }
    boxes = boxes_lib.read_lcl_pickle(_dump(tmp_path / "np.pkl", data, protocol)).boxes
    np.testing.assert_array_equal(boxes["a.jpeg"], [[1, 2, 3, 4, 1, -1]])
    np.testing.assert_allclose(boxes["b.jpeg"], [[5, 6, 7, 8, 0.9, -1], [1, 1, 2, 2, 0.1, -1]])


class _Payload:
    """What an attacker pickles: unpickling calls os.system with a shell command."""

    def __init__(self, target: pathlib.Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_pickle_with_a_code_payload_is_refused(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = _dump(tmp_path / "evil.pkl", {"train": {"a.jpeg": [_Payload(target)]}}, protocol)
    with pytest.raises(BoxFileError) as info:
        boxes_lib.read_lcl_pickle(path)
    assert not target.exists()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"refused to unpickle {os.system.__module__}.system" in message


@pytest.mark.parametrize(
    "payload",
    [
        {"a": [(eval, ("1",))]},  # A builtin function object (pickled by reference).
        {"a": [(1, 2, 3, 4)], "b": {1, 2}},  # A set needs builtins.set in protocols < 4.
        {"a": np.array([object(), 1], dtype=object)},
    ],
    ids=["builtin", "set", "object-array"],
)
def test_pickle_naming_other_globals_is_refused(tmp_path, payload):
    try:
        path = _dump(tmp_path / "other.pkl", payload, protocol=2)
    except (pickle.PicklingError, TypeError, AttributeError):
        pytest.skip("not picklable here")
    with pytest.raises(BoxFileError, match="refused to unpickle"):
        boxes_lib.read_lcl_pickle(path)


def test_module_never_calls_pickle_load():
    source = inspect.getsource(boxes_lib)
    assert "pickle.load(" not in source and "pickle.loads(" not in source


@pytest.mark.parametrize(
    "data, needle",
    [
        ([1, 2], "expected a dict"),
        ({"a.jpeg": [(1, 2, 3)]}, "3 values; expected 4"),
        ({"a.jpeg": [(5, 2, 3, 4)]}, "inverted"),
        ({"a.jpeg": "boxes"}, "expected a list of boxes"),
        ({"train": {"a.jpeg": [(1, 2, 3, 4)]}, "val": {"a.jpeg": [(1, 2, 3, 5)]}}, "two splits"),
    ],
)
def test_unexpected_pickle_layouts(tmp_path, data, needle):
    path = _dump(tmp_path / "odd.pkl", data)
    with pytest.raises(BoxFileError, match=needle) as info:
        boxes_lib.read_lcl_pickle(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_garbage_and_missing_pickles(tmp_path):
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(BoxFileError, match="not a readable pickle"):
        boxes_lib.read_lcl_pickle(garbage)
    with pytest.raises(BoxFileNotFoundError, match="does not exist"):
        boxes_lib.read_lcl_pickle(tmp_path / "missing.pkl")


# ---------------------------------------------------------------------------------------------
# LCL's filter
# ---------------------------------------------------------------------------------------------


def test_filter_boxes_by_hand():
    """A 1024 x 768 photo: x scales by 512/1024 = 1/2, y by 512/768 = 2/3."""
    boxes = np.array(
        [
            [100, 90, 200, 150, 0.9, 1],  # -> (50, 60, 100, 100): kept
            [100, 90, 200, 150, 0.8, 1],  # score not > 0.8
            [100, 90, 356, 150, 0.9, 1],  # -> width exactly 128: kept
            [100, 90, 360, 150, 0.9, 1],  # -> width 130 > 128
            [100, 90, 200, 283.5, 0.9, 1],  # -> height 129 > 128
            [10, 90, 200, 150, 0.9, 1],  # -> x1 = 5, not > 5
            [12, 90, 200, 150, 0.9, 1],  # -> x1 = 6: kept
            [100, 6, 200, 150, 0.9, 1],  # -> y1 = 4 <= 5
            [100, 600, 200, 758, 0.9, 1],  # -> y2 = 505.33 < 507: kept
            [100, 600, 200, 762, 0.9, 1],  # -> y2 = 508 >= 507
            [900, 90, 1014, 150, 0.9, 1],  # -> x2 = 507, not < 507
        ],
        np.float32,
    )
    kept = boxes_lib.filter_boxes(boxes, (1024, 768))
    np.testing.assert_allclose(
        kept,
        [
            [50, 60, 100, 100, 0.9, 1],
            [50, 60, 178, 100, 0.9, 1],
            [6, 60, 100, 100, 0.9, 1],
            [50, 400, 100, 505.3333, 0.9, 1],
        ],
        rtol=1e-6,
    )
    assert kept.dtype == np.float32
    # A lower threshold keeps the 0.8 box too.
    assert len(boxes_lib.filter_boxes(boxes, (1024, 768), threshold=0.5)) == 5
    # LCL's swapped rescale (B10.4): x by 512/768, y by 512/1024.
    swapped = boxes_lib.filter_boxes(boxes[:1], (1024, 768), swap_wh=True)
    np.testing.assert_allclose(swapped, [[200 / 3, 45, 400 / 3, 75, 0.9, 1]], rtol=1e-6)


def test_filter_images_counts_dropped_images():
    boxes = {
        "keeps.jpeg": np.array([[10, 10, 20, 20, 0.9, 0], [10, 10, 20, 20, 0.1, 0]], np.float32),
        "loses.jpeg": np.array([[10, 10, 20, 20, 0.7, 0]], np.float32),
        "empty.jpeg": np.zeros((0, 6), np.float32),
    }
    sizes = dict.fromkeys(boxes, (512, 512))
    kept, dropped = boxes_lib.filter_images(boxes, sizes, threshold=0.8)
    assert list(kept) == ["keeps.jpeg"] and dropped == 2
    np.testing.assert_array_equal(kept["keeps.jpeg"], boxes["keeps.jpeg"][:1])
    with pytest.raises(ValueError, match="no image size for 'empty.jpeg'"):
        boxes_lib.filter_images(boxes, {"keeps.jpeg": (512, 512), "loses.jpeg": (512, 512)})


# ---------------------------------------------------------------------------------------------
# Boxes of a tfds dataset
# ---------------------------------------------------------------------------------------------


def _build_boxes_dataset(data_dir: pathlib.Path) -> str:
    """A two-example tfds dataset with the `idrid` builder's box features, without TensorFlow."""
    import io

    import tensorflow_datasets as tfds

    def png() -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out, format="PNG")
        return out.getvalue()

    class LesionBoxesTest(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                        "id": tfds.features.Text(),
                        "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                        "box_classes": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield (
                0,
                {
                    "image": png(),
                    "id": "IDRiD_01",
                    "boxes": np.array([[-1, -1, 3, 4], [2.5, 3, 7, 8]], np.float32),
                    "box_classes": np.array([0, 2]),
                },
            )
            yield (
                1,
                {
                    "image": png(),
                    "id": "IDRiD_02",
                    "boxes": np.zeros((0, 4), np.float32),
                    "box_classes": np.zeros((0,), np.int64),
                },
            )

    builder = LesionBoxesTest(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder.name


def test_boxes_from_tfds(tmp_path):
    name = _build_boxes_dataset(tmp_path / "tfds")
    found = boxes_lib.boxes_from_tfds(name, "train", tmp_path / "tfds")
    # The -1 of a mask touching the top-left corner is clipped to the image.
    assert_same(found, {"IDRiD_01": [[0, 0, 3, 4, 1, 0], [2.5, 3, 7, 8, 1, 2]], "IDRiD_02": []})
    result = run_cli(
        "from-tfds",
        f"--name={name}",
        "--split=train",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--out={tmp_path / 'idrid.csv'}",
    )
    assert result.returncode == 0, result.stderr
    assert_same(boxes_lib.read_boxes(tmp_path / "idrid.csv"), found)


def test_boxes_from_tfds_not_prepared(tmp_path):
    from jaxad.data.tfds_source import DatasetNotPreparedError

    with pytest.raises(DatasetNotPreparedError, match="not prepared"):
        boxes_lib.boxes_from_tfds("idrid/segmentation", "train", tmp_path)


def test_importing_jaxad_lesions_does_not_load_tfds():
    code = (
        "import sys, jaxad.lesions, jaxad.lesions.__main__\n"
        "print(*(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_import_pickle_and_filter(tmp_path):
    pkl = _dump(tmp_path / "released.pkl", RELEASED)
    out = tmp_path / "train.json"
    result = run_cli("import-pickle", f"--pickle={pkl}", f"--out={out}", "--split=train")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 boxes for 1 images" in result.stdout
    assert list(boxes_lib.read_boxes(out)) == ["10_left.jpeg"]

    # The raw detection output filtered at import, with the sizes its boxes carry.
    raw = _dump(tmp_path / "raw.pkl", RAW)
    result = run_cli(
        "import-pickle", f"--pickle={raw}", f"--out={tmp_path / 'raw.csv'}", "--threshold=0.8"
    )
    assert result.returncode == 0, result.stderr
    kept = boxes_lib.read_boxes(tmp_path / "raw.csv")
    np.testing.assert_allclose(  # 800 x 600 photo: x * 512/800, y * 512/600.
        kept["21_left.jpeg"], [[6.4, 17.066666, 70.4, 76.8, 0.95, 1]], rtol=1e-6
    )

    # filter, sizes read from the photos: a 1024 x 768 photo and a 512 x 512 one.
    photos = tmp_path / "photos"
    (photos / "train" / "2").mkdir(parents=True)
    Image.new("RGB", (1024, 768)).save(photos / "train" / "2" / "a.png")
    Image.new("RGB", (512, 512)).save(photos / "b.png")
    boxes_lib.write_boxes(
        tmp_path / "in.json",
        {
            "train/2/a.png": [[100, 90, 200, 150, 0.9, 1], [100, 90, 200, 150, 0.5, 1]],
            "b.png": [[1, 1, 20, 20, 0.99, 2]],  # Too close to the edge: b.png is dropped.
        },
    )
    result = run_cli(
        "filter",
        f"--boxes={tmp_path / 'in.json'}",
        f"--out={tmp_path / 'kept.json'}",
        f"--folder={photos}",
    )
    assert result.returncode == 0, result.stderr
    assert "kept 1 of 3 boxes in 1 images; dropped 1 images" in result.stdout
    assert_same(
        boxes_lib.read_boxes(tmp_path / "kept.json"),
        {"train/2/a.png": [[50, 60, 100, 100, 0.9, 1]]},
    )

    result = run_cli(
        "filter",
        f"--boxes={tmp_path / 'in.json'}",
        f"--out={tmp_path / 'kept512.csv'}",
        "--sizes=512",
        "--threshold=0.4",
    )
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 3 boxes" in result.stdout


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    target = tmp_path / "pwned"
    evil = _dump(tmp_path / "evil.pkl", {"train": {"a": [_Payload(target)]}})
    out = tmp_path / "out.json"
    result = run_cli("import-pickle", f"--pickle={evil}", f"--out={out}")
    assert_one_line_error(result, "import-pickle: error:", str(evil), "system")
    assert not target.exists() and not out.exists()

    bad = tmp_path / "bad.json"
    bad.write_text(_json([[5, 2, 3, 4, 0.9, 0]]))
    result = run_cli("filter", f"--boxes={bad}", f"--out={out}", "--sizes=512")
    assert_one_line_error(result, "filter: error:", str(bad), "'a.png'", "x2 <= x1")

    result = run_cli("filter", f"--boxes={tmp_path / 'missing.json'}", f"--out={out}", "--sizes=9")
    assert_one_line_error(result, "does not exist")

    result = run_cli("filter", f"--boxes={bad}", f"--out={out}")  # Neither --folder nor --sizes.
    assert_one_line_error(result, "one of the arguments --folder --sizes is required")

    result = run_cli(
        "import-pickle",
        f"--pickle={_dump(tmp_path / 'rel.pkl', RELEASED)}",
        f"--out={out}",
        "--threshold=0.8",
    )
    assert_one_line_error(result, "--threshold needs the photo sizes")
    assert not out.exists()
