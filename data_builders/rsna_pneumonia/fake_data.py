"""A small fake copy of the RSNA Pneumonia stage-2 training files, in the real layout and formats.

The DICOMs are what Kaggle ships: Secondary Capture objects with one 8-bit MONOCHROME2 frame
compressed as JPEG baseline (here written through Pillow and encapsulated by pydicom), with the
header fields the builder reads (PatientSex, PatientAge in RSNA's bare-number form, ViewPosition).
The CSVs have the real headers and row conventions: one labels row per box, empty coordinates for
Target 0, and the class row repeated per box. Tests build from it; benchmarks pass larger sizes.
"""

from __future__ import annotations

import io
import random
import uuid
from typing import Any

import numpy as np
from etils import epath
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

_CLASS_OF = {
    "normal": "Normal",
    "not_normal": "No Lung Opacity / Not Normal",
    "lung_opacity": "Lung Opacity",
}


def write(
    root: epath.PathLike,
    *,
    n_normal: int = 12,
    n_not_normal: int = 3,
    n_opacity: int = 4,
    image_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes the fake files under `root` and returns what the builder should make of them.

    Returns:
      `patients`: patientId -> {"class" (the builder's class name), "boxes" [(x, y, w, h)] in
      DICOM pixels, "sex", "age", "view"}; `sizes`: config -> split -> number of examples;
      `image_size`: the DICOMs' size.
    """
    root = epath.Path(root)
    folder = root / "stage_2_train_images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    patients: dict[str, dict[str, Any]] = {}
    kinds = ["normal"] * n_normal + ["not_normal"] * n_not_normal + ["lung_opacity"] * n_opacity
    for kind in kinds:
        patient = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        boxes = []
        if kind == "lung_opacity":
            for _ in range(rng.randint(1, 3)):
                w, h = rng.randint(4, image_size // 3), rng.randint(4, image_size // 2)
                x, y = rng.randint(0, image_size - w), rng.randint(0, image_size - h)
                boxes.append((float(x), float(y), float(w), float(h)))
        info = {
            "class": kind,
            "boxes": boxes,
            "sex": rng.choice("MF"),
            "age": rng.randint(1, 90),
            "view": rng.choice(("PA", "AP")),
        }
        patients[patient] = info
        _write_dicom(folder / f"{patient}.dcm", patient, info, image_size, rng)

    order = list(patients)
    rng.shuffle(order)  # The Kaggle files are not sorted by patientId either.
    labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
    for patient in order:
        info = patients[patient]
        for x, y, w, h in info["boxes"]:
            labels.append(f"{patient},{x},{y},{w},{h},1")
        if not info["boxes"]:
            labels.append(f"{patient},,,,,0")
        classes += [f"{patient},{_CLASS_OF[info['class']]}"] * max(1, len(info["boxes"]))
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")

    n_test = round(0.1 * n_normal)
    n_val = round(0.2 * n_normal) - n_test
    sizes = {
        "train": n_normal - n_val - n_test,
        "validation": n_val,
        "test": n_test + n_opacity,
        "test_not_normal": n_test + n_not_normal,
    }
    return {
        "patients": patients,
        "sizes": {"native": sizes, "256": sizes},
        "image_size": image_size,
    }


def _chest(size: int, boxes: list, rng: random.Random) -> np.ndarray:
    """A radiograph-like uint8 image: bright body, two darker lungs, brighter opacity boxes."""
    yy, xx = np.mgrid[:size, :size] / size
    image = 170.0 - 60.0 * np.abs(xx - 0.5)
    for cx in (0.3, 0.7):
        image -= 90.0 * (((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    for x, y, w, h in boxes:
        image[int(y) : int(y + h), int(x) : int(x + w)] += 60.0
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 6.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _write_dicom(
    path: epath.Path, patient: str, info: dict[str, Any], size: int, rng: random.Random
) -> None:
    jpeg = io.BytesIO()
    Image.fromarray(_chest(size, info["boxes"], rng)).save(jpeg, format="JPEG", quality=95)
    uid = generate_uid(entropy_srcs=[patient])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.SeriesDescription = f"view: {info['view']}"
    ds.PatientName = patient
    ds.PatientID = patient
    ds.PatientSex = info["sex"]
    # RSNA's form, a bare number; DICOM's is "051Y", so pydicom would warn about it.
    ds.add(DataElement("PatientAge", "AS", str(info["age"]), validation_mode=config.IGNORE))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = info["view"]
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [0.143, 0.143]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    with path.open("wb") as f:
        ds.save_as(f, enforce_file_format=True)
