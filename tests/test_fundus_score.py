"""Tests for jaxad.ops.fundus_score: Otsu, circle, component ranking and the Lesion2Void score."""

import numpy as np
import pytest
from skimage.filters import threshold_otsu
from skimage.measure import label as sk_label

from jaxad.ops import fundus_score as fs


def brute_force_sigmas(image):
    """Between-class variance of `image > t` for every t (-1 where a class is empty)."""
    x = image.ravel().astype(np.float64)
    sigmas = np.full(256, -1.0)
    for t in range(256):
        fg = x > t
        if fg.all() or not fg.any():
            continue
        w1 = fg.mean()
        sigmas[t] = (1 - w1) * w1 * (x[~fg].mean() - x[fg].mean()) ** 2
    return sigmas


def random_uint8_images(seed, count):
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = rng.integers(4, 60, size=2)
        if i % 3 == 0:
            yield rng.integers(0, 256, (h, w)).astype(np.uint8)
        elif i % 3 == 1:  # few levels, like a thresholded residual
            yield (rng.integers(0, 5, (h, w)) * 50).astype(np.uint8)
        else:  # skewed, with a block of zeros like the area outside the circle
            img = np.clip(rng.gamma(2.0, 20.0, (h, w)), 0, 255).astype(np.uint8)
            img[: h // 3] = 0
            yield img


class TestOtsu:
    def test_maximises_between_class_variance(self):
        for image in random_uint8_images(0, 60):
            t = fs.otsu_threshold(image)
            sigmas = brute_force_sigmas(image)
            assert sigmas[t] >= sigmas.max() * (1 - 1e-12)
            # Thresholds between two present levels give the same split; compare distinct splits.
            levels = np.unique(image)[:-1]
            split = sigmas[levels]
            best = levels[np.argmax(split)]
            if np.sum(split >= split.max() * (1 - 1e-9)) == 1:
                np.testing.assert_array_equal(image > t, image > best)

    def test_agrees_with_skimage_without_ties(self):
        rng = np.random.default_rng(1)
        for _ in range(20):
            image = rng.integers(0, 256, (40, 50)).astype(np.uint8)
            np.testing.assert_array_equal(
                image > fs.otsu_threshold(image), image > threshold_otsu(image)
            )

    def test_opencv_tie_and_constant_cases(self):
        # Values recorded from OpenCV's THRESH_BINARY | THRESH_OTSU (scikit-image gives 0, 5, 0).
        tie = np.tile(np.array([0, 1, 2], np.uint8), (5, 1))  # t = 0 and t = 1 tie exactly
        assert fs.otsu_threshold(tie) == 1
        assert fs.otsu_threshold(np.full((10, 10), 5, np.uint8)) == 0  # all foreground
        assert fs.otsu_threshold(np.zeros((10, 10), np.uint8)) == 0

    def test_rejects_float(self):
        with pytest.raises(ValueError):
            fs.otsu_threshold(np.zeros((4, 4), np.float32))


class TestCircle:
    def test_small_stencil(self):
        expected = np.array(
            [
                [0, 0, 1, 0, 0],
                [0, 1, 1, 1, 0],
                [1, 1, 1, 1, 1],
                [0, 1, 1, 1, 0],
                [0, 0, 1, 0, 0],
            ],
            bool,
        )
        np.testing.assert_array_equal(fs.fov_circle(5, 5, 2), expected)

    def test_reference_circle(self):
        circle = fs.fov_circle(224, 224, 100)
        assert circle.sum() == 31417  # pixel count of OpenCV's filled circle (112, 112), r = 100
        assert circle[112, 12] and circle[112, 212] and not circle[112, 11] and not circle[112, 213]
        assert circle[12, 112] and circle[212, 112]

    def test_odd_size_centre(self):
        circle = fs.fov_circle(7, 9, 0)
        assert circle.sum() == 1 and circle[3, 4]

    def test_scaled_radius(self):
        assert fs.scaled_radius(224, 224) == 100
        assert fs.scaled_radius(448, 448) == 200
        assert fs.scaled_radius(112, 112) == 50
        assert fs.scaled_radius(512, 512) == 229  # 228.57
        assert fs.scaled_radius(224, 448) == 100  # shorter side


def blob_offsets(size):
    """The `size` pixels nearest a centre: a disc-like, 4-connected blob of exactly that size."""
    dy, dx = np.mgrid[-8:9, -8:9]
    order = np.lexsort((dx.ravel(), dy.ravel(), (dy**2 + dx**2).ravel()))[:size]
    return dy.ravel()[order], dx.ravel()[order]


def blob_image(sizes, seed=0, cell=16, grid=11):
    """Blobs of the given sizes at shuffled grid cells; returns the image and each blob's mask."""
    cells = np.random.default_rng(seed).permutation(grid * grid)[: len(sizes)]
    image = np.zeros((grid * cell, grid * cell), bool)
    masks = []
    for size, c in zip(sizes, cells, strict=True):
        cy, cx = (c // grid) * cell + cell // 2, (c % grid) * cell + cell // 2
        dy, dx = blob_offsets(size)
        mask = np.zeros_like(image)
        mask[cy + dy, cx + dx] = True
        image |= mask
        masks.append(mask)
    return image, masks


class TestComponentRanking:
    def test_keeps_31st_to_100th_largest(self):
        sizes = np.arange(10, 130)  # 120 blobs of distinct sizes
        image, masks = blob_image(sizes)
        kept = fs.keep_ranked_components(image, 30, 100)
        kept_sizes = {int(s) for s, m in zip(sizes, masks, strict=True) if kept[m].all()}
        dropped = {int(s) for s, m in zip(sizes, masks, strict=True) if not kept[m].any()}
        # Largest is 129 (rank 0): ranks 30..99 are sizes 99 down to 30.
        assert kept_sizes == set(range(30, 100))
        assert dropped == set(range(10, 30)) | set(range(100, 130))

    def test_ties_follow_opencv_block_order(self):
        # Single pixels, so every size ties. Plain raster order would give (0, 3), (1, 0), (2, 5),
        # (4, 4), (5, 0); OpenCV's block-based labelling (2 x 2 blocks in raster order) numbers
        # (1, 0) before (0, 3) and (5, 0) before (4, 4). Checked against cv2.connectedComponents.
        image = np.zeros((6, 6), bool)
        for r, c in [(1, 0), (0, 3), (2, 5), (4, 4), (5, 0)]:
            image[r, c] = True
        labels, ranked = fs.ranked_components(image)
        order = [tuple(int(v) for v in np.argwhere(labels == lab)[0]) for lab in ranked]
        assert order == [(1, 0), (0, 3), (2, 5), (5, 0), (4, 4)]
        first = fs.keep_ranked_components(image, 0, 1)
        assert first[1, 0] and first.sum() == 1
        middle = fs.keep_ranked_components(image, 3, 4)
        assert middle[5, 0] and middle.sum() == 1

    def test_larger_components_come_first(self):
        image = np.zeros((6, 8), bool)
        image[0, 0] = True  # size 1, first in scan order
        image[4:6, 6:8] = True  # size 4, last in scan order
        image[2, 3:5] = True  # size 2
        labels, ranked = fs.ranked_components(image)
        assert [int((labels == lab).sum()) for lab in ranked] == [4, 2, 1]

    def test_empty(self):
        assert not fs.keep_ranked_components(np.zeros((5, 5), bool), 0, 10).any()


def reference_score(residual, channel=1, radius=100, rank_lo=30, rank_hi=100):
    """A plain restatement of the documented rule with other building blocks."""
    normed = (residual - residual.min()) / (residual.max() - residual.min())
    h, w = normed.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    circle = ((yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2).astype(np.float64)
    diff = normed[..., channel] * circle
    image = np.uint8(diff * 255)
    sigmas = brute_force_sigmas(image)
    foreground = image > int(np.argmax(sigmas))
    labels = sk_label(foreground, connectivity=2)
    firsts = {}
    for (r, c), lab in np.ndenumerate(labels):
        if lab:
            firsts[lab] = min(firsts.get(lab, (h, w)), (r // 2, c // 2))
    in_opencv_order = sorted(firsts, key=firsts.get)
    by_size = sorted(in_opencv_order, key=lambda lab: (labels == lab).sum(), reverse=True)
    kept = np.isin(labels, by_size[rank_lo:rank_hi])
    return diff[kept].sum()


class TestPostprocessScore:
    def blob_residual(self, channel=1):
        image, _ = blob_image(np.arange(10, 130))
        residual = np.zeros(image.shape + (3,), np.float32)
        residual[..., channel] = image
        return residual

    def test_blobs_end_to_end(self):
        residual = self.blob_residual()
        # Circle covering the whole 176 x 176 image; kept sizes 30..99 each contribute 1.0 a pixel.
        assert fs.postprocess_score(residual, radius=200) == sum(range(30, 100))
        assert fs.postprocess_score(self.blob_residual(0), channel=0, radius=200) == 4515.0
        assert fs.postprocess_score(self.blob_residual(0), radius=200) == 0.0

    def test_joint_normalisation_over_channels(self):
        residual = self.blob_residual()
        residual[0, 0, 0] = 2.0  # another channel sets the maximum: the green blobs become 0.5
        assert fs.postprocess_score(residual, radius=200) == pytest.approx(4515.0 / 2)

    def test_circle_excludes_outside(self):
        residual = self.blob_residual()
        assert fs.postprocess_score(residual, radius=0) == 0.0
        # r = 79 (scaled for 176 px) cuts off the corner cells, which changes the ranking.
        assert fs.postprocess_score(residual, radius=None) == fs.postprocess_score(
            residual, radius=79
        )
        assert fs.postprocess_score(residual, radius=None) != fs.postprocess_score(
            residual, radius=200
        )

    def test_matches_reference_on_random_residuals(self):
        rng = np.random.default_rng(0)
        for i in range(4):
            residual = (rng.random((64, 64, 3)) ** 3).astype(np.float32)
            kwargs = dict(radius=28, rank_lo=3, rank_hi=20 + i)
            assert fs.postprocess_score(residual, **kwargs) == pytest.approx(
                reference_score(residual, **kwargs), rel=1e-12
            )
        residual = np.abs(rng.normal(size=(224, 224, 3))).astype(np.float32)
        assert fs.postprocess_score(residual) == pytest.approx(reference_score(residual), rel=1e-12)

    def test_constant_residual_scores_zero(self):
        assert fs.postprocess_score(np.zeros((32, 32, 3), np.float32)) == 0.0
        assert fs.postprocess_score(np.full((32, 32, 3), 0.7)) == 0.0

    def test_errors(self):
        with pytest.raises(ValueError):
            fs.postprocess_score(np.zeros((32, 32)))
        with pytest.raises(ValueError):
            fs.postprocess_score(np.full((8, 8, 3), np.nan))
        with pytest.raises(ValueError):
            fs.postprocess_score(np.zeros((8, 8, 3)), rank_lo=5, rank_hi=2)

    def test_batched(self):
        rng = np.random.default_rng(1)
        residuals = rng.random((3, 48, 48, 3)).astype(np.float32) ** 4
        scores = fs.postprocess_scores(residuals, radius=20, rank_lo=2, rank_hi=30)
        assert scores.shape == (3,) and scores.dtype == np.float64
        for r, s in zip(residuals, scores, strict=True):
            assert s == fs.postprocess_score(r, radius=20, rank_lo=2, rank_hi=30)
        with pytest.raises(ValueError):
            fs.postprocess_scores(residuals[0])
