"""EyePACS tfds builder: `python -m jaxad.data.build eyepacs --manual_dir=...`."""

from data_builders.eyepacs.eyepacs_dataset_builder import EYES, Builder, EyepacsConfig

__all__ = ["EYES", "Builder", "EyepacsConfig"]
