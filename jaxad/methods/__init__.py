"""Anomaly-detection methods: each module exposes `create(config) -> Method`."""

from __future__ import annotations

import importlib

from jaxad.methods.base import Method

KNOWN = ("lesion2void", "picard", "simclr", "dpa")


def create(config) -> Method:
    """Imports `jaxad.methods.<config.method>` and builds the method from the config."""
    if config.method not in KNOWN:
        raise ValueError(f"config.method={config.method!r} is not one of {', '.join(KNOWN)}.")
    module = importlib.import_module(f"jaxad.methods.{config.method}")
    return module.create(config)
