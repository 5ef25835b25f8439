"""Procedural "brain MRI" volumes: a population of normal heads for the MOOD demo, no download.

No pip package ships a brain MRI that can be read offline, so the MOOD demo draws its normal
population here (numpy only; a 64^3 volume takes about 0.2 s, a 48^3 one about 0.1 s). Every
subject is the same template anatomy, evaluated in template coordinates u in [-1, 1]^3 (axis 0
left-right, 1 posterior-anterior, 2 inferior-superior):

- scalp (bright, like fat in T1), skull (dark), a rim of CSF (dark), then the brain: a cortex of
  grey matter folded into gyri and CSF-filled sulci around white matter, an interhemispheric
  fissure, two lateral ventricles (CSF) and deep grey nuclei; background exactly 0;
- T1-like intensities in [0, 1]: white matter 0.72, grey matter 0.48, CSF 0.12, skull 0.08,
  scalp 0.58, with soft (partial-volume) boundaries.

What differs between subjects is what real populations differ in and what a per-voxel
statistic over unregistered scans cannot absorb:

- anatomy: the gyral pattern (the sulci are the zero set of a sum of plane waves, half of them
  shared by the population and half the subject's own), head shape, brain size (atrophy widens
  the CSF rim), ventricle size (radii x 0.84-1.22), tissue contrast (+-5 %);
- pose: shift (up to 5 % of the field of view per axis), rotation (up to 6 degrees about each
  axis), scale (0.92-1.06, plus 3 % per axis), and a smooth random deformation of about 1 % of
  the field of view;
- scanner: global gain (0.9-1.08), a smooth multiplicative bias field (6 % standard deviation),
  Rician noise inside the head (sigma 0.01-0.025).

`write_population` writes ``<split>_<i>.nii.gz`` float32 volumes whose affine spans MOOD's 256 mm;
`ensure_brain_demo()` writes the demo's ``train/`` and ``test/`` populations once into a cache
folder (`jaxad.data.demo.ensure_generated`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxad.data import demo

VERSION = "brain_v1"
SPLITS = ("train", "test")
_SPLIT_CODES = {"train": 0, "test": 1}
# Plane waves whose zero set draws the sulci: this seed's are shared by every subject.
_TEMPLATE_SEED = 20200923
_N_WAVES = 8

# T1-like tissue intensities of the template (before the subject's contrast and gain).
WM, GM, CSF, SKULL, SCALP = 0.72, 0.48, 0.12, 0.08, 0.58
# Normalised radius (1 = head surface) where each layer ends, going inwards.
_SCALP_IN, _SKULL_IN, _BRAIN_OUT = 0.92, 0.86, 0.82
_HEAD_RADII = np.array([0.70, 0.86, 0.80])  # left-right, posterior-anterior, inferior-superior


def _waves(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` random plane waves (wave vectors [n, 3] in cycles per unit, phases [n])."""
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequency = rng.uniform(2.2, 3.4, size=(n, 1))  # about 5-7 gyri across the brain
    return directions * frequency, rng.uniform(0, 2 * np.pi, size=n)


def _wave_field(u: np.ndarray, vectors: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """sum_k cos(2 pi k.u + phi_k) / sqrt(n) at points u [..., 3]."""
    out = np.zeros(u.shape[:-1], np.float32)
    for k, phi in zip(vectors, phases, strict=True):
        out += np.cos(2 * np.pi * (u @ k.astype(np.float32)) + np.float32(phi))
    return out / np.float32(np.sqrt(len(phases)))


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std random field on a size^3 grid that varies on a scale of size/cells.

    Gaussian bumps with random weights on a cells^3 lattice over [-1, 1]^3, summed separably
    (three small matrix products), which is much faster than a spline zoom.
    """
    x = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    centres = np.linspace(-1, 1, cells, dtype=np.float32)
    width = 2.0 / (cells - 1)
    w = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / width) ** 2)
    coarse = rng.standard_normal((cells,) * 3).astype(np.float32)
    field = np.einsum("ia,jb,kc,abc->ijk", w, w, w, coarse, optimize=True)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles (radians) about axes 0, 1 and 2, in that order."""
    out = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        out = r @ out
    return out


def _step(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (x << 0) to 1 (x >> 0) over `width`: partial volume at boundaries."""
    return np.clip(0.5 + x / width, 0.0, 1.0)


def _ellipsoid_radius(u: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised radius of points u [..., 3] in an axis-aligned ellipsoid (1 on its surface)."""
    total = np.zeros(u.shape[:-1], np.float32)
    for k in range(3):
        total += ((u[..., k] - np.float32(centre[k])) / np.float32(radii[k])) ** 2
    return np.sqrt(total)


def _pair(
    u: np.ndarray, centre: Sequence[float], radii: Sequence[float], edge: float
) -> np.ndarray:
    """Soft membership of a left-right pair of ellipsoids mirrored about u_0 = 0."""
    (x, y, z), edge = centre, np.float32(edge)
    left = _step(1 - _ellipsoid_radius(u, (-x, y, z), radii), edge)
    return np.maximum(left, _step(1 - _ellipsoid_radius(u, (x, y, z), radii), edge))


def template_coordinates(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, size, 3] template coordinates of each voxel: pose and deformation.

    Voxel centres span [-1, 1]; a voxel at p shows the template at u = A^-1 (p - t) + D(p), with
    A the subject's rotation and scale, t its shift and D a smooth displacement field.
    """
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    p = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1)
    scale = rng.uniform(0.92, 1.06) * rng.uniform(0.97, 1.03, size=3)
    angles = np.deg2rad(rng.uniform(-6, 6, size=3))
    shift = rng.uniform(-0.1, 0.1, size=3)  # 5 % of the field of view
    inverse = np.linalg.inv(_rotation(angles) @ np.diag(scale)).astype(np.float32)
    u = (p - shift.astype(np.float32)) @ inverse.T
    displacement = np.stack([_smooth_field(rng, size, 5) for _ in range(3)], axis=-1)
    return u + np.float32(0.02) * displacement


def brain_volume(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One normal subject: float32 [size, size, size] in [0, 1], background exactly 0."""
    u = template_coordinates(rng, size)
    soft = 2.0 / size  # one voxel in template units: the width of tissue boundaries

    # Head shape: the template ellipsoid with a subject's low-frequency bumps.
    bumps = 0.03 * _wave_field(u, *_waves(rng, 4)) / 2.2
    rho = _ellipsoid_radius(u, (0.0, 0.0, 0.0), _HEAD_RADII) * (1 + bumps)
    head = _step(1.0 - rho, soft)
    brain_out = _BRAIN_OUT * rng.uniform(0.95, 1.0)  # atrophy widens the CSF rim
    brain = _step(brain_out - rho, soft)

    # Cortex: depth below the brain surface (template units); sulci along the zero set of F.
    template_waves = _waves(np.random.default_rng(_TEMPLATE_SEED), _N_WAVES)
    f = _wave_field(u, *template_waves) + _wave_field(u, *_waves(rng, _N_WAVES))
    f /= np.float32(np.sqrt(2.0))
    depth = (brain_out - rho) * 0.8
    sulcus = np.exp(-((f / 0.35) ** 2))  # 1 on the zero set, 0 away from it
    sulcal_depth = 0.18 * sulcus
    thickness = 0.07
    csf_in_sulci = _step(sulcal_depth - depth, soft)
    white = _step(depth - (thickness + sulcal_depth * 1.1), soft)

    # Interhemispheric fissure (above the ventricles), lateral ventricles, deep grey nuclei.
    fissure = _step(0.025 - np.abs(u[..., 0]), soft) * _step(u[..., 2] - 0.18, soft)
    ventricle_radii = np.array([0.05, 0.26, 0.1]) * rng.uniform(0.84, 1.22)
    ventricles = _pair(u, (0.11, 0.02, 0.12), ventricle_radii, 4 * soft)
    nuclei = _pair(u, (0.2, -0.05, -0.05), (0.1, 0.16, 0.1), 5 * soft)

    contrast = rng.uniform(0.95, 1.05, size=3)
    wm, gm, csf = WM * contrast[0], GM * contrast[1], CSF * contrast[2]
    tissue = gm + (wm - gm) * white
    tissue = tissue + (gm - tissue) * nuclei
    csf_frac = np.maximum.reduce([csf_in_sulci, fissure, ventricles])
    tissue = tissue + (csf - tissue) * csf_frac
    # Outside the brain, going outwards: CSF rim, skull, scalp.
    outer = CSF + (SKULL - CSF) * _step(rho - _SKULL_IN, soft)
    outer = outer + (SCALP - SKULL) * _step(rho - _SCALP_IN, soft)
    image = outer + (tissue - outer) * brain

    # Scanner: gain, bias field, Rician noise; nothing outside the head.
    bias = np.exp(0.06 * _smooth_field(rng, size, 3))
    image = image * bias * rng.uniform(0.9, 1.08)
    sigma = rng.uniform(0.01, 0.025)
    n1, n2 = sigma * rng.standard_normal((2, *image.shape), dtype=np.float32)
    image = np.sqrt((image + n1) ** 2 + n2**2) * head
    image[head < 0.25] = 0.0
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One stream per volume: a volume does not depend on how many others are generated.
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def write_population(
    root: str | os.PathLike, n: int, size: int = 64, seed: int = 0, *, split: str = "train"
) -> list[pathlib.Path]:
    """Writes `n` subjects as ``root/<split>_<i>.nii.gz`` (float32, 1 voxel = 256/size mm).

    The affine scales the voxels so that every size covers the same 256 mm field of view as
    MOOD's 256^3 brain volumes; subject i of a split is the same whatever `n` is.
    """
    import nibabel as nib

    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spacing = 256.0 / size
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -128.0 + spacing / 2
    width = max(3, len(str(max(n, 1) - 1)))
    paths = []
    for i in range(n):
        image = nib.Nifti1Image(brain_volume(_rng(seed, split, i), size), affine)
        image.header.set_xyzt_units("mm")
        path = root / f"{split}_{i:0{width}d}.nii.gz"
        nib.save(image, os.fspath(path))
        paths.append(path)
    return paths


def generate_brain_demo(
    root: str | os.PathLike,
    *,
    n_train: int = 48,
    n_test: int = 32,
    size: int = 48,
    seed: int = 0,
) -> pathlib.Path:
    """Writes ``train/`` (normal training volumes) and ``test/`` (held-out normal volumes that
    get synthetic anomalies later) into `root`; the completion marker goes last."""
    root = pathlib.Path(root)
    write_population(root / "train", n_train, size, seed, split="train")
    write_population(root / "test", n_test, size, seed, split="test")
    info = dict(version=VERSION, seed=seed, size=size, n_train=n_train, n_test=n_test)
    (root / "README.txt").write_text(
        f"Synthetic brain MRI demo ({VERSION}) for jaxad, generated by jaxad.data.brain_phantom "
        f"with seed {seed}. SYNTHETIC DATA: procedural T1-like heads, {size}^3 float32 NIfTI "
        f"volumes in [0, 1]; train/ has {n_train} normal subjects, test/ {n_test} other normal "
        "subjects.\n"
    )
    (root / demo.MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return root


def ensure_brain_demo(root: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """Returns the brain demo folder, generating it first if it is missing or incomplete."""
    return demo.ensure_generated(VERSION, generate_brain_demo, root, seed=seed)
