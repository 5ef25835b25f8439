"""Tests for jaxad.mood.synth: rotated ellipsoids, the blend law, the folder layout, the flag."""

import pathlib

import nibabel as nib
import numpy as np
import pytest

from jaxad.mood import metric, synth


def _reference_ellipsoid(shape, centre, radii, angles) -> np.ndarray:
    """The documented rule evaluated on the whole grid, written independently of synth."""
    ax, ay, az = (-a for a in angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    d = idx - np.asarray(centre) + (np.asarray(shape) / 2 - np.floor(np.asarray(shape) / 2))
    q = d[..., ::-1] @ rot.T  # (x, y, z)
    r_xyz = np.asarray(radii, float)[::-1]
    return ((q / r_xyz) ** 2).sum(-1) <= 1


@pytest.mark.parametrize("seed", range(4))
def test_ellipsoid_volume_and_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (41, 40, 39)
    radii = tuple(rng.uniform(6, 12, size=3))
    angles = tuple(rng.uniform(0, np.pi / 2, size=3))
    centre = (20.3, 19.6, 19.5)
    mask = synth.ellipsoid_mask(shape, centre, radii, angles)
    expected_volume = 4 / 3 * np.pi * np.prod(radii)
    assert mask.sum() == pytest.approx(expected_volume, rel=0.03)
    # Boundary voxels may differ by rounding from the whole-grid evaluation, hardly any do.
    ref = _reference_ellipsoid(shape, centre, radii, angles)
    assert np.count_nonzero(mask != ref) <= 2


def test_ellipsoid_known_answers():
    shape = (21, 20, 20)
    # Axis 0 has odd length: the ellipsoid sits half a voxel below the centre on it.
    m = synth.ellipsoid_mask(shape, (10, 10, 10), (3, 3, 3), (0, 0, 0))
    assert np.flatnonzero(m.any(axis=(1, 2))).tolist() == [7, 8, 9, 10, 11, 12]
    # Along axis 1 no voxel has d0 = 0 (d0 = +-0.5 at best), so |d1| <= sqrt(9 - 0.25).
    assert np.flatnonzero(m.any(axis=(0, 2))).tolist() == [8, 9, 10, 11, 12]
    assert m.sum() == np.count_nonzero(
        _reference_ellipsoid(shape, (10, 10, 10), (3, 3, 3), (0,) * 3)
    )

    def extents(mask):
        return [
            int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k))).size)
            for k in range(3)
        ]

    # Long along axis 2 (pyellipsoid's x); 90 degrees about z (axis 0) turns it onto axis 1.
    cube = (30, 30, 30)
    long_x = synth.ellipsoid_mask(cube, (15, 15, 15), (2, 2, 10), (0, 0, 0))
    assert extents(long_x) == [5, 5, 21]
    turned = synth.ellipsoid_mask(cube, (15, 15, 15), (2, 2, 10), (0, 0, np.pi / 2))
    assert extents(turned) == [5, 21, 5]
    # Long along axis 0 (z); 90 degrees about x (axis 2) turns it onto axis 1.
    turned = synth.ellipsoid_mask(cube, (15, 15, 15), (10, 2, 2), (np.pi / 2, 0, 0))
    assert extents(turned) == [5, 21, 5]
    # Cut at the image border instead of failing.
    edge = synth.ellipsoid_mask((10, 10, 10), (0, 5, 12), (4, 4, 4), (0.3, 0.2, 0.1))
    assert 0 < edge.sum() < 4 / 3 * np.pi * 64 / 4
    assert not synth.ellipsoid_mask((10, 10, 10), (50, 5, 5), (4, 4, 4), (0, 0, 0)).any()


def test_body_centre_and_radius():
    image = np.zeros((10, 12, 8), np.float32)
    image[2:6, 3:9, 1:4] = 0.5
    image[4, 5, 2] = 0  # A hole changes no projection.
    centre, r = synth.body_centre_and_radius(image)
    np.testing.assert_allclose(centre, [3.5, 5.5, 2.0])
    assert r == pytest.approx((2 + 3 + 1.5) / 3)
    with pytest.raises(ValueError, match="no voxel > 0"):
        synth.body_centre_and_radius(np.zeros((4, 4, 4)))


def test_blend_law_on_a_constant_volume():
    image = np.full((24, 24, 24), 0.3, np.float32)
    mask = np.zeros(image.shape, np.uint8)
    blob = synth.Blob((12.0, 11.0, 13.0), (6.0, 5.0, 7.0), (0.2, 0.5, 1.0), colour=0.8, alpha=0.25)
    synth.apply_blob(image, mask, blob, np.random.default_rng(7))
    inside = synth.ellipsoid_mask(image.shape, blob.centre, blob.radii, blob.angles)
    np.testing.assert_array_equal(mask, inside.astype(np.uint8))
    noise = np.random.default_rng(7).random(inside.sum()) * 0.8 / 10  # Drawn in C order.
    expected = 0.25 * np.float64(np.float32(0.3)) + 0.75 * (0.8 + noise)
    np.testing.assert_allclose(image[inside], expected, rtol=1e-6)
    assert (image[~inside] == np.float32(0.3)).all()
    # Values above 1 are clipped, and so is the rest of the volume.
    image = np.full((24, 24, 24), 1.5, np.float32)
    bright = synth.Blob(blob.centre, blob.radii, blob.angles, colour=0.99, alpha=0.0)
    synth.apply_blob(image, np.zeros(image.shape, np.uint8), bright, np.random.default_rng(0))
    assert image.max() == 1.0 and (image[inside] < 1).any() and (image[~inside] == 1).all()


def test_add_anomalies_labels_are_the_ellipsoids_and_laws_hold():
    image = np.zeros((32, 32, 32), np.float32)
    image[4:28, 6:26, 5:27] = 0.4
    counts = []
    for seed in range(30):
        out, mask, blobs = synth.add_anomalies(image, np.random.default_rng(seed))
        union = np.zeros(image.shape, bool)
        for b in blobs:
            union |= synth.ellipsoid_mask(image.shape, b.centre, b.radii, b.angles)
            assert min(b.radii) >= 5 and 0 <= b.alpha <= 1 and 0 <= b.colour < 1
            assert all(0 <= a <= np.pi / 2 for a in b.angles)
        np.testing.assert_array_equal(mask, union.astype(np.uint8))
        assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        np.testing.assert_array_equal(out[~union], image[~union])
        counts.append(len(blobs))
    assert set(counts) == {1, 2, 3}
    alphas = [
        synth.draw_blob(np.random.default_rng(s), np.zeros(3), 8.0).alpha for s in range(3000)
    ]
    assert np.mean(alphas) == pytest.approx(0.25 * (1 - np.exp(-4)), abs=0.015)


def test_swap_centre_axes_reverses_centre_and_radii():
    centre = np.array([10.0, 40.0, 90.0])
    plain = synth.draw_blob(np.random.default_rng(3), centre, 200.0)
    swapped = synth.draw_blob(np.random.default_rng(3), centre, 200.0, swap_centre_axes=True)
    assert len(set(plain.radii)) == 3 and len(set(plain.centre)) == 3
    assert swapped.centre == plain.centre[::-1] and swapped.radii == plain.radii[::-1]
    assert swapped.angles == plain.angles and swapped.alpha == plain.alpha
    # On an off-centre body, the swapped blobs land away from it.
    image = np.zeros((64, 48, 40), np.float32)
    image[2:20, 10:40, 24:38] = 0.5
    _, mask, _ = synth.add_anomalies(image, np.random.default_rng(0))
    _, mask_swapped, _ = synth.add_anomalies(image, np.random.default_rng(0), swap_centre_axes=True)
    assert (image[mask > 0] > 0).mean() > (image[mask_swapped > 0] > 0).mean()


def _volume(path: pathlib.Path, shape=(20, 22, 18), value=0.5, ndim=3) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    data[3:-3, 4:-4, 2:-2] = value
    if ndim == 2:
        data = data[0]
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = b"test volume"
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return data


def test_synthesize_folder_layout_and_evaluation(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _volume(src / "a.nii.gz")
    _volume(src / "b.nii", value=0.7)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "synth"
    written = synth.synthesize_folder(src, out, seed=1)
    assert [w["name"] for w in written] == ["a.nii.gz", "a_anom.nii.gz", "b.nii", "b_anom.nii"]
    labels = tmp_path / "synth_label"
    assert sorted(p.name for p in out.iterdir()) == [
        "a.nii.gz",
        "a_anom.nii.gz",
        "b.nii",
        "b_anom.nii",
    ]
    assert (out / "a.nii.gz").read_bytes() == (src / "a.nii.gz").read_bytes()
    for w in written:
        vol = nib.load(str(out / w["name"]))
        lab = nib.load(str(labels / "pixel" / w["name"]))
        assert lab.get_data_dtype() == np.uint8 and lab.shape == vol.shape
        np.testing.assert_array_equal(lab.affine, nib.load(str(src / "a.nii.gz")).affine)
        assert vol.header["descrip"].item() == b"test volume" == lab.header["descrip"].item()
        assert vol.header.get_xyzt_units() == ("mm", "sec")
        sample = (labels / "sample" / f"{w['name']}.txt").read_text()
        assert sample == f"{w['label']}\n"
        assert int(np.asarray(lab.dataobj).sum()) == w["voxels"]
    assert [w["label"] for w in written] == [0, 1, 0, 1]
    assert nib.load(str(out / "a_anom.nii.gz")).get_data_dtype() == np.float32

    # The labels are read by the evaluation directly: a perfect prediction scores 1.
    pred = tmp_path / "pred"
    pred.mkdir()
    for w in written:
        lab = nib.load(str(labels / "pixel" / w["name"]))
        nib.save(
            nib.Nifti1Image(np.asarray(lab.dataobj, np.float32), lab.affine), str(pred / w["name"])
        )
        (pred / f"{w['name']}.txt").write_text(f"{0.9 if w['label'] else 0.1}\n")
    assert metric.evaluate(pred, labels, task="pixel")["score"] == 1.0
    assert metric.evaluate(pred, labels, task="sample")["score"] == 1.0


def test_synthesize_folder_is_deterministic_per_seed_and_name(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _volume(src / "a.nii.gz")

    def anomalous(out, **kw):
        synth.synthesize_folder(src, tmp_path / out, **kw)
        return np.asarray(nib.load(str(tmp_path / out / "a_anom.nii.gz")).dataobj)

    first = anomalous("o1", seed=0)
    np.testing.assert_array_equal(first, anomalous("o1", seed=0))  # Rewriting works too.
    _volume(src / "0_other.nii.gz")  # Another volume, sorted first, changes nothing for "a".
    np.testing.assert_array_equal(first, anomalous("o2", seed=0))
    assert not np.array_equal(first, anomalous("o3", seed=1))
    # Same content under another name: other anomalies.
    other = np.asarray(nib.load(str(tmp_path / "o2" / "0_other_anom.nii.gz")).dataobj)
    assert not np.array_equal(first, other)


def test_synthesize_folder_bad_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    with pytest.raises(ValueError, match="no NIfTI volumes"):
        synth.synthesize_folder(src, tmp_path / "out")
    _volume(src / "flat.nii.gz", ndim=2)
    with pytest.raises(ValueError, match=r"flat\.nii\.gz: expected a 3-D volume"):
        synth.synthesize_folder(src, tmp_path / "out")
    (src / "flat.nii.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"flat\.nii\.gz"):
        synth.synthesize_folder(src, tmp_path / "out")
    (src / "flat.nii.gz").unlink()
    _volume(src / "a.nii.gz")
    with pytest.raises(ValueError, match="must differ"):
        synth.synthesize_folder(src, src)


def test_cli_synth(tmp_path, capsys):
    from jaxad.mood import __main__ as cli

    src = tmp_path / "in"
    src.mkdir()
    _volume(src / "a.nii.gz")
    out = tmp_path / "toy"
    assert cli.main(["synth", f"--input={src}", f"--output={out}", "--seed=2"]) == 0
    assert "wrote 2 volumes (1 anomalous)" in capsys.readouterr().out
    assert (tmp_path / "toy_label" / "sample" / "a_anom.nii.gz.txt").read_text() == "1\n"
    first = np.asarray(nib.load(str(out / "a_anom.nii.gz")).dataobj)
    labels = tmp_path / "elsewhere"
    argv = ["synth", f"--input={src}", f"--output={tmp_path / 'o2'}", "--seed=2"]
    assert cli.main([*argv, f"--label_output={labels}", "--swap_centre_axes"]) == 0
    assert (labels / "pixel" / "a_anom.nii.gz").is_file()
    assert not np.array_equal(
        first, np.asarray(nib.load(str(tmp_path / "o2" / "a_anom.nii.gz")).dataobj)
    )
