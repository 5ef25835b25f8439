"""Procedural frontal chest X-rays with normal anatomical variation and synthetic opacities.

MorphAEus reconstructs a pseudo-healthy image and warps it onto the input's anatomy, so that
the variation of normal anatomy between subjects is absorbed by the deformation and only
pathology is left in the residual. Its demo needs a population whose anatomy differs from
subject to subject (a pixel-wise mean image is blurry) and anomalies that intensity alone does not
give away, with no download. This module draws both procedurally (numpy, scipy and Pillow; about
20 ms per 128 px image, the default demo of 600 images in 15-20 s on 2 CPU cores).

Every image is a template anatomy evaluated in anatomy coordinates (x right, y down, both about
[-1, 1] over the image; image left is the patient's right), each structure with its own shape
parameters per subject, then seen under a random pose and exposure:

- body: a soft-tissue torso with neck and shoulders, brighter where it is thicker (centre);
- lungs: two dark fields bounded by a convex lateral wall, a rounded apex, the mediastinum and a
  diaphragm dome, with a sharp costophrenic angle; darkest in their interior. Per lung: apex
  height, lateral extent, base height, dome height and position, wall curvature (left and right
  drawn separately, the right dome usually higher); vessels branching out of the hila;
- mediastinum with the trachea and main bronchi (dark), the spine (faint vertebrae), an aortic
  knob, and the heart: a tilted ellipse left of the midline (image right) whose position, size
  and tilt vary (cardiothoracic ratio about 0.4-0.5); the abdomen under the domes (bright) and
  sometimes a gastric air bubble;
- bones: clavicles (the brightest structure) and about ten posterior and anterior ribs per side,
  curved bands whose start height, spacing, slope, curvature and width vary, visible over the
  lungs;
- pose: rotation up to 4 degrees, scale 0.92-1.08, shift up to 4.5 % of the image per axis.

Together, at 128 px, the centroid of a lung field moves with a standard deviation of 3-5 px per
axis (range about 20 px), lung area varies twofold (about 2900-5900 px for both lungs) and two
subjects' lung masks differ in about 2000 px: the mean of the training images is a blur (its
mean gradient is under half a single image's). The exposure varies too:

- exposure: contrast, offset and gamma, a linear exposure gradient and a smooth exposure field,
  white and grain noise.

Anomalies (test set only) are added to the anatomy before the exposure, so pixels they do not
touch keep exactly their normal values:

- ``opacity`` (70 %): one or two patchy consolidations in a lung, each covering 5-25 % of it,
  built from overlapping blobs roughened by smooth noise, with a soft edge 2-5 px wide and
  internal texture. They raise the lung by 0.15-0.28 (in [0, 1], before the exposure) towards
  soft-tissue brightness, no brighter than the heart, mediastinum or clavicles: 25-50 grey
  levels, while a lung pixel varies by about 23 (standard deviation) between normal subjects
  and a pixel on a lung border by about 38. So the pixel AUROC of |x - mean training image| is
  about 0.6-0.7 (0.58 on opacities alone) and that of raw brightness about 0.45;
- ``effusion`` (15 %): fluid filling the base of a lung (12-35 % of it) under a hazy meniscus
  that rises laterally, hiding the costophrenic angle and the dome;
- ``nodule`` (15 %): a small round soft-edged density (5-10 px across at 128 px) in a lung.

Masks mark the pixels whose anomaly weight is at least `MASK_THRESHOLD`, inside the lung fields.

Layout (MVTec-AD, as `jaxad.data.demo`): ``train/good/`` (400), ``test/good/`` (100),
``test/<type>/`` (100 in all, so that an image AUROC is known to about 0.04) and
``ground_truth/<type>/<stem>_mask.png``; 8-bit greyscale PNGs of 128 px (no ``val/good``: the
folder source holds out 10 % of ``train/good``).
``ensure_cxr_demo()`` generates it once into a cache folder (``$JAXAD_DATA_DIR/demo/cxr_v2`` or
``~/.cache/jaxad/demo/cxr_v2``) and is a cheap check afterwards; ``generate_cxr_demo`` writes any
size into any folder. It is read as ``data.name='demo', data.demo='cxr'``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from jaxad.data import demo

VERSION = "cxr_v2"
ANOMALY_TYPES = ("opacity", "effusion", "nodule")
# Share of each type among the anomalous test images (opacities take the rest after rounding).
ANOMALY_SHARES = {"opacity": 0.7, "effusion": 0.15, "nodule": 0.15}
# Pixels whose anomaly weight reaches this value are anomalous in the ground-truth mask.
MASK_THRESHOLD = 0.5
_SPLIT_CODES = {"train": 0, "test_good": 1, **{t: 2 + i for i, t in enumerate(ANOMALY_TYPES)}}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _soft(margin: np.ndarray, edge: float) -> np.ndarray:
    """Soft membership from a signed margin (positive inside) over a transition of `edge`."""
    return np.clip(margin / edge + 0.5, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std noise smoothed over `sigma` pixels (small sigmas)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise varying on a scale of size/cells (bicubic upsampling)."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    return (field - field.mean()) / max(float(field.std()), 1e-6)


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where the anatomy lies in the image: image = scale * rotation(angle) @ anatomy + shift,
    both in coordinates spanning [-1, 1] over the image (x right, y down)."""

    scale: float
    angle: float  # radians
    shift: tuple[float, float]  # (x, y)

    def coordinates(self, size: int) -> np.ndarray:
        """Anatomy coordinates [2 (x, y), size, size] of the pixel centres."""
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        py, px = np.meshgrid(grid, grid, indexing="ij")
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = px - self.shift[0], py - self.shift[1]
        return (np.stack([c * dx + s * dy, -s * dx + c * dy]) / self.scale).astype(np.float32)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Image coordinates [n, 2] of anatomy points [n, 2]."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = self.scale * np.array([[c, -s], [s, c]])
        return points @ rot.T + np.asarray(self.shift)


def _draw(pose: Pose, size: int, curves: list, blur: float, factor: int = 4) -> np.ndarray:
    """Bands along polylines, drawn supersampled `factor` times and averaged down (anti-aliased),
    then blurred by `blur` pixels. Each curve is (points [n, 2] in anatomy coordinates, half
    width in anatomy units, brightness); where bands cross, the brighter one shows."""
    canvas = Image.new("F", (size * factor, size * factor), 0.0)
    draw = ImageDraw.Draw(canvas)
    units = size * factor / 2 * pose.scale  # canvas pixels per anatomy unit
    for points, half_width, amount in sorted(curves, key=lambda c: c[2]):
        xy = (pose.to_image(points) + 1.0) / 2.0 * size * factor - 0.5
        width = max(1, round(2 * half_width * units))
        draw.line([tuple(p) for p in xy.tolist()], fill=float(amount), width=width)
    out = np.asarray(canvas.reduce(factor))
    return ndi.gaussian_filter(out, blur) if blur > 0 else out


# ---------------------------------------------------------------------------------------------
# Normal anatomy
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lung:
    """Shape of one lung field in anatomy coordinates. ``q = side * (x - midline)`` is the
    lateral coordinate (0 at the midline, growing outwards)."""

    side: int  # -1: image left (patient's right lung), +1: image right
    medial: float  # q of the medial border (mediastinum half-width)
    lateral: float  # largest q of the lateral wall
    top: float  # y of the apex
    costophrenic: float  # y of the costophrenic angle
    dome: float  # y of the top of the diaphragm dome
    dome_q: float  # q of the top of the dome


@dataclasses.dataclass(frozen=True)
class Camera:
    """Exposure of one image: ``clip(contrast * b + offset) ** gamma * exposure + noise``."""

    contrast: float
    offset: float
    gamma: float
    exposure: np.ndarray  # [H, W] multiplicative field around 1
    noise: np.ndarray  # [H, W] additive

    def render(self, brightness: np.ndarray) -> np.ndarray:
        """The uint8 image of an anatomy brightness map."""
        x = np.clip(self.contrast * brightness + self.offset, 0.0, 1.0) ** self.gamma
        x = np.clip(x * self.exposure + self.noise, 0.0, 1.0)
        return np.rint(x * 255.0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class NormalCXR:
    """A generated normal chest X-ray with the anatomy that anomaly placement needs."""

    image: np.ndarray  # [size, size] uint8
    brightness: np.ndarray  # [size, size] float32 anatomy before the exposure
    camera: Camera
    pose: Pose
    coords: np.ndarray  # [2, size, size] anatomy coordinates (x, y) of each pixel
    midline: float  # x of the midline in anatomy coordinates
    lungs: tuple[Lung, Lung]  # image left, image right
    lung_alpha: np.ndarray  # [2, size, size] soft lung fields (image left, image right)
    lung_darkening: np.ndarray  # [2, size, size] brightness each lung takes away

    @property
    def lung_mask(self) -> np.ndarray:
        """[size, size] bool: the lung fields."""
        return self.lung_alpha.max(axis=0) >= 0.5

    @property
    def pixels_per_unit(self) -> float:
        """Pixels per anatomy unit."""
        return self.image.shape[0] / 2 * self.pose.scale


def _random_pose(rng: np.random.Generator) -> Pose:
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    shift = rng.uniform(-0.09, 0.09, 2)
    return Pose(float(rng.uniform(0.92, 1.08)), float(angle), (float(shift[0]), float(shift[1])))


def _lung_shapes(rng: np.random.Generator, body_width: float) -> tuple[Lung, Lung]:
    """Both lungs: shared subject values plus each side's own deviation (asymmetry)."""
    medial = rng.uniform(0.11, 0.15)
    lateral = body_width - rng.uniform(0.08, 0.14)
    top = rng.uniform(-0.8, -0.66)
    costophrenic = rng.uniform(0.42, 0.62)
    dome_height = rng.uniform(0.1, 0.2)
    # The right hemidiaphragm (image left) usually sits higher, over the liver.
    right_higher = rng.uniform(0.0, 0.08)
    lungs = []
    for side in (-1, 1):
        lat = lateral + rng.uniform(-0.04, 0.04)
        cp = costophrenic + rng.uniform(-0.04, 0.04) + (right_higher if side > 0 else 0.0)
        med = medial + rng.uniform(-0.01, 0.01)
        lungs.append(
            Lung(
                side=side,
                medial=med,
                lateral=lat,
                top=top + rng.uniform(-0.03, 0.03),
                costophrenic=cp,
                dome=cp - dome_height * rng.uniform(0.8, 1.2),
                dome_q=med + rng.uniform(0.3, 0.5) * (lat - med),
            )
        )
    return lungs[0], lungs[1]


def _lung_margin(
    lung: Lung,
    q: np.ndarray,
    y: np.ndarray,
    wall_power: float,
    apex_curvature: float,
    knob: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance to a lung's border (positive inside; the heart not yet cut
    out) and the height of the diaphragm under each pixel."""
    t = np.clip((y - lung.top) / (lung.costophrenic - lung.top), 0.0, 1.0)
    # The lateral wall: narrow at the apex, bulging out and down to the costophrenic angle.
    wall = lung.medial + (lung.lateral - lung.medial) * (1.0 - 0.75 * (1.0 - t) ** wall_power)
    apex_q = lung.medial + 0.4 * (lung.lateral - lung.medial)
    apex = lung.top + apex_curvature * (q - apex_q) ** 2
    # The dome: highest at dome_q, falling steeply to the costophrenic angle, gently medially.
    fall = lung.costophrenic - lung.dome
    out = np.clip((q - lung.dome_q) / (lung.lateral - lung.dome_q), 0.0, None)
    inner = np.clip((lung.dome_q - q) / (lung.dome_q - lung.medial), 0.0, None)
    diaphragm = lung.dome + fall * out**2 + 0.35 * fall * inner**2
    margin = np.minimum.reduce([wall - q, q - lung.medial - knob, y - apex, (diaphragm - y) * 0.8])
    return margin, diaphragm


def _ribs(
    rng: np.random.Generator, top: float, bottom: float, body_width: float, midline: float
) -> tuple[list, list]:
    """Posterior and anterior ribs of both sides down to `bottom`, as `_draw` curves."""
    posterior, anterior = [], []
    spacing = rng.uniform(0.115, 0.15)
    growth = rng.uniform(0.02, 0.06)  # lower ribs lie further apart
    rise = rng.uniform(0.04, 0.12)  # the posterior rib first rises leaving the spine,
    bend = rng.uniform(0.14, 0.3)  # then curves down towards the lateral wall
    droop = rng.uniform(0.05, 0.15)
    slope = rng.uniform(0.35, 0.6)  # anterior ribs run down and in
    width = rng.uniform(0.024, 0.032)
    amount = rng.uniform(0.07, 0.1)
    s = np.linspace(0.0, 1.0, 24)
    for side in (-1, 1):
        y0 = top - rng.uniform(0.04, 0.1)
        for i in range(12):
            if y0 > bottom:
                break
            reach = body_width - 0.08 - 0.06 * max(0, 2 - i)
            q = 0.05 + s * (reach - 0.05)
            y = y0 + rng.uniform(-0.015, 0.015) - rise * s + bend * s**2 + droop * s**4
            posterior.append((np.stack([midline + side * q, y], -1), width, amount))
            qa = reach - s * (reach - rng.uniform(0.22, 0.32))
            ya = y[-1] - 0.02 + slope * (reach - qa)
            anterior.append((np.stack([midline + side * qa, ya], -1), 1.2 * width, 0.55 * amount))
            y0 += spacing * (1.0 + growth * i)
    return posterior, anterior


def _vessels(rng: np.random.Generator, side: int, hilum: tuple[float, float]) -> list:
    """Pulmonary vessels branching out of a hilum, as `_draw` curves."""
    curves = []
    stack = [
        (hilum, rng.uniform(-1.3, 1.3), rng.uniform(0.18, 0.3), 0.014, rng.uniform(0.05, 0.08), 0)
        for _ in range(rng.integers(6, 10))
    ]
    while stack:
        (x, y), angle, length, half_width, amount, depth = stack.pop()
        steps = max(2, int(length / 0.03))
        turns = np.cumsum(rng.normal(0.0, 0.15, steps))
        xs = x + side * 0.03 * np.cumsum(np.cos(angle + turns))
        ys = y + 0.03 * np.cumsum(np.sin(angle + turns))
        points = np.stack([np.concatenate([[x], xs]), np.concatenate([[y], ys])], -1)
        curves.append((points, half_width, amount))
        if depth < 2:
            end, heading = (xs[-1], ys[-1]), angle + turns[-1]
            for turn in (-1, 1):
                child = heading + turn * rng.uniform(0.25, 0.6)
                stack.append(
                    (end, child, 0.75 * length, 0.75 * half_width, 0.7 * amount, depth + 1)
                )
    return curves


def _camera(rng: np.random.Generator, size: int) -> Camera:
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    py, px = np.meshgrid(grid, grid, indexing="ij")
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    exposure = 1.0 + rng.uniform(0.0, 0.08) * (direction[0] * py + direction[1] * px)
    exposure += 0.03 * _smooth_field(rng, size, 4)
    white = rng.uniform(0.006, 0.018) * rng.standard_normal((size, size))
    grain = rng.uniform(0.004, 0.012) * _smooth_noise(rng, (size, size), 0.8)
    return Camera(
        contrast=float(rng.uniform(0.9, 1.1)),
        offset=float(rng.uniform(-0.04, 0.04)),
        gamma=float(rng.uniform(0.85, 1.2)),
        exposure=exposure.astype(np.float32),
        noise=(white + grain).astype(np.float32),
    )


def make_normal_cxr(rng: np.random.Generator, size: int = 128) -> NormalCXR:
    """Draws one normal subject: anatomy, pose and exposure (see the module docstring)."""
    pose = _random_pose(rng)
    coords = pose.coordinates(size)
    x, y = coords
    edge = 1.2 / (size / 2 * pose.scale)  # anatomy units of a soft edge (1.2 px)
    midline = rng.uniform(-0.03, 0.03)

    # Body: torso, shoulders, neck; thicker (brighter) in the middle.
    neck = rng.uniform(0.3, 0.38)
    body_width = rng.uniform(0.88, 0.98)
    shoulder = rng.uniform(-0.95, -0.8)
    t = np.clip((y + 1.0) / (shoulder + 1.0), 0.0, 1.0)
    half = neck + (body_width - neck) * t * t * (3 - 2 * t)
    body = _soft(half - np.abs(x - midline), 2 * edge)
    thick = np.sqrt(np.clip(1.0 - ((x - midline) / half) ** 2, 0.0, 1.0))
    b = body * (rng.uniform(0.28, 0.34) + rng.uniform(0.2, 0.26) * thick)

    # Heart: a tilted ellipse left of the midline (image right), its lower half under the domes.
    lungs = _lung_shapes(rng, body_width)
    hx = midline + rng.uniform(0.12, 0.2)
    hy = 0.5 * (lungs[0].dome + lungs[1].dome) - rng.uniform(0.06, 0.14)
    ha, hb = rng.uniform(0.4, 0.48), rng.uniform(0.3, 0.36)
    phi = rng.uniform(0.3, 0.6)
    u = np.cos(phi) * (x - hx) + np.sin(phi) * (y - hy)
    v = -np.sin(phi) * (x - hx) + np.cos(phi) * (y - hy)
    heart_margin = (1.0 - np.sqrt((u / ha) ** 2 + (v / hb) ** 2)) * hb
    heart = _soft(heart_margin, 1.5 * edge)

    # Lung fields (the aortic knob indents the left one) and the diaphragm.
    knob_y, knob = rng.uniform(-0.45, -0.32), rng.uniform(0.03, 0.07)
    alphas, darks, diaphragms = [], [], []
    lung_depth = rng.uniform(0.3, 0.36)
    for lung in lungs:
        q = lung.side * (x - midline)
        bump = knob * np.exp(-0.5 * ((y - knob_y) / 0.06) ** 2) if lung.side > 0 else 0.0
        margin, diaphragm = _lung_margin(
            lung, q, y, rng.uniform(2.4, 3.4), rng.uniform(3.0, 5.0), bump
        )
        margin = np.minimum(margin, -heart_margin)
        alpha = _soft(margin, 1.5 * edge)
        # Darkest inside, where the lung is thickest.
        depth = 1.0 - np.exp(-np.clip(margin, 0.0, None) / rng.uniform(0.06, 0.1))
        dark = lung_depth * rng.uniform(0.95, 1.05) * alpha * (0.55 + 0.45 * depth)
        alphas.append(alpha)
        darks.append(dark.astype(np.float32))
        diaphragms.append(diaphragm)
    lung_any = np.maximum(alphas[0], alphas[1])

    # Abdomen under the domes, maybe with a gastric air bubble under the left one.
    abdomen = _soft(y - np.where(x < midline, diaphragms[0], diaphragms[1]), 2 * edge)
    b = b + body * rng.uniform(0.1, 0.16) * abdomen
    if rng.uniform() < 0.6:
        gx = midline + lungs[1].dome_q + rng.uniform(-0.05, 0.1)
        gy = lungs[1].dome + rng.uniform(0.1, 0.16)
        r = np.hypot((x - gx) / rng.uniform(0.07, 0.12), (y - gy) / rng.uniform(0.04, 0.06))
        b = b - rng.uniform(0.06, 0.12) * _soft((1.0 - r) * 0.05, 2 * edge)

    # Mediastinum and heart; the spine's vertebrae faintly through them.
    med = np.where(x < midline, lungs[0].medial, lungs[1].medial)
    band = _soft(med + 0.01 - np.abs(x - midline), 2 * edge) * (1.0 - 0.7 * abdomen)
    heart = heart * (1.0 - abdomen)
    b = b + body * np.maximum(rng.uniform(0.1, 0.14) * band, rng.uniform(0.1, 0.14) * heart)
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * y / rng.uniform(0.1, 0.13))
    b = b + 0.015 * body * vertebrae * _soft(0.06 - np.abs(x - midline), 2 * edge)

    # Airways: the trachea down to the carina, then the main bronchi (dark).
    carina = rng.uniform(-0.36, -0.24)
    ty = np.linspace(-1.3, carina, 12)
    tx = midline + rng.uniform(-0.02, 0.02) * (ty - carina)
    airways = [(np.stack([tx, ty], -1), 0.028, 0.09)]
    for side, tilt in ((-1, rng.uniform(0.4, 0.55)), (1, rng.uniform(0.7, 0.9))):
        length = rng.uniform(0.12, 0.16)
        end = (tx[-1] + side * length * np.sin(tilt), carina + length * np.cos(tilt))
        airways.append((np.array([(tx[-1], carina), end]), 0.02, 0.07))
    b = b - _draw(pose, size, airways, 0.5)

    # Lungs with their hila and vessels.
    vessels = []
    for lung, alpha, dark in zip(lungs, alphas, darks, strict=True):
        hilum = (
            midline + lung.side * (lung.medial + rng.uniform(0.06, 0.1)),
            rng.uniform(-0.2, -0.08) - (0.04 if lung.side > 0 else 0.0),
        )
        glow = np.exp(-0.5 * ((x - hilum[0]) ** 2 + (y - hilum[1]) ** 2) / 0.07**2)
        b = b - dark + rng.uniform(0.06, 0.1) * glow * alpha
        vessels += _vessels(rng, lung.side, hilum)
    b = b + (_draw(pose, size, vessels, 0.6) + 0.015 * _smooth_noise(rng, x.shape, 1.5)) * lung_any

    # Bones: ribs (clearest over the lungs), then the clavicles.
    top = min(lungs[0].top, lungs[1].top)
    bottom = max(lungs[0].costophrenic, lungs[1].costophrenic)
    posterior, anterior = _ribs(rng, top, bottom, body_width, midline)
    ribs = _draw(pose, size, posterior, 0.5) + _draw(pose, size, anterior, 0.5)
    b = b + body * ribs * (0.4 + 0.6 * lung_any)
    clavicle_y = top + rng.uniform(0.14, 0.22)
    clavicles = []
    for side in (-1, 1):
        s = np.linspace(0.0, 1.0, 16)
        cq = 0.09 + s * rng.uniform(0.55, 0.7)
        cy = clavicle_y + rng.uniform(-0.02, 0.02) - rng.uniform(0.1, 0.2) * s
        cy = cy + 0.015 * np.sin(2 * np.pi * s)
        clavicles.append((np.stack([midline + side * cq, cy], -1), rng.uniform(0.03, 0.038), 0.18))
    b = (b + body * _draw(pose, size, clavicles, 0.5)).astype(np.float32)

    camera = _camera(rng, size)
    return NormalCXR(
        image=camera.render(b),
        brightness=b,
        camera=camera,
        pose=pose,
        coords=coords,
        midline=float(midline),
        lungs=lungs,
        lung_alpha=np.stack(alphas),
        lung_darkening=np.stack(darks),
    )


# ---------------------------------------------------------------------------------------------
# Anomalies
# ---------------------------------------------------------------------------------------------


def _seed_point(
    rng: np.random.Generator, inside: np.ndarray, min_depth: float
) -> tuple[int, int] | None:
    """A random pixel at least `min_depth` pixels inside a region (None if there is none)."""
    depth = ndi.distance_transform_edt(inside)
    candidates = np.argwhere(depth >= min_depth)
    if len(candidates) == 0:
        return None
    cy, cx = candidates[rng.integers(len(candidates))]
    return int(cy), int(cx)


def _opacity(
    rng: np.random.Generator, normal: NormalCXR, side: int, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A patchy consolidation covering about `fraction` of one lung: (brightness, weight)."""
    lung = normal.lung_alpha[side]
    inside = lung >= 0.5
    radius = np.sqrt(fraction * inside.sum() / np.pi)
    centre = _seed_point(rng, inside, min(0.5 * radius, 4.0)) or _seed_point(rng, inside, 0.0)
    shape = lung.shape
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    # Overlapping blobs, roughened by smooth multiplicative noise: an irregular patchy envelope.
    field = np.zeros(shape, np.float32)
    for k in range(rng.integers(2, 6)):
        oy, ox = (0.0, 0.0) if k == 0 else rng.normal(0.0, 0.55 * radius, 2)
        rk = radius * rng.uniform(0.45, 0.8)
        d2 = (rows - centre[0] - oy) ** 2 + (cols - centre[1] - ox) ** 2
        field = np.maximum(field, np.exp(-0.5 * d2 / rk**2) * rng.uniform(0.8, 1.0))
    field *= 1.0 + 0.35 * _smooth_noise(rng, shape, max(1.0, radius / 4))
    core = field >= np.quantile(field[inside], 1.0 - fraction)
    # A soft edge 2-5 px wide across the core's border (weight 0.5 on it).
    signed = ndi.distance_transform_edt(core) - ndi.distance_transform_edt(~core)
    weight = np.clip((signed - 0.5) / rng.uniform(2.0, 5.0) + 0.5, 0.0, 1.0) * lung
    # Inner texture: denser and lighter patches, a few air-filled bronchi left darker.
    texture = np.clip(0.8 + 0.2 * _smooth_noise(rng, shape, 1.2), 0.4, 1.2)
    amount = rng.uniform(0.15, 0.28)
    return amount * weight * texture, weight


def _nodule(rng: np.random.Generator, normal: NormalCXR, side: int) -> tuple[np.ndarray, ...]:
    """A small round soft-edged density in one lung: (brightness, weight)."""
    lung = normal.lung_alpha[side]
    radius = normal.pixels_per_unit * rng.uniform(0.045, 0.075)
    centre = _seed_point(rng, lung >= 0.5, radius + 2.0) or _seed_point(rng, lung >= 0.5, 0.0)
    rows, cols = np.mgrid[: lung.shape[0], : lung.shape[1]].astype(np.float32)
    dy, dx = rows - centre[0], cols - centre[1]
    dist = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    wobble = 1.0 + 0.12 * np.sin(2 * theta + rng.uniform(0, 2 * np.pi))
    weight = np.clip((radius * wobble - dist) / 1.5 + 0.5, 0.0, 1.0) * lung
    dome = np.sqrt(np.clip(1.0 - (dist / (radius + 1.0)) ** 2, 0.0, 1.0))
    amount = rng.uniform(0.15, 0.25)
    return amount * weight * (0.75 + 0.25 * dome), weight


def _effusion(rng: np.random.Generator, normal: NormalCXR, side: int) -> tuple[np.ndarray, ...]:
    """Fluid in the base of one lung under a meniscus rising laterally: (brightness, weight)."""
    lung, alpha = normal.lungs[side], normal.lung_alpha[side]
    x, y = normal.coords
    q = lung.side * (x - normal.midline)
    lateral = np.clip((q - lung.medial) / (lung.lateral - lung.medial), 0.0, 1.3)
    height = y + rng.uniform(0.1, 0.25) * lateral**2  # constant along the meniscus
    inside = alpha >= 0.5
    level = np.quantile(height[inside], 1.0 - rng.uniform(0.12, 0.35))
    edge = rng.uniform(1.5, 3.0) / normal.pixels_per_unit  # a hazy upper border
    weight = np.clip((height - level) / edge + 0.5, 0.0, 1.0) * alpha
    denser = 0.85 + 0.15 * np.clip((height - level) / 0.15, 0.0, 1.0)
    # Fluid takes back what the aerated lung took from the soft tissue, or nearly.
    fluid = normal.lung_darkening[side] * rng.uniform(0.85, 1.0) + rng.uniform(0.0, 0.04)
    return fluid * weight * denser, weight


def add_anomaly(
    normal: NormalCXR, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draws an anomaly of `kind` (`ANOMALY_TYPES`) into a normal image.

    The anomaly is added to the anatomy before the exposure, so pixels it does not touch keep
    their normal values. Returns the uint8 image and its bool mask (weight >= `MASK_THRESHOLD`,
    inside the lung fields).
    """
    delta = np.zeros_like(normal.brightness)
    weight = np.zeros_like(normal.brightness)
    side = int(rng.integers(2))
    if kind == "opacity":
        parts = [(side, rng.uniform(0.05, 0.25))]
        if rng.uniform() < 0.35:  # a second one, in either lung
            parts.append((int(rng.integers(2)), rng.uniform(0.05, 0.15)))
        drawn = [_opacity(rng, normal, s, f) for s, f in parts]
    elif kind == "nodule":
        drawn = [_nodule(rng, normal, side)]
    elif kind == "effusion":
        drawn = [_effusion(rng, normal, side)]
    else:
        raise ValueError(f"unknown anomaly type {kind!r}, expected one of {ANOMALY_TYPES}")
    for d, w in drawn:
        delta = np.maximum(delta, d)
        weight = np.maximum(weight, w)
    mask = (weight >= MASK_THRESHOLD) & normal.lung_mask
    return normal.camera.render(normal.brightness + delta), mask


# ---------------------------------------------------------------------------------------------
# Dataset folder
# ---------------------------------------------------------------------------------------------


def anomaly_counts(n: int) -> dict[str, int]:
    """How many of `n` anomalous test images each type gets (`ANOMALY_SHARES`), in the order
    of `ANOMALY_TYPES`; opacities take what rounding leaves."""
    counts = {t: round(ANOMALY_SHARES[t] * n) for t in ANOMALY_TYPES if t != "opacity"}
    return {"opacity": n - sum(counts.values()), **counts}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One stream per image: an image does not depend on how many others are generated.
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _save(path: pathlib.Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG")


_README = """\
Synthetic chest X-ray demo ({version}) for jaxad, generated by jaxad.data.cxr_phantom with seed
{seed}. SYNTHETIC DATA, NOT FOR CLINICAL USE: procedural frontal chest radiographs, {size}x{size}
8-bit greyscale PNGs, MVTec-AD layout.

Every subject has its own anatomy (lung fields, diaphragm, heart, mediastinum, ribs, clavicles,
body outline), pose and exposure. Anomalies in the test set:
  opacity   one or two patchy consolidations in a lung ({opacity} images)
  effusion  fluid in the base of a lung under a meniscus ({effusion} images)
  nodule    a small round density in a lung ({nodule} images)
Masks are 0/255 PNGs marking the anomalous pixels (anomaly weight >= {threshold}), inside the lungs.

  train/good/            {n_train} normal images
  test/good/             {n_test_good} normal images
  test/<type>/           anomalous images
  ground_truth/<type>/   <stem>_mask.png for every test/<type>/<stem>.png
"""


def generate_cxr_demo(
    root: str | os.PathLike,
    *,
    n_train: int = 400,
    n_test_good: int = 100,
    n_test_anomalous: int = 100,
    size: int = 128,
    seed: int = 0,
) -> pathlib.Path:
    """Writes the dataset into `root` (created if needed); the completion marker goes last.

    The anomalous test images are split between the types by `anomaly_counts`. Not safe against
    concurrent writers to the same root; `ensure_cxr_demo` is.
    """
    root = pathlib.Path(root)
    counts = anomaly_counts(n_test_anomalous)
    width = max(3, len(str(max(n_train, n_test_good, n_test_anomalous, 1) - 1)))
    good = {"train": root / "train" / "good", "test_good": root / "test" / "good"}
    for split, folder in good.items():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_train if split == "train" else n_test_good):
            image = make_normal_cxr(_rng(seed, split, i), size).image
            _save(folder / f"{i:0{width}d}.png", image)
    for kind, count in counts.items():
        if count == 0:
            continue
        images, masks = root / "test" / kind, root / "ground_truth" / kind
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = _rng(seed, kind, i)
            image, mask = add_anomaly(make_normal_cxr(rng, size), kind, rng)
            _save(images / f"{i:0{width}d}.png", image)
            _save(masks / f"{i:0{width}d}_mask.png", mask.astype(np.uint8) * 255)
    info = dict(
        version=VERSION,
        seed=seed,
        size=size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_anomalous=n_test_anomalous,
        anomalies=counts,
        threshold=MASK_THRESHOLD,
    )
    (root / "README.txt").write_text(
        _README.format(**{k: v for k, v in info.items() if k != "anomalies"}, **counts)
    )
    (root / demo.MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return root


def ensure_cxr_demo(root: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """Returns the chest X-ray demo folder, generating it first if it is missing or incomplete
    (`jaxad.data.demo.ensure_generated`; by default ``$JAXAD_DATA_DIR/demo/cxr_v2`` or
    ``~/.cache/jaxad/demo/cxr_v2``)."""
    return demo.ensure_generated(VERSION, generate_cxr_demo, root, seed=seed)
