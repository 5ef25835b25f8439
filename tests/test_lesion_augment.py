"""LCL's lesion patches and augmentations (jaxad.ops.lesion_augment) against B4/B5's rules,
direct NumPy formulas, Pillow, and (slow tier, if /work/torchvenv exists) torchvision itself."""

from __future__ import annotations

import colorsys
import dataclasses
import os
import subprocess
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxad.ops import lesion_augment as la

H, W, SIZE = 48, 64, 32  # a non-square image catches swapped axes
TORCH_PYTHON = "/work/torchvenv/bin/python"


@pytest.fixture(autouse=True, scope="module")
def _quick_compiles():
    """Tiny programs: XLA's optimisations would cost more compile time than they save."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def random_image(seed: int = 0, shape=(H, W)) -> np.ndarray:
    """A float32 RGB image on the 8-bit grid (so Pillow sees the same values)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (*shape, 3)) / 255.0).astype(np.float32)


def random_boxes(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    """[n, 4] quarter-pixel boxes up to `size` wide, a quarter at each edge of the image."""
    out = np.empty((n, 4), np.float32)
    for axis, extent in ((0, W), (1, H)):
        b = rng.integers(4, 4 * size + 1, n) / 4.0
        lo = np.floor(rng.uniform(0, extent - b) * 4) / 4
        case = rng.integers(0, 4, n)
        lo = np.where(case == 0, 0.0, lo)  # left/top edge
        lo = np.where(case == 1, extent - b, lo)  # touching the right/bottom edge (mirrored case)
        lo = np.where(case == 2, np.maximum(extent - b - 0.25, 0), lo)  # just inside it
        out[:, axis], out[:, axis + 2] = lo, lo + b
    return out


def b4_start(u: float, lo: float, hi: float, extent: int, size: int) -> int:
    """B4's placement on one axis as the fact sheet states it, then Pillow's round (half even)."""
    b = hi - lo
    slack = size - b
    if lo < extent - b:
        start = lo - int(u * min(lo, slack))
    else:
        start = lo - (slack - int(u * min(extent - b, slack)))
    return round(start)


# ----------------------------------------------------------------------------- patches


def test_patch_start_follows_b4():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 600)
    u = rng.uniform(size=(600, 2)).astype(np.float32)
    left = la.patch_start(u[:, 0], boxes[:, 0], boxes[:, 2], W, SIZE)
    top = la.patch_start(u[:, 1], boxes[:, 1], boxes[:, 3], H, SIZE)
    want_left = [
        b4_start(float(a), float(x1), float(x2), W, SIZE)
        for a, (x1, _, x2, _) in zip(u[:, 0], boxes, strict=True)
    ]
    want_top = [
        b4_start(float(a), float(y1), float(y2), H, SIZE)
        for a, (_, y1, _, y2) in zip(u[:, 1], boxes, strict=True)
    ]
    np.testing.assert_array_equal(left, want_left)
    np.testing.assert_array_equal(top, want_top)


def test_patch_always_contains_its_box():
    """Every pixel whose centre is inside the box is in the patch; it starts in [0, extent)."""
    n = 4000
    boxes = random_boxes(np.random.default_rng(2), n)
    keys = jax.random.split(jax.random.key(0), n)
    origins = np.asarray(
        jax.vmap(lambda k, b: la.lesion_patch_origin(k, b, (H, W), SIZE))(keys, boxes)
    )
    top, left = origins[:, 0], origins[:, 1]
    assert (origins >= 0).all() and (top < H).all() and (left < W).all()
    x1, y1, x2, y2 = boxes.T
    # pixels p with p + 0.5 strictly inside (lo, hi): floor(lo + 0.5) .. ceil(hi - 0.5) - 1
    assert (left <= np.floor(x1 + 0.5)).all() and (left + SIZE >= np.ceil(x2 - 0.5)).all()
    assert (top <= np.floor(y1 + 0.5)).all() and (top + SIZE >= np.ceil(y2 - 0.5)).all()
    # integer boxes are contained exactly
    whole = (boxes == np.round(boxes)).all(axis=1)
    assert whole.sum() > 50
    assert (left[whole] <= x1[whole]).all() and (left[whole] + SIZE >= x2[whole]).all()
    assert (top[whole] <= y1[whole]).all() and (top[whole] + SIZE >= y2[whole]).all()


def test_shift_is_uniform_over_the_allowed_range():
    box = jnp.asarray([10.0, 30.0, 22.0, 40.0])  # x: min(x1, 32 - 12) = 10 shifts; y: 22 (slack)
    keys = jax.random.split(jax.random.key(1), 4400)
    origins = np.asarray(jax.vmap(lambda k: la.lesion_patch_origin(k, box, (H, W), SIZE))(keys))
    lefts, counts = np.unique(origins[:, 1], return_counts=True)
    np.testing.assert_array_equal(lefts, np.arange(1, 11))
    assert counts.min() > 330 and counts.max() < 550  # 440 expected each
    np.testing.assert_array_equal(np.unique(origins[:, 0]), np.arange(30 - 21, 31))


def test_oversized_box_is_clipped_defensively():
    box = jnp.asarray([3.0, 2.0, 3.0 + 40, 2.0 + 45])  # longer than SIZE: B3 excludes these
    origin = la.lesion_patch_origin(jax.random.key(2), box, (H, W), SIZE)
    np.testing.assert_array_equal(origin, [2, 3])  # starts at the box, covers its first SIZE px


def test_crop_patch_is_pillows_crop_with_black_outside():
    image = random_image(3)
    pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
    for top, left in [(0, 0), (10, 20), (H - 5, W - 3), (H - SIZE, W - SIZE), (40, 0)]:
        patch = np.asarray(la.crop_patch(jnp.asarray(image), jnp.asarray([top, left]), SIZE))
        assert patch.shape == (SIZE, SIZE, 3)
        want = np.asarray(pil.crop((left, top, left + SIZE, top + SIZE))) / 255.0
        np.testing.assert_allclose(patch, want, atol=1e-6)
        assert (patch[max(H - top, 0) :] == 0).all() and (patch[:, max(W - left, 0) :] == 0).all()


def test_pillow_rounds_float_boxes_as_the_origin_does():
    """Pillow's crop rounds float corners half to even, like `patch_start`."""
    image = random_image(4)
    pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
    for x in (2.5, 3.5, 7.25, 9.75):
        got = np.asarray(pil.crop((x, x, x + SIZE, x + SIZE))) / 255.0
        start = int(la.patch_start(0.0, x, x + SIZE, W, SIZE))  # shift 0: starts at the box
        want = la.crop_patch(jnp.asarray(image), jnp.asarray([start, start]), SIZE)
        np.testing.assert_allclose(got, want, atol=1e-6)


def coordinate_image() -> np.ndarray:
    """Channel 0 = row, channel 1 = column (+1, so that the zero fill is distinguishable)."""
    rows, cols = np.meshgrid(np.arange(H) + 1.0, np.arange(W) + 1.0, indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)


def test_two_patches_contain_the_same_lesion():
    image = jnp.asarray(coordinate_image())
    boxes = jnp.asarray(
        [[2, 3, 12, 9], [40, 30, 60, 44], [20, 20, 30, 25], [-1e3, -1e3, 1e3, 1e3]], jnp.float32
    )  # the last row is padding
    num = jnp.asarray(3)
    keys = jax.random.split(jax.random.key(3), 300)
    pair = jax.jit(jax.vmap(lambda k: la.two_lesion_patches(k, image, boxes, num, SIZE)))
    first, second = pair(keys)
    chosen, origins = jax.vmap(lambda k: la.pair_origins(k, boxes, num, (H, W), SIZE))(keys)
    assert first.shape == second.shape == (300, SIZE, SIZE, 3)
    chosen, origins = np.asarray(chosen), np.asarray(origins)
    # each patch's top-left pixel decodes the origin `pair_origins` gives for the same key
    np.testing.assert_array_equal(np.asarray(first)[:, 0, 0, :2] - 1, origins[:, 0])
    np.testing.assert_array_equal(np.asarray(second)[:, 0, 0, :2] - 1, origins[:, 1])
    # the box is one of the first three, each is drawn, and both placements contain it
    index = [int(np.flatnonzero((np.asarray(boxes) == c).all(1))[0]) for c in chosen]
    assert set(index) == {0, 1, 2}
    for view in range(2):
        top, left = origins[:, view, 0], origins[:, view, 1]
        assert (left <= chosen[:, 0]).all() and (left + SIZE >= chosen[:, 2]).all()
        assert (top <= chosen[:, 1]).all() and (top + SIZE >= chosen[:, 3]).all()
    assert (origins[:, 0] != origins[:, 1]).any(axis=1).mean() > 0.8  # independent placements


def test_lesion_patch_and_batched_pairs():
    images = jnp.stack([jnp.asarray(coordinate_image())] * 3)
    boxes = jnp.asarray([[[40, 30, 60, 44]], [[0, 0, 5, 5]], [[50, 40, 64, 48]]], jnp.float32)
    num = jnp.ones(3, jnp.int32)
    a, b = jax.jit(la.lesion_pairs, static_argnums=4)(jax.random.key(4), images, boxes, num, SIZE)
    assert a.shape == b.shape == (3, SIZE, SIZE, 3)
    for patches in (a, b):
        origins = np.asarray(patches)[:, 0, 0, :2] - 1  # (row, column)
        assert (origins[:, 1] <= boxes[:, 0, 0]).all() and (
            origins[:, 1] + SIZE >= boxes[:, 0, 2]
        ).all()
    patch = la.lesion_patch(jax.random.key(5), images[2], boxes[2], num[2], SIZE)
    assert patch.shape == (SIZE, SIZE, 3)
    top, left = (int(v) for v in np.asarray(patch)[0, 0, :2] - 1)
    assert left + SIZE >= W and top + SIZE >= H  # a lesion at the bottom-right corner...
    assert (np.asarray(patch)[H - top :] == 0).all() and (
        np.asarray(patch)[:, W - left :] == 0
    ).all()


# ----------------------------------------------------------------------------- colour


def np_luma(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def test_colour_ops_match_torchvision_formulas():
    x = random_image(5, (8, 10))
    for f in (0.0, 0.6, 1.0, 1.4):
        np.testing.assert_allclose(la.adjust_brightness(x, f), np.clip(f * x, 0, 1), atol=1e-6)
        mean = np_luma(x).mean()
        want = np.clip(f * x + (1 - f) * mean, 0, 1)
        np.testing.assert_allclose(la.adjust_contrast(x, f), want, atol=1e-6)
        want = np.clip(f * x + (1 - f) * np_luma(x)[..., None], 0, 1)
        np.testing.assert_allclose(la.adjust_saturation(x, f), want, atol=1e-6)


def test_hue_matches_colorsys():
    x = random_image(6, (8, 10))
    x[0, 0] = 0.5  # a grey pixel: no hue
    x[0, 1] = 0.0
    for shift in (-0.5, -0.1, 0.0, 0.03, 0.1, 0.5):
        want = np.empty_like(x)
        for i, j in np.ndindex(x.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*x[i, j])
            want[i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
        np.testing.assert_allclose(la.adjust_hue(x, shift), want, atol=2e-6)


def test_hue_shift_of_pure_colours():
    red, green, blue = np.eye(3, dtype=np.float32)
    pure = np.stack([red, green, blue])[None]  # [1, 3, 3]
    np.testing.assert_allclose(
        la.adjust_hue(pure, 1 / 3), np.stack([green, blue, red])[None], atol=1e-6
    )
    np.testing.assert_allclose(
        la.adjust_hue(pure, -1 / 3), np.stack([blue, red, green])[None], atol=1e-6
    )
    np.testing.assert_allclose(la.adjust_hue(pure[:, :1], 0.5), [[[0, 1, 1]]], atol=1e-6)  # cyan
    np.testing.assert_allclose(la.adjust_hue(pure[:, :1], -1 / 6), [[[1, 0, 1]]], atol=1e-6)
    half = 0.5 * pure  # value is kept
    np.testing.assert_allclose(
        la.adjust_hue(half, 1 / 3), 0.5 * np.stack([green, blue, red])[None], atol=1e-6
    )


def test_grayscale_is_luma_and_pillows_L():
    x = random_image(7, (8, 10))
    gray = np.asarray(la.to_grayscale(x))
    assert gray.shape == x.shape
    np.testing.assert_allclose(gray, np.repeat(np_luma(x)[..., None], 3, -1), atol=1e-6)
    pil = Image.fromarray(np.round(x * 255).astype(np.uint8)).convert("L")
    np.testing.assert_allclose(gray[..., 0], np.asarray(pil) / 255.0, atol=0.5 / 255 + 1e-6)


def test_color_jitter_applies_ops_in_the_drawn_order():
    x = jnp.asarray(random_image(8, (8, 10)))
    params = {"brightness": 1.3, "contrast": 0.7, "saturation": 1.4, "hue": 0.08}
    ops = {
        "brightness": la.adjust_brightness,
        "contrast": la.adjust_contrast,
        "saturation": la.adjust_saturation,
        "hue": la.adjust_hue,
    }
    outputs = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        want = x
        for i in order:
            name = la.JITTER_OPS[i]
            want = ops[name](want, params[name])
        got = la.color_jitter(x, {**params, "order": jnp.asarray(order)})
        np.testing.assert_allclose(got, want, atol=1e-6)
        outputs.append(np.asarray(got))
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # the order matters
    # the grader's settings skip saturation and hue whatever their drawn values
    got = la.color_jitter(x, {**params, "order": jnp.asarray([2, 0, 3, 1])}, la.GRADING)
    want = la.adjust_contrast(la.adjust_brightness(x, 1.3), 0.7)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_sampled_jitter_order_is_a_permutation_per_sample():
    keys = jax.random.split(jax.random.key(6), 200)
    params = jax.vmap(lambda k: la.sample_params(k, SIZE, SIZE))(keys)
    orders = np.asarray(params["order"])
    assert (np.sort(orders, axis=1) == np.arange(4)).all()
    assert len({tuple(o) for o in orders}) > 15  # of 24
    for name, (lo, hi) in {
        "brightness": (0.6, 1.4),
        "contrast": (0.6, 1.4),
        "saturation": (0.6, 1.4),
        "hue": (-0.1, 0.1),
        "angle": (-180, 180),
    }.items():
        values = np.asarray(params[name])
        assert values.min() >= lo and values.max() <= hi and values.std() > (hi - lo) / 5
    shifts = np.asarray(params["translate"])  # round(U(-6.4, 6.4))
    assert shifts.min() == -6 and shifts.max() == 6
    assert 0.1 < np.asarray(params["gray"]).mean() < 0.3
    assert 0.35 < np.asarray(params["hflip"]).mean() < 0.65


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("side", [5, 6])
def test_rotation_by_90_degrees_is_rot90(side):
    x = random_image(9, (side, side))
    np.testing.assert_array_equal(la.affine(x, 90.0, jnp.zeros(2)), np.rot90(x, -1))  # clockwise
    np.testing.assert_array_equal(la.affine(x, -90.0, jnp.zeros(2)), np.rot90(x, 1))
    np.testing.assert_array_equal(la.affine(x, 180.0, jnp.zeros(2)), np.rot90(x, 2))
    np.testing.assert_array_equal(la.affine(x, 0.0, jnp.zeros(2)), x)


def test_translation_fills_with_black():
    x = random_image(10, (6, 7))
    got = np.asarray(la.affine(x, 0.0, jnp.asarray([2.0, -1.0])))  # right 2, up 1
    want = np.zeros_like(x)
    want[:-1, 2:] = x[1:, :-2]
    np.testing.assert_array_equal(got, want)


def test_rotation_keeps_pixel_values_and_blackens_corners():
    x = random_image(11, (16, 16)) * 0.5 + 0.5  # no black pixels
    got = np.asarray(la.affine(x, 45.0, jnp.zeros(2)))
    assert (got[0, 0] == 0).all() and (got[-1, -1] == 0).all() and (got[8, 8] > 0).all()
    inside = got.reshape(-1, 3)[(got.reshape(-1, 3) > 0).all(1)]
    source = {tuple(p) for p in x.reshape(-1, 3)}
    assert all(tuple(p) in source for p in inside)  # nearest: no interpolated values


def test_resized_crop_of_the_whole_patch_is_the_identity():
    x = random_image(12, (SIZE, SIZE))
    box = jnp.asarray([0, 0, SIZE, SIZE])
    np.testing.assert_allclose(la.resized_crop(x, box, (SIZE, SIZE)), x, atol=1e-6)
    # the non-square variant agrees with augment's square one
    from jaxad.ops import augment

    box = jnp.asarray([3, 5, 20, 22])
    np.testing.assert_allclose(
        la.resized_crop(x, box, (16, 16)), augment.resized_crop(x, box, 16), atol=1e-6
    )


def test_normalize_with_eyepacs_statistics():
    x = random_image(13, (4, 5))
    mean = np.asarray([0.425753653049469, 0.29737451672554016, 0.21293757855892181])
    std = np.asarray([0.27670302987098694, 0.20240527391433716, 0.1686241775751114])
    np.testing.assert_allclose(la.normalize(x), (x - mean) / std, rtol=1e-5, atol=1e-6)
    plain = la.LesionAugment(mean=None, std=None)
    np.testing.assert_array_equal(la.normalize(x, plain), x)


def test_settings_are_validated():
    with pytest.raises(ValueError):
        la.LesionAugment(hue=0.6)
    with pytest.raises(ValueError):
        la.LesionAugment(grayscale_p=1.5)
    with pytest.raises(ValueError):
        la.LesionAugment(mean=None)


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_jits_vmaps_and_is_keyed():
    images = jnp.asarray(np.stack([random_image(s, (SIZE, SIZE)) for s in range(4)]))
    run = jax.jit(la.views, static_argnums=2)
    key = jax.random.key(7)
    out = np.asarray(run(key, images, la.LCL))
    assert out.shape == (4, SIZE, SIZE, 3) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, run(key, images, la.LCL))  # same key, same views
    assert np.abs(out - np.asarray(run(jax.random.key(8), images, la.LCL))).max() > 0.1
    same = np.asarray(run(key, jnp.stack([images[0]] * 4), la.LCL))
    assert all(np.abs(same[i] - same[j]).max() > 0.1 for i in range(4) for j in range(i))
    # vmapped views are the per-sample views with the split keys
    keys = jax.random.split(key, 4)
    one = np.asarray(jax.jit(la.view, static_argnums=2)(keys[2], images[2], la.LCL))
    np.testing.assert_allclose(out[2], one, atol=1e-5)
    black = -np.asarray(la.EYEPACS_MEAN) / np.asarray(la.EYEPACS_STD)  # fill 0, normalised
    assert np.isclose(out, black, atol=1e-5).all(-1).any()


def test_grading_pipeline_keeps_the_image_shape():
    images = jnp.asarray(np.stack([random_image(s, (40, 36)) for s in range(2)]))
    out = jax.jit(la.views, static_argnums=2)(jax.random.key(9), images, la.GRADING)
    assert out.shape == (2, 40, 36, 3) and np.isfinite(np.asarray(out)).all()
    params = jax.vmap(lambda k: la.sample_params(k, 40, 36, la.GRADING))(
        jax.random.split(jax.random.key(10), 300)
    )
    assert not np.asarray(params["gray"]).any()
    shifts = np.abs(np.asarray(params["translate"]))
    assert shifts[:, 0].max() == 7 and shifts[:, 1].max() == 8  # round(0.2 * 36), round(0.2 * 40)


def test_separate_translation_loses_the_rotated_corners():
    """PYCLS rotates, then shifts the rotated image: what left the frame stays black."""
    x = jnp.asarray(random_image(14, (16, 16)) * 0.5 + 0.5)
    params = la.sample_params(jax.random.key(11), 16, 16, la.GRADING)
    params = {**params, "hflip": False, "vflip": False, "gray": False, "brightness": 1.0}
    params = {**params, "contrast": 1.0, "box": jnp.asarray([0, 0, 16, 16]), "angle": 45.0}
    params["translate"] = jnp.asarray([3, 0])
    plain = dataclasses.replace(la.GRADING, mean=None, std=None)
    got = np.asarray(la.apply_params(x, params, plain))
    want = la.affine(la.affine(x, 45.0, jnp.zeros(2)), 0.0, jnp.asarray([3.0, 0.0]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    joint = la.affine(x, 45.0, jnp.asarray([3.0, 0.0]))
    assert (np.asarray(joint) != want).any()


# ----------------------------------------------------------------------------- torchvision

TORCHVISION_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch
    import torchvision.transforms.functional as F
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    d = dict(np.load(sys.argv[1]))
    x = torch.from_numpy(d["image"]).permute(2, 0, 1)
    out = {}
    for name in ("brightness", "contrast", "saturation", "hue"):
        fn = getattr(F, "adjust_" + name)
        out[name] = np.stack([fn(x, float(f)).permute(1, 2, 0).numpy() for f in d[name]])
    jitter = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    y = x
    for i in d["order"]:
        y = jitter[i](y, float(d["factors"][i]))
    out["jitter"] = y.permute(1, 2, 0).numpy()
    pil = Image.fromarray(d["image_u8"])
    out["gray"] = np.asarray(F.rgb_to_grayscale(pil, num_output_channels=3))
    nearest = InterpolationMode.NEAREST
    out["affine_pil"] = np.stack([
        np.asarray(F.affine(pil, angle=float(a), translate=[int(tx), int(ty)], scale=1.0,
                            shear=[0.0, 0.0], interpolation=nearest, fill=0))
        for a, tx, ty in d["affine"]
    ])
    xt = torch.from_numpy(d["image_u8"]).permute(2, 0, 1)
    out["affine_tensor"] = np.stack([
        F.affine(xt, angle=float(a), translate=[int(tx), int(ty)], scale=1.0,
                 shear=[0.0, 0.0], interpolation=nearest, fill=0).permute(1, 2, 0).numpy()
        for a, tx, ty in d["affine"]
    ])
    out["rotate_pil"] = np.stack([
        np.asarray(F.rotate(pil, float(a), interpolation=nearest, fill=0))
        for a, _, _ in d["affine"]
    ])
    top, left, h, w = (int(v) for v in d["crop"])
    size = int(d["size"])
    out["resized_crop"] = np.asarray(
        F.resized_crop(pil, top, left, h, w, [size, size], InterpolationMode.BILINEAR)
    )
    np.savez(sys.argv[2], **out)
    """
)


@pytest.fixture(scope="module")
def torchvision_outputs(tmp_path_factory):
    """torchvision's outputs for fixed inputs, computed once in /work/torchvenv's Python."""
    if not os.path.exists(TORCH_PYTHON):
        pytest.skip("no torch environment at /work/torchvenv")
    folder = tmp_path_factory.mktemp("torchvision")
    image = random_image(15, (24, 20))
    inputs = {
        "image": image,
        "image_u8": np.round(image * 255).astype(np.uint8),
        "brightness": np.asarray([0.6, 1.0, 1.37]),
        "contrast": np.asarray([0.6, 0.93, 1.4]),
        "saturation": np.asarray([0.0, 0.62, 1.4]),
        "hue": np.asarray([-0.1, -0.02, 0.07, 0.5]),
        "order": np.asarray([2, 0, 3, 1]),
        "factors": np.asarray([1.21, 0.74, 1.33, -0.06]),
        "affine": np.asarray([[90, 0, 0], [-90, 0, 0], [33.7, 3, -2], [-151.2, -4, 5], [0, 2, 1]]),
        "crop": np.asarray([2, 3, 17, 15]),
        "size": np.asarray(12),
    }
    np.savez(folder / "in.npz", **inputs)
    (folder / "ref.py").write_text(TORCHVISION_SCRIPT)
    subprocess.run(
        [TORCH_PYTHON, str(folder / "ref.py"), str(folder / "in.npz"), str(folder / "out.npz")],
        check=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    return inputs, dict(np.load(folder / "out.npz"))


@pytest.mark.slow  # torch's import alone takes ~15 s on this machine
def test_against_torchvision(torchvision_outputs):
    inputs, ref = torchvision_outputs
    x = inputs["image"]
    # colour: torchvision's tensor luma is 0.2989 where Pillow's (used here) is 0.299
    for name in ("brightness", "contrast", "saturation", "hue"):
        fn = getattr(la, "adjust_" + name)
        got = np.stack([fn(x, float(f)) for f in inputs[name]])
        np.testing.assert_allclose(got, ref[name], atol=2e-4, err_msg=name)
    params = dict(zip(la.JITTER_OPS, inputs["factors"].astype(np.float32), strict=True))
    got = la.color_jitter(x, {**params, "order": jnp.asarray(inputs["order"])})
    np.testing.assert_allclose(got, ref["jitter"], atol=2e-4)
    np.testing.assert_allclose(la.to_grayscale(x) * 255, ref["gray"], atol=0.5 + 1e-4)
    # geometry on the 8-bit image: nearest sampling reads the same pixels
    x8 = inputs["image_u8"].astype(np.float32)
    for i, (angle, tx, ty) in enumerate(inputs["affine"]):
        got = np.asarray(la.affine(x8, float(angle), jnp.asarray([tx, ty], jnp.float32)))
        np.testing.assert_array_equal(got, ref["affine_pil"][i], err_msg=f"PIL {angle}")
        np.testing.assert_array_equal(got, ref["affine_tensor"][i], err_msg=f"tensor {angle}")
        # RandomRotation (PYCLS) turns the other way: same law, the angle negated
        got = np.asarray(la.affine(x8, -float(angle), jnp.zeros(2)))
        np.testing.assert_array_equal(got, ref["rotate_pil"][i], err_msg=f"rotate {angle}")
    size = int(inputs["size"])
    got = la.resized_crop(x8, jnp.asarray(inputs["crop"]), (size, size))
    # Pillow resizes in two 8-bit passes, each rounded: within one grey level
    np.testing.assert_allclose(got, ref["resized_crop"], atol=1.0 + 1e-3)
    assert np.abs(np.asarray(got) - ref["resized_crop"]).mean() < 0.35
