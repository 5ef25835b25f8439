"""Tests for jaxad.mood.metric and the `python -m jaxad.mood` command line.

Expected values come from scikit-learn's average_precision_score on arrays built directly from
what the tests wrote, following the organisers' script step by step.
"""

import json
import pathlib
import sys
import types

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from jaxad.metrics import Float16Histogram
from jaxad.mood import __main__ as cli
from jaxad.mood import metric

SHAPE = (6, 7, 8)


def _save(path: pathlib.Path, data: np.ndarray) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _official_label(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x).astype(np.int64), 0, 1) == 1


def _official_pred(x: np.ndarray) -> np.ndarray:
    """float32/float64 data without scaling: one rounding to float16, then the clip."""
    with np.errstate(over="ignore"):
        return np.clip(x.astype(np.float16), 0, 1)


def _pixel_folders(tmp_path: pathlib.Path, seed: int = 0):
    """Five cases: ties, values outside [0, 1], a missing, a wrong-shape, a 2-D and a broken file.

    Returns (pred_dir, label_dir, expected labels per case, expected scores per case).
    """
    rng = np.random.default_rng(seed)
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "label"
    labels, scores = {}, {}
    for i in range(7):
        name = f"case_{i}.nii.gz"
        # Float labels exercise rint (half to even) and the clip: 1.5 -> 2 -> 1, 0.5 -> 0, -1 -> 0.
        lab = rng.choice(
            [0.0, 0.4, 0.5, 0.6, 1.0, 1.4, 1.5, 2.0, -1.0], size=SHAPE, p=[0.5] + [1 / 16] * 8
        )
        lab = lab.astype(np.float32)
        if i == 6:
            lab[:] = 0  # A case without anomalous voxels.
        _save(label_dir / name, lab)
        labels[name] = _official_label(lab)
        # Scores with many ties (quantised), some outside [0, 1] and beyond float16's range.
        pred = np.round(rng.normal(0.4, 0.5, size=SHAPE), 2).astype(np.float32)
        pred += 0.3 * labels[name]
        pred.flat[:3] = [7e4, -7e4, 3e-8]
        expected = _official_pred(pred)
        if i == 1:
            continue  # Missing prediction: zeros.
        if i == 2:
            _save(pred_dir / name, pred[:, :, :-1])  # Wrong shape: zeros.
            expected = np.zeros(SHAPE)
        elif i == 3:
            _save(pred_dir / name, pred[:, :, 0])  # 2-D: zeros.
            expected = np.zeros(SHAPE)
        elif i == 4:
            (pred_dir / name).write_bytes(b"not a nifti file")  # Unreadable: zeros.
            expected = np.zeros(SHAPE)
        elif i == 5:
            _save(pred_dir / name, pred.astype(np.float64))  # float64 on disk.
            expected = _official_pred(pred.astype(np.float64))
        else:
            _save(pred_dir / name, pred)
        scores[name] = expected
    for name in labels:
        scores.setdefault(name, np.zeros(SHAPE))
    return pred_dir, label_dir, labels, scores


def _pooled_ap(labels: dict, scores: dict) -> float:
    names = sorted(labels)
    y = np.concatenate([labels[n].ravel() for n in names])
    s = np.concatenate([np.asarray(scores[n], np.float64).ravel() for n in names])
    return float(average_precision_score(y, s))


def test_pixel_ap_equals_sklearn_on_pooled_voxels(tmp_path, monkeypatch):
    monkeypatch.setattr(metric, "_CHUNK", 50)  # Several histogram updates per case.
    pred_dir, label_dir, labels, scores = _pixel_folders(tmp_path)
    (label_dir / "README.txt").write_text("not a label")
    summary = metric.evaluate(pred_dir, label_dir)
    assert summary["ap_pooled"] == pytest.approx(_pooled_ap(labels, scores), rel=1e-12)
    assert summary["score"] == summary["ap_pooled"] and summary["mode"] == "pooled"
    status = {c["name"]: c["prediction"] for c in summary["cases"]}
    assert status["case_0.nii.gz"] == "ok" and status["case_1.nii.gz"] == "missing"
    assert status["case_2.nii.gz"].startswith("shape") and status["case_3.nii.gz"].startswith(
        "shape"
    )
    assert status["case_4.nii.gz"].startswith("unreadable")
    assert summary["n_cases"] == 7 and summary["n_missing"] == 1 and summary["n_invalid"] == 3
    assert summary["ignored"] == ["README.txt"]
    # Per-case APs: scikit-learn per case, mean over the cases with anomalous voxels.
    case_aps = {
        n: float(average_precision_score(labels[n].ravel(), np.asarray(scores[n]).ravel()))
        for n in labels
        if labels[n].any()
    }
    for c in summary["cases"]:
        if c["name"] in case_aps:
            assert c["ap"] == pytest.approx(case_aps[c["name"]], rel=1e-12)
        else:
            assert c["ap"] is None and c["positives"] == 0
    assert summary["n_cases_with_positives"] == len(case_aps) == 6
    assert summary["ap_cases_mean"] == pytest.approx(np.mean(list(case_aps.values())), rel=1e-12)
    cases = metric.evaluate(pred_dir, label_dir, mode="cases")
    assert cases["score"] == pytest.approx(summary["ap_cases_mean"])


def test_prediction_float16_semantics(tmp_path):
    values = np.array([0.1, 1 / 3, 0.99951, 65519.0, 65520.0, -1e5, 1e-8, 3e-5, 0.5], np.float32)
    path = _save(tmp_path / "p.nii.gz", values.reshape(1, 3, 3))
    scores, status = metric.read_prediction(path, (1, 3, 3))
    assert status == "ok" and scores.dtype == np.float16
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).reshape(1, 3, 3)
    np.testing.assert_array_equal(scores, expected)  # One rounding, inf beyond 65519.
    assert np.isinf(scores.ravel()[4]) and scores.ravel()[6] == 0 and scores.ravel()[7] > 0
    # float64 data are rounded to float16 directly: via float32 this value would be a tie that
    # rounds down to 0.5.
    tricky = np.array([0.5 + 2.0**-12 + 2.0**-41], np.float64).reshape(1, 1, 1)
    path = _save(tmp_path / "f64.nii.gz", tricky)
    scores, _ = metric.read_prediction(path, (1, 1, 1))
    assert scores.item() == 0.5 + 2.0**-11 != tricky.astype(np.float32).astype(np.float16).item()
    # Scaled integers: x * slope + inter, then float16.
    img = nib.Nifti1Image(np.arange(27, dtype=np.int16).reshape(3, 3, 3), np.eye(4))
    img.header.set_slope_inter(0.25, -1.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    assert nib.load(str(path)).dataobj.slope == 0.25  # The file is really scaled.
    scores, _ = metric.read_prediction(path, (3, 3, 3))
    np.testing.assert_array_equal(
        scores, (np.arange(27).reshape(3, 3, 3) * 0.25 - 1).astype(np.float16)
    )


def test_average_precision_matches_sklearn_when_a_class_is_absent():
    rng = np.random.default_rng(1)
    s = rng.random(50).astype(np.float16)
    for y in (np.zeros(50, bool), np.ones(50, bool)):
        hist = Float16Histogram().update(s, y)
        with pytest.warns(UserWarning) if not y.any() else _no_warning():
            expected = average_precision_score(y, s)
        assert metric.average_precision(hist) == expected


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_missing_prediction_counts_as_zeros(tmp_path):
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 2, 3] = lab[4, 5, 6] = 1
    _save(tmp_path / "label" / "a.nii.gz", lab)
    (tmp_path / "pred").mkdir()
    summary = metric.evaluate(tmp_path / "pred", tmp_path / "label")
    # All scores tied at 0: one threshold, precision = prevalence.
    assert summary["ap_pooled"] == pytest.approx(2 / lab.size)
    assert summary["ap_pooled"] == pytest.approx(
        average_precision_score(lab.ravel(), np.zeros(lab.size))
    )


def test_sample_ap_equals_sklearn(tmp_path):
    label_dir, pred_dir = tmp_path / "toy_label" / "sample", tmp_path / "pred"
    label_dir.mkdir(parents=True)
    pred_dir.mkdir()
    cases = {  # name: (label text, prediction text or None, expected score)
        "a.nii.gz.txt": ("1\n", "0.7\n", 0.7),
        "b.nii.gz.txt": (" 0 \n", "0.3\n0.99\n", 0.3),  # Only the first line counts.
        "c.nii.gz.txt": ("1", "3.5", 1.0),  # Clipped.
        "d.nii.gz.txt": ("0\nignored", "-2", 0.0),
        "e.nii.gz.txt": ("1\n", None, 0.0),  # Missing.
        "f.nii.gz.txt": ("0\n", "abc", 0.0),  # Unreadable.
        "g.nii.gz.txt": ("0\n", "inf", 1.0),
        "h.nii.gz.txt": ("1\n", "0.3", 0.3),  # A tie with b.
    }
    for name, (lab, pred, _) in cases.items():
        (label_dir / name).write_text(lab)
        if pred is not None:
            (pred_dir / name).write_text(pred)
    y = [int(v[0].split()[0]) for v in cases.values()]
    s = [v[2] for v in cases.values()]
    # The organisers' toy_label folder itself is accepted: its sample/ subfolder is used.
    summary = metric.evaluate(pred_dir, tmp_path / "toy_label", task="sample")
    assert summary["score"] == pytest.approx(average_precision_score(y, s), rel=1e-12)
    assert [c["score"] for c in summary["cases"]] == s
    assert summary["n_missing"] == 1 and summary["n_invalid"] == 1
    with pytest.raises(ValueError, match="needs the pixel task"):
        metric.evaluate(pred_dir, label_dir, task="sample", mode="cases")
    (label_dir / "z.nii.gz.txt").write_text("2\n")
    with pytest.raises(metric.LabelError, match="z.nii.gz.txt"):
        metric.evaluate(pred_dir, label_dir, task="sample")
    (pred_dir / "e.nii.gz.txt").write_text("nan")
    (label_dir / "z.nii.gz.txt").unlink()
    with pytest.raises(ValueError, match="e.nii.gz.txt is NaN"):
        metric.evaluate(pred_dir, label_dir, task="sample")


def test_bad_label_folders(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no NIfTI"):
        metric.evaluate(pred, empty)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no NIfTI"):
        metric.evaluate(pred, empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        metric.evaluate(pred, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="prediction folder"):
        metric.evaluate(tmp_path / "nopred", empty)

    labels = tmp_path / "labels"
    good = np.zeros(SHAPE, np.uint8)
    good[0, 0, :2] = 1
    _save(labels / "a.nii.gz", good)
    _save(pred / "a.nii.gz", np.linspace(0, 1, good.size, dtype=np.float32).reshape(SHAPE))
    (labels / "b.nii.gz").write_bytes(b"garbage")
    with pytest.raises(metric.LabelError, match="b.nii.gz"):
        metric.evaluate(pred, labels)
    summary = metric.evaluate(pred, labels, skip_bad_labels=True)
    assert [s["name"] for s in summary["skipped"]] == ["b.nii.gz"]
    expected = average_precision_score(
        good.ravel(), np.linspace(0, 1, good.size).astype(np.float16)
    )
    assert summary["ap_pooled"] == pytest.approx(expected, rel=1e-12)
    (labels / "b.nii.gz").unlink()
    _save(labels / "c.nii.gz", good[0])  # 2-D label.
    with pytest.raises(metric.LabelError, match="not a 3-D volume"):
        metric.evaluate(pred, labels)
    (labels / "c.nii.gz").unlink()
    _save(pred / "a.nii.gz", np.full(SHAPE, np.nan, np.float32))
    with pytest.raises(ValueError, match="a.nii.gz contains NaN"):
        metric.evaluate(pred, labels)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_evaluate_prints_and_writes_json(tmp_path, capsys):
    pred_dir, label_dir, labels, scores = _pixel_folders(tmp_path)
    out = tmp_path / "res" / "summary.json"
    argv = ["evaluate", f"--pred={pred_dir}", f"--label={label_dir}", f"--out={out}"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["score"] == pytest.approx(_pooled_ap(labels, scores), rel=1e-12)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["evaluate", f"--pred={empty}", f"--label={empty}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: no NIfTI" in err
    assert cli.main(["synth", f"--input={tmp_path / 'nope'}", f"--output={tmp_path / 'o'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", f"--pred={empty}"])  # --label missing: argparse's usage error.
    assert e.value.code == 2


def test_cli_predict_calls_inference(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("jaxad.mood.inference")
    fake.predict_folder = lambda *args, **kw: calls.append((args, kw))
    monkeypatch.setitem(sys.modules, "jaxad.mood.inference", fake)
    import jaxad.mood

    monkeypatch.setattr(jaxad.mood, "inference", fake, raising=False)
    runs = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "config.json").write_text("{}")
        runs.append(str(run))
    (tmp_path / "in").mkdir()
    argv = ["predict", "--task=sample", f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'o'}"]
    assert cli.main([*argv, f"--models={','.join(runs)}", "--batch_size=16"]) == 0
    assert calls == [
        (
            (str(tmp_path / "in"), str(tmp_path / "o")),
            {
                "task": "sample",
                "model_dirs": runs,
                "batch_size": 16,
                "min_intensity_sum": "auto",
            },
        )
    ]
    assert cli.main([*argv, f"--models={runs[0]},{tmp_path / 'nope'}"]) == 2
    assert "no config.json" in capsys.readouterr().err and len(calls) == 1
    with pytest.raises(SystemExit):
        cli.main([*argv[:1], "--task=voxel", *argv[2:], f"--models={runs[0]}"])


def test_module_entry_point(tmp_path):
    import subprocess

    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [sys.executable, "-m", "jaxad.mood", "evaluate", f"--pred={empty}", f"--label={empty}"]
    root = pathlib.Path(__file__).resolve().parents[1]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    message = f"error: no NIfTI (.nii.gz, .nii) files in label folder {empty}"
    assert run.stderr.strip().splitlines() == [f"python -m jaxad.mood evaluate: {message}"]
