"""RSNA Pneumonia tfds builder: `python -m jaxad.data.build rsna_pneumonia --manual_dir=...`."""

from data_builders.rsna_pneumonia.rsna_pneumonia_dataset_builder import (
    CLASS_NAMES,
    CLASSES,
    Builder,
    RsnaPneumoniaConfig,
    split_normal,
)

__all__ = ["CLASS_NAMES", "CLASSES", "Builder", "RsnaPneumoniaConfig", "split_normal"]
