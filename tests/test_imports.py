"""The library's import structure: no tfds at run time, no builders, no cycles.

`jaxad` reads prepared data without TensorFlow or tfds, and `data_builders/` depends on `jaxad`
(for the processing they share), never the reverse; only the builders' command line,
`jaxad/data/build.py`, imports them. Import cycles make the order modules initialise in
depend on which one is imported first, so none is allowed between `jaxad` modules.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxad"
# The builders' command line (`python -m jaxad.data.build`) is the one module that needs them.
MAY_IMPORT_BUILDERS = {"jaxad.data.build"}
# What reading data must not load.
UNWANTED = ("tensorflow", "tensorflow_datasets", "data_builders")


def _loaded(code: str) -> set[str]:
    """Runs `code` in a fresh interpreter at the repository root; returns which of tensorflow,
    tensorflow_datasets and data_builders it left in `sys.modules`."""
    check = f"import sys\nprint(*(m for m in {UNWANTED!r} if m in sys.modules))\n"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + "\n" + check],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


# ---------------------------------------------------------------------------------------------
# No tfds, no builders at run time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "jaxad.data.nifti",
        "jaxad.data.sources",
        "jaxad.data.pipeline",
        "jaxad.data.slices",
        "jaxad.data.splits",
        "jaxad.data.fundus",
    ],
)
def test_reading_modules_do_not_load_tfds(module):
    assert _loaded(f"import {module}") == set()


def test_pipeline_over_a_folder_does_not_load_tfds(fundus_root):
    """Training and evaluation batches of an MVTec-layout folder, with EyeQ's FOV per image."""
    loaded = _loaded(
        f"""
        from configs import common
        from jaxad.data import pipeline

        cfg = common.data_config()
        cfg.update(dict(root={str(fundus_root)!r}, image_size=16, fov="eyeq", num_workers=0))
        it = pipeline.train_iterator(
            cfg, "train", local_batch_size=4, seed=0, process_index=0, process_count=1
        )
        assert next(it)["image"].shape == (4, 16, 16, 3)
        batches = pipeline.eval_batches(
            cfg, "test", local_batch_size=4, process_index=0, process_count=1
        )
        assert next(batches)["image"].shape == (4, 16, 16, 3)
        """
    )
    assert loaded == set()


def test_pipeline_over_nifti_volumes_does_not_load_tfds(tmp_path):
    """Slices of a NIfTI folder, prepared as the mood builder prepares them."""
    loaded = _loaded(
        f"""
        import os

        import nibabel as nib
        import numpy as np

        from configs import common
        from jaxad.data import pipeline

        root = {str(tmp_path / "volumes")!r}
        os.makedirs(root)
        for i in range(2):
            volume = np.zeros((8, 8, 8), np.float32)
            volume[2:6, 1:7, 1:7] = 0.5 + 0.1 * i
            nib.save(nib.Nifti1Image(volume, np.eye(4)), f"{{root}}/{{i}}.nii.gz")
        cfg = common.data_config()
        cfg.update(dict(name="nifti_folder", root=root, resize=0, min_nonzero=1, image_size=8))
        cfg.update(dict(channels=1, mean=(0.5,), std=(0.5,), num_workers=0, val_fraction=0.5))
        it = pipeline.train_iterator(
            cfg, "train", local_batch_size=2, seed=0, process_index=0, process_count=1
        )
        assert next(it)["image"].shape == (2, 8, 8, 1)
        batches = pipeline.eval_batches(
            cfg, "validation", local_batch_size=2, process_index=0, process_count=1
        )
        assert next(batches)["image"].shape == (2, 8, 8, 1)
        """
    )
    assert loaded == set()


# ---------------------------------------------------------------------------------------------
# The import graph of jaxad
# ---------------------------------------------------------------------------------------------


def _modules() -> dict[str, pathlib.Path]:
    """Every module of `jaxad` by dotted name; a package's `__init__` is the package itself."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, int]]:
    """(dotted name, line) of everything a module imports, in functions too.

    `import a.b` gives `a.b`; `from a.b import c` gives `a.b.c` (`_resolve` falls back to `a.b`
    when `c` is not a module). Relative imports are made absolute.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _resolve(target: str, modules: dict[str, pathlib.Path]) -> str | None:
    """The `jaxad` module an import names: the longest dotted prefix that is one, if any."""
    parts = target.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the other `jaxad` modules it imports (anywhere in the file)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = {_resolve(target, modules) for target, _ in _imports(name, path)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph` that hold more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_graph_resolves_modules_and_names():
    graph = import_graph()
    assert "jaxad.data.transforms" in graph["jaxad.data.pipeline"]  # from jaxad.data import m
    assert "jaxad.data" not in graph["jaxad.data.pipeline"]
    assert "jaxad.data.nifti" in graph["jaxad.data.sources"]  # imported inside a function
    cycle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}}
    assert strongly_connected(cycle) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles between jaxad modules: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_only_the_build_command_imports_the_builders():
    offenders = []
    for name, path in _modules().items():
        if name in MAY_IMPORT_BUILDERS:
            continue
        for target, line in _imports(name, path):
            if target == "data_builders" or target.startswith("data_builders."):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "jaxad modules importing data_builders: " + ", ".join(sorted(offenders))
