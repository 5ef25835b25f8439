"""Tests for jaxad.viz: overlay colours, report panels and PNG writing."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxad import viz


def hot_spot_map(h=16, w=20):
    amap = np.zeros((h, w), np.float32)
    amap[5, 7] = 1.0
    return amap


class TestOverlay:
    @pytest.mark.parametrize("shape", [(16, 20), (16, 20, 1), (16, 20, 3)])
    def test_shapes_and_dtype(self, shape):
        out = viz.overlay(np.zeros(shape, np.uint8), hot_spot_map())
        assert out.shape == (16, 20, 3) and out.dtype == np.uint8

    def test_hot_spot_is_red_with_jet(self):
        out = viz.overlay(np.zeros((16, 20, 3), np.uint8), hot_spot_map(), alpha=1.0)
        r, g, b = out[5, 7].astype(int)
        assert r > 100 and g < 10 and b < 10  # jet's top is dark red
        r, g, b = out[0, 0].astype(int)
        assert b > 100 and r < 10 and g < 10  # and its bottom dark blue

    def test_alpha_blends(self):
        image = np.full((16, 20, 3), 200, np.uint8)
        np.testing.assert_array_equal(viz.overlay(image, hot_spot_map(), alpha=0.0), image)
        half = viz.overlay(image, hot_spot_map(), alpha=0.5).astype(int)
        full = viz.overlay(image, hot_spot_map(), alpha=1.0).astype(int)
        np.testing.assert_allclose(half, (200 + full) / 2, atol=1)

    def test_vmin_vmax_clip(self):
        image = np.zeros((16, 20, 3), np.uint8)
        amap = np.linspace(0, 1, 16 * 20).reshape(16, 20)
        out = viz.overlay(image, amap, alpha=1.0, vmin=0.25, vmax=0.5)
        np.testing.assert_array_equal(out[-1, -1], out[15, 10])  # both above vmax
        np.testing.assert_array_equal(out[0, 0], out[2, 0])  # both below vmin

    def test_constant_and_nan_maps(self):
        image = np.zeros((4, 4, 3), np.uint8)
        low = viz.overlay(image, np.zeros((4, 4)), alpha=1.0)
        assert (low == low[0, 0]).all()
        amap = np.zeros((4, 4))
        amap[0, 0] = np.nan
        amap[1, 1] = 1.0
        out = viz.overlay(image, amap, alpha=1.0)
        np.testing.assert_array_equal(out[0, 0], low[0, 0])

    def test_float_image_and_other_cmap(self):
        out = viz.overlay(np.full((8, 8, 3), 0.5), np.zeros((8, 8)), alpha=0.0, cmap="viridis")
        assert (out == 128).all()

    def test_size_mismatch(self):
        with pytest.raises(ValueError):
            viz.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)))


class TestSideBySide:
    def test_panels(self):
        image = np.full((16, 20, 3), 100, np.uint8)
        two = viz.side_by_side(image, hot_spot_map())
        assert two.shape == (16, 2 * 20 + 2, 3) and two.dtype == np.uint8
        np.testing.assert_array_equal(two[:, :20], image)
        assert (two[:, 20:22] == 255).all()

        mask = np.zeros((16, 20), bool)
        mask[4:9, 5:10] = True
        three = viz.side_by_side(image[..., :1], hot_spot_map(), mask[..., None], gap=3)
        assert three.shape == (16, 3 * 20 + 2 * 3, 3)
        outlined = three[:, 2 * 23 :]
        green = np.all(outlined == (0, 255, 0), axis=-1)
        assert green[4, 5] and green[8, 9] and green[4, 7]  # border pixels
        assert not green[6, 7]  # interior stays the image
        assert green.sum() == 16  # perimeter of a 5 x 5 square


class TestTitledPanel:
    def test_title_colorbar_and_enlargement(self):
        image = np.full((16, 20, 3), 200, np.uint8)
        plain = viz.side_by_side(image, hot_spot_map())
        panel = viz.side_by_side(image, hot_spot_map(), title="a.png | score 0.5", colorbar=True)
        factor = 8  # 16 rows enlarged to at least 128
        assert panel.shape[0] == 14 + 16 * factor
        assert panel.shape[1] > plain.shape[1] * factor  # plus the colour bar
        assert (panel[:14] < 100).any() and (panel[:14] == 255).any()  # black text on white
        bar = panel[14:, 2 * (20 * factor + 2) + 2 :][:, :12]
        assert bar[0, 0, 0] > 100 and bar[0, 0, 2] < 10  # jet's top (dark red) at the top
        assert bar[-1, 0, 2] > 100 and bar[-1, 0, 0] < 10  # and its bottom (dark blue) below

    def test_map_is_drawn_inside_the_fov_only(self):
        image = np.full((16, 20, 3), 200, np.uint8)
        amap = hot_spot_map()
        amap[0, 0] = 50.0  # Outside the field of view: must not set the colour scale.
        fov = np.zeros((16, 20))
        fov[2:14, 2:18] = 1
        out = viz.overlay(image, amap, alpha=1.0, fov=fov)
        np.testing.assert_array_equal(out[0, 0], image[0, 0])  # the plain image outside
        r, g, b = out[5, 7].astype(int)
        assert r > 100 and g < 10 and b < 10  # the hot spot is the top of the scale inside
        assert viz.map_range(amap, fov > 0.5) == (0.0, 1.0)


class TestSavePng:
    def test_round_trip(self, tmp_path):
        rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3)).astype(np.uint8)
        path = viz.save_png(tmp_path / "nested" / "panel.png", rgb)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)

    def test_gray_and_bool(self, tmp_path):
        gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
        path = viz.save_png(tmp_path / "gray.png", gray)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), gray[..., 0])
        path = viz.save_png(str(tmp_path / "mask.png"), np.eye(3, dtype=bool))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.eye(3) * 255)

    def test_rejects_float(self, tmp_path):
        with pytest.raises(ValueError):
            viz.save_png(tmp_path / "x.png", np.zeros((3, 3)))


def test_does_not_import_pyplot():
    code = "import sys, jaxad.viz; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
