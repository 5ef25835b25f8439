"""IDRiD: Indian Diabetic Retinopathy Image Dataset, lesion masks and DR grades.

Two parts of IDRiD, one config family each:

- `segmentation` (part A, 54 + 27 photos): pixel masks of microaneurysms (MA), haemorrhages
  (HE), hard exudates (EX), soft exudates (SE) and the optic disc (OD); their union over the four
  lesions is jaxad's anomaly `mask`, and lesion bounding boxes are derived from the masks as
  Lesion-based Contrastive Learning (MICCAI 2021) did to train its lesion detector: one box per
  external contour of each lesion mask, grown by one pixel at the top and left.
- `grading` (part B, 413 + 103 photos): DR grade 0-4 and risk of macular oedema 0-2.

Every photo is border-cropped with the crop of `jaxad.data.fundus.crop_border`. The default
configs keep the native resolution, since a microaneurysm spans a few pixels of a 4288 x 2848
photo and vanishes at 512; the `_512` configs resize the crop to 512 x 512 as the EyePACS and
EyeQ builders do, for models trained on those.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from scipy import ndimage, sparse

from data_builders import common, fundus

# IDRiD's mask codes, in the order of its ground-truth folders. The first four are lesions.
MASKS = ("MA", "HE", "EX", "SE", "OD")
LESIONS = MASKS[:4]
MASK_FOLDERS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}
TASKS = ("segmentation", "grading")
MASK_RESIZES = ("any", "majority")
# Split -> (IDRiD's folder, part B's label file).
_SPLITS = {
    "train": ("a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv"),
    "test": ("b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv"),
}
_SEGMENTATION = epath.Path("A. Segmentation")
_GRADING = epath.Path("B. Disease Grading")
_CSV_COLUMNS = ("Image name", "Retinopathy grade", "Risk of macular edema")

_LAYOUT = """\
Expected manual_dir layout (only the part a config reads is needed):
  A. Segmentation/
    1. Original Images/a. Training Set/IDRiD_01.jpg ... (and b. Testing Set/IDRiD_55.jpg ...)
    2. All Segmentation Groundtruths/a. Training Set/ (and b. Testing Set/)
      1. Microaneurysms/IDRiD_01_MA.tif   2. Haemorrhages/IDRiD_01_HE.tif
      3. Hard Exudates/IDRiD_01_EX.tif    4. Soft Exudates/IDRiD_01_SE.tif
      5. Optic Disc/IDRiD_01_OD.tif       (a photo without a lesion type has no file for it)
  B. Disease Grading/
    1. Original Images/a. Training Set/IDRiD_001.jpg ... (and b. Testing Set/IDRiD_001.jpg ...)
    2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
                    b. IDRiD_Disease Grading_Testing Labels.csv
      (columns "Image name", "Retinopathy grade", "Risk of macular edema ")
"""

_INSTRUCTIONS = f"""\
Download IDRiD from IEEE DataPort
(https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid, free
account): "A. Segmentation.zip" and "B. Disease Grading.zip". Unzip both into manual_dir so that
the two folders sit directly in it. See data_builders/idrid/README.md.

{_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class IdridConfig(tfds.core.BuilderConfig):
    """Which IDRiD part, the stored size and how masks are resized.

    Attributes:
      task: "segmentation" (part A) or "grading" (part B).
      image_size: side of the stored square, or None to keep the native crop.
      mask_resize: when resizing, an output mask pixel is 1 if "any" of it is lesion (every
        lesion stays visible, slightly grown) or the "majority" of it is (area-faithful, but
        small microaneurysms disappear).
    """

    task: str = "segmentation"
    image_size: int | None = None
    mask_resize: str = "any"


@dataclasses.dataclass(frozen=True)
class _Photo:
    name: str  # e.g. "IDRiD_01"
    path: epath.Path
    masks: dict[str, epath.Path] = dataclasses.field(default_factory=dict)  # code -> .tif
    grade: int = -1
    edema: int = -1


class Builder(common.ManualBuilder):
    """IDRiD photos with lesion masks and boxes (segmentation) or DR grades (grading)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        IdridConfig(
            name="segmentation",
            description="Part A at native resolution: lesion and optic disc masks, lesion boxes.",
        ),
        IdridConfig(
            name="segmentation_512",
            description="Part A resized to 512 x 512.",
            image_size=512,
        ),
        IdridConfig(
            name="grading",
            description="Part B at native resolution: DR and macular oedema grades.",
            task="grading",
        ),
        IdridConfig(
            name="grading_512",
            description="Part B resized to 512 x 512.",
            task="grading",
            image_size=512,
        ),
    ]
    DEFAULT_CONFIG_NAME = "segmentation"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.task not in TASKS or config.mask_resize not in MASK_RESIZES:
            raise ValueError(f"task must be in {TASKS} and mask_resize in {MASK_RESIZES}: {config}")
        size = config.image_size
        hw = (size, size) if size else (None, None)
        features: dict[str, Any] = {
            **fundus.photo_features(size, grades=False),
            "crop_box": tfds.features.Tensor(
                shape=(4,),
                dtype=np.int32,
                doc="The crop in the original photo: left, top, right, bottom (pixels).",
            ),
            "id": tfds.features.Text(doc="IDRiD image name, e.g. IDRiD_01 or IDRiD_001."),
        }
        if config.task == "segmentation":
            features["label"] = tfds.features.ClassLabel(
                names=["normal", "lesion"], doc="1 if any MA, HE, EX or SE pixel is marked."
            )
            features["mask"] = _mask_feature(hw, "Union of the MA, HE, EX and SE masks, 0/1.")
            for code in MASKS:
                features[f"mask_{code.lower()}"] = _mask_feature(
                    hw, f"{MASK_FOLDERS[code][3:]} mask, 0/1 (all 0 if IDRiD has no file)."
                )
            features["boxes"] = tfds.features.Tensor(
                shape=(None, 4),
                dtype=np.float32,
                doc="Lesion boxes x1, y1, x2, y2 in the stored image's pixels.",
            )
            features["box_classes"] = tfds.features.Tensor(
                shape=(None,), dtype=np.int64, doc="Class of each box: 0 MA, 1 HE, 2 EX, 3 SE."
            )
            supervised_keys = ("image", "mask")
        else:
            features["label"] = tfds.features.ClassLabel(
                names=["normal", "dr"], doc="0: DR grade 0, 1: DR grade 1-4."
            )
            features["grade"] = tfds.features.ClassLabel(
                num_classes=5, doc="DR grade (0 none ... 4 proliferative)."
            )
            features["macular_edema"] = tfds.features.ClassLabel(
                num_classes=3, doc="Risk of diabetic macular oedema, 0-2."
            )
            supervised_keys = ("image", "grade")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=supervised_keys,
            homepage="https://idrid.grand-challenge.org/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = dl_manager.manual_dir
        read = _segmentation_photos if self.builder_config.task == "segmentation" else _graded
        photos = {split: read(root, split) for split in _SPLITS}
        return {split: self._generate_examples(split, p) for split, p in photos.items()}

    def _generate_examples(self, split: str, photos: Sequence[_Photo]) -> Iterator:
        config = self.builder_config
        if config.task == "segmentation":
            process = functools.partial(
                _process_segmentation, size=config.image_size, mask_resize=config.mask_resize
            )
        else:
            process = functools.partial(_process_grading, size=config.image_size)
        for photo, result in common.ordered_map(process, photos, self._num_workers):
            if isinstance(result, common.Unreadable):
                self._corrupt.handle(result.path, result.error)
                continue
            example = dict(result, id=photo.name)
            if config.task == "grading":
                example.update(
                    label=int(photo.grade > 0), grade=photo.grade, macular_edema=photo.edema
                )
            yield photo.name, example
        self._corrupt.report(f"idrid/{config.name} {split}")


def _mask_feature(hw: tuple, doc: str) -> tfds.features.Image:
    return tfds.features.Image(shape=(*hw, 1), encoding_format="png", doc=doc)


# ---------------------------------------------------------------------------------------------
# Raw file listing (before any decoding)
# ---------------------------------------------------------------------------------------------


def _folder(path: epath.Path, what: str) -> epath.Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}\n{_LAYOUT}")
    return path


def _segmentation_photos(root: epath.Path, split: str) -> list[_Photo]:
    """Part A photos of `split`, each with the mask files IDRiD has for it."""
    folder = _SPLITS[split][0]
    images = _folder(root / _SEGMENTATION / "1. Original Images" / folder, "IDRiD image folder")
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() == ".jpg")
    if not paths:
        raise FileNotFoundError(f"No IDRiD_NN.jpg photos in {images}\n{_LAYOUT}")
    masks: dict[str, dict[str, epath.Path]] = {p.stem: {} for p in paths}
    truth = root / _SEGMENTATION / "2. All Segmentation Groundtruths" / folder
    for code in MASKS:
        mask_dir = _folder(truth / MASK_FOLDERS[code], "IDRiD mask folder")
        for path in sorted(mask_dir.iterdir()):
            if path.suffix.lower() not in (".tif", ".tiff"):
                continue
            name, _, suffix = path.stem.rpartition("_")
            # A mask that matches no photo would otherwise be left out without a word.
            if suffix != code or name not in masks:
                raise common.RawDataError(
                    f"Unexpected mask file {path}: expected <photo>_{code}.tif for a photo of "
                    f"{images}.\n{_LAYOUT}"
                )
            masks[name][code] = path
    return [_Photo(p.stem, p, masks[p.stem]) for p in paths]


def _graded(root: epath.Path, split: str) -> list[_Photo]:
    """Part B photos of `split` with their grades, from the IDRiD label file."""
    folder, labels = _SPLITS[split]
    path = root / _GRADING / "2. Groundtruths" / labels
    # read_csv strips the header, so the real "Risk of macular edema " (trailing space) matches.
    rows = common.read_csv(path, _CSV_COLUMNS, _LAYOUT, what="IDRiD label file")
    images = _folder(root / _GRADING / "1. Original Images" / folder, "IDRiD image folder")
    photos, names = [], set()
    for line, row in enumerate(rows, start=2):
        if not any(row.values()):
            continue  # The label files end with rows of empty cells.
        name = row["Image name"]
        grade = common.parse_int(row["Retinopathy grade"], path, line, "Retinopathy grade")
        edema = common.parse_int(row["Risk of macular edema"], path, line, "Risk of macular edema")
        if not name or grade not in range(5) or edema not in range(3):
            raise common.RawDataError(
                f"{path}:{line}: expected an image name, a grade 0-4 and an oedema risk 0-2: {row}"
            )
        if name in names:
            raise common.RawDataError(f"{path}:{line}: image {name!r} is listed twice.")
        names.add(name)
        photos.append(_Photo(name, images / f"{name}.jpg", grade=grade, edema=edema))
    paths = [p.path for p in photos]
    common.require_listed_files(images, paths, path.name, _LAYOUT, what="IDRiD image folder")
    return sorted(photos, key=lambda p: p.name)


# ---------------------------------------------------------------------------------------------
# Decoding and preprocessing (in worker threads)
# ---------------------------------------------------------------------------------------------


def _read_photo(
    path: epath.Path, size: int | None
) -> tuple[Image.Image, tuple[int, int, int, int], tuple[int, int]]:
    """The cropped (and resized) photo, its crop box and the original (width, height)."""
    with path.open("rb") as f, Image.open(f) as img:
        img.load()  # Decode now, so a truncated file fails here, with its name.
        img = img.convert("RGB")
    box = fundus.crop_box(img)
    cropped = img.crop(box)
    if size:
        # Lanczos is the filter Pillow < 10 called ANTIALIAS, which the original crop used.
        cropped = cropped.resize((size, size), Image.Resampling.LANCZOS)
    return cropped, box, img.size


def _process_grading(photo: _Photo, size: int | None) -> dict[str, Any] | common.Unreadable:
    try:
        img, box, _ = _read_photo(photo.path, size)
    except (OSError, SyntaxError, ValueError) as err:
        return common.Unreadable(photo.path, err)
    image, fov = fundus.encode_photo(img, photo.path)
    return {"image": image, "fov": fov, "crop_box": np.asarray(box, np.int32)}


def _process_segmentation(
    photo: _Photo, size: int | None, mask_resize: str
) -> dict[str, Any] | common.Unreadable:
    """Crops the photo and its masks alike and derives the union mask and the lesion boxes."""
    try:
        img, box, photo_size = _read_photo(photo.path, size)
    except (OSError, SyntaxError, ValueError) as err:
        return common.Unreadable(photo.path, err)
    left, top, right, bottom = box
    out_w, out_h = img.size
    scale = np.array([out_w / (right - left), out_h / (bottom - top)] * 2, np.float32)
    union = np.zeros((bottom - top, right - left), bool)
    masks, boxes, classes = {}, [], []
    for code in MASKS:
        path = photo.masks.get(code)
        if path is None:
            masks[f"mask_{code.lower()}"] = common.encode_png(np.zeros((out_h, out_w), np.uint8))
            continue
        try:
            native = _read_mask(path, photo_size)[top:bottom, left:right]
        except (OSError, SyntaxError, ValueError) as err:
            return common.Unreadable(path, err)
        if code in LESIONS:
            union |= native
            found = lesion_boxes(native)
            boxes.append(found * scale)
            classes += [LESIONS.index(code)] * len(found)
        # Encoded at once: a native mask is 10 MB as an array, tens of kB as a PNG.
        masks[f"mask_{code.lower()}"] = common.encode_png(_resize_mask(native, size, mask_resize))
    image, fov = fundus.encode_photo(img, photo.path)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    # Clip to the stored image: a lesion touching the crop's edge gets x1 or y1 = -1.
    boxes = np.clip(boxes, 0, [out_w, out_h, out_w, out_h]).astype(np.float32)
    return {
        "image": image,
        "fov": fov,
        "crop_box": np.asarray(box, np.int32),
        "label": int(union.any()),
        "mask": common.encode_png(_resize_mask(union, size, mask_resize)),
        "boxes": boxes,
        "box_classes": np.asarray(classes, np.int64),
        **masks,
    }


def _read_mask(path: epath.Path, photo_size: tuple[int, int]) -> np.ndarray:
    """bool [H, W] of an IDRiD mask: any non-black pixel (IDRiD draws lesions in pure red).

    Raises:
      ValueError: the mask's size differs from its photo's.
    """
    with path.open("rb") as f, Image.open(f) as img:
        img.load()
        if img.size != photo_size:
            w, h = photo_size
            raise ValueError(f"the mask is {img.width}x{img.height}, its photo {w}x{h}")
        # Grey level > 0: the original box script thresholds at > 1, the same on IDRiD's
        # masks, whose red lesions are grey level 76 and background 0.
        return np.asarray(img.convert("L")) > 0


def _resize_mask(mask: np.ndarray, size: int | None, mode: str) -> np.ndarray:
    """uint8 [S, S, 1] of a bool mask: 1 where "any" or the "majority" of a pixel is lesion.

    A pixel's lesion fraction is the exact area average over the input pixels it overlaps.
    """
    if size:
        h, w = mask.shape
        coverage = _area_weights(h, size) @ mask.astype(np.float32) @ _area_weights(w, size).T
        mask = coverage > 0 if mode == "any" else coverage >= 0.5
    return mask.astype(np.uint8)[..., None]


def _area_weights(n_in: int, n_out: int) -> sparse.csr_array:
    """[n_out, n_in] weights: the share of output pixel i's span that input pixel k covers."""
    # Integer products before the division, so spans that end on a pixel edge end exactly there.
    edges = np.arange(n_out + 1) * n_in / n_out
    rows, cols, weights = [], [], []
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        k = np.arange(int(np.floor(lo)), int(np.ceil(hi)))
        rows.append(np.full(len(k), i))
        cols.append(k)
        weights.append((np.minimum(k + 1, hi) - np.maximum(k, lo)) / (hi - lo))
    data = (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols)))
    return sparse.csr_array(data, shape=(n_out, n_in))


def lesion_boxes(mask: np.ndarray) -> np.ndarray:
    """float32 [N, 4] boxes (x1, y1, x2, y2) of a bool mask, as Lesion-based CL's script made them.

    The script (OpenCV) takes the external contours of the mask and writes each contour's
    bounding rectangle (x, y, w, h) as (x - 1, y - 1, x + w, y + h). The same in scipy: a contour
    surrounds an 8-connected region, and a region inside another's hole has no external contour
    of its own, so holes are filled first (the background being 4-connected, as for OpenCV).
    Boxes are sorted by their top, then left edge.
    """
    filled = ndimage.binary_fill_holes(mask)
    labels, _ = ndimage.label(filled, structure=np.ones((3, 3), bool))
    boxes = [
        (cols.start - 1, rows.start - 1, cols.stop, rows.stop)
        for rows, cols in ndimage.find_objects(labels)
    ]
    boxes.sort(key=lambda b: (b[1], b[0]))
    return np.asarray(boxes, np.float32).reshape(-1, 4)
