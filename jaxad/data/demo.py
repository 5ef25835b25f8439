"""Embedded demo dataset: fundus photographs with synthetic diabetic-retinopathy lesions.

The demo must train on a laptop CPU without any download, so it is generated locally from the one
real fundus photograph that ships with scikit-image (`skimage.data.retina`, CC0). Normal images are
geometric and photometric variations of that photograph; test anomalies get drawn microaneurysms,
haemorrhages and hard exudates with pixel masks. The folder follows the MVTec-AD layout:

    train/good/000.png
    test/good/000.png
    test/<lesion type>/000.png
    ground_truth/<lesion type>/000_mask.png

`ensure_fundus_demo()` generates it once into a cache folder and is a cheap no-op afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

VERSION = "fundus_v1"
LESION_TYPES = ("microaneurysm", "haemorrhage", "exudate", "mixed")
MARKER = ".complete"
# Pixels whose blend alpha reaches this value are lesion pixels in the ground-truth mask.
MASK_THRESHOLD = 0.3
# A temporary generation folder older than this belongs to a dead process and may be removed.
_STALE_SECONDS = 3600.0

# Geometry of `skimage.data.retina()` (1411 x 1411 px), measured once: field-of-view (FOV) centre
# (y, x) and radius in pixels, then the optic disc centre (655, 250) px in units of the FOV radius.
_SRC_FOV_CENTER = (702.5, 704.5)
_SRC_FOV_RADIUS = 697.5
_SRC_DISC = ((655.0 - 702.5) / 697.5, (250.0 - 704.5) / 697.5)
# Disc (radius ~95 px) plus the pigment crescent beside it, in FOV radii; no lesions inside.
_DISC_RADIUS = 0.16
# The source FOV is sampled up to this fraction of its radius: its outermost ring is uneven and
# carries a notch, the output FOV gets a clean circular edge instead.
_SRC_USABLE = 0.985

_SPLIT_CODES = {"train": 0, "test_good": 1, **{t: 2 + i for i, t in enumerate(LESION_TYPES)}}


@dataclasses.dataclass(frozen=True)
class NormalFundus:
    """A generated normal image with the geometry that lesion placement needs."""

    image: np.ndarray  # (size, size, 3) uint8
    fov: np.ndarray  # (size, size) bool, the circular field of view
    center: tuple[float, float]  # FOV centre (y, x) in pixels
    radius: float  # FOV radius in pixels
    disc: tuple[float, float]  # optic disc centre (y, x) in pixels
    disc_radius: float  # exclusion radius around the disc in pixels


# ---------------------------------------------------------------------------------------------
# Normal images
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _source(size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The retina photo at about `size` px, outside-FOV filled with the nearest FOV colour.

    Filling the black border lets elastic warps near the rim sample retina, not black, and the
    spline prefilter is done once here since every image samples the same source.
    Returns (prefiltered float image (H, W, 3), FOV radius px, FOV centre (y, x) px).
    """
    import skimage.data
    import skimage.transform

    photo = skimage.data.retina()
    scale = size / photo.shape[0]
    img = skimage.transform.resize(
        photo, (size, size), order=1, anti_aliasing=True, preserve_range=True
    ).astype(np.float32)
    cy, cx = ((c + 0.5) * scale - 0.5 for c in _SRC_FOV_CENTER)
    radius = _SRC_FOV_RADIUS * scale * _SRC_USABLE
    yy, xx = np.mgrid[:size, :size]
    outside = np.hypot(yy - cy, xx - cx) > radius - 1.0
    _, (iy, ix) = ndi.distance_transform_edt(outside, return_indices=True)
    img = img[iy, ix]
    coeffs = np.stack([ndi.spline_filter(img[..., c], order=3, mode="mirror") for c in range(3)])
    return coeffs, radius, (cy, cx)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise that varies on a scale of shape/cells (bicubic upsampling)."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-8)


def make_normal_fundus(rng: np.random.Generator, size: int = 256) -> NormalFundus:
    """Draws one normal fundus image: the retina photo under a random pose and camera.

    Pose: rotation about the FOV centre, flips (left/right eye), scale, translation and a gentle
    elastic warp so vessel paths are not rigid copies. Camera: gamma, contrast, brightness, colour
    balance, an illumination gradient with vignetting, blur and sensor noise.
    """
    coeffs, src_radius, (src_cy, src_cx) = _source(size)

    # Pose. The FOV stays a centred-ish circle inside the frame, as in a real fundus camera.
    scale = rng.uniform(0.88, 1.0)
    radius = 0.49 * size * scale
    slack = max(0.0, 0.5 * size - radius - 1.5)
    shift = rng.uniform(-1.0, 1.0, 2) * min(slack, 0.03 * size)
    cy, cx = (size - 1) / 2 + shift[0], (size - 1) / 2 + shift[1]
    theta = rng.uniform(-np.pi / 6, np.pi / 6)
    flip = np.diag([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pose = flip @ rot  # output unit-disc coordinates -> source unit-disc coordinates

    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    u = np.stack([(yy - cy) / radius, (xx - cx) / radius])
    v = np.einsum("ij,jhw->ihw", pose, u)
    warp = 0.012 * size * np.stack([_smooth_noise(rng, (size, size), 4) for _ in range(2)])
    r_out = np.hypot(u[0], u[1])
    warp *= np.clip((1.0 - r_out) / 0.08, 0.0, 1.0)  # keep the rim where it is
    coords = np.stack([src_cy + src_radius * v[0], src_cx + src_radius * v[1]]) + warp
    img = np.stack(
        [
            ndi.map_coordinates(coeffs[c], coords, order=3, mode="mirror", prefilter=False)
            for c in range(3)
        ],
        -1,
    )
    img = np.clip(img / 255.0, 0.0, 1.0)

    # Camera.
    fov_soft = np.clip((1.0 - r_out) * radius + 0.5, 0.0, 1.0)
    fov = fov_soft >= 0.5
    img = img ** rng.uniform(0.8, 1.25)
    mean = img[fov].mean(axis=0)
    img = (img - mean) * rng.uniform(0.85, 1.2) + mean
    img = img * rng.uniform(0.85, 1.12) * rng.uniform([0.9, 0.85, 0.8], [1.08, 1.15, 1.2])
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    gradient = rng.uniform(0.0, 0.18) * (direction[0] * u[0] + direction[1] * u[1])
    vignette = rng.uniform(-0.2, 0.05) * (r_out**2 - 0.5)
    img = img * (1.0 + gradient + vignette)[..., None]
    sigma = rng.uniform(0.0, 0.8)
    if sigma > 0.2:
        img = ndi.gaussian_filter(img, (sigma, sigma, 0))
    noise_std = rng.uniform(0.5, 2.5) / 255.0
    img = img + noise_std * rng.standard_normal((size, size, 1)) * (
        1 + 0.3 * rng.standard_normal(3)
    )
    img = np.clip(img * fov_soft[..., None], 0.0, 1.0)

    disc_v = np.linalg.solve(pose, np.array(_SRC_DISC))
    return NormalFundus(
        image=np.rint(img * 255.0).astype(np.uint8),
        fov=fov,
        center=(cy, cx),
        radius=radius,
        disc=(cy + radius * disc_v[0], cx + radius * disc_v[1]),
        disc_radius=_DISC_RADIUS * radius,
    )


# ---------------------------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------------------------


def _ragged_blob(
    rng: np.random.Generator,
    dy: np.ndarray,
    dx: np.ndarray,
    radius: float,
    edge: float,
    roughness: float,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """Alpha of an irregular (optionally elongated) blob centred at offsets (dy, dx) = 0.

    The boundary radius wobbles with a few low angular harmonics; `edge` is the width in pixels
    of the soft transition that blends the lesion into the background.
    """
    ca, sa = np.cos(angle), np.sin(angle)
    along = ca * dx + sa * dy
    across = -sa * dx + ca * dy
    r = np.hypot(along / aspect, across)
    phi = np.arctan2(across, along / aspect)
    wobble = np.zeros_like(r)
    for k in range(2, 6):
        wobble += rng.normal(0.0, roughness / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    boundary = radius * (1.0 + wobble)
    return np.clip((boundary - r) / edge + 0.5, 0.0, 1.0)


def _place(
    rng: np.random.Generator, normal: NormalFundus, extent: float, reach: float = 1.0
) -> tuple[float, float]:
    """A lesion centre inside the FOV (with margin `extent`) and away from the optic disc.

    Uniform over the disc of `reach` times the usable radius; DR lesions favour the posterior pole.
    """
    max_r = reach * (normal.radius - extent - 4.0)
    for _ in range(200):
        r = max_r * np.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * np.pi)
        y, x = normal.center[0] + r * np.sin(a), normal.center[1] + r * np.cos(a)
        if np.hypot(y - normal.disc[0], x - normal.disc[1]) > normal.disc_radius + extent:
            return y, x
    raise RuntimeError("could not place a lesion")  # unreachable for sane geometry


def _window(
    normal: NormalFundus, y: float, x: float, extent: float
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    size = normal.image.shape[0]
    e = int(np.ceil(extent)) + 2
    y0, y1 = max(0, int(y) - e), min(size, int(y) + e + 1)
    x0, x1 = max(0, int(x) - e), min(size, int(x) + e + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), yy - y, xx - x


def _texture(rng: np.random.Generator, shape: tuple[int, ...], amount: float) -> np.ndarray:
    """Multiplicative mottling so a lesion is not a flat colour patch."""
    n = ndi.gaussian_filter(rng.standard_normal(shape[:2]), 1.2)
    return 1.0 + amount * n / (n.std() + 1e-8)


def _darken(
    img: np.ndarray, alpha: np.ndarray, ys: slice, xs: slice, factor: np.ndarray, tex: np.ndarray
) -> None:
    """Red lesions: multiply the background (its vessels and grain stay visible underneath)."""
    gain = np.clip(factor[None, None, :] * tex[..., None], 0.0, 1.0)
    a = alpha[..., None]
    img[ys, xs] *= 1.0 - a + a * gain


def _microaneurysms(
    rng: np.random.Generator,
    normal: NormalFundus,
    img: np.ndarray,
    alpha_total: np.ndarray,
    count: int | None = None,
) -> None:
    """Small round red dots, larger than real ones so they survive downscaling to 128 px."""
    count = rng.integers(4, 11) if count is None else count
    for _ in range(count):
        rad = rng.uniform(2.0, 3.4) * normal.radius / 125.0
        y, x = _place(rng, normal, 2 * rad, reach=0.75)
        ys, xs, dy, dx = _window(normal, y, x, 2 * rad)
        alpha = _ragged_blob(rng, dy, dx, rad, edge=1.2, roughness=0.05)
        alpha = alpha * rng.uniform(0.85, 1.0)
        factor = rng.uniform([0.55, 0.4, 0.45], [0.7, 0.55, 0.6])
        _darken(img, alpha, ys, xs, factor, _texture(rng, alpha.shape, 0.04))
        np.maximum(alpha_total[ys, xs], alpha, out=alpha_total[ys, xs])


def _haemorrhages(
    rng: np.random.Generator,
    normal: NormalFundus,
    img: np.ndarray,
    alpha_total: np.ndarray,
    count: int | None = None,
) -> None:
    """Blot haemorrhages (irregular merged blobs) and flame haemorrhages (streaks)."""
    count = rng.integers(1, 4) if count is None else count
    s = normal.radius / 125.0
    for _ in range(count):
        flame = rng.uniform() < 0.4
        if flame:
            rad, aspect = rng.uniform(2.5, 4.0) * s, rng.uniform(2.5, 4.0)
            extent = rad * aspect * 1.4 + 2
        else:
            rad, aspect = rng.uniform(4.5, 9.0) * s, rng.uniform(1.0, 1.4)
            extent = rad * aspect * 1.9 + 2
        y, x = _place(rng, normal, extent, reach=0.9)
        ys, xs, dy, dx = _window(normal, y, x, extent)
        if flame:
            # Flame haemorrhages lie in the nerve fibre layer, which fans out from the disc.
            angle = np.arctan2(y - normal.disc[0], x - normal.disc[1]) + rng.normal(0, 0.2)
            alpha = _ragged_blob(rng, dy, dx, rad, 2.0, 0.12, aspect=aspect, angle=angle)
            along = np.abs(np.cos(angle) * dx + np.sin(angle) * dy) / (rad * aspect)
            alpha = alpha * np.clip(1.25 - along, 0.0, 1.0) ** 0.7  # feathered ends
        else:
            # A blot is a few overlapping pools of blood.
            alpha = np.zeros(dy.shape, np.float32)
            for k in range(rng.integers(1, 4)):
                oy, ox = (0.0, 0.0) if k == 0 else rng.normal(0, 0.45 * rad, 2)
                r_k = rad * (1.0 if k == 0 else rng.uniform(0.5, 0.8))
                blob = _ragged_blob(
                    rng, dy - oy, dx - ox, r_k, 1.8, 0.2, aspect, rng.uniform(0, np.pi)
                )
                np.maximum(alpha, blob, out=alpha)
        # Blood pools thicker in the middle: a darker core.
        core = np.clip(1.0 - np.hypot(dy, dx) / extent, 0.0, 1.0)
        alpha = np.clip(alpha * (0.75 + 0.35 * core) * rng.uniform(0.85, 1.0), 0.0, 1.0)
        factor = rng.uniform([0.6, 0.35, 0.4], [0.75, 0.5, 0.55])
        tex = 1.0 + 0.06 * _smooth_noise(rng, alpha.shape, max(2, alpha.shape[0] // 5))
        _darken(img, alpha, ys, xs, factor, tex)
        np.maximum(alpha_total[ys, xs], alpha, out=alpha_total[ys, xs])


def _exudates(
    rng: np.random.Generator,
    normal: NormalFundus,
    img: np.ndarray,
    alpha_total: np.ndarray,
    count: int | None = None,
) -> None:
    """Clusters of small bright yellow deposits with crisp borders, some merging into plaques."""
    count = rng.integers(1, 4) if count is None else count
    smooth = ndi.gaussian_filter(img, (6, 6, 0))
    fov_level = np.median(img[normal.fov], axis=0)
    s = normal.radius / 125.0
    for _ in range(count):
        spread = rng.uniform(5.0, 12.0) * s
        extent = spread + 4.0 * s + 2
        cy, cx = _place(rng, normal, extent, reach=0.8)
        ys, xs, dy0, dx0 = _window(normal, cy, cx, extent)
        cluster = np.zeros(dy0.shape, np.float32)
        for _ in range(rng.integers(5, 16)):
            oy, ox = rng.normal(0, spread / 2, 2).clip(-spread, spread)
            rad = rng.uniform(1.3, 3.2) * s
            blob = _ragged_blob(rng, dy0 - oy, dx0 - ox, rad, edge=0.7, roughness=0.15)
            np.maximum(cluster, blob, out=cluster)
        alpha = cluster * rng.uniform(0.75, 0.95)
        # Yellow-white relative to the local illumination, so lighting gradients apply to it.
        local = smooth[ys, xs]
        light = np.clip(local.mean(-1, keepdims=True) / fov_level.mean(), 0.6, 1.3)
        yellow = np.array([250.0, 210.0, 90.0]) * rng.uniform([0.95, 0.9, 0.8], [1.0, 1.05, 1.3])
        target = np.clip(yellow * light * _texture(rng, alpha.shape, 0.05)[..., None], 0, 255)
        a = alpha[..., None]
        img[ys, xs] = img[ys, xs] * (1.0 - a) + a * target
        np.maximum(alpha_total[ys, xs], alpha, out=alpha_total[ys, xs])


# A lesion drawer: draw(rng, normal, img, alpha_total, count) paints `count` lesions (None: its
# own random number) into the float image `img` (H, W, 3) in place and raises `alpha_total`
# (H, W) to each lesion's blend alpha.
Drawer = Callable[[np.random.Generator, NormalFundus, np.ndarray, np.ndarray, int | None], None]

# The lesion types of this module by name (other generators, e.g. `jaxad.data.dr_demo`, add
# their own drawers of the same signature).
DRAWERS: dict[str, Drawer] = {
    "microaneurysm": _microaneurysms,
    "haemorrhage": _haemorrhages,
    "exudate": _exudates,
}
_DRAW = DRAWERS


def draw_lesions(
    normal: NormalFundus,
    counts: Mapping[str, int | None],
    rng: np.random.Generator,
    *,
    drawers: Mapping[str, Drawer] = DRAWERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws `counts[kind]` lesions of each kind (None: the drawer's own random number), in the
    order of `counts`, with `drawers[kind]`, into a normal image.

    Returns the lesioned uint8 image and its bool mask, the union of all lesions (blend alpha
    >= MASK_THRESHOLD, inside the field of view). Pixels the lesions do not touch keep exactly
    their normal values, so the mask is the whole change.
    """
    unknown = [kind for kind in counts if kind not in drawers]
    if unknown:
        raise ValueError(f"unknown lesion type {unknown[0]!r}, expected one of {list(drawers)}")
    img = normal.image.astype(np.float32)
    alpha = np.zeros(img.shape[:2], np.float32)
    for kind, count in counts.items():
        drawers[kind](rng, normal, img, alpha, count)
    alpha *= normal.fov
    out = np.where(alpha[..., None] > 0, np.clip(np.rint(img), 0, 255), normal.image)
    return out.astype(np.uint8), alpha >= MASK_THRESHOLD


def add_lesions(
    normal: NormalFundus, lesion_type: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draws DR-like lesions of one type ("mixed": two or three types) into a normal image.

    Returns the lesioned uint8 image and its bool mask (blend alpha >= MASK_THRESHOLD). Pixels
    the lesions do not touch keep exactly their normal values, so the mask is the whole change.
    """
    if lesion_type == "mixed":
        kinds = list(rng.choice(list(_DRAW), size=rng.integers(2, 4), replace=False))
        counts = {"microaneurysm": rng.integers(3, 7), "haemorrhage": 1, "exudate": 1}
    elif lesion_type in _DRAW:
        kinds, counts = [lesion_type], {}
    else:
        raise ValueError(f"unknown lesion type {lesion_type!r}, expected one of {LESION_TYPES}")
    return draw_lesions(normal, {kind: counts.get(kind) for kind in kinds}, rng)


# ---------------------------------------------------------------------------------------------
# Dataset folder
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One stream per image: an image does not depend on how many others are generated.
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _save_png(path: pathlib.Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


_README = """\
Synthetic fundus demo dataset ({version}) for jaxad.

SYNTHETIC DATA, NOT FOR CLINICAL USE. Every image is derived from a single real fundus photograph,
skimage.data.retina() ("Fundus photograph of normal left eye", M. Haggstrom, CC0 1.0, via
Wikimedia Commons), shipped with scikit-image. Generated locally by jaxad.data.demo, seed {seed}.

Normal images are random poses of that photograph (rotation about the field-of-view centre, flips,
scale, shift, gentle elastic warp) seen through random cameras (gamma, contrast, brightness, colour
balance, illumination gradient, vignetting, blur, noise), stored as {size}x{size} RGB PNG. The
anomalies are drawn lesions resembling diabetic retinopathy signs:
  microaneurysm  several small dark red round dots
  haemorrhage    larger dark red blot- or flame-shaped regions
  exudate        clusters of small bright yellow deposits with sharp borders
  mixed          two or three of the above in one image
Lesions lie inside the field of view and away from the optic disc. Masks are 0/255 PNGs marking
pixels where the lesion blend weight is at least {threshold}.

Layout (MVTec-AD style):
  train/good/            {n_train} normal images
  test/good/             {n_test_good} normal images
  test/<type>/           {n_test_per_type} images per lesion type
  ground_truth/<type>/   <stem>_mask.png for every test/<type>/<stem>.png
"""


def generate_fundus_demo(
    root: str | os.PathLike,
    *,
    n_train: int = 240,
    n_test_good: int = 40,
    n_test_per_type: int = 20,
    size: int = 256,
    seed: int = 0,
    lesion_types: Sequence[str] = LESION_TYPES,
) -> pathlib.Path:
    """Writes the dataset into `root` (created if needed); the completion marker goes last.

    Not safe against concurrent writers to the same root; `ensure_fundus_demo` is.
    """
    root = pathlib.Path(root)
    width = max(3, len(str(max(n_train, n_test_good, n_test_per_type, 1) - 1)))
    dirs = {"train": root / "train" / "good", "test_good": root / "test" / "good"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        _save_png(
            dirs["train"] / f"{i:0{width}d}.png",
            make_normal_fundus(_rng(seed, "train", i), size).image,
        )
    for i in range(n_test_good):
        normal = make_normal_fundus(_rng(seed, "test_good", i), size)
        _save_png(dirs["test_good"] / f"{i:0{width}d}.png", normal.image)
    for kind in lesion_types:
        img_dir, mask_dir = root / "test" / kind, root / "ground_truth" / kind
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_test_per_type):
            rng = _rng(seed, kind, i)
            image, mask = add_lesions(make_normal_fundus(rng, size), kind, rng)
            _save_png(img_dir / f"{i:0{width}d}.png", image)
            _save_png(mask_dir / f"{i:0{width}d}_mask.png", mask.astype(np.uint8) * 255)
    info = dict(
        version=VERSION,
        seed=seed,
        size=size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_per_type=n_test_per_type,
        lesion_types=list(lesion_types),
        threshold=MASK_THRESHOLD,
    )
    (root / "README.txt").write_text(_README.format(**info))
    (root / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return root


def default_root(seed: int = 0, version: str = VERSION) -> pathlib.Path:
    """`$JAXAD_DATA_DIR/demo/<version>`, else `~/.cache/jaxad/demo/<version>` (seed 0)."""
    base = os.environ.get("JAXAD_DATA_DIR")
    base = pathlib.Path(base) if base else pathlib.Path.home() / ".cache" / "jaxad"
    return base / "demo" / (version if seed == 0 else f"{version}_seed{seed}")


def _is_complete(root: pathlib.Path, seed: int) -> bool:
    try:
        info = json.loads((root / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    if info.get("seed") != seed:
        raise ValueError(f"{root} holds the demo for seed {info.get('seed')}, not {seed}")
    return True


def _remove_stale_temps(parent: pathlib.Path, prefix: str) -> None:
    """Deletes generation folders that a killed process left behind."""
    now = time.time()
    for p in parent.glob(prefix + "*"):
        try:
            if now - p.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


def _fresh_dir(parent: pathlib.Path, prefix: str) -> pathlib.Path:
    """A new uniquely named folder; unlike mkdtemp it gets the umask's permissions."""
    while True:
        path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def ensure_fundus_demo(root: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """Returns the fundus demo folder, generating it first if it is missing or incomplete."""
    return ensure_generated(VERSION, generate_fundus_demo, root, seed=seed)


def ensure_generated(
    version: str,
    generate: Callable[..., pathlib.Path],
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
) -> pathlib.Path:
    """Returns a generated demo folder, calling `generate(folder, seed=seed)` first if needed.

    `root` defaults to `default_root(seed, version)`. Generation happens in a temporary sibling
    folder that is renamed into place when complete (`generate` writes `MARKER` last), so an
    interrupted run leaves no half-written dataset and concurrent callers do not clash: the
    first rename wins and the others discard their copies.
    """
    root = pathlib.Path(root) if root is not None else default_root(seed, version)
    if _is_complete(root, seed):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{root.name}.tmp-"
    _remove_stale_temps(root.parent, prefix)
    tmp = _fresh_dir(root.parent, prefix)
    from jaxad import writers  # Imported here: it loads jax, which generating needs not.

    writers.log_info("generating the %s demo data in %s (once) ...", version, root)
    start = time.perf_counter()
    try:
        generate(tmp, seed=seed)
        if root.exists() and not _is_complete(root, seed):
            # Left by an interrupted non-atomic writer: move it aside, then drop it.
            trash = _fresh_dir(root.parent, prefix)
            try:
                os.replace(root, trash / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished first (rename onto a non-empty folder fails).
            if not _is_complete(root, seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    writers.log_info("generated the %s demo data in %.1f s", version, time.perf_counter() - start)
    return root
