"""Synthetic anomalies for validation: the MOOD DPA solution's rotated-ellipsoid generator.

For every input volume the solution kept a normal copy (all-zero voxel labels) and wrote an
anomalous copy ``<name>_anom.nii.gz`` with 1-3 blended ellipsoids, a 50/50 validation set on which
it chose its models (mood_challenge, ``create_val_dataset_with_synthetic_anomalies.py``). Per
volume, with body = voxels > 0:

- per axis, the body centre (mean index of the positions the body's projection covers) and
  half-extent (half their number); r = the mean of the three half-extents;
- per ellipsoid: centre ~ N(body centre, r/3) per axis; radii max(5, N(r/16, r/16)); three
  Euler angles U(0, 90) degrees; colour c ~ U(0, 1); alpha = clip(Exponential(scale 1/4), 0, 1);
  noise U(0, 1) * c/10 per voxel; inside the ellipsoid new = alpha * old + (1 - alpha) *
  (c + noise), then the whole volume is clipped to [0, 1] and the voxels labelled 1.

The solution drew ellipsoids with ``pyellipsoid.drawing.make_ellipsoid_image`` (release 0.0.3);
`ellipsoid_mask` computes the same set of voxels with numpy (see `ellipsoid_box` for the
convention). Deviations:

- pyellipsoid takes centres and radii in (x, y, z) order, the reverse of numpy's axes, and the
  solution passed them in numpy order, so its blobs were drawn around (m2, m1, m0) instead of
  the body centre (m0, m1, m2) (m_k: the centre along axis k). For MOOD's cubic, roughly centred
  volumes that changes little, but in other volumes the blobs land beside the body (or outside
  the image) instead of in it, which is clearly not the intent, so the default places them
  around the body centre; `swap_centre_axes=True` reproduces the original. (The radii are
  swapped too, which does not change their distribution.)
- The solution seeded nothing; here every volume has its own numpy Generator seeded by
  (`seed`, the file name), so an input gives the same output whatever else is in the folder.
- The solution wrote no sample labels; they are written here (1 iff any voxel is labelled, its
  evaluation's rule), as is the organisers' toy-label layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import zlib
from typing import Any

import numpy as np

from jaxad.mood.metric import NIFTI_SUFFIXES, is_nifti


def rotation_matrix(ax: float, ay: float, az: float) -> np.ndarray:
    """pyellipsoid's Euler rotation: Rz(az) @ Ry(ay) @ Rx(ax), acting on (x, y, z) columns.

    Right-handed elementary rotations about x, then y, then z (radians).
    """
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid_box(
    shape: tuple[int, int, int],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    angles: tuple[float, float, float],
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxels of a rotated ellipsoid, as (box slices into the image, bool mask of the box).

    The voxel set of ``make_ellipsoid_image`` of pyellipsoid 0.0.3 (the release the solution
    pinned), with the arguments in numpy axis order:

    - `centre` and `radii` are in numpy axis order (axis 0, 1, 2). pyellipsoid calls numpy's
      axes (z, y, x) and takes centre and radii in (x, y, z) order, i.e. reversed.
    - `angles` = (ax, ay, az) in radians about x = axis 2, y = axis 1, z = axis 0 (pyellipsoid's
      order, unchanged). A voxel at displacement d = (dx, dy, dz) from the centre is inside iff
      q = rotation_matrix(-ax, -ay, -az) @ d satisfies (q_z/r_z)^2 + (q_y/r_y)^2 + (q_x/r_x)^2
      <= 1: the axis-aligned ellipsoid rotated by Rx(ax) Ry(ay) Rz(az). (Later, unreleased
      pyellipsoid code uses rotation_matrix(ax, ay, az).T, another rotation for the same angles.)
    - pyellipsoid measures voxels from floor(n/2) and the centre from n/2 along an axis of n
      voxels, so on an axis of odd length the ellipsoid sits half a voxel below `centre`:
      d = index - centre + (n/2 - floor(n/2)). The centre is not rounded.

    The rotation is applied to voxel positions and centre separately, and the terms summed in
    pyellipsoid's order, so that voxels on the boundary come out the same. Only the ellipsoid's
    bounding box (cut at the image border) is computed.
    """
    radii_a = np.asarray(radii, np.float64)
    centre_a = np.asarray(centre, np.float64)
    if radii_a.shape != (3,) or centre_a.shape != (3,) or not (radii_a > 0).all():
        raise ValueError(
            f"need three positive radii and three centre coordinates: {radii}, {centre}"
        )
    size = np.asarray(shape, np.float64)
    origin = np.floor(0.5 * size)  # Voxel positions are measured from here ...
    grid_centre = centre_a - 0.5 * size  # ... and the centre from n/2.
    shift = centre_a - (0.5 * size - origin)  # Where the ellipsoid really sits.
    reach = radii_a.max()
    lo = np.clip(np.floor(shift - reach) - 1, 0, size).astype(np.int64)
    hi = np.clip(np.ceil(shift + reach) + 2, 0, size).astype(np.int64)
    box = tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi, strict=True))
    # Voxel positions along each numpy axis, shaped to broadcast over the box.
    pz, py, px = (
        (np.arange(s.start, s.stop) - o).reshape([-1 if i == j else 1 for j in range(3)])
        for i, (s, o) in enumerate(zip(box, origin, strict=True))
    )
    rot = rotation_matrix(*(-np.asarray(angles, np.float64)))
    gc = rot @ grid_centre[::-1]  # (x, y, z)
    q_x, q_y, q_z = (
        (row[0] * px + row[1] * py + row[2] * pz) - g for row, g in zip(rot, gc, strict=True)
    )
    dist = q_z**2 / radii_a[0] ** 2 + q_y**2 / radii_a[1] ** 2 + q_x**2 / radii_a[2] ** 2
    return box, dist <= 1


def ellipsoid_mask(
    shape: tuple[int, int, int],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    angles: tuple[float, float, float],
) -> np.ndarray:
    """bool volume of `shape` with the rotated ellipsoid of `ellipsoid_box`."""
    out = np.zeros(shape, bool)
    box, inside = ellipsoid_box(shape, centre, radii, angles)
    out[box] = inside
    return out


def body_centre_and_radius(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-axis centre of the body (voxels > 0) and r, the mean of the per-axis half-extents.

    Along each axis: the mean index of the positions where the body's projection is non-empty,
    and half the number of those positions.
    """
    body = image > 0
    centres, halves = [], []
    for axis in range(3):
        covered = body.any(axis=tuple(a for a in range(3) if a != axis))
        positions = np.flatnonzero(covered)
        if positions.size == 0:
            raise ValueError("the volume has no voxel > 0, so no body to place anomalies in")
        centres.append(positions.mean())
        halves.append(positions.size / 2)
    return np.asarray(centres), float(np.mean(halves))


@dataclasses.dataclass(frozen=True)
class Blob:
    """One synthetic anomaly: an ellipsoid (numpy-order centre and radii, pyellipsoid angles)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    angles: tuple[float, float, float]
    colour: float
    alpha: float


def draw_blob(
    rng: np.random.Generator, centre: np.ndarray, r: float, *, swap_centre_axes: bool = False
) -> Blob:
    """Draws one blob's parameters (the solution's laws, in its order of draws).

    `swap_centre_axes` reverses the drawn centre and radii, as the solution's call to
    pyellipsoid did (see the module docstring).
    """
    c = tuple(float(rng.normal(m, r / 3)) for m in centre)
    radii = tuple(max(5.0, float(rng.normal(r / 16, r / 16))) for _ in range(3))
    if swap_centre_axes:  # The solution's (axis 0, 1, 2) values read as (x, y, z).
        c, radii = c[::-1], radii[::-1]
    angles = tuple(float(np.deg2rad(rng.uniform(0, 90))) for _ in range(3))
    colour = float(rng.random())
    alpha = float(np.clip(rng.exponential(scale=1 / 4), 0, 1))
    return Blob(c, radii, angles, colour, alpha)


def apply_blob(image: np.ndarray, mask: np.ndarray, blob: Blob, rng: np.random.Generator) -> None:
    """Blends `blob` into `image` in place, clips all of it to [0, 1] and labels it in `mask`.

    Inside: alpha * old + (1 - alpha) * (colour + U(0, 1) * colour / 10), the noise drawn per
    voxel in C order.
    """
    box, inside = ellipsoid_box(image.shape, blob.centre, blob.radii, blob.angles)
    region = image[box]
    old = region[inside].astype(np.float64)
    noise = rng.random(old.size) * blob.colour / 10
    region[inside] = blob.alpha * old + (1 - blob.alpha) * (blob.colour + noise)
    np.clip(image, 0, 1, out=image)
    mask[box] |= inside.astype(mask.dtype)


def add_anomalies(
    image: np.ndarray, rng: np.random.Generator, *, swap_centre_axes: bool = False
) -> tuple[np.ndarray, np.ndarray, list[Blob]]:
    """The anomalous copy of a volume: (float32 image, uint8 voxel labels, the blobs drawn).

    1-3 blobs (uniform), placed around the body of the input (computed once, before any blob).
    """
    out = np.array(image, dtype=np.float32)
    mask = np.zeros(out.shape, np.uint8)
    centre, r = body_centre_and_radius(out)
    blobs = []
    for _ in range(int(rng.integers(1, 4))):
        blob = draw_blob(rng, centre, r, swap_centre_axes=swap_centre_axes)
        apply_blob(out, mask, blob, rng)
        blobs.append(blob)
    return out, mask, blobs


def volume_rng(name: str, seed: int) -> np.random.Generator:
    """A Generator that depends only on `seed` and the file name."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def split_suffix(name: str) -> tuple[str, str]:
    """("00001", ".nii.gz") from "00001.nii.gz"."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    raise ValueError(f"{name} is not a NIfTI file name (.nii.gz or .nii)")


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # Another file system, or links not allowed.
        shutil.copy2(src, dst)


def _save(data: np.ndarray, header: Any, affine: np.ndarray, path: pathlib.Path) -> None:
    """Saves with the input's affine and header, in `data`'s dtype and without scaling."""
    import nibabel as nib

    header = header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    nib.save(nib.Nifti1Image(data, affine, header=header), os.fspath(path))


def _write_sample_label(label_root: pathlib.Path, name: str, label: int) -> None:
    (label_root / "sample" / f"{name}.txt").write_text(f"{label}\n")


def label_dir_for(output_dir: str | os.PathLike) -> pathlib.Path:
    """Where `synthesize_folder` writes the labels of `output_dir`: the sibling ``<name>_label``."""
    output_dir = pathlib.Path(output_dir).expanduser().absolute()
    return output_dir.with_name(output_dir.name + "_label")


def synthesize_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    swap_centre_axes: bool = False,
    label_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Writes the normal and anomalous copy of every NIfTI volume of `input_dir`.

    Layout (the organisers' ``toy`` / ``toy_label``, so `jaxad.mood.metric.evaluate` reads the
    labels directly)::

        OUT/<name>.nii.gz                        the input (hard link, else a copy)
        OUT/<name>_anom.nii.gz                   the anomalous copy (float32)
        OUT_label/pixel/<name>.nii.gz            uint8 voxel labels (all zeros for the normal copy)
        OUT_label/pixel/<name>_anom.nii.gz
        OUT_label/sample/<name>.nii.gz.txt       "0" (normal copy)
        OUT_label/sample/<name>_anom.nii.gz.txt  "1" (if any voxel is labelled)

    OUT is `output_dir`, OUT_label is `label_dir` (default: `label_dir_for(output_dir)`). Written
    volumes keep the input's affine and header (with the data type of what is written).
    Volumes are the ``*.nii.gz`` and ``*.nii`` files directly in `input_dir`, read one at a time.

    Returns:
      one dict per written volume: name, sample label, number of labelled voxels, blobs.
    """
    import nibabel as nib

    input_dir = pathlib.Path(input_dir).expanduser()
    output_dir = pathlib.Path(output_dir).expanduser()
    label_root = pathlib.Path(label_dir).expanduser() if label_dir else label_dir_for(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    names = sorted(
        p.name for p in input_dir.iterdir() if p.is_file() and is_nifti(p.name) and p.name[0] != "."
    )
    if not names:
        raise ValueError(f"no NIfTI volumes (.nii.gz, .nii) in {input_dir}")
    if output_dir.absolute().resolve() == input_dir.absolute().resolve():
        raise ValueError(f"the output folder must differ from the input folder {input_dir}")
    for folder in (output_dir, label_root / "pixel", label_root / "sample"):
        folder.mkdir(parents=True, exist_ok=True)

    written = []
    for name in names:
        path = input_dir / name
        stem, suffix = split_suffix(name)
        try:
            img = nib.load(os.fspath(path))
            if len(img.shape) != 3:
                raise ValueError(f"expected a 3-D volume, got shape {img.shape}")
            # float64 as the solution reads it, then float32 as it computes.
            image = img.get_fdata(caching="unchanged").astype(np.float32)
            anomalous, mask, blobs = add_anomalies(
                image, volume_rng(name, seed), swap_centre_axes=swap_centre_axes
            )
        except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as e:
            raise ValueError(f"{path}: {e}") from e
        del image
        anom_name = f"{stem}_anom{suffix}"
        _link_or_copy(path, output_dir / name)
        _save(np.zeros(mask.shape, np.uint8), img.header, img.affine, label_root / "pixel" / name)
        _write_sample_label(label_root, name, 0)
        _save(anomalous, img.header, img.affine, output_dir / anom_name)
        _save(mask, img.header, img.affine, label_root / "pixel" / anom_name)
        label = int(mask.any())
        _write_sample_label(label_root, anom_name, label)
        written.append({"name": name, "label": 0, "voxels": 0, "blobs": []})
        written.append(
            {
                "name": anom_name,
                "label": label,
                "voxels": int(np.count_nonzero(mask)),
                "blobs": [dataclasses.asdict(b) for b in blobs],
            }
        )
    return written
