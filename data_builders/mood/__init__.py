"""MOOD 2020 tfds builder: `python -m jaxad.data.build mood/brain_axis2 --manual_dir=...`."""

from data_builders.mood.mood_dataset_builder import (
    NUM_FOLDS,
    REGIONS,
    Builder,
    MoodConfig,
    hash_folds,
    region_dir,
)

__all__ = ["NUM_FOLDS", "REGIONS", "Builder", "MoodConfig", "hash_folds", "region_dir"]
