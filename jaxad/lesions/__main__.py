r"""Lesion boxes for LCL: make candidates, import LCL's pickle, apply LCL's filter, export tfds.

  python -m jaxad.lesions candidates --folder=DIR --out=boxes.json [--workers=N]
      [--max_boxes=50] [--min_contrast=0.15] [--fov=eyeq|circle|ones] [--ids=relative|name]
  python -m jaxad.lesions import-pickle --pickle=FILE --out=boxes.json [--split=train]
      [--threshold=0.8 [--swap_wh]]
  python -m jaxad.lesions filter --boxes=IN --out=OUT (--folder=DIR | --sizes=WxH)
      [--threshold=0.8] [--target=512] [--max_side=128] [--margin=5] [--swap_wh]
  python -m jaxad.lesions from-tfds --name=idrid/segmentation --split=train --out=boxes.json
      [--data_dir=DIR]

candidates: `jaxad.lesions.candidates.lesion_candidates` on every image under --folder (also a
graded folder, <split>/<grade>/<image>); ids are the paths relative to it (--ids=name: the file
names, as LCL's pickle has them).

import-pickle: LCL's predictions pickle (`jaxad.lesions.boxes.read_lcl_pickle`; nothing in it is
run). --threshold also applies LCL's filter, with the photo sizes that the detection script's raw
8-value boxes carry.

filter: LCL's box selection (`filter_images`): rescale to --target, keep boxes with score >
--threshold, sides <= --max_side and edges more than --margin inside; images left without a box
are dropped (and counted). The rescale needs each photo's size: read from the images under
--folder, or --sizes for all (512 or 512x512 for LCL's resized photos).

from-tfds: the `boxes` feature of a prepared tfds dataset (`boxes_from_tfds`), e.g. the boxes the
`idrid` builder derives from IDRiD's lesion masks.

Output files are box files (.json or .csv, `jaxad.lesions.boxes`). Bad input ends with a one-line
error and exit code 2.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from jaxad.lesions import boxes as boxes_lib

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the usage too) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m jaxad.lesions", description="Lesion boxes for lesion-based CL."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("candidates", help="Detector-free lesion candidates for a folder.")
    c.add_argument("--folder", required=True, help="Folder of fundus photos (searched deeply).")
    c.add_argument("--out", required=True, help="Box file to write (.json or .csv).")
    c.add_argument("--max_boxes", type=int, default=50, help="At most this many per image.")
    c.add_argument(
        "--min_contrast", type=float, default=0.15, help="Lowest relative contrast of a lesion."
    )
    c.add_argument(
        "--fov",
        choices=("eyeq", "circle", "ones"),
        default="eyeq",
        help="Field of view per photo: EyeQ's fitted circle, the centred circle, everything.",
    )
    c.add_argument(
        "--ids",
        choices=("relative", "name"),
        default="relative",
        help="Image ids: paths relative to --folder, or file names (must then be unique).",
    )
    c.add_argument("--workers", type=int, default=1, help="Processes (default 1).")

    p = sub.add_parser("import-pickle", help="LCL's predictions pickle as a box file.")
    p.add_argument("--pickle", required=True, help="The pickle (nothing in it is run).")
    p.add_argument("--out", required=True, help="Box file to write (.json or .csv).")
    p.add_argument("--split", default=None, help="Only this split (default: all, merged).")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="Also apply LCL's filter with this score threshold (raw 8-value boxes only).",
    )
    _filter_flags(p, threshold=False)

    f = sub.add_parser("filter", help="LCL's box selection, rescaled to --target.")
    f.add_argument("--boxes", required=True, help="Box file to read.")
    f.add_argument("--out", required=True, help="Box file to write (.json or .csv).")
    sizes = f.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--folder", help="Folder holding the images the ids name.")
    sizes.add_argument("--sizes", help="One size for every image: W or WxH in pixels.")
    _filter_flags(f, threshold=True)

    t = sub.add_parser("from-tfds", help="The boxes of a prepared tfds dataset.")
    t.add_argument("--name", required=True, help="tfds name[/config], e.g. idrid/segmentation.")
    t.add_argument("--split", required=True, help="Split, e.g. train.")
    t.add_argument("--out", required=True, help="Box file to write (.json or .csv).")
    t.add_argument("--data_dir", default=None, help="tfds data_dir (tfds' default if unset).")
    return parser


def _filter_flags(p: argparse.ArgumentParser, threshold: bool) -> None:
    if threshold:
        p.add_argument(
            "--threshold", type=float, default=0.8, help="Keep scores above it (LCL: 0.8)."
        )
    p.add_argument("--target", type=int, default=512, help="Side of the resized photo.")
    p.add_argument("--max_side", type=float, default=128, help="Largest box side kept.")
    p.add_argument("--margin", type=float, default=5, help="Distance kept from the edges.")
    p.add_argument(
        "--swap_wh",
        action="store_true",
        help="Rescale with width and height swapped, as LCL's script did (fact sheet B10.4).",
    )


def _list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    from jaxad.data.folder import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return found


def _candidates_of(task: tuple[str, str, int, float]) -> np.ndarray:
    """One photo's candidates (a top-level function, so a process pool can run it)."""
    from jaxad.data.folder import read_image
    from jaxad.data.fov import field_of_view
    from jaxad.lesions.candidates import lesion_candidates

    path, fov_kind, max_boxes, min_contrast = task
    image = read_image(path, 3)
    fov = None if fov_kind == "eyeq" else field_of_view(image, fov_kind, path)
    return lesion_candidates(image, fov, max_boxes=max_boxes, min_contrast=min_contrast)


def _candidates(args: argparse.Namespace) -> None:
    folder = pathlib.Path(args.folder).expanduser()
    if args.workers < 1 or args.max_boxes < 1:
        raise ValueError("--workers and --max_boxes must be at least 1")
    paths = _list_images(folder)
    if args.ids == "name":
        ids = [p.name for p in paths]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise ValueError(f"--ids=name: file names repeat under {folder}: {', '.join(twice)}")
    else:
        ids = [p.relative_to(folder).as_posix() for p in paths]
    tasks = [(str(p), args.fov, args.max_boxes, args.min_contrast) for p in paths]
    if args.workers == 1:
        found = dict(zip(ids, map(_candidates_of, tasks), strict=True))
    else:
        import concurrent.futures

        with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
            results = pool.map(_candidates_of, tasks, chunksize=8)
            found = dict(zip(ids, results, strict=True))
    boxes_lib.write_boxes(args.out, found)
    n = sum(len(b) for b in found.values())
    print(f"wrote {n} candidate boxes for {len(found)} images to {args.out}")


def _import_pickle(args: argparse.Namespace) -> None:
    predictions = boxes_lib.read_lcl_pickle(args.pickle, args.split)
    found = predictions.boxes
    note = ""
    if args.threshold is not None:
        missing = [k for k in found if k not in predictions.sizes]
        if missing:
            raise ValueError(
                f"{args.pickle}: --threshold needs the photo sizes of the raw 8-value boxes, and "
                f"{len(missing)} images (e.g. {missing[0]!r}) have none; use the filter command "
                "with --folder instead"
            )
        found, dropped = boxes_lib.filter_images(found, predictions.sizes, **_filter_kwargs(args))
        note = f" after LCL's filter ({dropped} images dropped without a box)"
    boxes_lib.write_boxes(args.out, found)
    n = sum(len(b) for b in found.values())
    print(f"wrote {n} boxes for {len(found)} images to {args.out}{note}")


def _filter_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        threshold=args.threshold,
        target=args.target,
        max_side=args.max_side,
        margin=args.margin,
        swap_wh=args.swap_wh,
    )


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", text)
    if not match or int(match[1]) == 0 or (match[2] and int(match[2]) == 0):
        raise ValueError(f"--sizes={text!r} is not W or WxH in pixels (e.g. 512 or 640x480)")
    return int(match[1]), int(match[2] or match[1])


def _filter(args: argparse.Namespace) -> None:
    found = boxes_lib.read_boxes(args.boxes)
    if args.sizes is not None:
        size = _parse_size(args.sizes)
        sizes = dict.fromkeys(found, size)
    else:
        folder = pathlib.Path(args.folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        sizes = boxes_lib.image_sizes(folder, found)
    kept, dropped = boxes_lib.filter_images(found, sizes, **_filter_kwargs(args))
    boxes_lib.write_boxes(args.out, kept)
    n_in, n_out = sum(len(b) for b in found.values()), sum(len(b) for b in kept.values())
    print(
        f"kept {n_out} of {n_in} boxes in {len(kept)} images; dropped {dropped} images with "
        f"no box left; wrote {args.out}"
    )


def _from_tfds(args: argparse.Namespace) -> None:
    found = boxes_lib.boxes_from_tfds(args.name, args.split, args.data_dir)
    boxes_lib.write_boxes(args.out, found)
    n = sum(len(b) for b in found.values())
    print(f"wrote {n} boxes for {len(found)} images of {args.name} {args.split} to {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a subcommand; returns the exit code (2 with a one-line error on bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {
        "candidates": _candidates,
        "import-pickle": _import_pickle,
        "filter": _filter,
        "from-tfds": _from_tfds,
    }
    try:
        commands[args.command](args)
    except (OSError, ValueError) as e:  # Includes missing and malformed files.
        message = " ".join(str(e).split())  # One line, whatever the exception held.
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
