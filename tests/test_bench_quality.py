"""`python -m jaxad.bench quality`: cell configs, the table, resuming, errors, end to end."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_bench_script
from PIL import Image

from jaxad import methods
from jaxad.bench import quality


def _folder(root: pathlib.Path, size: int = 48, rgb: bool = False) -> pathlib.Path:
    """A small MVTec-layout folder unlike the demos: smooth noise, dark discs as anomalies."""
    rng = np.random.default_rng(3)

    def image() -> np.ndarray:
        x = rng.normal(0.5, 0.05, (size // 4, size // 4))
        x = np.kron(x, np.ones((4, 4)))
        return np.clip(x + rng.normal(0, 0.01, (size, size)), 0, 1)

    def save(path: pathlib.Path, a: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        a = np.round(a * 255).astype(np.uint8)
        Image.fromarray(np.stack([a] * 3, -1) if rgb else a).save(path)

    for i in range(12):
        save(root / "train" / "good" / f"{i:02d}.png", image())
    for i in range(4):
        save(root / "test" / "good" / f"{i:02d}.png", image())
        x, mask = image(), np.zeros((size, size), bool)
        yy, xx = np.mgrid[:size, :size]
        mask[(yy - 20 - i) ** 2 + (xx - 24) ** 2 < 36] = True
        x[mask] = 0.1
        save(root / "test" / "disc" / f"{i:02d}.png", x)
        save(root / "ground_truth" / "disc" / f"{i:02d}_mask.png", mask.astype(float))
    return root


@pytest.mark.parametrize("method", quality.METHODS)
@pytest.mark.parametrize("dataset", quality.DEMO_DATASETS)
def test_cell_config_shares_the_budget_and_builds(method, dataset):
    ds = quality.DEMOS[dataset]
    c = quality.cell_config(method, ds, seed=2, steps=40)
    assert (c.batch_size, c.total_steps, c.seed) == (quality.BATCH, 40, 2)
    assert c.data.image_size == ds.size and c.data.name == "folder"
    assert c.data.channels == (1 if method in quality.GREY_ONLY else ds.channels)
    assert len(c.data.mean) == len(c.data.std) == c.data.channels
    assert list(c.evals) == ["model"] and not c.evals.model.full_resolution
    # The plain row: the method's own map and image score, whatever its demo config scores.
    assert (c.evals.model.smooth_sigma, c.evals.model.image_score) == (0.0, "method")
    if method == "picard":
        assert (c.picard.window_size, c.data.crop_size) == (ds.size // 2, ds.size // 2)
    if method == "lesion2void":
        assert c.l2v.grid == 3 * ds.size // 16
    methods.create(c)  # the adapted settings are ones the method accepts


def test_user_datasets(tmp_path):
    grey = quality.user_dataset("folder", str(_folder(tmp_path / "g")), 32, 0)
    rgb = quality.user_dataset("folder", str(_folder(tmp_path / "c", rgb=True)), 32, 0)
    assert (grey.name, grey.channels, rgb.channels) == ("g", 1, 3)
    assert grey.data == {"name": "folder", "root": str((tmp_path / "g").resolve())}
    built = quality.user_dataset("tfds", "eyeq/good", 64, 3)
    assert (built.name, built.data) == ("eyeq_good", {"name": "eyeq", "tfds_name": "eyeq/good"})
    c = quality.cell_config("morphaeus", built, seed=0, steps=4)
    assert (c.data.name, c.data.tfds_name, c.data.channels) == ("eyeq", "eyeq/good", 1)


def test_baseline_cell_runs_both_baselines():
    c = quality.cell_config(quality.BASELINES, quality.DEMOS["fundus"], seed=0, steps=1)
    assert sorted(e.type for e in c.evals.values()) == ["mean_image", "zscore"]
    assert c.data.fov == "eyeq" and c.data.mean == quality.DEMOS["fundus"].mean


def test_summary_and_markdown():
    cells = {
        "d": {
            "m": [
                {"image_auroc": 0.6, "train_sec": 10.0, "pixel_auroc": None},
                {"image_auroc": 0.8, "train_sec": 14.0, "pixel_auroc": None},
            ]
        }
    }
    table = quality.summarise(cells)
    stat = table["d"]["m"]["image_auroc"]
    assert stat["mean"] == pytest.approx(0.7) and stat["n"] == 2
    assert stat["std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert table["d"]["m"]["pixel_auroc"] is None
    md = quality.markdown(table, "header")
    rows = [line for line in md.splitlines() if line.startswith("| d |")]
    assert rows == [
        "| d | m | 0.700 ± 0.141 | - | - | - | - | - | 12 ± 3 | - |",
    ]


def test_resized_copy_and_brain_slices(tmp_path):
    src = _folder(tmp_path / "src", size=48)
    quality._resized_copy(src, tmp_path / "dst", 32, limit=2)
    files = list((tmp_path / "dst").rglob("*.png"))
    assert len(files) == 2 + 2 + 2 + 2  # train/good, test/good, test/disc, their masks
    mask = np.asarray(Image.open(tmp_path / "dst/ground_truth/disc/00_mask.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    quality._brain_slices(tmp_path / "brain", 32, limit=1)
    anomalous = sorted((tmp_path / "brain/test/anomaly").glob("*.png"))
    assert anomalous and (tmp_path / "brain/test/good").is_dir()
    for f in anomalous:
        m = np.asarray(Image.open(tmp_path / "brain/ground_truth/anomaly" / f"{f.stem}_mask.png"))
        assert m.any()


def test_finished_cells_are_kept_not_rerun(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "mine")
    out = tmp_path / "out"
    rows = {"lesion2void": ("lesion2void", 0), "baselines": ("baselines", 0)}
    for method, seed in rows.values():
        wd = out / "runs" / "mine" / method / f"seed{seed}"
        wd.mkdir(parents=True)
        result = {"image_auroc": 0.9, "train_sec": 1.0}
        body = {method: result}
        if method == "baselines":
            body = {"mean_image": result, "zscore": result}
        (wd / quality.RESULT).write_text(json.dumps(body))

    def no_run(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(quality.subprocess, "run", no_run)
    flags = ["--datasets=", "--folder", str(folder), "--methods=lesion2void", "--seeds=1"]
    code = quality.main(["--out", str(out), *flags, "--quick"])
    assert code == 0
    report = json.loads((out / "quality.json").read_text())
    assert set(report["table"]["mine"]) == {"mean_image", "zscore", "lesion2void"}
    assert "| mine | lesion2void | 0.900 |" in (out / "quality.md").read_text()

    # A finished cell recorded with other settings is not mixed into the table.
    ds = quality.user_dataset("folder", str(folder), 64, 0)
    for method, seed in rows.values():
        spec = {"dataset": dataclasses.asdict(ds), "steps": 2}
        (out / "runs" / "mine" / method / f"seed{seed}" / "cell.json").write_text(json.dumps(spec))
    assert quality.main(["--out", str(out), *flags, "--quick"]) == 0  # the same settings
    for other in ("--fov=eyeq", "--image_size=32"):
        assert quality.main(["--out", str(out), *flags, "--quick", other]) == 1
        report = json.loads((out / "quality.json").read_text())
        assert not report["table"] and len(report["failed"]) == 2
    # And another budget (steps; --quick trains 2).
    spec["steps"] = 200
    (out / "runs" / "mine" / "lesion2void" / "seed0" / "cell.json").write_text(json.dumps(spec))
    assert quality.main(["--out", str(out), *flags, "--quick"]) == 1


def test_fov_flag_sets_the_folder_field_of_view(tmp_path):
    folder = str(_folder(tmp_path / "f", rgb=True))
    assert "fov" not in quality.user_dataset("folder", folder, 32, 0).data
    ds = quality.user_dataset("folder", folder, 32, 0, fov="eyeq")
    assert ds.data["fov"] == "eyeq"
    for method in (quality.BASELINES, "lesion2void"):
        assert quality.cell_config(method, ds, seed=0, steps=1).data.fov == "eyeq"


def test_a_new_postprocess_row_reevaluates_only_that(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "mine")
    out = tmp_path / "out"
    for method in ("lesion2void", "baselines"):
        wd = out / "runs" / "mine" / method / "seed0"
        wd.mkdir(parents=True)
        row = {"image_auroc": 0.9, "train_sec": 1.0}
        body = {"mean_image": row, "zscore": row} if method == "baselines" else {method: row}
        (wd / quality.RESULT).write_text(json.dumps(body))
    specs = []

    def fake_run(cmd, **kwargs):
        spec = json.loads(pathlib.Path(cmd[cmd.index("--_cell") + 1]).read_text())
        specs.append(spec)
        name = quality.row_name(spec["method"], spec["postprocess"][0])
        result = {**spec["previous"], name: {"image_auroc": 0.95, "train_sec": 1.0}}
        pathlib.Path(spec["workdir"], quality.RESULT).write_text(json.dumps(result))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(quality.subprocess, "run", fake_run)
    flags = ["--datasets=", "--folder", str(folder), "--methods=lesion2void", "--seeds=1"]
    assert quality.main(["--out", str(out), *flags, "--postprocess=2:max", "--quick"]) == 0
    assert [s["method"] for s in specs] == ["lesion2void"]  # the baselines were kept
    assert specs[0]["previous"] == {"lesion2void": {"image_auroc": 0.9, "train_sec": 1.0}}
    assert specs[0]["postprocess"] == [[2.0, "max"]]
    table = json.loads((out / "quality.json").read_text())["table"]["mine"]
    assert table["lesion2void (σ 2, max)"]["image_auroc"]["mean"] == 0.95
    assert table["lesion2void"]["image_auroc"]["mean"] == 0.9


def test_postprocess_flag():
    assert quality.parse_postprocess(["2:max", "0.5:topk_mean", "1", "1:max:normal"]) == [
        (2.0, "max"),
        (0.5, "topk_mean"),
        (1.0, "method"),
        (1.0, "max", "normal"),
    ]
    assert quality.row_name("picard", (2.0, "max")) == "picard (σ 2, max)"
    assert quality.row_name("picard", [1.0, "max", "normal"]) == "picard (σ 1, max, normal)"
    with pytest.raises(ValueError, match="--postprocess=x:max"):
        quality.parse_postprocess(["x:max"])
    with pytest.raises(ValueError, match="--postprocess=1:max:zscore: the third part"):
        quality.parse_postprocess(["1:max:zscore"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods=lesion2void,cflow"], "unknown cflow"),
        (["--datasets=fundus,retina"], "unknown 'retina'"),
        (["--datasets=", "--folder=/nonexistent/x"], "not an MVTec-layout folder"),
        (["--datasets="], "no dataset"),
        (["--folder=FOLDER/fundus"], "its name 'fundus' is a built-in dataset's"),
        (["--datasets=", "--folder=FOLDER/x", "--folder=FOLDER/y/x"], "another dataset's"),
        (["--datasets=fundus", "--fov=eyeq"], "--fov=eyeq: applies to --folder datasets only"),
        (["--datasets=", "--tfds=eyeq/64", "--fov=eyeq"], "--fov=eyeq: applies to --folder"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, flags, message):
    for flag in flags:  # FOLDER/<path>: a real folder, made here
        if "FOLDER/" in flag:
            _folder(tmp_path / "in" / flag.split("FOLDER/")[1], size=32)
    flags = [f.replace("FOLDER", str(tmp_path / "in")) for f in flags]
    assert quality.main(["--out", str(tmp_path / "out"), *flags]) == quality.EXIT_USAGE
    assert not (tmp_path / "out" / "data").exists()  # checked before any dataset is made
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _l2v_components():
    return load_bench_script("l2v_components")


def test_l2v_components_bad_arguments_are_one_line_errors(tmp_path, capsys):
    components = _l2v_components()
    out = f"--out={tmp_path / 'c.json'}"
    assert components.main([f"--cells={tmp_path}", out]) == 2
    assert "has no finished seed<k> cell" in capsys.readouterr().err
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "result.json").write_text("{}")
    assert components.main([f"--cells={tmp_path}", out, "--drop=1,-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--drop=1,-2: integers >= 0" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_quality_end_to_end_on_a_folder(tmp_path):
    """Two methods, two seeds, both baselines on a small folder; a rerun runs nothing again."""
    folder = _folder(tmp_path / "discs", size=64)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jaxad.bench", "quality", f"--out={out}", "--datasets="]
    cmd += [f"--folder={folder}", "--methods=lesion2void,morphaeus", "--seeds=2", "--quick"]
    cmd += ["--postprocess=1:max:normal"]  # normalised by the validation normals
    first = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    first_result = (out / "runs" / "discs" / "lesion2void" / "seed0" / "result.json").read_text()
    report = json.loads((out / "quality.json").read_text())
    assert report["budget"]["images_seen"] == 2 * quality.BATCH
    table = report["table"]["discs"]
    posts = {"lesion2void (σ 1, max, normal)", "morphaeus (σ 1, max, normal)"}
    assert set(table) == {"mean_image", "zscore", "lesion2void", "morphaeus", *posts}
    for row in posts:
        assert table[row]["image_auroc"]["n"] == 2 and table[row]["pixel_auroc"]["n"] == 2
    for row in ("lesion2void", "morphaeus"):
        for key in ("image_auroc", "pixel_auroc", "best_dice", "fpr_at_tpr95", "train_sec"):
            assert table[row][key]["n"] == 2, (row, key)
            assert np.isfinite(table[row][key]["mean"])
        assert 0 <= table[row]["image_auroc"]["mean"] <= 1
        assert table[row]["score_images_per_sec"]["mean"] > 0
    # The disc is far darker than anything normal: the intensity z-score finds it.
    assert table["zscore"]["pixel_auroc"]["mean"] > 0.9
    md = (out / "quality.md").read_text()
    assert sum(line.startswith("| discs |") for line in md.splitlines()) == 6
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "running" not in again.stderr
    assert again.stderr.count("done before, kept") == 5
    # Lesion2Void's original score at other component ranks, on the same trained cells.
    components = _l2v_components()
    cells = out / "runs" / "discs" / "lesion2void"
    assert components.main([f"--cells={cells}", f"--out={tmp_path / 'c.json'}", "--drop=0,1"]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    for drop in ("0", "1"):
        assert set(result["by_drop"][drop]["cells"]) == {"seed0", "seed1"}
        image = result["by_drop"][drop]["summary"]["image_auroc"]
        assert 0 <= image["mean"] <= 1 and np.isfinite(image["std"])
    assert (cells / "seed0" / "result.json").read_text() == first_result  # cells untouched
