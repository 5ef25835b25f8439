"""Shared fixtures: a small fundus folder in the demo's layout and a tiny Lesion2Void config."""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Many tests compile the same tiny programs, in this process and in subprocesses (which inherit
# the environment): share XLA's compilation cache between them. Set before jax is imported.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxad-test-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def fundus_root(tmp_path_factory) -> pathlib.Path:
    """A few demo fundus images (MVTec layout) at 64 px: 32 normal train, 16 test."""
    from jaxad.data import demo

    root = tmp_path_factory.mktemp("fundus")
    return demo.generate_fundus_demo(
        root, n_train=32, n_test_good=4, n_test_per_type=3, size=64, seed=0
    )


def load_bench_script(name: str):
    """bench/<name>.py as a module (bench/ is not a package), registered in sys.modules (where
    dataclasses look their module up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fake_batch(n: int = 8, size: int = 32, seed: int = 0) -> dict:
    """A random training batch with the pipeline's keys, shapes and dtypes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, size, size, 3)).astype(np.float32),
        "fov": np.ones((n, size, size), np.float32),
        "mask": np.zeros((n, size, size), np.float32),
        "label": np.zeros(n, np.int32),
        "grade": np.zeros(n, np.int32),
    }


def tiny_config(root: os.PathLike, **overrides):
    """configs/lesion2void.py:demo shrunk to seconds: 32 px, 4-channel networks, batch 8."""
    from configs import lesion2void

    c = lesion2void.get_config("demo")
    c.data.name = "folder"
    c.data.root = str(root)
    c.data.image_size = 32
    c.model.width = 4
    c.model.disc_width = 4
    c.batch_size = 8
    c.eval.batch_size = 8
    c.total_steps = 4
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval.num_overlays = 4
    c.l2v.score_chunk = 36
    return override(c, overrides)


def override(config, overrides: dict):
    """`config` with dotted keys set, as `--config.a.b=v` would (`run_config.override`)."""
    from jaxad import run_config

    return run_config.override(config, overrides, strict=False)


def pytest_configure(config):
    """The fast tier (`-m "not slow"`) compiles with most XLA optimisations off, as the flax
    examples' tests do: its tests check behaviour on tiny inputs, where compiling dominates (a
    cold run takes a third less time). The end-to-end tier keeps XLA's optimisations, so the
    demos run as users run them. Subprocesses inherit the setting."""
    if config.option.markexpr.replace(" ", "") == "notslow":
        os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


# The end-to-end tier's longest tests, longest first (about 1,270, 1,020, 670, 390 and 130 s
# on the 2-core CI machine). The tier runs on two xdist workers (`.ci/run`: `-n 2
# --maxschedchunk=1`), each holding its running test and one queued; a worker that starts a long
# test late sets the tier's wall time. So the two longest start at once, each with one short test
# queued behind it, and the next long ones go to whichever worker frees first.
LONGEST_FIRST = (
    "tests/test_mood_demo.py::test_demo_beats_the_zscore_baseline",
    "tests/test_picard_run.py::test_demo_beats_the_intensity_baseline",
    "tests/test_train.py::test_demo_beats_the_trivial_baseline",
    "tests/test_multihost.py::test_every_method_in_two_processes",
    "tests/test_multihost.py::test_lesion2void_in_four_processes",
)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(config, items):
    """Orders the tests as `LONGEST_FIRST` says: L1, S1, L2, S2, L3, L4, ..., then the rest."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    long = sorted((it for it in items if it.nodeid in rank), key=lambda it: rank[it.nodeid])
    rest = [it for it in items if it.nodeid not in rank]
    if len(long) < 2 or len(rest) < 2:
        items[:] = long + rest
        return
    items[:] = [long[0], rest[0], long[1], rest[1], *long[2:], *rest[2:]]
