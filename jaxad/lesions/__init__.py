"""Lesion boxes for lesion-based contrastive learning (LCL, MICCAI 2021).

LCL cuts its training patches around lesion boxes predicted offline. This package reads and
writes those boxes (`boxes`: jaxad's box file, LCL's released predictions pickle, LCL's filter,
boxes stored in a tfds dataset such as `idrid`) and makes candidate boxes without a detector
(`candidates`). `python -m jaxad.lesions` is the command line.
"""

from jaxad.lesions.boxes import (
    Boxes,
    BoxFileError,
    BoxFileNotFoundError,
    PickledPredictions,
    boxes_from_tfds,
    check_boxes,
    filter_boxes,
    filter_images,
    image_sizes,
    read_boxes,
    read_lcl_pickle,
    write_boxes,
)
from jaxad.lesions.candidates import candidate_recall, found_lesions, lesion_candidates

__all__ = [
    "BoxFileError",
    "BoxFileNotFoundError",
    "Boxes",
    "PickledPredictions",
    "boxes_from_tfds",
    "candidate_recall",
    "check_boxes",
    "filter_boxes",
    "filter_images",
    "found_lesions",
    "image_sizes",
    "lesion_candidates",
    "read_boxes",
    "read_lcl_pickle",
    "write_boxes",
]
