"""PICARD's sampling strategies (`picard.sampling`) and `picard.ignore_black_regions`.

Tiny model (64 px windows, width 4, M = 4) as tests/test_picard_method.py, whose config and
kernel scaling are reused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_picard_method import WINDOW, make_config, scaled

from jaxad.methods import picard
from jaxad.ops import heatmap


@pytest.fixture(scope="module")
def methods():
    return {s: picard.create(make_config(**{"picard.sampling": s})) for s in ("vmap", "map")}


@pytest.fixture(scope="module")
def params(methods):
    return scaled(jax.jit(methods["vmap"].init)(jax.random.key(0), None))


def test_resolve_sampling_per_backend():
    assert picard.resolve_sampling("auto", "cpu") == "map"
    assert picard.resolve_sampling("auto", "gpu") == "vmap"
    assert picard.resolve_sampling("auto", "tpu") == "vmap"
    assert picard.resolve_sampling("vmap", "cpu") == "vmap"
    assert picard.resolve_sampling("map", "tpu") == "map"
    with pytest.raises(ValueError, match=r"config.picard.sampling='loop' is not one of"):
        picard.resolve_sampling("loop")
    with pytest.raises(ValueError, match=r"picard.sampling"):
        picard.create(make_config(**{"picard.sampling": "scan"}))


def test_sampling_strategies_give_the_same_completions(methods, params):
    windows = np.random.default_rng(1).uniform(-1, 1, (3, WINDOW, WINDOW, 1)).astype(np.float32)
    key = jax.random.key(2)
    out = {
        s: np.asarray(jax.jit(m.completions)(params, windows, key, 5)) for s, m in methods.items()
    }
    assert out["map"].shape == (3, 4, WINDOW, WINDOW, 1)
    # Same keys, same dropout masks: the same completions, which differ between the M.
    np.testing.assert_allclose(out["map"], out["vmap"], rtol=0, atol=1e-6)
    assert out["map"].std(axis=1).mean() > 1e-3


# --- ignore_black_regions --------------------------------------------------------------------
def _image_with_background() -> np.ndarray:
    """96 x 112 texture in (0.05, 1] with an exactly black band: columns 0-39."""
    image = np.random.default_rng(3).uniform(0.05, 1, (96, 112, 1)).astype(np.float32)
    image[:, :40] = 0.0
    return image


def test_black_windows_is_the_originals_rule():
    image = _image_with_background()
    rows, cols = heatmap.window_grid(96, 112, WINDOW, 16)
    black = picard.black_windows(image, rows, cols, WINDOW)
    # Columns start at 0, 16, 32, 48: the first three windows reach into columns 0-39.
    assert black.shape == (3, 4) and (black == [True, True, True, False]).all()
    # Exactly 0 maps to -1; the smallest positive 8- and 16-bit levels do not.
    assert picard.is_black(0.0) and not picard.is_black(1 / 255) and not picard.is_black(1 / 65535)


@pytest.mark.parametrize("placement", ["centred", "averaged"])
def test_ignore_black_regions_skips_windows(params, placement):
    image, key = _image_with_background(), jax.random.key(4)
    full = picard.create(make_config(**{"picard.placement": placement}))
    skip = picard.create(
        make_config(**{"picard.placement": placement, "picard.ignore_black_regions": True})
    )
    sent = []
    scorer = skip.window_scores_at
    skip.window_scores_at = lambda p, w, k, i: sent.append(np.asarray(w)) or scorer(p, w, k, i)

    dense_grid = full.grid_scores(params, image, key)
    grid = skip.grid_scores(params, image, key)
    # The skipped windows are never sent to the scorer: 3 of 12 computed, one chunk of 4.
    assert len(sent) == 1 and (sent[0][:3].min(axis=(1, 2, 3)) > -1).all()
    black = np.zeros((3, 4), bool)
    black[:, :3] = True
    for metric in picard.METRICS:
        np.testing.assert_array_equal(grid[metric][black], 0.0)
        np.testing.assert_allclose(grid[metric][~black], dense_grid[metric][~black], rtol=1e-6)

    heat = skip.dense_map(params, image, key)
    g = grid["MCD_image"]
    if placement == "centred":  # the original: a 0 in the grid, interpolated as any score
        expected = heatmap.place(g, 96, 112, WINDOW, 16, "centred")
    else:  # averaged over the computed windows only; 0 where none covers a pixel
        expected = np.zeros((96, 112), np.float32)
        count = np.zeros((96, 112))
        for i, r in enumerate(range(0, 33, 16)):
            expected[r : r + WINDOW, 48:112] += g[i, 3]
            count[r : r + WINDOW, 48:112] += 1
        expected = np.where(count > 0, expected / np.maximum(count, 1), 0.0)
        assert (heat[:, :48] == 0).all()
    np.testing.assert_allclose(heat, expected, rtol=1e-5, atol=1e-6)

    # The jitted `score` gives the same map (it computes every window, then applies the rule).
    batch = {"image": jnp.asarray(image[None] * 2 - 1)}
    out = jax.jit(skip.score)(params, batch, key)
    np.testing.assert_allclose(
        out["map"][0],
        skip.dense_map(params, image, jax.random.fold_in(key, 0)),
        rtol=1e-5,
        atol=1e-6,
    )
