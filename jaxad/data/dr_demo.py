"""Embedded demo dataset for DR grading: fundus photos with diabetic-retinopathy grades 0-4.

Lesion-based contrastive learning pre-trains on patches around lesions and is scored by a DR
grader (quadratic weighted kappa on EyePACS, grades 0-4). Its demo needs graded photos whose
lesions grow in number and kind with the grade, with lesion masks to check lesion boxes
against, and no download. The photos are the normal fundus images of `jaxad.data.demo` (random
poses and cameras of skimage's retina photograph) with that module's lesions drawn in
(`demo.draw_lesions`), plus two signs of proliferative disease drawn here, and then each
photo's own acquisition artefacts (`acquisition_artefacts`: haze at the rim, a lid shadow),
whatever its grade.

Why the artefacts (new in dr_v2): screening photos differ from each other far more in how they
were taken than in their lesions, and whole-image contrastive learning tells photos apart by
the easiest cue it finds. Without them every normal photo is one retina under a pose, the
lesions are what tells photos apart, and whole-image SimCLR learns the grade by itself: on the
dr_v1 photos it gave a linear-probe validation kappa of 0.75-0.87 where lesion-based CL gave
0.32-0.80 (seed 1, 400 and 1200 steps). With the artefacts whole-image SimCLR still wins at
some seeds (README, "Lesion-based contrastive learning"). `generate_dr_demo(...,
artefacts=False)` still writes dr_v1's photos (the same random streams: the artefacts are
drawn after the lesions).

Grade law (the EyePACS / ICDR scale; counts per image, ranges inclusive, lesion sizes scale
with the field of view):

- 0, no DR: no lesion.
- 1, mild NPDR: 1-5 microaneurysms, nothing else.
- 2, moderate NPDR: 3-10 microaneurysms, 0-4 haemorrhages and 0-3 exudate clusters, at least
  one haemorrhage or exudate cluster.
- 3, severe NPDR: 6-14 microaneurysms, 4-10 haemorrhages spread round the four quadrants, 1-4
  exudate clusters.
- 4, proliferative DR: as grade 3 but with 3-10 haemorrhages, plus 1-2 neovascular tufts and,
  with probability 0.5, a preretinal haemorrhage.

Neighbouring grades overlap a little: a grade 2 image with few microaneurysms and one small
haemorrhage is close to grade 1, grades 2 and 3 share 4 haemorrhages, and grade 4 differs from
grade 3 only by its small tufts (and half the time a large preretinal haemorrhage). "Spread"
haemorrhages go round the four quadrants about the centre of the field of view (a random
quadrant order; each is redrawn until it lands in its quadrant), as the 4-2-1 rule of severe
NPDR has them; grade 2's fall anywhere. Haemorrhages are blots or flames, exudate clusters are
5-15 small bright deposits (`jaxad.data.demo`). Drawn here:

- a neovascular tuft: 4-8 fine tortuous vessel loops and a feeder vessel, about 15-30 px
  across at 256 px, on the optic disc (NVD, p 0.35) or elsewhere (NVE);
- a preretinal haemorrhage: a large dark boat-shaped pool of blood with a flat upper edge (the
  fluid level), 20-45 px wide at 256 px.

Class balance: grade shares `GRADE_SHARES` (40 / 15 / 20 / 12.5 / 12.5 %): grade 0 is the
largest class, as in EyePACS (73 %), but every grade keeps enough images to learn from, and
every split holds every grade (`grade_counts`). Default sizes `DEFAULT_COUNTS`: 200 train
(80 / 30 / 40 / 25 / 25), 50 val (20 / 8 / 10 / 6 / 6) and 100 test (40 / 15 / 20 / 13 / 12) at
256 px, generated in about 40 s of CPU time (one core; 1.5 minutes on a busy 2-core machine),
sized for a grader that reads them at 128 px on a CPU.

Layout (PYCLS's folder form, read by `jaxad.data.graded_folder` as ``data.name='demo',
data.demo='dr'``)::

    <root>/{train,val,test}/<grade>/<id>.png          RGB 8-bit
    <root>/masks/{train,val,test}/<grade>/<id>_mask.png   0/255 union of all lesions
    <root>/lesions.csv       per image: id, grade, lesion counts by kind, mask pixels
    <root>/README.txt

Ids number the images of a split in a seeded random order, so an id does not tell the grade;
`mask_path(root, record_id)` is the mask of a record (its ``id`` is the image path in ``root``).
``ensure_dr_demo()`` generates the default set once into a cache folder
(``$JAXAD_DATA_DIR/demo/dr_v2`` or ``~/.cache/jaxad/demo/dr_v2``) and is a cheap check
afterwards; ``generate_dr_demo`` writes any size into any folder.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxad.data import demo

VERSION = "dr_v2"
NUM_GRADES = 5
GRADE_NAMES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
SPLITS = ("train", "val", "test")
# Share of each grade in a split (see the module docstring).
GRADE_SHARES = (0.4, 0.15, 0.2, 0.125, 0.125)
DEFAULT_COUNTS = {"train": 200, "val": 50, "test": 100}
DEFAULT_SIZE = 256
# Lesion kinds in drawing order (a preretinal haemorrhage lies in front of everything else).
LESION_KINDS = ("microaneurysm", "haemorrhage", "exudate", "neovascularisation", "preretinal")

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Attempts to land a spread haemorrhage in its quadrant before keeping the last one.
_QUADRANT_TRIES = 30
# Supersampling of the neovascular tufts' fine lines.
_SUPERSAMPLE = 4


# ---------------------------------------------------------------------------------------------
# Grade law
# ---------------------------------------------------------------------------------------------


def lesion_counts(grade: int, rng: np.random.Generator) -> dict[str, int]:
    """How many lesions of each kind (`LESION_KINDS`) an image of `grade` gets (the table of the
    module docstring)."""
    counts = dict.fromkeys(LESION_KINDS, 0)
    if grade == 0:
        return counts
    if grade == 1:
        counts["microaneurysm"] = int(rng.integers(1, 6))
    elif grade == 2:
        counts["microaneurysm"] = int(rng.integers(3, 11))
        counts["haemorrhage"] = int(rng.integers(0, 5))
        counts["exudate"] = int(rng.integers(0, 4))
        if counts["haemorrhage"] + counts["exudate"] == 0:
            counts[rng.choice(["haemorrhage", "exudate"])] = 1
    elif grade in (3, 4):
        counts["microaneurysm"] = int(rng.integers(6, 15))
        counts["haemorrhage"] = int(rng.integers(4 if grade == 3 else 3, 11))
        counts["exudate"] = int(rng.integers(1, 5))
        if grade == 4:
            counts["neovascularisation"] = int(rng.integers(1, 3))
            counts["preretinal"] = int(rng.uniform() < 0.5)
    else:
        raise ValueError(f"grade must be 0 to {NUM_GRADES - 1}, got {grade}")
    return counts


def grade_counts(n: int, shares: Sequence[float] = GRADE_SHARES) -> tuple[int, ...]:
    """Images per grade in a split of `n`: `shares` of `n` by largest remainder (ties to the
    lower grade), then every empty grade takes one image from the largest."""
    if n < len(shares):
        raise ValueError(f"a split of {n} images cannot hold all {len(shares)} grades")
    exact = np.asarray(shares, np.float64) * n / np.sum(shares)
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    for g in np.flatnonzero(counts == 0):
        counts[np.argmax(counts)] -= 1
        counts[g] = 1
    return tuple(int(c) for c in counts)


# ---------------------------------------------------------------------------------------------
# Lesions drawn here (same signature as `demo.DRAWERS`)
# ---------------------------------------------------------------------------------------------


def _quadrant(normal: demo.NormalFundus, alpha: np.ndarray) -> int:
    """Quadrant (0-3) of the centroid of `alpha` about the FOV centre."""
    rows, cols = alpha.sum(axis=1), alpha.sum(axis=0)  # Projections: cheaper than nonzero.
    dy = rows @ np.arange(len(rows)) / rows.sum() - normal.center[0]
    dx = cols @ np.arange(len(cols)) / cols.sum() - normal.center[1]
    return 2 * int(dy >= 0) + int(dx >= 0)


def _spread_haemorrhages(
    rng: np.random.Generator,
    normal: demo.NormalFundus,
    img: np.ndarray,
    alpha_total: np.ndarray,
    count: int | None = None,
) -> None:
    """`demo`'s haemorrhages, going round the four quadrants in a random order."""
    count = rng.integers(4, 11) if count is None else count
    quadrants = rng.permutation(4)
    for i in range(count):
        for _ in range(_QUADRANT_TRIES):
            trial, alpha = img.copy(), np.zeros_like(alpha_total)
            demo._haemorrhages(rng, normal, trial, alpha, 1)
            if _quadrant(normal, alpha) == quadrants[i % 4]:
                break
        img[...] = trial
        np.maximum(alpha_total, alpha, out=alpha_total)


def _tuft_alpha(
    rng: np.random.Generator,
    shape: tuple[int, int],
    center: tuple[float, float],
    extent: float,
    line_width: float,
) -> np.ndarray:
    """Alpha of a tangle of vessel loops `line_width` px wide, within about `extent` px of
    `center` (window pixel coordinates)."""
    f = _SUPERSAMPLE
    canvas = Image.new("L", (shape[1] * f, shape[0] * f), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(f * line_width))

    def to_canvas(points: np.ndarray) -> list[tuple[float, float]]:
        # Window pixel centres (y, x) -> supersampled canvas (x, y).
        return [(f * x + (f - 1) / 2, f * y + (f - 1) / 2) for y, x in points]

    theta = np.linspace(0.0, 2 * np.pi, 49)
    for _ in range(rng.integers(4, 9)):
        offset = np.clip(rng.normal(0.0, 0.3 * extent, 2), -0.5 * extent, 0.5 * extent)
        radius = rng.uniform(0.25, 0.5) * extent
        aspect, angle = rng.uniform(1.0, 2.0), rng.uniform(0, np.pi)
        wobble = 1.0 + sum(
            rng.normal(0.0, 0.15 / h) * np.cos(h * theta + rng.uniform(0, 2 * np.pi))
            for h in range(2, 5)
        )
        along, across = aspect * radius * wobble * np.cos(theta), radius * wobble * np.sin(theta)
        ys = center[0] + offset[0] + np.sin(angle) * along + np.cos(angle) * across
        xs = center[1] + offset[1] + np.cos(angle) * along - np.sin(angle) * across
        draw.line(to_canvas(np.stack([ys, xs], -1)), fill=255, width=width, joint="curve")
    # The feeder vessel: a tortuous walk out of the tangle.
    heading, point = rng.uniform(0, 2 * np.pi), np.array(center, np.float64)
    walk = [point.copy()]
    for _ in range(10):
        heading += rng.normal(0.0, 0.5)
        point += 0.12 * extent * np.array([np.sin(heading), np.cos(heading)])
        walk.append(point.copy())
    draw.line(to_canvas(np.array(walk)), fill=255, width=width, joint="curve")
    return np.asarray(canvas.reduce(f), np.float32) / 255.0


def _neovascularisation(
    rng: np.random.Generator,
    normal: demo.NormalFundus,
    img: np.ndarray,
    alpha_total: np.ndarray,
    count: int | None = None,
) -> None:
    """Neovascular tufts: on the optic disc (NVD) or elsewhere in the field (NVE)."""
    count = rng.integers(1, 3) if count is None else count
    s = normal.radius / 125.0
    for _ in range(count):
        extent = rng.uniform(7.0, 12.0) * s
        if rng.uniform() < 0.35:
            a, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.6) * normal.disc_radius
            y, x = normal.disc[0] + r * np.sin(a), normal.disc[1] + r * np.cos(a)
        else:
            y, x = demo._place(rng, normal, extent, reach=0.85)
        ys, xs, _, _ = demo._window(normal, y, x, extent * 1.3 + 2)
        shape = (ys.stop - ys.start, xs.stop - xs.start)
        line_width = rng.uniform(1.1, 1.6) * s
        alpha = _tuft_alpha(rng, shape, (y - ys.start, x - xs.start), extent, line_width)
        alpha *= rng.uniform(0.8, 0.95)
        factor = rng.uniform([0.6, 0.35, 0.4], [0.72, 0.5, 0.55])  # red, as vessels
        demo._darken(img, alpha, ys, xs, factor, demo._texture(rng, alpha.shape, 0.04))
        np.maximum(alpha_total[ys, xs], alpha, out=alpha_total[ys, xs])


def _preretinal(
    rng: np.random.Generator,
    normal: demo.NormalFundus,
    img: np.ndarray,
    alpha_total: np.ndarray,
    count: int | None = None,
) -> None:
    """Preretinal haemorrhages: dense boat-shaped pools with a flat upper edge."""
    count = 1 if count is None else count
    s = normal.radius / 125.0
    for _ in range(count):
        rad, aspect = rng.uniform(9.0, 15.0) * s, rng.uniform(1.1, 1.5)
        extent = rad * aspect * 1.3 + 2
        y, x = demo._place(rng, normal, extent, reach=0.7)
        ys, xs, dy, dx = demo._window(normal, y, x, extent)
        alpha = demo._ragged_blob(
            rng, dy, dx, rad, 1.5, 0.06, aspect=aspect, angle=rng.normal(0.0, 0.1)
        )
        level = -rad * rng.uniform(0.0, 0.5)  # Blood settles: the top is a horizontal level.
        alpha *= np.clip(dy - level + 0.5, 0.0, 1.0) * rng.uniform(0.92, 1.0)
        factor = rng.uniform([0.4, 0.15, 0.18], [0.55, 0.25, 0.28])
        demo._darken(img, alpha, ys, xs, factor, demo._texture(rng, alpha.shape, 0.03))
        np.maximum(alpha_total[ys, xs], alpha, out=alpha_total[ys, xs])


def acquisition_artefacts(
    rng: np.random.Generator, normal: demo.NormalFundus, image: np.ndarray
) -> np.ndarray:
    """The photo as a screening camera may take it: haze at the rim and a lid shadow, each
    photo its own, whatever its grade.

    - 1-3 crescents of bright haze inside the rim (lens reflections), each U(0.3, 0.7) strong,
      U(0.06, 0.2) FOV radii deep and about 0.4-1.2 rad wide;
    - with p 0.5 a dark shadow over the top or bottom of the field (eyelid, lashes), 30-60 %
      dark from 0.4-0.8 radii off the centre.

    Both lie where lesions seldom do and are as large as the field, so a whole photo shows
    them and a patch around a lesion mostly does not. The field of view and the lesions'
    places do not change; the lesions are shaded as the rest.
    """
    size = image.shape[0]
    img = image.astype(np.float32) / 255.0
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dy, dx = yy - normal.center[0], xx - normal.center[1]
    r, theta = np.hypot(dy, dx) / normal.radius, np.arctan2(dy, dx)
    for _ in range(int(rng.integers(1, 4))):
        phi, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.4, 1.2)
        depth, strength = rng.uniform(0.06, 0.2), rng.uniform(0.3, 0.7)
        along = np.exp((np.cos(theta - phi) - 1.0) / (width**2 / 2))
        alpha = (strength * along * np.exp(-np.clip(1.0 - r, 0.0, None) / depth))[..., None]
        haze = rng.uniform([0.95, 0.8, 0.55], [1.0, 0.95, 0.75])
        img = img * (1.0 - alpha) + haze * alpha
    if rng.uniform() < 0.5:
        edge = rng.uniform(0.4, 0.8) * rng.choice([-1.0, 1.0])  # where the shadow starts
        soft = rng.uniform(0.05, 0.15)
        shade = 1.0 / (1.0 + np.exp(-(np.sign(edge) * dy / normal.radius - abs(edge)) / soft))
        img = img * (1.0 - rng.uniform(0.3, 0.6) * shade)[..., None]
    img = img * normal.fov[..., None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


_DRAWERS = {
    **demo.DRAWERS,
    "neovascularisation": _neovascularisation,
    "preretinal": _preretinal,
}


def make_graded_fundus(
    rng: np.random.Generator, grade: int, size: int = DEFAULT_SIZE, artefacts: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Draws one fundus photo of DR `grade`.

    Returns the uint8 image (size, size, 3), its bool lesion mask (the union of all lesions;
    empty for grade 0) and the lesion counts by kind (`lesion_counts`). `artefacts` adds
    `acquisition_artefacts` last (dr_v2); without them the photo is dr_v1's.
    """
    normal = demo.make_normal_fundus(rng, size)
    counts = lesion_counts(grade, rng)
    if grade == 0:
        image, mask = normal.image, np.zeros(normal.image.shape[:2], bool)
    else:
        drawers = dict(_DRAWERS)
        if grade >= 3:
            drawers["haemorrhage"] = _spread_haemorrhages
        draw = {kind: n for kind, n in counts.items() if n}
        image, mask = demo.draw_lesions(normal, draw, rng, drawers=drawers)
    if artefacts:
        image = acquisition_artefacts(rng, normal, image)
    return image, mask, counts


# ---------------------------------------------------------------------------------------------
# Dataset folder
# ---------------------------------------------------------------------------------------------


def mask_path(root: str | os.PathLike, record_id: str) -> pathlib.Path:
    """The lesion mask of the image whose record id (path relative to `root`) is `record_id`."""
    rel = pathlib.PurePosixPath(record_id)
    return pathlib.Path(root, "masks", *rel.parent.parts, f"{rel.stem}_mask.png")


def _save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


_README = """\
Synthetic diabetic-retinopathy grading demo ({version}) for jaxad, generated by jaxad.data.dr_demo
with seed {seed}. SYNTHETIC DATA, NOT FOR CLINICAL USE. Every image is derived from a single real
fundus photograph, skimage.data.retina() ("Fundus photograph of normal left eye", M. Haggstrom,
CC0 1.0, via Wikimedia Commons), shipped with scikit-image, under a random pose and camera, with
drawn lesions{artefacts}. {size}x{size} RGB 8-bit PNGs.

Grades (EyePACS scale) and the lesions drawn (counts inclusive):
  0 no DR             none
  1 mild NPDR         1-5 microaneurysms
  2 moderate NPDR     3-10 microaneurysms, 0-4 haemorrhages, 0-3 exudate clusters (>= 1 of the
                      last two)
  3 severe NPDR       6-14 microaneurysms, 4-10 haemorrhages round the four quadrants, 1-4
                      exudate clusters
  4 proliferative DR  as 3 with 3-10 haemorrhages, plus 1-2 neovascular tufts (on the disc or
                      elsewhere) and, half the time, a boat-shaped preretinal haemorrhage

Layout (PYCLS folder form):
  <split>/<grade>/<id>.png               split train, val, test; grade 0-4
  masks/<split>/<grade>/<id>_mask.png    0/255 union of the lesions (blend weight >= {threshold});
                                         all 0 for grade 0
  lesions.csv                            id, grade, lesion counts by kind, mask pixels
Ids are numbered in a seeded random order within a split.

Images per grade 0/1/2/3/4:
{table}
"""


def generate_dr_demo(
    root: str | os.PathLike,
    *,
    size: int = DEFAULT_SIZE,
    counts: Mapping[str, int | Sequence[int]] = DEFAULT_COUNTS,
    seed: int = 0,
    artefacts: bool = True,
) -> pathlib.Path:
    """Writes the dataset into `root` (created if needed); the completion marker goes last.

    Args:
      root: the dataset folder.
      size: image side in pixels.
      counts: split ("train", "val" or "test") -> its number of images (split between the grades
        by `grade_counts`, at least 5) or a sequence of 5 numbers of images per grade.
      seed: the dataset seed; each image has its own random stream (seed, split, index).
      artefacts: draw `acquisition_artefacts` (dr_v2); False writes dr_v1's photos.

    Not safe against concurrent writers to the same root; `ensure_dr_demo` is.
    """
    root = pathlib.Path(root)
    per_grade = {}
    for split, n in counts.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; the demo's splits are {SPLITS}")
        per_grade[split] = (
            grade_counts(n) if isinstance(n, int | np.integer) else tuple(int(c) for c in n)
        )
        if len(per_grade[split]) != NUM_GRADES or min(per_grade[split]) < 0:
            raise ValueError(f"counts[{split!r}] needs {NUM_GRADES} counts >= 0, got {n}")
    rows = []
    for split, split_counts in per_grade.items():
        code = _SPLIT_CODES[split]
        grades = np.repeat(np.arange(NUM_GRADES), split_counts)
        grades = np.random.default_rng([seed, code, NUM_GRADES]).permutation(grades)
        width = max(4, len(str(len(grades) - 1)))
        for i, grade in enumerate(grades):
            image, mask, lesions = make_graded_fundus(
                np.random.default_rng([seed, code, i]), int(grade), size, artefacts
            )
            rel = f"{split}/{grade}/{i:0{width}d}.png"
            _save(root / rel, image)
            _save(mask_path(root, rel), mask.astype(np.uint8) * 255)
            rows.append({"id": rel, "grade": int(grade), **lesions, "mask_pixels": int(mask.sum())})
    with open(root / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "grade", *LESION_KINDS, "mask_pixels"])
        writer.writeheader()
        writer.writerows(rows)
    info = dict(
        version=VERSION if artefacts else "dr_v1",
        seed=seed,
        size=size,
        counts={split: list(c) for split, c in per_grade.items()},
        threshold=demo.MASK_THRESHOLD,
    )
    table = "\n".join(
        f"  {split:6s} {sum(c):4d}: {' / '.join(str(n) for n in c)}"
        for split, c in per_grade.items()
    )
    (root / "README.txt").write_text(
        _README.format(
            table=table,
            artefacts=", then acquisition artefacts (uneven light, rim haze, lid shadow)"
            if artefacts
            else "",
            **{k: v for k, v in info.items() if k != "counts"},
        )
    )
    (root / demo.MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return root


def ensure_dr_demo(root: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """Returns the DR grading demo folder, generating it first if it is missing or incomplete
    (`jaxad.data.demo.ensure_generated`; by default ``$JAXAD_DATA_DIR/demo/dr_v2`` or
    ``~/.cache/jaxad/demo/dr_v2``)."""
    return demo.ensure_generated(VERSION, generate_dr_demo, root, seed=seed)
