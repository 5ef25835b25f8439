r"""Independent test sets for jaxad's methods, made by generators that share no code with the demos.

    python bench/independent_sets.py --out=DIR [--sets=fundus,dbt,cxr,brain] [--size=128]
        [--n_train=200] [--n_test_good=40] [--n_test_anomalous=40] [--seed=0] [--force]
        [--brain_source=auto|mni152|nibabel]

Each method was tuned on a demo dataset whose generator was designed together with it, so a good
demo score may only mean that the method learnt that generator. These four sets are drawn
differently (other lesion shapes, sizes, colours and textures, other normal variation), from
real images that pip packages ship where possible:

- `fundus` (RGB; for Lesion2Void): `skimage.data.retina` (the demo's photo too) under its own
  pose and camera model: zoom 0.85-1.15, any rotation, left/right flip, colour temperature,
  vignetting, uneven light, gamma, defocus and sensor noise. Lesions: `cotton_wool` (pale
  fluffy feathered patches), `drusen` (clusters of soft-haloed yellow spots at the macula),
  `preretinal` (a large dark-red boat-shaped haemorrhage with a flat top) and `laser_scars`
  (arcs of dark-centred, pale-rimmed burns); the demo draws red dots, ragged blots, flame
  streaks and crisp bright exudates.
- `dbt` (DBT-like; for PICARD): a procedural breast (half superellipse on a random side, skin
  line, 1/f^beta parenchyma thresholded into glandular clumps, Cooper's ligaments) on black; the
  demo is sinusoidal gratings. Lesions: `spiculated_mass`, `calcifications`,
  `architectural_distortion` (warp toward a point + converging lines), `circumscribed_mass`.
- `cxr` (chest X-ray-like; for MorphAEus): superellipse body, Catmull-Rom lungs from jittered
  control points, elliptical heart, clavicle bands, ribs as arcs of ellipses, radial vessel
  markings, pose/exposure/noise. Lesions: `mass` (lobulated, sharp), `pneumothorax` (lucent
  apico-lateral rim without markings, visible pleural line), `cavity` (thick bright ring, dark
  centre), `interstitial` (reticular network in a lower zone); the demo's are patchy
  consolidation, a round soft nodule and an effusion.
- `brain` (axial slices; for the DPA): nilearn's bundled MNI152 2 mm template (or, without
  nilearn, nibabel's bundled example EPI head) under elastic deformation, scaling, rotation, bias
  field, gamma and Rician noise, slices from the middle half of the brain. Lesions:
  `ring_lesion` (bright rim, dark core, hypointense oedema), `infarct` (wedge following tissue),
  `mass_effect` (tissue pushed outward + mild hyperintensity), `texture` (high-frequency noise at
  the local mean); the demo blends uniform-colour ellipsoids into a procedural head.

Layout per set (MVTec-AD, what `jaxad.data.folder` reads): `DIR/<set>_indep/train/good/000.png`,
`test/good/`, `test/<type>/`, `ground_truth/<type>/000_mask.png` (0/255) and `generator.json`
(parameters, counts, version). `--n_test_anomalous` is the total, spread round-robin over the
types. A set is written into a hidden `DIR/.<set>.partial-*` folder renamed at the end (a killed
run leaves only that, safe to delete), and a complete set is skipped unless `--force`.
Image i of a split depends only on (seed, set, split, i). Every generator is a pure pair
`normal(rng, ctx) -> Sample` and `anomalous(rng, sample, type) -> (image, mask)`: a Sample is
the object (`scene`) plus its acquisition (`camera`), so a lesion goes through the same
illumination, blur and noise as the normal tissue around it.

The results table lives in bench/README.md, made with
`python -m jaxad.bench quality --datasets= --folder=DIR/fundus_indep --folder=DIR/dbt_indep
--folder=DIR/cxr_indep --folder=DIR/brain_indep --out=OUT`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image
from scipy import ndimage

VERSION = "independent_sets 1.0"
SETS = ("fundus", "dbt", "cxr", "brain")
BRAIN_SOURCES = ("auto", "mni152", "nibabel")
Rng = np.random.Generator


@dataclass
class Sample:
    """A normal image before acquisition: `camera(scene)` is the image in [0, 1]; `aux` holds
    the regions lesions may go into (fov, breast, lungs, brain) and other per-subject fields."""

    scene: np.ndarray
    camera: Callable[[np.ndarray], np.ndarray]
    aux: dict[str, Any] = field(default_factory=dict)

    def image(self) -> np.ndarray:
        return self.camera(self.scene)


# --- shared drawing helpers ------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(np.float32), xx.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


def smooth_noise(rng: Rng, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit std: smooth random fields of a chosen scale."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def power_noise(rng: Rng, size: int, beta: float) -> np.ndarray:
    """Noise with a 1/f^beta power spectrum, the measured spectrum of breast parenchyma."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    f[0, 0] = 1.0
    amp = f ** (-beta / 2)
    amp[0, 0] = 0.0
    n = np.fft.ifft2(amp * np.fft.fft2(rng.standard_normal((size, size)))).real
    return ((n - n.mean()) / n.std()).astype(np.float32)


def blob(rng: Rng, size: int, center, radius: float, *, rough=0.25, edge=1.0, aspect=1.0):
    """Soft alpha of a blob whose radius varies with angle by random harmonics 2-5."""
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - center[0], xx - center[1]
    u, v = dx * np.cos(a) + dy * np.sin(a), (dy * np.cos(a) - dx * np.sin(a)) / aspect
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    k = np.arange(2, 6)[:, None, None]
    amp = rng.normal(0, rough, (4, 1, 1)) / k * 2
    r = radius * (1 + (amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (4, 1, 1)))).sum(0))
    return _sigmoid((np.maximum(r, 0.4 * radius) - rho) / edge)


def pick_point(rng: Rng, region: np.ndarray, margin: float) -> np.ndarray:
    """A random (y, x) at least `margin` px inside `region` (else among its deepest pixels)."""
    dist = ndimage.distance_transform_edt(region)
    ok = np.argwhere(dist > margin)
    if len(ok) == 0:
        ok = np.argwhere(dist >= 0.8 * dist.max())
    return ok[rng.integers(len(ok))] + rng.uniform(-0.5, 0.5, 2)


def draw_curve(canvas: np.ndarray, pts: np.ndarray, w0: float = 1.0, w1: float = 1.0) -> None:
    """Antialiased polyline through (y, x) points, weight tapering from w0 to w1 (max-composed)."""
    from skimage.draw import line_aa

    p = np.round(pts).astype(int)
    n = len(p) - 1
    for i in range(n):
        rr, cc, val = line_aa(*p[i], *p[i + 1])
        ok = (rr >= 0) & (rr < canvas.shape[0]) & (cc >= 0) & (cc < canvas.shape[1])
        w = w0 + (w1 - w0) * i / max(n - 1, 1)
        np.maximum.at(canvas, (rr[ok], cc[ok]), (val[ok] * w).astype(canvas.dtype))


def bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * t * (1 - t) * np.asarray(p1) + t**2 * np.asarray(p2)


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


Lesion = Callable[[Rng, Sample], tuple[np.ndarray, np.ndarray]]
LESIONS: dict[str, dict[str, Lesion]] = {name: {} for name in SETS}


def lesion(set_name: str) -> Callable[[Lesion], Lesion]:
    """Register `(rng, sample) -> (scene, mask)` as anomaly type `fn.__name__` of `set_name`."""

    def add(fn: Lesion) -> Lesion:
        LESIONS[set_name][fn.__name__.lstrip("_")] = fn
        return fn

    return add


# --- fundus: skimage's real retina photograph ---------------------------------------------------


def load_fundus(size: int, **_: Any) -> dict:
    """The retina photo, anti-aliased once to 2x the output size (warps then sample it cheaply)."""
    from skimage import data, transform

    n = max(2 * size, 64)
    rgb = transform.resize(data.retina(), (n, n), order=1, anti_aliasing=True).astype(np.float32)
    fov = ndimage.binary_opening(rgb.mean(-1) > 0.05, iterations=1)
    lab, k = ndimage.label(ndimage.binary_fill_holes(fov))
    fov = lab == 1 + np.argmax(ndimage.sum(fov, lab, range(1, k + 1)))
    return {"size": size, "rgb": rgb, "fov": fov.astype(np.float32), "macula": (0.499, 0.501)}


def normal_fundus(rng: Rng, ctx: dict) -> Sample:
    """Pose (zoom, any angle, eye side) in the scene; colour, light, focus and noise in camera."""
    size, src = ctx["size"], ctx["rgb"]
    n = src.shape[0]
    zoom, ang = rng.uniform(0.85, 1.15), rng.uniform(0, 2 * np.pi)
    mat = n / size / zoom * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    if rng.random() < 0.5:
        mat = mat @ np.diag([1.0, -1.0])  # the other eye
    centre = np.full(2, (n - 1) / 2) + rng.uniform(-0.04, 0.04, 2) * n
    offset = centre - mat @ np.full(2, (size - 1) / 2)
    warp = lambda a: ndimage.affine_transform(a, mat, offset, output_shape=(size, size), order=1)
    fov = warp(ctx["fov"]) > 0.5
    scene = np.stack([warp(src[..., c]) for c in range(3)], -1) * fov[..., None]
    macula = np.linalg.solve(mat, np.array(ctx["macula"]) * (n - 1) - offset)

    yy, xx = _grid(size)
    gains = rng.uniform([0.85, 0.85, 0.7], [1.15, 1.1, 1.3]) * rng.uniform(0.8, 1.15)
    vc = size / 2 + rng.uniform(-0.2, 0.2, 2) * size
    r2 = ((yy - vc[0]) ** 2 + (xx - vc[1]) ** 2) / (size / 2) ** 2
    illum = (1 - rng.uniform(0.15, 0.5) * np.minimum(r2, 1.5) / 1.5) * np.exp(
        0.1 * smooth_noise(rng, (size, size), size / 6)
    )
    gamma, blur = rng.uniform(0.8, 1.25), rng.uniform(0, 1.0) * size / 128
    noise = rng.normal(0, rng.uniform(0.004, 0.02), (size, size, 3)).astype(np.float32)

    def camera(s: np.ndarray) -> np.ndarray:
        img = np.clip(s * gains * illum[..., None], 0, 1) ** gamma
        img = ndimage.gaussian_filter(img, (blur, blur, 0)) if blur > 0.05 else img
        return np.clip(img + noise, 0, 1) * fov[..., None]

    return Sample(scene.astype(np.float32), camera, {"fov": fov, "macula": macula})


def _paint(scene: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    a = alpha[..., None]
    return scene * (1 - a) + np.asarray(colour, np.float32) * a


@lesion("fundus")
def _cotton_wool(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size, fov = s.scene.shape[0], s.aux["fov"]
    alpha = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.035, 0.07) * size
        a = blob(rng, size, pick_point(rng, fov, r + 3), r, rough=0.3, edge=0.3 * r, aspect=1.5)
        fluff = np.clip(0.8 + 0.2 * smooth_noise(rng, (size, size), 1.5 * size / 128), 0.4, 1)
        alpha = np.maximum(alpha, a * fluff * rng.uniform(0.6, 0.8))
    alpha *= fov
    return _paint(s.scene, alpha, (0.96, 0.9, 0.8)), alpha > 0.25


@lesion("fundus")
def _drusen(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size, fov = s.scene.shape[0], s.aux["fov"]
    yy, xx = _grid(size)
    spread, alpha = rng.uniform(0.05, 0.1) * size, np.zeros((size, size), np.float32)
    for _ in range(rng.integers(10, 36)):
        c = s.aux["macula"] + rng.normal(0, spread, 2)
        r, d = max(rng.uniform(0.008, 0.02) * size, 1.0), np.hypot(yy - c[0], xx - c[1])
        spot = 0.8 * _sigmoid((r - d) / 0.5) + 0.3 * np.exp(-((d / (2 * r)) ** 2))
        alpha = np.maximum(alpha, np.minimum(spot, 0.9))
    alpha *= fov
    return _paint(s.scene, alpha, (0.95, 0.82, 0.45)), alpha > 0.25


@lesion("fundus")
def _preretinal(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Blood settling under gravity: a boat shape with a flat upper level, darker below."""
    size, fov = s.scene.shape[0], s.aux["fov"]
    a = rng.uniform(0.07, 0.12) * size
    b = a * rng.uniform(0.55, 0.8)
    c, t = pick_point(rng, fov, a + 2), rng.uniform(-0.3, 0.3)
    yy, xx = _grid(size)
    u = (xx - c[1]) * np.cos(t) + (yy - c[0]) * np.sin(t)
    v = (yy - c[0]) * np.cos(t) - (xx - c[1]) * np.sin(t)
    level = rng.uniform(-0.35, 0.1) * b
    alpha = _sigmoid((1 - np.hypot(u / a, v / b)) * b / 0.8) * _sigmoid((v - level) / 0.6)
    alpha *= 0.9 * fov
    depth = np.clip((v - level) / (b - level), 0, 1)[..., None]
    colour = (1 - depth) * np.array([0.5, 0.07, 0.04]) + depth * np.array([0.28, 0.03, 0.02])
    return _paint(s.scene, alpha, colour), alpha > 0.25


@lesion("fundus")
def _laser_scars(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Photocoagulation burns on arcs around the macula: pigmented centre, atrophic pale rim."""
    size, fov = s.scene.shape[0], s.aux["fov"]
    yy, xx = _grid(size)
    scene, mask = s.scene, np.zeros((size, size), bool)
    r = max(rng.uniform(0.012, 0.02) * size, 1.8)
    for ring in range(rng.integers(1, 3)):
        rad = (rng.uniform(0.22, 0.3) + 0.08 * ring) * size
        start, extent = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.8)
        for phi in np.arange(start, start + extent, 2.6 * r / rad):
            c = s.aux["macula"] + rad * np.array([np.sin(phi), np.cos(phi)]) + rng.normal(0, 0.5, 2)
            d = np.hypot(yy - c[0], xx - c[1])
            if not fov[int(np.clip(c[0], 0, size - 1)), int(np.clip(c[1], 0, size - 1))]:
                continue
            rim, core = 0.75 * _sigmoid((r - d) / 0.5), 0.85 * _sigmoid((0.5 * r - d) / 0.5)
            scene = _paint(scene, rim * fov, (0.92, 0.82, 0.62))
            scene = _paint(scene, core * fov, (0.2, 0.1, 0.05))
            mask |= (rim * fov) > 0.25
    return scene, mask


# --- dbt: procedural breast -------------------------------------------------------------------


def normal_dbt(rng: Rng, ctx: dict) -> Sample:
    """Half superellipse breast, 1/f^beta glandular clumps, ligaments and skin; black outside."""
    size = ctx["size"]
    yy, xx = _grid(size)
    depth_x = xx if rng.random() < 0.5 else size - 1 - xx
    cy, a, b = size * rng.uniform([0.42, 0.36, 0.55], [0.58, 0.47, 0.85])  # centre, semi-axes
    p = rng.uniform(1.8, 2.6)
    theta = np.arctan2(yy - cy, depth_x)
    wob = 1 + 0.03 * sum(rng.normal() * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    rad = ((np.abs(yy - cy) / a) ** p + (depth_x / b) ** p) ** (1 / p) / wob
    alpha, breast = _sigmoid((1 - rad) * min(a, b) / 0.7), rad < 1
    g = power_noise(rng, size, rng.uniform(2.5, 3.0)) - 1.5 * rad
    fg = _sigmoid((g - np.quantile(g[breast], 1 - rng.uniform(0.2, 0.5))) / 0.5)
    density = 0.28 + 0.32 * fg + 0.03 * fg * smooth_noise(rng, (size, size), 1.2 * size / 128)
    lig = np.zeros((size, size), np.float32)
    gy, gx = np.gradient(rad)
    for _ in range(rng.integers(6, 15)):
        p0 = pick_point(rng, breast & (rad > 0.45), 2)
        iy, ix = np.clip(p0.astype(int), 0, size - 1)
        t = _rot(np.array([-gx[iy, ix], gy[iy, ix]]), rng.uniform(-0.5, 0.5))
        t = t / (np.linalg.norm(t) + 1e-8) * rng.uniform(0.1, 0.25) * size
        bend = rng.uniform(-0.25, 0.25) * np.array([t[1], -t[0]])
        draw_curve(lig, bezier(p0, p0 + t / 2 + bend, p0 + t, 16), rng.uniform(0.6, 1))
    density += 0.1 * ndimage.gaussian_filter(lig, 0.4) * breast
    density += 0.12 * np.exp(-(((1 - rad) * min(a, b) / 1.2) ** 2)) * breast  # skin line
    gamma, gain, blur = rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.1), rng.uniform(0.3, 0.8)
    noise = rng.normal(0, rng.uniform(0.008, 0.02), (size, size)).astype(np.float32)

    def camera(s: np.ndarray) -> np.ndarray:
        img = np.clip(ndimage.gaussian_filter(s, blur) * gain, 0, 1) ** gamma
        return np.clip(img + noise, 0, 1) * alpha

    inner = ndimage.binary_erosion(breast, iterations=max(2, size // 40))
    return Sample((density * alpha).astype(np.float32), camera, {"breast": inner})


@lesion("dbt")
def _spiculated_mass(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size, region = s.scene.shape[0], s.aux["breast"]
    r = rng.uniform(0.035, 0.06) * size
    c = pick_point(rng, region, 2 * r)
    core, spic = blob(rng, size, c, r, rough=0.3, edge=0.8), np.zeros((size, size), np.float32)
    for phi in rng.uniform(0, 2 * np.pi, rng.integers(8, 17)):
        d = np.array([np.sin(phi), np.cos(phi)])
        end = c + d * r * rng.uniform(1.8, 3.4)
        mid = (c + end) / 2 + rng.normal(0, 0.1 * r, 2)
        draw_curve(spic, bezier(c + 0.7 * r * d, mid, end, 12), 1.0, 0.25)
    add = rng.uniform(0.22, 0.32) * core + 0.2 * spic
    return s.scene + add * region, ((core > 0.25) | (spic > 0.25)) & region


@lesion("dbt")
def _calcifications(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size, region = s.scene.shape[0], s.aux["breast"]
    yy, xx = _grid(size)
    spread = rng.uniform(0.015, 0.035) * size
    c, specks = pick_point(rng, region, 3 * spread), np.zeros((size, size), np.float32)
    for _ in range(rng.integers(5, 21)):
        p, w = c + rng.normal(0, spread, 2), rng.uniform(0.45, 0.9)
        specks += rng.uniform(0.5, 0.8) * np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / w**2)
    mask = ndimage.binary_dilation(specks > 0.2, iterations=2) & region
    return s.scene + np.minimum(specks, 0.9) * region, mask


@lesion("dbt")
def _architectural_distortion(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Tissue pulled toward a point (no central mass) plus thin lines converging on it."""
    size, region = s.scene.shape[0], s.aux["breast"]
    big_r = rng.uniform(0.08, 0.14) * size
    c = pick_point(rng, region, 1.3 * big_r)
    yy, xx = _grid(size)
    dy, dx = yy - c[0], xx - c[1]
    rho = np.hypot(dy, dx) + 1e-6
    pull = rng.uniform(0.5, 0.8) * rho * np.exp(-((rho / big_r) ** 4))  # monotone for < 0.87
    src = [yy + pull * dy / rho, xx + pull * dx / rho]
    inside = ndimage.map_coordinates((s.scene > 0.1).astype(np.float32), src, order=1) > 0.99
    warped = np.where(inside, ndimage.map_coordinates(s.scene, src, order=1), s.scene)  # no air
    lines = np.zeros((size, size), np.float32)
    for phi in rng.uniform(0, 2 * np.pi, rng.integers(4, 9)):
        d = np.array([np.sin(phi), np.cos(phi)])
        draw_curve(lines, np.array([c + 0.25 * big_r * d, c + rng.uniform(0.9, 1.4) * big_r * d]))
    out = warped + 0.16 * ndimage.gaussian_filter(lines, 0.3) * region
    return out, ((rho < big_r) | (pull > 0.5) | (lines > 0.25)) & region


@lesion("dbt")
def _circumscribed_mass(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size, region = s.scene.shape[0], s.aux["breast"]
    r = rng.uniform(0.04, 0.08) * size
    c = pick_point(rng, region, r + 2)
    a = blob(rng, size, c, r, rough=0.04, edge=0.5, aspect=rng.uniform(0.6, 1.0))
    return s.scene + rng.uniform(0.18, 0.28) * a * region, (a > 0.25) & region


# --- cxr: procedural chest radiograph ---------------------------------------------------------

_LUNG = np.array([(-0.30, -0.80), (-0.50, -0.68), (-0.66, -0.38), (-0.76, 0.02), (-0.82, 0.40),
                  (-0.80, 0.58), (-0.60, 0.50), (-0.38, 0.44), (-0.16, 0.38), (-0.13, 0.05),
                  (-0.15, -0.35), (-0.20, -0.65)])  # fmt: skip
_CATMULL_ROM = 0.5 * np.array([[0, 2, 0, 0], [-1, 0, 1, 0], [2, -5, 4, -1], [-1, 3, -3, 1]])


def catmull_rom(pts: np.ndarray, n: int = 10) -> np.ndarray:
    """Closed Catmull-Rom spline through control points: a smooth outline of any shape."""
    weights = np.linspace(0, 1, n, endpoint=False)[:, None] ** np.arange(4) @ _CATMULL_ROM
    k = len(pts)
    return np.concatenate([weights @ pts[[i - 1, i, (i + 1) % k, (i + 2) % k]] for i in range(k)])


def normal_cxr(rng: Rng, ctx: dict) -> Sample:
    """Structures in body coordinates (u, v) in [-1, 1], posed by one similarity per subject."""
    from skimage.draw import polygon2mask

    size = ctx["size"]
    ang, scale = np.deg2rad(rng.uniform(-5, 5)), rng.uniform(0.9, 1.05)
    shift = rng.uniform(-0.05, 0.05, 2)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    to_px = lambda uv: (scale * uv @ rot.T + shift + 1) * (size - 1) / 2  # (u, v) -> (x, y)
    yy, xx = _grid(size)
    q = (np.stack([xx, yy], -1) * 2 / (size - 1) - 1 - shift) / scale @ rot
    uu, vv = q[..., 0], q[..., 1]
    ab, bb, pw = rng.uniform(0.86, 0.97), rng.uniform(1.3, 1.5), rng.uniform(2.5, 4)
    body = _sigmoid((1 - (np.abs(uu / ab) ** pw + np.abs((vv - 0.25) / bb) ** pw)) * 20)
    scene = 0.06 + body * (0.5 + 0.08 * (1 - uu**2) + 0.05 * np.exp(-((uu / 0.06) ** 4)))
    lungs, marks, sx, sy = [], np.zeros((size, size), np.float32), *rng.uniform(0.92, 1.08, 2)
    for side in (-1, 1):
        ctrl = _LUNG * [-sx if side > 0 else sx, sy] + rng.normal(0, 0.02, _LUNG.shape)
        if side > 0:  # the left hemidiaphragm sits lower; the heart is the lung's medial border
            ctrl[[5, 6, 7], 1] += 0.03
            ctrl[[8, 9], 0] += (0.2, 0.06)
        xy = to_px(catmull_rom(ctrl))
        lung = ndimage.gaussian_filter(
            polygon2mask((size, size), xy[:, ::-1]).astype(np.float32), 0.8 * size / 128
        )
        lungs.append(lung)
        # vessels: zero-crossings of noise smooth along the radius, sharp along the angle
        hu, hv = side * 0.2 + rng.normal(0, 0.02), -0.05 + rng.normal(0, 0.02)
        polar = ndimage.gaussian_filter(rng.standard_normal((64, 24)), (1.2, 3), mode="wrap")
        rr = np.hypot(uu - hu, vv - hv)
        th = (np.arctan2(vv - hv, uu - hu) / (2 * np.pi) % 1) * 64
        n = ndimage.map_coordinates(polar / polar.std(), [th, np.sqrt(rr) * 20], mode="grid-wrap")
        marks += np.exp(-((n / 0.35) ** 2)) * (np.exp(-rr / 0.4) + 0.2) * lung
    lung_a = lungs[0] + lungs[1]
    scene -= 0.3 * lung_a
    hc = np.array([0.08, 0.3]) + rng.normal(0, 0.02, 2)
    hu, hv = _rot(np.stack([uu - hc[0], vv - hc[1]]), np.deg2rad(rng.uniform(20, 30)))
    heart = _sigmoid((1 - np.hypot(hu / rng.uniform(0.3, 0.36), hv / rng.uniform(0.2, 0.25))) * 12)
    scene += heart * (0.3 * lung_a + 0.03 * (1 - lung_a))
    for side in (-1, 1):
        for k in range(10):
            # posterior ribs rise from the spine then fall laterally; anterior ones fall medially
            vk, ax = -0.85 + 0.15 * k + rng.normal(0, 0.01), rng.uniform(0.65, 0.75)
            own = ((side * uu > 0) & (np.abs(uu - side * 0.15) < ax)) * body
            e = np.hypot((uu - side * 0.15) / ax, (vv - vk) / 0.3)
            scene += 0.045 * np.exp(-(((e - 1) * 0.3 / 0.022) ** 2)) * own * (vv < vk)
            e = np.hypot(uu / ax, (vv - vk + 0.05) / 0.25)
            ant = own * (vv > vk - 0.05) * (np.abs(uu) > 0.25)
            scene += 0.025 * np.exp(-(((e - 1) * 0.25 / 0.025) ** 2)) * ant
        cl = np.zeros((size, size), np.float32)
        p = [(side * 0.08, -0.66), (side * 0.35, -0.6 + rng.normal(0, 0.02)), (side * 0.66, -0.84)]
        draw_curve(cl, to_px(bezier(*np.array(p)))[:, ::-1])
        dist = ndimage.distance_transform_edt(cl < 0.5)
        scene += 0.14 * _sigmoid((0.025 * size * scale - dist) / 0.6)
    scene += 0.09 * marks
    gain, off = rng.uniform(1.2, 1.6), rng.uniform(-0.05, 0.05)
    gamma, blur = rng.uniform(0.8, 1.25), rng.uniform(0.4, 0.9) * size / 128
    noise = rng.normal(0, rng.uniform(0.008, 0.02), (size, size)).astype(np.float32)

    def camera(s: np.ndarray) -> np.ndarray:
        img = np.clip((ndimage.gaussian_filter(s, blur) - 0.1) * gain + off, 0, 1) ** gamma
        return np.clip(img + noise, 0, 1)

    aux = {"lungs": [lu > 0.5 for lu in lungs], "marks": 0.09 * marks}
    return Sample(scene.astype(np.float32), camera, aux)


def _in_lung(rng: Rng, s: Sample, margin: float) -> tuple[np.ndarray, np.ndarray]:
    lung = s.aux["lungs"][rng.integers(2)]
    return lung, pick_point(rng, lung, margin)


@lesion("cxr")
def _mass(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size = s.scene.shape[0]
    r = rng.uniform(0.04, 0.08) * size
    lung, c = _in_lung(rng, s, r + 2)
    yy, xx = _grid(size)
    alpha = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(3, 6)):  # lobules
        p, lobe = c + rng.normal(0, 0.35 * r, 2), rng.uniform(0.5, 0.8) * r
        alpha = np.maximum(alpha, _sigmoid((lobe - np.hypot(yy - p[0], xx - p[1])) / 0.5))
    alpha *= ndimage.gaussian_filter(lung.astype(np.float32), 1)
    return s.scene + rng.uniform(0.18, 0.28) * alpha, (alpha > 0.25) & lung


@lesion("cxr")
def _pneumothorax(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Air between chest wall and a retracted lung edge: no markings, a thin pleural line."""
    size, side = s.scene.shape[0], rng.integers(2)
    lung = s.aux["lungs"][side]
    d_in = ndimage.distance_transform_edt(lung)
    cy, cx = ndimage.center_of_mass(lung)
    yy, xx = _grid(size)
    aim = np.arctan2(-0.8, 0.6 if side else -0.6) + rng.uniform(-0.3, 0.3)
    dth = np.angle(np.exp(1j * (np.arctan2(yy - cy, xx - cx) - aim)))
    half = np.deg2rad(rng.uniform(50, 80))
    w = rng.uniform(0.05, 0.1) * size * np.sqrt(np.clip(np.cos(np.pi / 2 * dth / half), 0, 1))
    w *= np.abs(dth) < half
    region = lung & (d_in < w)
    line = np.exp(-(((d_in - w) / 0.6) ** 2)) * (w > 1.5) * lung
    out = s.scene - region * (s.aux["marks"] + 0.08) + 0.12 * line * ~region
    return out, region


@lesion("cxr")
def _cavity(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size = s.scene.shape[0]
    r = max(rng.uniform(0.035, 0.06) * size, 3.0)
    lung, c = _in_lung(rng, s, r + 2)
    outer = blob(rng, size, c, r, rough=0.15, edge=0.6)
    inner = blob(rng, size, c, r - max(rng.uniform(0.25, 0.4) * r, 1.2), rough=0.15, edge=0.6)
    wall = np.clip(outer - inner, 0, 1)
    out = s.scene + 0.22 * wall - inner * (0.06 + s.aux["marks"])
    return out, (outer > 0.25) & lung


@lesion("cxr")
def _interstitial(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size = s.scene.shape[0]
    lung = s.aux["lungs"][rng.integers(2)]
    cy = ndimage.center_of_mass(lung)[0]
    r = rng.uniform(0.1, 0.16) * size
    lower = lung & (_grid(size)[0] > cy)
    region = blob(rng, size, pick_point(rng, lower, 0.3 * r), r, rough=0.3, edge=2) * lung
    net = np.exp(-((smooth_noise(rng, (size, size), max(size / 90, 0.8)) / 0.35) ** 2))
    return s.scene + rng.uniform(0.1, 0.15) * net * region, (region > 0.25) & lung


# --- brain: real MNI152 template or nibabel's example EPI -------------------------------------


def resolve_brain_source(choice: str) -> str:
    """'mni152' when nilearn is importable (or asked for), else 'nibabel'."""
    has_nilearn = importlib.util.find_spec("nilearn") is not None
    if choice == "mni152" and not has_nilearn:
        raise ValueError("--brain_source=mni152 needs nilearn, which is not installed")
    return "mni152" if choice == "mni152" or (choice == "auto" and has_nilearn) else "nibabel"


def load_brain(size: int, brain_source: str = "auto", **_: Any) -> dict:
    """Axial slices (anterior up) of the volume in [0, 1], padded square, once per set."""
    import nibabel as nib

    if resolve_brain_source(brain_source) == "mni152":
        from nilearn import datasets

        img = datasets.load_mni152_template(resolution=2)
    else:
        img = nib.load(
            os.path.join(os.path.dirname(nib.__file__), "tests", "data", "example4d.nii.gz")
        )
    vol = np.asarray(nib.as_closest_canonical(img).dataobj, np.float32)
    vol = vol[..., 0] if vol.ndim == 4 else vol
    vol = np.clip(vol / np.percentile(vol[vol > 0], 99.5), 0, 1.2)
    slices = np.transpose(vol, (2, 1, 0))[:, ::-1]  # (z, anterior->posterior, x)
    n = max(slices.shape[1:])
    py, px = n - slices.shape[1], n - slices.shape[2]
    slices = np.pad(slices, ((0, 1), (py // 2, py - py // 2), (px // 2, px - px // 2)))
    area = (slices > 0.1).sum((1, 2))
    zs = np.flatnonzero(area > 0.5 * area.max())
    lo, hi = zs[0] + 0.25 * (zs[-1] - zs[0]), zs[0] + 0.75 * (zs[-1] - zs[0])
    return {"size": size, "slices": slices, "z": (lo, hi)}


def normal_brain(rng: Rng, ctx: dict) -> Sample:
    """A slice between two planes, posed and elastically deformed; bias, gamma, Rician noise."""
    size, vol = ctx["size"], ctx["slices"]
    z = rng.uniform(*ctx["z"])
    plane = (1 - z % 1) * vol[int(z)] + (z % 1) * vol[int(z) + 1]
    n = plane.shape[0]
    ang = np.deg2rad(rng.uniform(-8, 8))
    scl = rng.uniform(0.9, 1.1) * np.array([1, rng.uniform(0.95, 1.05)])
    mat = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / scl * n / size
    yy, xx = _grid(size)
    amp = rng.uniform(0.8, 1.6)
    ey, ex = (amp * smooth_noise(rng, (size, size), size / 10) for _ in range(2))
    o = np.stack([yy + ey - (size - 1) / 2, xx + ex - (size - 1) / 2]) + rng.uniform(
        -3, 3, (2, 1, 1)
    )
    src = np.einsum("ij,jhw->ihw", mat, o) + (n - 1) / 2
    scene = np.clip(ndimage.map_coordinates(plane, src, order=1), 0, None).astype(np.float32)
    brain = ndimage.binary_fill_holes(scene > 0.05)
    head = ndimage.binary_dilation(brain, iterations=1)
    bias = np.exp(
        0.05 * smooth_noise(rng, (size, size), size / 4)
        + 0.1 * (rng.uniform(-1, 1) * (yy / size - 0.5) + rng.uniform(-1, 1) * (xx / size - 0.5))
    )
    bias = np.clip(bias, 0.85, 1.15)
    gamma, sigma = rng.uniform(0.85, 1.2), rng.uniform(0.01, 0.03)
    n1, n2 = (rng.normal(0, sigma, (size, size)).astype(np.float32) for _ in range(2))
    top = np.percentile(np.clip(scene * bias, 0, 1)[brain] ** gamma, 99.5) if brain.any() else 1.0

    def camera(s: np.ndarray) -> np.ndarray:
        img = np.clip(s * bias, 0, 1) ** gamma
        return np.clip(np.hypot(img + n1, n2) * head * 0.85 / (top + 1e-6), 0, 1)  # headroom

    wm = float(np.percentile(scene[brain], 95)) if brain.any() else 1.0
    region = ndimage.binary_erosion(brain, iterations=3)
    return Sample(scene, camera, {"brain": brain & (scene > 0.05), "wm": wm, "region": region})


@lesion("brain")
def _ring_lesion(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size, wm = s.scene.shape[0], s.aux["wm"]
    big_r = max(rng.uniform(0.05, 0.08) * size, 4.0)
    c = pick_point(rng, s.aux["region"], big_r)
    outer = blob(rng, size, c, big_r, rough=0.2, edge=0.8)
    core = blob(rng, size, c, rng.uniform(0.45, 0.65) * big_r, rough=0.25, edge=0.8)
    oedema = (
        blob(rng, size, c, rng.uniform(1.5, 2.0) * big_r, rough=0.35, edge=1.5) * s.aux["brain"]
    )
    out = s.scene * (1 - rng.uniform(0.15, 0.25) * oedema)
    out = out * (1 - outer) + rng.uniform(1.1, 1.25) * wm * outer
    out = out * (1 - core) + rng.uniform(0.2, 0.35) * wm * core
    return out, (np.maximum(oedema, outer) > 0.25) & s.aux["brain"]


@lesion("brain")
def _infarct(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """A vascular territory: a wedge from near the centre to the cortex, in tissue only."""
    size, brain, wm = s.scene.shape[0], s.aux["brain"], s.aux["wm"]
    cy, cx = ndimage.center_of_mass(brain)
    yy, xx = _grid(size)
    aim, half = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(12, 25))
    dth = np.angle(np.exp(1j * (np.arctan2(yy - cy, xx - cx) - aim)))
    rho = np.hypot(yy - cy, xx - cx)
    ind = 1 - (dth / half) ** 2 + 0.4 * smooth_noise(rng, (size, size), size / 25)
    r0 = rng.uniform(0.1, 0.25) * np.sqrt(brain.sum() / np.pi)
    region = (ind > 0.25) & (rho > r0) & brain & (s.scene > 0.3 * wm)
    alpha = ndimage.gaussian_filter(region.astype(np.float32), 0.8) * brain
    return s.scene * (1 - rng.uniform(0.3, 0.45) * alpha), (alpha > 0.25) & brain


@lesion("brain")
def _mass_effect(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Tissue pushed radially outward from a slightly hyperintense centre."""
    size = s.scene.shape[0]
    big_r = max(rng.uniform(0.07, 0.11) * size, 5.0)
    c = pick_point(rng, s.aux["region"], big_r)
    yy, xx = _grid(size)
    dy, dx = yy - c[0], xx - c[1]
    rho = np.hypot(dy, dx)
    shrink = 1 - rng.uniform(0.55, 0.8) * np.exp(-((rho / big_r) ** 2))
    out = ndimage.map_coordinates(s.scene, [c[0] + dy * shrink, c[1] + dx * shrink], order=1)
    core = blob(rng, size, c, 0.6 * big_r, rough=0.3, edge=1.5) * s.aux["brain"]
    out = out + rng.uniform(0.15, 0.25) * s.aux["wm"] * core
    moved = rho * (1 - shrink) > 0.75
    return out, (moved | (core > 0.25)) & s.aux["brain"] & (out > 0.05)


@lesion("brain")
def _texture(rng: Rng, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    size = s.scene.shape[0]
    r = max(rng.uniform(0.05, 0.09) * size, 4.0)
    a = blob(rng, size, pick_point(rng, s.aux["region"], r), r, rough=0.35, edge=1.5)
    a *= s.aux["brain"]
    noise = rng.normal(0, rng.uniform(0.07, 0.12) * s.aux["wm"], (size, size))
    fill = ndimage.gaussian_filter(s.scene, 2) + ndimage.gaussian_filter(noise, 0.5) * 1.6
    return s.scene * (1 - a) + fill * a, (a > 0.25) & s.aux["brain"]


# --- sets and writing -------------------------------------------------------------------------


@dataclass(frozen=True)
class SetSpec:
    """One set: its context loader (shared data, loaded once), normal generator and lesions."""

    name: str
    load: Callable[..., dict]
    normal: Callable[[Rng, dict], Sample]
    lesions: dict[str, Lesion]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.lesions)

    def anomalous(self, rng: Rng, sample: Sample, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """The image of `sample` with a `kind` lesion, and its boolean mask (never empty)."""
        for _ in range(8):
            scene, mask = self.lesions[kind](rng, sample)
            if mask.sum() >= 3:
                break
        return sample.camera(scene.astype(np.float32)), mask


def _ctx(size: int, **_: Any) -> dict:
    return {"size": size}


SPECS = {
    "fundus": SetSpec("fundus", load_fundus, normal_fundus, LESIONS["fundus"]),
    "dbt": SetSpec("dbt", _ctx, normal_dbt, LESIONS["dbt"]),
    "cxr": SetSpec("cxr", _ctx, normal_cxr, LESIONS["cxr"]),
    "brain": SetSpec("brain", load_brain, normal_brain, LESIONS["brain"]),
}


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)).save(path)


def plan(name: str, size: int, seed: int, ns: tuple[int, int, int], brain_source: str) -> dict:
    """The generator.json of set `name` made with these arguments (ns: train, test good and
    anomalous counts): a set folder is complete when its generator.json equals this."""
    if name not in SPECS:
        raise ValueError(f"unknown set '{name}' (known: {', '.join(SETS)})")
    if size < 32 or min(ns) < 1 or seed < 0:
        raise ValueError(f"need size >= 32 (got {size}), counts >= 1 {ns} and seed >= 0 ({seed})")
    types = SPECS[name].types
    counts = {"train/good": ns[0], "test/good": ns[1]}
    counts |= {f"test/{t}": len(range(k, ns[2], len(types))) for k, t in enumerate(types)}
    source = {"fundus": "skimage.data.retina", "brain": resolve_brain_source(brain_source)}
    source = source.get(name, "procedural")
    return dict(set=name, version=VERSION, seed=seed, size=size, source=source, counts=counts)


def is_complete(set_dir: Path, meta: dict) -> bool:
    try:
        return json.loads((set_dir / "generator.json").read_text()) == meta
    except (OSError, ValueError):
        return False


def folder(name: str) -> str:
    """The set's folder under DIR: `<set>_indep`, so that `python -m jaxad.bench quality`
    (which names a dataset by its folder) keeps it apart from its built-in demo of that name."""
    return f"{name}_indep"


def make_set(name: str, out_dir: Path, *, size: int = 128, n_train: int = 200,
             n_test_good: int = 40, n_test_anomalous: int = 40, seed: int = 0,
             force: bool = False, brain_source: str = "auto") -> dict[str, int]:  # fmt: skip
    """Write set `name` into out_dir/name (via a temporary folder renamed at the end) and return
    its counts per folder. A complete set with the same generator.json is kept unless `force`;
    any other existing folder is only replaced with `force`."""
    meta = plan(name, size, seed, (n_train, n_test_good, n_test_anomalous), brain_source)
    out_dir, spec = Path(out_dir), SPECS[name]
    final = out_dir / folder(name)
    if final.exists() and not force:
        if is_complete(final, meta):
            return meta["counts"]
        raise FileExistsError(f"{final} exists with other contents (--force replaces it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.partial-{os.getpid()}-{time.time_ns()}"  # mkdir honours the umask
    tmp.mkdir()
    try:
        ctx = spec.load(size, brain_source=meta["source"])
        key = SETS.index(name)
        for split, sub, n in ((0, "train/good", n_train), (1, "test/good", n_test_good)):
            for i in range(n):
                rng = np.random.default_rng([seed, key, split, i])
                _png(tmp / sub / f"{i:03d}.png", spec.normal(rng, ctx).image())
        for i in range(n_test_anomalous):
            rng = np.random.default_rng([seed, key, 2, i])
            kind, stem = spec.types[i % len(spec.types)], f"{i // len(spec.types):03d}"
            image, mask = spec.anomalous(rng, spec.normal(rng, ctx), kind)
            _png(tmp / "test" / kind / f"{stem}.png", image)
            _png(tmp / "ground_truth" / kind / f"{stem}_mask.png", mask.astype(np.float32))
        (tmp / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            old = final.rename(out_dir / f".{name}.old-{os.getpid()}")
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta["counts"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (argparse also prints the usage) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="independent_sets.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Parent folder of the sets.")
    p.add_argument("--sets", default=",".join(SETS), help="Comma-separated: " + ",".join(SETS))
    p.add_argument("--size", type=int, default=128, help="Image side in px (>= 32).")
    p.add_argument("--n_train", type=int, default=200)
    p.add_argument("--n_test_good", type=int, default=40)
    p.add_argument("--n_test_anomalous", type=int, default=40, help="Total, over all types.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="Remake sets that already exist.")
    p.add_argument("--brain_source", default="auto", choices=BRAIN_SOURCES)
    a = p.parse_args(argv)
    names, out = [s for s in a.sets.split(",") if s] or [""], Path(a.out)
    ns = (a.n_train, a.n_test_good, a.n_test_anomalous)
    try:  # every check before any set is made
        metas = {n: plan(n, a.size, a.seed, ns, a.brain_source) for n in names}
    except ValueError as e:
        p.error(str(e))
    for name, meta in metas.items():
        dst = out / folder(name)
        if dst.exists() and not a.force and not is_complete(dst, meta):
            p.error(f"{dst} exists and is not this set (--force replaces it)")
    for name, meta in metas.items():
        dst = out / folder(name)
        t0, done = time.perf_counter(), not a.force and is_complete(dst, meta)
        make_set(name, out, size=a.size, n_train=ns[0], n_test_good=ns[1], n_test_anomalous=ns[2],
                 seed=a.seed, force=a.force, brain_source=a.brain_source)  # fmt: skip
        c = meta["counts"]
        took = "skipped (complete)" if done else f"{time.perf_counter() - t0:.1f} s"
        print(f"{name}: {c['train/good']} train, {c['test/good']} test good, "
              f"{sum(c.values()) - c['train/good'] - c['test/good']} anomalous "
              f"({len(c) - 2} types) -> {dst}: {took}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
