"""IDRiD tfds builder: `python -m jaxad.data.build idrid/segmentation --manual_dir=...`."""

from data_builders.idrid.idrid_dataset_builder import (
    LESIONS,
    MASKS,
    Builder,
    IdridConfig,
    lesion_boxes,
)

__all__ = ["LESIONS", "MASKS", "Builder", "IdridConfig", "lesion_boxes"]
