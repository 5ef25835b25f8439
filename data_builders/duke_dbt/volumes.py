"""Reading BCS-DBT views: one multi-frame DICOM per view, read a frame at a time.

A BCS-DBT view is a reconstructed tomosynthesis volume of dozens of 2457 x 1996 (or 1890) frames,
stored as one JPEG 2000 multi-frame DICOM of hundreds of megabytes once decoded. pydicom 3 can
decode single frames straight from the file (`pydicom.pixels.iter_pixels(path, indices=...)`),
so only the frames a dataset keeps are ever decoded and at most one decoded frame per kept slice
is held in memory.

Orientation and intensity follow the dataset providers' reader (`dcmread_image` in
github.com/mazurowski-lab/duke-dbt-data), the frame in which the boxes are drawn:

- the DICOM laterality tags are wrong for some views, so the side the breast is on is read from
  the pixels: the breast is on the side whose edge column has the larger sum. If that side is
  not the view's laterality (first letter of `View`), the frame is rotated by 180 degrees;
- intensities are linearly mapped from the DICOM window (WindowCenter/WindowWidth of the shared
  functional groups' Frame VOI LUT) to the output range, values outside it clipped.

TCIA's download tool (the NBIA Data Retriever) does not always name folders as the file-path
CSVs do: it writes "NA" for an empty series description ("16214.000000-NA-18959" where the CSV
has "16214.000000-18959"), and the case of study descriptions can differ. `FileFinder` finds a
view's file despite these differences.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pydicom
from etils import epath
from pydicom import pixels

INTENSITIES = ("window", "minmax")

_SHARED_GROUPS = 0x52009229  # SharedFunctionalGroupsSequence: holds the Frame VOI LUT.


def _folder_key(name: str) -> str:
    """A folder name as compared across download tools: lower case, no "NA" placeholder."""
    return name.lower().replace("-na-", "-")


class FileFinder:
    """Finds the file of a view under the download folder `root` (see `find`)."""

    def __init__(self, root: epath.Path) -> None:
        self.root = root
        self._listings: dict[str, dict[str, str]] = {}  # Views of one study share folders.

    def find(self, descriptive_path: str, classic_path: str) -> epath.Path | None:
        """The view's file, or None if it is absent.

        Tries the CSV's `descriptive_path`, then its `classic_path` (the two folder layouts the
        NBIA Data Retriever offers), then `descriptive_path` folder by folder, ignoring case and
        the "NA" placeholder the retriever inserts for empty descriptions.
        """
        for rel in (descriptive_path, classic_path):
            if rel and (self.root / rel).is_file():
                return self.root / rel
        current = os.fspath(self.root)
        for part in descriptive_path.replace("\\", "/").split("/"):
            if not os.path.exists(os.path.join(current, part)):
                match = self._listing(current).get(_folder_key(part))
                if match is None:
                    return None
                part = match
            current = os.path.join(current, part)
        return epath.Path(current) if descriptive_path and os.path.isfile(current) else None

    def _listing(self, folder: str) -> dict[str, str]:
        if folder not in self._listings:
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            self._listings[folder] = {_folder_key(name): name for name in names}
        return self._listings[folder]


def num_frames(header: pydicom.Dataset) -> int:
    """Number of slices of a view (a single-frame file has one)."""
    return int(header.get("NumberOfFrames", 1) or 1)


def dicom_window(header: pydicom.Dataset) -> tuple[float, float]:
    """(low, high) of the DICOM VOI window: center -/+ width / 2.

    Raises:
      ValueError: the file has no window, or a window of width <= 0.
    """
    sources = []
    if _SHARED_GROUPS in header and header[_SHARED_GROUPS].value:
        sources += list(header[_SHARED_GROUPS].value[0].get("FrameVOILUTSequence", []))
    sources.append(header)  # A top-level window, as single-frame files have.
    for item in sources:
        if "WindowCenter" in item and "WindowWidth" in item:
            center, width = (_first(item[k].value) for k in ("WindowCenter", "WindowWidth"))
            if width <= 0:
                raise ValueError(f"DICOM window width {width} is not positive")
            return center - width / 2, center + width / 2
    raise ValueError("no DICOM window (WindowCenter/WindowWidth) in the Frame VOI LUT or header")


def _first(value) -> float:
    """The first value of a possibly multi-valued DICOM number."""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)


def orient(frame: np.ndarray, view: str) -> np.ndarray:
    """Rotates `frame` by 180 degrees if the breast is not on the side of the view's laterality.

    The breast is on the left of the frame when its left edge column has the larger sum (the
    providers' rule; ties count as left).
    """
    left, right = frame[:, 0].sum(dtype=np.float64), frame[:, -1].sum(dtype=np.float64)
    side = "r" if left < right else "l"
    return frame if side == view[:1].lower() else frame[::-1, ::-1]


def to_uint8(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """Maps [low, high] linearly onto 0..255 (rounded; values outside are clipped)."""
    scaled = (frame.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def read_slices(
    path: os.PathLike | str,
    header: pydicom.Dataset,
    slices: Sequence[int],
    view: str,
    intensity: str,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (slice, uint8 [H, W] frame) for the sorted `slices`, oriented and scaled.

    `intensity` is 'window' (the DICOM window; decodes only the wanted frames) or 'minmax' (the
    volume's own minimum and maximum; decodes every frame, one at a time, keeping the wanted ones).
    """
    wanted = sorted(set(slices))
    if intensity == "window":
        low, high = dicom_window(header)
        frames: Iterable[tuple[int, np.ndarray]] = zip(
            wanted, pixels.iter_pixels(path, indices=wanted), strict=True
        )
    else:
        low, high, kept = np.inf, -np.inf, {}
        for index, frame in enumerate(pixels.iter_pixels(path)):
            low, high = min(low, float(frame.min())), max(high, float(frame.max()))
            if index in wanted:
                kept[index] = frame
        high = max(high, low + 1)  # A constant volume maps to 0.
        frames = sorted(kept.items())
    for index, frame in frames:
        yield index, to_uint8(orient(frame, view), low, high)
