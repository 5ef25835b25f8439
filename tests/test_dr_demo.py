"""Tests for the DR grading demo (jaxad.data.dr_demo), the graded folder source
(jaxad.data.graded_folder) and label fractions (jaxad.data.splits, jaxad.data.sources)."""

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from configs.common import data_config
from jaxad.data import demo, dr_demo, pipeline, sources, splits
from jaxad.data.graded_folder import GradedFolderSource

SIZE = 128
COUNTS = {"train": 15, "val": 5, "test": 5}


def _read(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _cfg(**kw):
    cfg = data_config()
    cfg.update(dict(image_size=32, num_workers=0, num_threads=1, prefetch=1))
    cfg.update(kw)
    return cfg


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def dr_root(tmp_path_factory) -> pathlib.Path:
    """A tiny demo: 15 train, 5 val, 5 test images at 128 px."""
    root = tmp_path_factory.mktemp("dr") / "dr"
    return dr_demo.generate_dr_demo(root, size=SIZE, counts=COUNTS, seed=0)


def _lesion_rows(root: pathlib.Path) -> list[dict[str, str]]:
    with open(root / "lesions.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------


def test_layout_and_counts(dr_root):
    assert sorted(p.name for p in dr_root.iterdir()) == sorted(
        ["train", "val", "test", "masks", "README.txt", "lesions.csv", demo.MARKER]
    )
    for split, n in COUNTS.items():
        expected = dr_demo.grade_counts(n)
        assert sum(expected) == n
        for grade in range(dr_demo.NUM_GRADES):
            images = sorted(p.name for p in (dr_root / split / str(grade)).iterdir())
            masks = sorted(p.name for p in (dr_root / "masks" / split / str(grade)).iterdir())
            assert len(images) == expected[grade] >= 1, (split, grade)
            assert masks == [name.replace(".png", "_mask.png") for name in images]
        # Ids are unique in a split and do not follow the grades.
        stems = [p.stem for p in (dr_root / split).rglob("*.png")]
        assert sorted(stems) == [f"{i:04d}" for i in range(n)]
    readme = (dr_root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "proliferative" in readme
    rows = _lesion_rows(dr_root)
    assert len(rows) == sum(COUNTS.values())
    assert all((dr_root / row["id"]).is_file() for row in rows)


def test_grade_counts():
    assert dr_demo.grade_counts(200) == (80, 30, 40, 25, 25)
    assert dr_demo.grade_counts(50) == (20, 8, 10, 6, 6)
    assert dr_demo.grade_counts(100) == (40, 15, 20, 13, 12)
    for n in range(5, 40):
        counts = dr_demo.grade_counts(n)
        assert sum(counts) == n and min(counts) >= 1, n
    with pytest.raises(ValueError, match="cannot hold all 5 grades"):
        dr_demo.grade_counts(4)


def test_images_and_masks(dr_root):
    for row in _lesion_rows(dr_root):
        image = _read(dr_root / row["id"])
        mask = _read(dr_demo.mask_path(dr_root, row["id"]))
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
        assert int(row["mask_pixels"]) == int((mask > 0).sum())
        if row["grade"] == "0":
            assert not mask.any(), row["id"]
        else:
            assert mask.any(), row["id"]
            fov = image.max(axis=-1) > 15
            assert fov[mask > 0].mean() > 0.99, row["id"]


def test_lesions_grow_with_grade(dr_root):
    # The law: the mean number of lesions rises with the grade, and each grade has its kinds.
    rng = np.random.default_rng(0)
    draws = {g: [dr_demo.lesion_counts(g, rng) for _ in range(300)] for g in range(5)}
    totals = [np.mean([sum(c.values()) for c in draws[g]]) for g in range(5)]
    assert totals[0] == 0 and all(a < b for a, b in zip(totals, totals[1:], strict=False))
    assert all(c["microaneurysm"] > 0 and sum(c.values()) == c["microaneurysm"] for c in draws[1])
    assert all(c["haemorrhage"] + c["exudate"] > 0 for c in draws[2])
    assert all(c["neovascularisation"] == 0 and c["preretinal"] == 0 for c in draws[3])
    assert all(c["neovascularisation"] > 0 for c in draws[4])
    # The images: lesion area grows with the grade on average.
    area = {g: [] for g in range(5)}
    for row in _lesion_rows(dr_root):
        area[int(row["grade"])].append(int(row["mask_pixels"]))
    mean = [np.mean(area[g]) for g in range(5)]
    assert mean[0] == 0 < mean[1] < mean[2] < min(mean[3], mean[4])


def test_spread_haemorrhages_cover_the_four_quadrants():
    rng = np.random.default_rng(3)
    normal = demo.make_normal_fundus(rng, SIZE)
    img = normal.image.astype(np.float32)
    alpha = np.zeros(img.shape[:2], np.float32)
    dr_demo._spread_haemorrhages(rng, normal, img, alpha, 4)
    yy, xx = np.nonzero(alpha > demo.MASK_THRESHOLD)
    quadrants = set(2 * (yy >= normal.center[0]) + (xx >= normal.center[1]))
    assert quadrants == {0, 1, 2, 3}


def test_deterministic_per_seed(tmp_path):
    kwargs = dict(size=64, counts={"test": 5})
    a = _files(dr_demo.generate_dr_demo(tmp_path / "a", seed=1, **kwargs))
    b = _files(dr_demo.generate_dr_demo(tmp_path / "b", seed=1, **kwargs))
    c = _files(dr_demo.generate_dr_demo(tmp_path / "c", seed=2, **kwargs))
    assert a == b and a != c


def test_generate_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        dr_demo.generate_dr_demo(tmp_path, counts={"validation": 5})
    with pytest.raises(ValueError, match="needs 5 counts"):
        dr_demo.generate_dr_demo(tmp_path, counts={"train": (1, 2, 3)})


def test_ensure_generates_once(monkeypatch, tmp_path):
    calls = []
    original = dr_demo.generate_dr_demo

    def generate(root, *, seed=0):
        calls.append(root)
        return original(root, seed=seed, size=32, counts={"train": 5, "val": 5, "test": 5})

    monkeypatch.setattr(dr_demo, "generate_dr_demo", generate)
    monkeypatch.setenv("JAXAD_DATA_DIR", str(tmp_path))
    root = dr_demo.ensure_dr_demo()
    assert root == tmp_path / "demo" / dr_demo.VERSION and (root / "test" / "4").is_dir()
    assert dr_demo.ensure_dr_demo() == root and len(calls) == 1


# ---------------------------------------------------------------------------------------------
# The graded folder source
# ---------------------------------------------------------------------------------------------


def test_graded_source_reads_the_demo(dr_root):
    src = GradedFolderSource(dr_root, "train")
    assert len(src) == COUNTS["train"]
    grades = src.grades
    assert list(grades) == sorted(grades)  # Record order: (grade, file name).
    for i in range(len(src)):
        rec = src[i]
        grade = int(rec["id"].split("/")[1])
        assert rec["id"].startswith("train/") and rec["id"].endswith(".png")
        assert rec["grade"] == grade == grades[i] and rec["grade"].dtype == np.int32
        assert rec["label"] == int(grade > 0) and rec["label"].dtype == np.int32
        assert rec["image"].shape == (SIZE, SIZE, 3) and rec["image"].dtype == np.uint8
        assert not rec["has_mask"] and not rec["mask"].any() and rec["mask"].dtype == np.uint8
        assert rec["fov"].all()
    assert list(src.labels) == [int(g > 0) for g in grades]
    assert len(GradedFolderSource(dr_root, "validation")) == COUNTS["val"]
    assert len(GradedFolderSource(dr_root, "val")) == COUNTS["val"]
    test = GradedFolderSource(dr_root, "test", channels=1, fov="circle")
    assert test[0]["image"].shape == (SIZE, SIZE, 1) and 0.5 < test[0]["fov"].mean() < 0.95


def test_sources_read_the_graded_folder_and_the_demo(dr_root):
    src = sources.get_source(_cfg(name="graded_folder", root=str(dr_root)), "validation")
    assert isinstance(src, GradedFolderSource) and len(src) == COUNTS["val"]
    # The demo is generated once: a complete folder for the seed is read as it is.
    src = sources.get_source(_cfg(name="demo", demo="dr", root=str(dr_root)), "test")
    assert isinstance(src, GradedFolderSource) and src.root == dr_root
    assert len(src) == COUNTS["test"]
    with pytest.raises(ValueError, match="needs data.root"):
        sources.get_source(_cfg(name="graded_folder", root=""), "train")


def test_validation_folder_aliases(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    _save(tmp_path / "valid" / "3" / "a.jpg", image)
    assert GradedFolderSource(tmp_path, "validation")[0]["id"] == "valid/3/a.jpg"
    _save(tmp_path / "val" / "3" / "a.png", image)
    with pytest.raises(ValueError, match="ambiguous") as e:
        GradedFolderSource(tmp_path, "validation")
    assert str(tmp_path / "valid") in _one_line(e)


def test_bad_layouts_are_one_line_errors(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        GradedFolderSource(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in _one_line(e)
    _save(tmp_path / "train" / "0" / "a.png", image)
    with pytest.raises(FileNotFoundError, match="missing folder") as e:
        GradedFolderSource(tmp_path, "test")
    assert str(tmp_path / "test") in _one_line(e)
    (tmp_path / "test" / "2").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images") as e:
        GradedFolderSource(tmp_path, "test")
    assert str(tmp_path / "test") in _one_line(e)
    for bad in ("5", "mild", "-1"):
        _save(tmp_path / "train" / bad / "b.png", image)
        with pytest.raises(ValueError, match="is not a grade") as e:
            GradedFolderSource(tmp_path, "train")
        assert str(tmp_path / "train" / bad) in _one_line(e)
        (tmp_path / "train" / bad / "b.png").unlink()
        (tmp_path / "train" / bad).rmdir()
    (tmp_path / "train" / ".cache").mkdir()  # Hidden folders are skipped.
    assert len(GradedFolderSource(tmp_path, "train")) == 1
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        GradedFolderSource(tmp_path, "dev")


# ---------------------------------------------------------------------------------------------
# Label fractions
# ---------------------------------------------------------------------------------------------


def test_stratified_fraction():
    grades = np.repeat([0, 1, 2, 3, 4], [50, 7, 20, 3, 1])
    keep = splits.stratified_fraction(grades, 0.1, seed=0)
    assert keep.dtype == np.int64 and list(keep) == sorted(set(keep))
    # round(0.1 * n) per grade, at least one: 5, round(0.7) = 1, 2, max(1, 0) = 1, 1.
    assert list(np.bincount(grades[keep], minlength=5)) == [5, 1, 2, 1, 1]
    assert np.array_equal(keep, splits.stratified_fraction(grades, 0.1, seed=0))
    assert not np.array_equal(keep, splits.stratified_fraction(grades, 0.1, seed=1))
    # A smaller fraction keeps a subset of a larger one; 1 keeps everything.
    half = splits.stratified_fraction(grades, 0.5, seed=0)
    assert set(keep) <= set(half)
    assert np.array_equal(splits.stratified_fraction(grades, 1.0, seed=3), np.arange(81))
    # A grade's draw does not depend on the other grades' examples.
    only_0 = splits.stratified_fraction(np.zeros(50, int), 0.1, seed=0)
    assert np.array_equal(only_0, keep[grades[keep] == 0])
    # -1 (no grade) is a stratum of its own.
    mixed = splits.stratified_fraction(np.array([-1, -1, 0, 0, 0, 0]), 0.5, seed=0)
    assert len(mixed) == 3 and (mixed < 2).sum() == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            splits.stratified_fraction(grades, bad, seed=0)


def test_label_fraction_shrinks_the_training_split_only(dr_root):
    full = _cfg(name="graded_folder", root=str(dr_root))
    assert isinstance(sources.get_source(full, "train"), GradedFolderSource)
    cfg = _cfg(name="graded_folder", root=str(dr_root), label_fraction=0.5)
    per_grade = dr_demo.grade_counts(COUNTS["train"])  # 6, 2, 3, 2, 2
    expected = [max(1, round(0.5 * n)) for n in per_grade]  # 3, 1, 2, 1, 1
    assert pipeline.num_examples(cfg, "train") == sum(expected)
    src = sources.get_source(cfg, "train")
    assert isinstance(src, sources.SubsetSource)
    assert list(np.bincount(src.grades, minlength=5)) == expected
    assert [src[i]["grade"] for i in range(len(src))] == list(src.grades)
    assert pipeline.num_examples(cfg, "validation") == COUNTS["val"]
    assert pipeline.num_examples(cfg, "test") == COUNTS["test"]
    # The draw follows label_fraction_seed, and is the same on every call.
    ids = {src[i]["id"] for i in range(len(src))}
    assert ids == {r["id"] for r in sources.get_source(cfg, "train")}
    cfg.label_fraction_seed = 1
    other = sources.get_source(cfg, "train")
    assert len(other) == len(src) and {r["id"] for r in other} != ids
    # A training batch comes from the subset.
    it = pipeline.train_iterator(
        cfg, "train", local_batch_size=4, seed=0, process_index=0, process_count=1
    )
    assert next(it)["image"].shape == (4, 32, 32, 3)


def test_label_fraction_needs_grades(tmp_path):
    for i in range(3):
        _save(tmp_path / "train" / "good" / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    cfg = _cfg(name="folder", root=str(tmp_path), label_fraction=0.5)
    with pytest.raises(ValueError, match="has no grades") as e:
        sources.get_source(cfg, "train")
    assert "data.label_fraction=0.5" in _one_line(e)
    cfg.label_fraction = 1.5
    with pytest.raises(ValueError, match=r"data.label_fraction must be in \(0, 1\]"):
        sources.get_source(cfg, "train")
    # Other splits, and a fraction of 1, are left alone.
    cfg.label_fraction = 0.5
    assert len(sources.get_source(cfg, "validation")) == 1
    cfg.label_fraction = 1.0
    assert len(sources.get_source(cfg, "train")) == 2


def test_artefacts_shade_the_photo_not_its_lesions():
    """dr_v2's artefacts come after the lesions: same lesions and mask, other pixels, and the
    outside of the field of view still black; artefacts=False is dr_v1's photo."""
    shaded, mask, counts = dr_demo.make_graded_fundus(np.random.default_rng(5), 3, 64)
    plain, plain_mask, plain_counts = dr_demo.make_graded_fundus(
        np.random.default_rng(5), 3, 64, artefacts=False
    )
    assert counts == plain_counts and np.array_equal(mask, plain_mask) and mask.any()
    changed = np.abs(shaded.astype(int) - plain.astype(int)).max(axis=-1) > 8
    assert changed.mean() > 0.05
    assert shaded[0, 0].max() == 0 and shaded[-1, -1].max() == 0
