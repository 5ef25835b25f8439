"""BCS-DBT tfds builder: `python -m jaxad.data.build duke_dbt/slices --manual_dir=...`."""

from data_builders.duke_dbt.duke_dbt_dataset_builder import (
    BOX_CLASSES,
    GRADES,
    Builder,
    DukeDbtConfig,
)

__all__ = ["BOX_CLASSES", "GRADES", "Builder", "DukeDbtConfig"]
