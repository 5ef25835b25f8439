"""COVID-19 Radiography tfds builder: `python -m jaxad.data.build covid19_radiography ...`."""

from data_builders.covid19_radiography.covid19_radiography_dataset_builder import (
    CLASS_NAMES,
    CLASSES,
    SEED,
    Builder,
    Covid19RadiographyConfig,
    normal_split,
)

__all__ = ["CLASS_NAMES", "CLASSES", "SEED", "Builder", "Covid19RadiographyConfig", "normal_split"]
