"""Seeded hash splits: which names (files, patients, volumes) go to which split.

A name's place depends only on the seed and the name itself (SHA-256 of "<seed>/<name>"), not
on numpy's random generators or on the order the names come in, so a split is the same on
every machine and stays put when other names are added. The dataset builders of
`data_builders/` split their raw data this way, and `jaxad.data.nifti` holds out validation
volumes with the same rule, so both agree on a folder. No TensorFlow, no tfds.

`stratified_fraction` is the other kind of draw: a seeded, per-grade subset of a training split
(``data.label_fraction``, the low-label experiments of DR grading), over record indices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np


def hash_rank(names: Iterable[str], seed: int) -> list[str]:
    """The distinct `names` ordered by a seeded hash of each (SHA-256 of "<seed>/<name>").

    Hashing rather than a numpy draw keeps the order identical across numpy versions and
    independent of the order of `names`.
    """

    def rank(name: str) -> str:
        return hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()

    return sorted(sorted(set(names)), key=rank)


def hash_split(names: Iterable[str], fraction: float, seed: int) -> set[str]:
    """Returns round(fraction * len(names)) of `names`: the first ones in `hash_rank` order."""
    ranked = hash_rank(names, seed)
    return set(ranked[: round(fraction * len(ranked))])


def hash_splits(
    names: Iterable[str], fractions: Mapping[str, float], seed: int, *, rest: str
) -> dict[str, set[str]]:
    """Cuts the `hash_rank` order of `names` into consecutive blocks, one per entry of `fractions`.

    Block i ends at round(c * n), c the sum of the first i + 1 fractions and n the number of
    names; the names after the last block form the split `rest`. With fractions f1, f2, ... the
    first block is `hash_split(names, f1, seed)`, the first two together
    `hash_split(names, f1 + f2, seed)`, and so on: changing a fraction keeps the blocks before it.
    """
    ranked = hash_rank(names, seed)
    splits: dict[str, set[str]] = {}
    start, total = 0, 0.0
    for name, fraction in fractions.items():
        total += fraction
        end = max(start, round(total * len(ranked)))
        splits[name] = set(ranked[start:end])
        start = end
    splits[rest] = set(ranked[start:])
    return splits


def stratified_fraction(grades: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-stratified `fraction` of the examples whose grades are `grades`.

    Rule: for every distinct grade g (any int; -1, "no grade", is a stratum of its own), the
    n_g indices with that grade, in increasing order, are permuted by
    ``np.random.default_rng([seed, g + 1]).permutation(n_g)`` and the first
    ``max(1, round(fraction * n_g))`` are kept (Python's round: halves go to the even
    number). Each grade has its own stream, so a grade's subset depends only on the seed and
    that grade's examples, and for one seed a smaller fraction keeps a subset of what a larger
    one keeps. ``fraction=1`` keeps everything. Unlike the hash splits, the draw relies on numpy's
    PCG64 permutation, which NEP 19 does not promise to keep across numpy versions.

    Args:
      grades: [N] integer grades >= -1, one per example (e.g. the record order of a source).
      fraction: in (0, 1].
      seed: a non-negative int.

    Returns:
      The kept indices, sorted, int64.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the label fraction must be in (0, 1], got {fraction}")
    grades = np.asarray(grades).ravel()
    if grades.size and not np.issubdtype(grades.dtype, np.integer):
        raise ValueError(f"grades must be integers, got dtype {grades.dtype}")
    kept = []
    for g in np.unique(grades):
        members = np.flatnonzero(grades == g)
        n_keep = max(1, round(fraction * len(members)))
        order = np.random.default_rng([seed, int(g) + 1]).permutation(len(members))
        kept.append(members[order[:n_keep]])
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, np.int64)
