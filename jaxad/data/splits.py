"""Seeded hash splits: which names (files, patients, volumes) go to which split.

A name's place depends only on the seed and the name itself (SHA-256 of "<seed>/<name>"), not
on numpy's random generators or on the order the names come in, so a split is the same on
every machine and stays put when other names are added. The dataset builders of
`data_builders/` split their raw data this way, and `jaxad.data.nifti` holds out validation
volumes with the same rule, so both agree on a folder. Pure Python: no TensorFlow, no tfds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


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
