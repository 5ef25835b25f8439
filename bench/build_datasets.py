r"""Throughput and peak memory of building the tfds datasets, against decoding their raw files.

    python bench/build_datasets.py --out=build.json [--cases=eyepacs,mood_abdom_axis0,...]

The raw datasets cannot be downloaded here, so each case first writes (in a child process) fake
raw files in the dataset's real layout and formats with `data_builders/<name>/fake_data.py`, at
sizes close to the real ones where memory matters (full-size fundus photos, 512^3 CT volumes,
full-resolution DBT volumes), then measures, each in its own process:

- `decode`: the baseline. Reading and decoding every raw image or volume once with the same
  library the builder uses (Pillow, pydicom, nibabel), nothing else: the floor of any build.
- `build`: `jaxad.data.build.build(NAME/CONFIG, ...)` into a fresh data_dir, i.e. decoding,
  preprocessing, encoding and writing array_record files.

Per case: `examples` written, `raw_files`, seconds, `examples_per_sec`, `raw_files_per_sec`
(images/s or volumes/s), `build_over_decode` = build seconds / decode seconds (how much the
builder adds to the unavoidable decoding), `peak_rss_bytes` of the build process and of an idle
process that imported the same modules (`import_rss_bytes`), and, for volume datasets,
`largest_raw_bytes` (the largest decoded raw file, float32 for NIfTI) and `peak_over_largest`
= (peak - import) / largest: how many decoded volumes the build held at once.
`other_cpus_busy` is the load other processes put on the machine meanwhile (timings mean
something only near 0).

Output: one JSON object `{"env", "cases": {case: {...}}}`, printed and written to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as bench_common  # bench/common.py, next to this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# case -> (dataset[/config] to build, fake_data.write options, raw files counted as items).
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    # Fundus photos at EyePACS's most common size, 3888 x 2592 (`all` reads every listed one).
    "eyeq": ("eyeq/all", {"repeat": 4, "height": 2592, "width": 3888}, "**/*.jpeg"),
    "eyepacs": (
        "eyepacs",
        {"width": 3888, "height": 2592, "train_patients": 20, "test_patients": 20},
        "**/*.jpeg",
    ),
    # IDRiD part A at its native 4288 x 2848, with five masks per photo.
    "idrid_segmentation": (
        "idrid/segmentation",
        {"width": 4288, "height": 2848, "segmentation": (6, 4), "grading": (0, 0)},
        "A. Segmentation/1. Original Images/**/*.jpg",
    ),
    # DBT views at full resolution (2457 x 1996), uncompressed, 40-60 slices each.
    "duke_dbt": (
        "duke_dbt/slices",
        {"rows": 2457, "cols": 1996, "frames": (40, 50, 60), "rle": False},
        "**/*.dcm",
    ),
    "rsna_pneumonia": (
        "rsna_pneumonia",
        {"n_normal": 60, "n_not_normal": 20, "n_opacity": 20, "image_size": 1024},
        "**/*.dcm",
    ),
    # The database's 299 x 299 PNGs; COVID-1143..3616 must all exist, so 3,616 of those.
    "covid19_radiography": (
        "covid19_radiography/all",
        {"counts": {"Normal": 400, "Lung_Opacity": 100}, "image_size": 299, "mask_size": 256},
        "**/images/*.png",
    ),
    # Two 512^3 abdominal CT volumes sliced along one axis, and kept whole.
    "mood_abdom_axis0": (
        "mood/abdom_axis0",
        {"region": "abdom", "n": 2, "size": 512, "toy": 0},
        "**/*.nii.gz",
    ),
    "mood_abdom_volumes": (
        "mood/abdom_volumes",
        {"region": "abdom", "n": 2, "size": 512, "toy": 0},
        "**/*.nii.gz",
    ),
    "mood_brain_axis0": (
        "mood/brain_axis0",
        {"region": "brain", "n": 8, "size": 256, "toy": 0},
        "**/*.nii.gz",
    ),
    "eyeq_small": ("eyeq/all", {}, "**/*.jpeg"),
}
DEFAULT_CASES = tuple(c for c in CASES if not c.endswith("_small"))
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff")


def _log(msg: str) -> None:
    print(f"[build_datasets] {msg}", file=sys.stderr, flush=True)


def _raw_files(root: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, pattern), recursive=True))


def _decode(path: str) -> int:
    """Decodes one raw file as the builders do and returns its decoded size in bytes."""
    if path.endswith(".dcm"):
        import pydicom

        return pydicom.dcmread(path).pixel_array.nbytes
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib
        import numpy as np

        return nib.load(path).get_fdata(dtype=np.float32).nbytes
    if path.lower().endswith(_IMAGE_EXTENSIONS):
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img).nbytes
    raise ValueError(f"no decoder for {path}")


def _write_fake(case: str, root: str) -> dict:
    name, options, _ = CASES[case]
    dataset = name.partition("/")[0]
    fake = importlib.import_module(f"data_builders.{dataset}.fake_data")
    return fake.write(Path(root), **options)


def run_decode(case: str, raw: str) -> dict:
    load = bench_common.OtherLoad()
    files = _raw_files(raw, CASES[case][2])
    t0 = time.perf_counter()
    sizes = [_decode(f) for f in files]
    sec = time.perf_counter() - t0
    return {
        "raw_files": len(files),
        "decode_sec": sec,
        "largest_raw_bytes": max(sizes, default=0),
        "other_cpus_busy": load.cpus(),
    }


def run_imports(case: str) -> dict:
    """Peak memory of a process that only imported what a build imports."""
    from jaxad.data import build  # noqa: F401

    build.builder_class(CASES[case][0])
    return {"import_rss_bytes": bench_common.peak_rss_bytes()}


def run_build(case: str, raw: str, out: str) -> dict:
    from jaxad.data import build

    load = bench_common.OtherLoad()
    t0 = time.perf_counter()
    builder = build.build(CASES[case][0], raw, out)
    sec = time.perf_counter() - t0
    splits = {s: info.num_examples for s, info in builder.info.splits.items()}
    return {
        "splits": splits,
        "examples": sum(splits.values()),
        "build_sec": sec,
        "peak_rss_bytes": bench_common.peak_rss_bytes(),
        "other_cpus_busy": load.cpus(),
    }


def _env() -> dict:
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def _case(case: str, args: argparse.Namespace) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"bench_{case}_", dir=args.tmp_dir)
    try:
        raw, out = os.path.join(tmp, "raw"), os.path.join(tmp, "tfds")
        os.makedirs(raw)
        result: dict[str, Any] = {"dataset": CASES[case][0]}
        for child, flags in (
            ("write", [f"--_raw={raw}"]),
            ("imports", []),
            ("decode", [f"--_raw={raw}"]),
            ("build", [f"--_raw={raw}", f"--_out={out}"]),
        ):
            part = bench_common.spawn_child(__file__, f"{child}:{case}", flags)
            if "error" in part:
                return {**result, "error": part["error"]}
            part.pop("wall_sec", None)
            if child in ("decode", "build"):
                part[f"{child}_other_cpus_busy"] = part.pop("other_cpus_busy")
            result.update(part)
        n, sec = result["examples"], result["build_sec"]
        result["examples_per_sec"] = n / sec
        result["raw_files_per_sec"] = result["raw_files"] / sec
        result["build_over_decode"] = sec / result["decode_sec"]
        extra = result["peak_rss_bytes"] - result["import_rss_bytes"]
        if result["largest_raw_bytes"] >= 64 << 20:  # volumes: how many were held at once
            result["peak_over_largest"] = extra / result["largest_raw_bytes"]
        result["other_cpus_busy"] = max(
            result["decode_other_cpus_busy"] or 0, result["build_other_cpus_busy"] or 0
        )
        _log(
            f"{case}: {n} examples from {result['raw_files']} raw files in {sec:.1f} s "
            f"({result['raw_files_per_sec']:.2f} files/s, x{result['build_over_decode']:.1f} "
            f"decode), peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/build_datasets.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", help="where to write the JSON (required)")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated cases")
    p.add_argument("--tmp_dir", default=None, help="where the fake raw data and output go")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_raw", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        p.error(f"--cases: unknown {unknown}; known: {', '.join(CASES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        import json

        child, _, case = args._child.partition(":")
        if child == "write":
            t0 = time.perf_counter()
            _write_fake(case, args._raw)
            result = {"fake_write_sec": time.perf_counter() - t0}
        elif child == "imports":
            result = run_imports(case)
        elif child == "decode":
            result = run_decode(case, args._raw)
        else:
            result = run_build(case, args._raw, args._out)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0
    report: dict[str, Any] = {"env": _env(), "cases": {}}
    for case in args.cases:
        _log(f"{case}: writing fake raw data and building")
        report["cases"][case] = _case(case, args)
    return bench_common.write_report(report, list(report["cases"].items()), args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
