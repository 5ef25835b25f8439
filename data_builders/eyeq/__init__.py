"""EyeQ tfds builder: `python -m jaxad.data.build eyeq/good --manual_dir=...`."""

from data_builders.eyeq.eyeq_dataset_builder import QUALITIES, Builder, EyeqConfig

__all__ = ["QUALITIES", "Builder", "EyeqConfig"]
