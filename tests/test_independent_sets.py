"""bench/independent_sets.py: layout, determinism, lesions inside their masks, normal variation,
the nibabel fallback of the brain set and the command line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_bench_script
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "independent_sets.py"
ind = load_bench_script("independent_sets")
SIZE = 64


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    """Every set at 64 px, two images per folder; the brain from nibabel (the quick source)."""
    root = tmp_path_factory.mktemp("indep")
    for name in ind.SETS:
        ind.make_set(name, root, size=SIZE, n_train=2, n_test_good=2, n_test_anomalous=8,
                     seed=0, brain_source="nibabel")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def contexts() -> dict:
    return {n: ind.SPECS[n].load(SIZE, brain_source="nibabel") for n in ind.SETS}


def _normal(name: str, ctx: dict, *key: int):
    return ind.SPECS[name].normal(np.random.default_rng(key), ctx[name])


@pytest.mark.parametrize("name", ind.SETS)
def test_layout(sets, name):
    root, mode = sets / ind.folder(name), "RGB" if name == "fundus" else "L"
    meta = json.loads((root / "generator.json").read_text())
    assert (meta["set"], meta["size"], meta["seed"]) == (name, SIZE, 0)
    assert meta["version"] == ind.VERSION
    types = sorted(p.name for p in (root / "test").iterdir() if p.name != "good")
    assert len(types) >= 3 and set(types) == set(ind.SPECS[name].types)
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == types
    for sub in ["train/good", "test/good", *(f"test/{t}" for t in types)]:
        files = sorted((root / sub).glob("*.png"))
        assert [f.name for f in files] == ["000.png", "001.png"] and meta["counts"][sub] == 2
        for f in files:
            img = Image.open(f)
            assert img.mode == mode and img.size == (SIZE, SIZE)
            if sub.endswith("good"):
                continue
            mask = np.asarray(
                Image.open(root / "ground_truth" / f.parent.name / f"{f.stem}_mask.png")
            )
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
            assert 0 < (mask > 0).sum() < 0.5 * mask.size, f
    assert not [p.name for p in sets.iterdir() if p.name.startswith(".")]  # no temp folders


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(size=48, n_train=1, n_test_good=1, n_test_anomalous=4)
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        ind.make_set("dbt", tmp_path / out, seed=seed, **kw)
    read = lambda out: (tmp_path / out / "dbt_indep/test/calcifications/000.png").read_bytes()
    assert read("a") == read("b") and read("a") != read("c")
    mask = lambda out: (
        tmp_path / out / "dbt_indep/ground_truth/calcifications/000_mask.png"
    ).read_bytes()
    assert mask("a") == mask("b")


@pytest.mark.parametrize("name", ind.SETS)
def test_normals_vary_and_are_deterministic(contexts, name):
    a, b = (_normal(name, contexts, 0, k).image() for k in (1, 2))
    assert np.array_equal(a, _normal(name, contexts, 0, 1).image())
    assert np.abs(a - b).mean() > 0.02, name
    assert 0.05 < a.mean() < 0.9 and a.max() > 0.5  # neither black nor white


@pytest.mark.parametrize("name", ind.SETS)
def test_lesions_change_the_image_inside_their_mask(contexts, name):
    spec = ind.SPECS[name]
    for kind in spec.types:
        for k in range(3):
            rng = np.random.default_rng([7, k])
            sample = spec.normal(rng, contexts[name])
            image, mask = spec.anomalous(rng, sample, kind)
            diff = np.abs(image - sample.image())
            diff = diff.mean(-1) if diff.ndim == 3 else diff
            inside, outside = diff[mask].mean(), diff[~mask].mean()
            assert inside > 0.015 and inside > 5 * outside, (kind, k, inside, outside)
            # lesions stay in the anatomy: a chest's lungs; else the only non-black pixels
            if name == "cxr":  # (the fundus FOV, the breast, the head)
                where = np.logical_or(*sample.aux["lungs"])
            else:
                where = (image.max(-1) if image.ndim == 3 else image) > 0
            assert where[mask].mean() > 0.95, (kind, k)


def test_brain_nibabel_fallback_when_nilearn_is_missing(monkeypatch, capsys, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        ind.importlib.util, "find_spec", lambda n, *a: None if n == "nilearn" else find_spec(n, *a)
    )
    assert ind.resolve_brain_source("auto") == "nibabel"
    with pytest.raises(ValueError, match="nilearn"):
        ind.resolve_brain_source("mni152")
    with pytest.raises(SystemExit) as e:
        ind.main([f"--out={tmp_path}", "--sets=brain", "--brain_source=mni152"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    counts = ind.make_set("brain", tmp_path, size=48, n_train=1, n_test_good=1,
                          n_test_anomalous=4, seed=0)  # fmt: skip
    meta = json.loads((tmp_path / "brain_indep/generator.json").read_text())
    assert meta["source"] == "nibabel" and meta["counts"] == counts and len(counts) == 6


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_cli_writes_skips_and_refuses(tmp_path):
    args = (f"--out={tmp_path}", "--sets=dbt", "--size=48", "--n_train=2", "--n_test_good=1",
            "--n_test_anomalous=2")  # fmt: skip
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    meta = json.loads((tmp_path / "dbt_indep/generator.json").read_text())
    assert meta["counts"]["train/good"] == 2 and sum(meta["counts"].values()) == 5
    png = tmp_path / "dbt_indep/train/good/000.png"
    stamp = png.stat().st_mtime_ns
    again = _cli(*args)
    assert again.returncode == 0 and "skipped" in again.stdout and png.stat().st_mtime_ns == stamp
    bad = _cli(f"--out={tmp_path}", "--sets=dbt,retina")
    assert bad.returncode == 2 and "retina" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert _cli(f"--out={tmp_path}", "--size=16").returncode == 2
    other = _cli(*args, "--seed=1")  # the folder holds another set: kept without --force
    assert other.returncode == 2 and "--force" in other.stderr and png.stat().st_mtime_ns == stamp
    forced = _cli(*args, "--seed=1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "dbt_indep/generator.json").read_text())["seed"] == 1
    # Two sets: the complete one skipped, the new one made, each line naming its own folder.
    both = _cli(*[a.replace("--sets=dbt", "--sets=dbt,cxr") for a in args], "--seed=1")
    lines = both.stdout.strip().splitlines()
    assert both.returncode == 0 and len(lines) == 2, both.stderr
    assert "dbt_indep: skipped" in lines[0] and "cxr_indep: " in lines[1]
    assert "skipped" not in lines[1]
