r"""Can the input pipeline feed a TPU host? Images/s per host CPU core of each method's pipeline.

    python bench/pipeline.py --out=bench_pipeline.json            # every method, ~30 min, 2 cores
    python bench/pipeline.py --out=smoke.json --smoke --methods=lesion2void

Per method, at its paper config (`configs/<method>.py`, no variant), three children:

- `prepare`: fake raw files in the dataset's real layout and formats
  (`data_builders/<name>/fake_data.py`), built with `jaxad.data.build` into array_record (tfds),
  and the built training images written once more as an MVTec-layout folder of PNGs
  (`<dir>/train/good/*.png`, 8 or 16 bit as stored), so both sources hold the same images.
- `pipeline:<source>[:<variant>]` (`tfds` or `folder`): `jaxad.data.pipeline.train_iterator`
  exactly as training builds it (the config's augmentation, image size, `data.num_workers`
  worker processes and `data.num_threads` read threads), batches of `--batch` images; the
  first batch (starting threads and workers) is not timed, nor, with `data.decoded_cache`, one
  pass over the records (which fills the cache); then batches for at least `--seconds`.
  `images_per_sec` (wall) and `images_per_core_sec` = images / CPU seconds of this process and
  its workers: what one host core delivers, whatever the number of cores this machine lends
  it; `bytes_per_image`, what an example weighs leaving the pipeline. A method's `variants`
  (`CASES`) are `data.*` settings measured in turn, before and after a fix.
- `model`: the method's training step lowered at its paper image size (`methods.create`,
  `methods.init_state`, `train.make_train_step`, on `methods.example_batch`), XLA's FLOP count
  per training image (`compiled.cost_analysis()` at a batch of `--flop_batch`, divided by it;
  the count is linear in the batch), and, for reference, this CPU's own step rate at that batch.

The estimate (`hosts`): a chip running the step at `--mfu` (0.5) of its bfloat16 peak trains
`mfu * peak / flops_per_image` images/s; a host of `chips` such chips needs that many images/s
from its CPUs, i.e. `cores_needed` = chips * images/s per chip / `images_per_core_sec`, against
the host's `host_cores` (vCPUs). Peaks and host sizes assumed (public Cloud TPU figures):
v5e (v5litepod-8 host): 8 chips of 197 TFLOP/s bf16, 224 vCPUs; v4 (v4-8 host): 4 chips of
275 TFLOP/s bf16, 240 vCPUs. `keeps_up` is `cores_needed` <= half the host's vCPUs (the rest
run the training process, checkpointing and the OS).

Every child reports `other_cpus_busy` (timings mean something only near 0) and
`peak_rss_bytes`. `--smoke`: tiny raw images, short timings.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as bench_common  # bench/common.py, next to this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# method -> (config file, tfds dataset to build (its config), fake_data.write options full / smoke,
# config overrides that read the built dataset).
CASES: dict[str, dict[str, Any]] = {
    "lesion2void": {
        "config": "configs/lesion2void.py",
        "build": "eyeq/good",
        "raw": {"repeat": 3, "height": 1296, "width": 1944},
        "raw_smoke": {"repeat": 1},
        "data": {"tfds_name": "eyeq/good"},
    },
    "lesioncl": {
        "config": "configs/lesioncl.py",
        "build": "eyepacs",
        "raw": {"width": 1944, "height": 1296, "train_patients": 12, "test_patients": 2},
        "raw_smoke": {"train_patients": 4, "test_patients": 2},
        # Boxes: a box file written by `prepare` (1-4 random lesion-sized boxes per image).
        "data": {"tfds_name": "eyepacs"},
        "boxes": True,
        # Before: the whole photo to the device, which cuts the patches; after: the host cuts
        # them (the config's default).
        # `_cached`: with the decoded-image cache, timed after one untimed pass has filled it.
        "variants": {
            "device_cut": {"lesion_pairs": 0, "decoded_cache": False},
            "host_pairs": {"lesion_pairs": 128, "decoded_cache": False},
            "host_pairs_cached": {"lesion_pairs": 128, "decoded_cache": True},
        },
    },
    "picard": {
        "config": "configs/picard.py",
        "build": "duke_dbt/slices",
        "raw": {"rows": 2457, "cols": 1996, "frames": (9, 10, 11), "rle": False},
        "raw_smoke": {"rows": 300, "cols": 280, "frames": (9, 10, 11), "rle": False},
        "data": {"tfds_name": "duke_dbt/slices"},
        # Before: one crop per decoded slice (the config's default, as the original); after:
        # 8 crops per decoded slice, mixed over 8 batches.
        "variants": {"one_crop": {"crops_per_image": 1}, "crops8": {"crops_per_image": 8}},
    },
    "simclr": {
        "config": "configs/simclr_vgg19.py",
        "build": "mood/brain_axis0",
        "raw": {"region": "brain", "n": 2, "size": 256, "toy": 0},
        "raw_smoke": {"region": "brain", "n": 2, "size": 64, "toy": 0},
        "data": {"tfds_name": "mood/brain_axis0"},
        "volumes": True,  # the "folder" source is the raw .nii.gz volumes (nifti_folder)
    },
    "morphaeus": {
        "config": "configs/morphaeus.py",
        "build": "covid19_radiography/morphaeus",
        "raw": {"counts": {"Normal": 300, "Lung_Opacity": 10}, "image_size": 299, "mask_size": 256},
        "raw_smoke": {"counts": {"Normal": 30, "Lung_Opacity": 4}, "image_size": 64},
        "data": {},
        "variants": {"decode": {"decoded_cache": False}, "cached": {"decoded_cache": True}},
    },
}

# Host: (chips, bf16 peak TFLOP/s per chip, vCPUs). Public Cloud TPU figures.
HOSTS = {"v5e-8": (8, 197.0, 224), "v4-8": (4, 275.0, 240)}


def _log(msg: str) -> None:
    print(f"[pipeline] {msg}", file=sys.stderr, flush=True)


def _config(method: str, data_dir: str, source: str = "tfds", folder: str = "", variant: str = ""):
    case = CASES[method]
    spec = importlib.util.spec_from_file_location(f"_cfg_{method}", REPO / case["config"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    with config.unlocked():
        config.data.data_dir = data_dir
        for key, value in case["data"].items():
            config.data[key] = value
        if source == "folder":
            # Volumes are read from their raw NIfTI files; images from a folder of PNGs.
            config.data.name = "nifti_folder" if case.get("volumes") else "folder"
            config.data.root = folder
        if case.get("boxes"):
            config.data.boxes = os.path.join(os.path.dirname(data_dir), f"boxes_{source}.json")
        for key, value in case.get("variants", {}).get(variant, {}).items():
            config.data[key] = value
    return config


def _variants(method: str) -> list[str]:
    """The pipeline settings measured for `method` ("" = its config as it is)."""
    return list(CASES[method].get("variants", {})) or [""]


def _write_boxes(path: str, ids: list[str], size: int, seed: int) -> None:
    """1-4 random boxes of 10-60 px per image (LCL's lesions are at most 128 px at 512)."""
    import numpy as np

    from jaxad.lesions import boxes as box_files

    rng = np.random.default_rng(seed)
    rows = {}
    for image_id in ids:
        n = int(rng.integers(1, 5))
        side = rng.uniform(10, 60, (n, 2))
        corner = rng.uniform(10, size - 70, (n, 2))
        score = np.full((n, 1), 0.95)
        rows[image_id] = np.concatenate([corner, corner + side, score, np.zeros((n, 1))], 1)
    box_files.write_boxes(path, rows)


# --- children ---


def run_prepare(method: str, tmp: str, smoke: bool) -> dict:
    """Writes the fake raw files, builds them, and writes the training images as PNGs."""
    import numpy as np
    from PIL import Image

    from jaxad.data import build, sources

    case = CASES[method]
    raw, data_dir, folder = (os.path.join(tmp, d) for d in ("raw", "tfds", "folder"))
    os.makedirs(raw)
    fake = importlib.import_module(f"data_builders.{case['build'].partition('/')[0]}.fake_data")
    fake.write(Path(raw), **case["raw_smoke" if smoke else "raw"])
    t0 = time.perf_counter()
    build.build(case["build"], raw, data_dir)
    build_sec = time.perf_counter() - t0
    if case.get("volumes"):
        shutil.move(raw, folder)  # read as they are, by the NIfTI folder source
        return {"build_sec": build_sec}
    config = _config(method, data_dir)
    config.data.boxes = ""  # the box files are written below, for these records
    src = sources.get_source(config.data, config.data.train_split)
    good = os.path.join(folder, "train", "good")
    os.makedirs(good)
    shapes = set()
    for i in range(len(src)):
        image = np.asarray(src[i]["image"])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"{method}: stored images are {image.dtype}, expected uint8/uint16")
        shapes.add(image.shape)
        Image.fromarray(image).save(os.path.join(good, f"{i:05d}.png"))
    if case.get("boxes"):
        size = int(config.data.image_size)
        ids = [str(src[i]["id"]) for i in range(len(src))]
        _write_boxes(os.path.join(tmp, "boxes_tfds.json"), ids, size, seed=0)
        folder_ids = [f"train/good/{i:05d}.png" for i in range(len(src))]
        _write_boxes(os.path.join(tmp, "boxes_folder.json"), folder_ids, size, seed=0)
    shutil.rmtree(raw)
    return {
        "train_images": len(src),
        "stored_shapes": sorted(str(s) for s in shapes),
        "build_sec": build_sec,
    }


def run_pipeline(method: str, tmp: str, source: str, variant: str, opts: dict) -> dict:
    from jaxad.data import pipeline

    os.environ["JAXAD_DATA_DIR"] = os.path.join(tmp, "cache")  # the slice and decoded caches
    load = bench_common.OtherLoad(bench_common.tree_cpu_sec)  # the workers are its own
    config = _config(
        method, os.path.join(tmp, "tfds"), source, os.path.join(tmp, "folder"), variant
    )
    it = pipeline.train_iterator(
        config.data,
        config.data.train_split,
        local_batch_size=opts["batch"],
        seed=0,
        process_index=0,
        process_count=1,
    )
    t0 = time.perf_counter()
    first = next(it)
    first_sec = time.perf_counter() - t0
    warm = 0
    if config.data.get("decoded_cache"):  # one pass fills the cache; the steady state is timed
        n = pipeline.num_examples(config.data, config.data.train_split)
        while warm * opts["batch"] < n:
            next(it)
            warm += 1
    cpu0 = bench_common.tree_cpu_sec()
    t0 = time.perf_counter()
    batches = 0
    while time.perf_counter() - t0 < opts["seconds"] or batches < 2:
        next(it)
        batches += 1
    wall = time.perf_counter() - t0
    cpu = bench_common.tree_cpu_sec() - cpu0
    images = batches * opts["batch"]
    arrays = {k: v for k, v in first.items() if hasattr(v, "nbytes")}
    return {
        "source": source,
        "variant": variant,
        "data_settings": CASES[method].get("variants", {}).get(variant, {}),
        "shapes": {k: list(v.shape[1:]) for k, v in arrays.items()},
        "bytes_per_image": sum(v.nbytes for v in arrays.values()) / opts["batch"],
        "num_workers": int(config.data.num_workers),
        "num_threads": int(config.data.num_threads),
        "first_batch_sec": first_sec,
        "untimed_warm_batches": warm,
        "images_timed": images,
        "images_per_sec": images / wall,
        "cpu_sec": cpu,
        "images_per_core_sec": images / cpu if cpu > 0 else None,
        "other_cpus_busy": load.cpus(),
        "peak_rss_bytes": bench_common.peak_rss_bytes(),
    }


def run_model(method: str, tmp: str, opts: dict) -> dict:
    import jax
    import numpy as np

    from jaxad import methods, parallel, train

    load = bench_common.OtherLoad()
    config = _config(method, os.path.join(tmp, "tfds"))
    n = opts["flop_batch"]
    with config.unlocked():
        config.batch_size = n
        if method == "lesioncl":
            config.data.boxes = "candidates"  # the step cuts patches around boxes (given below)
            config.data.lesion_pairs = 0  # (the same FLOPs as with pairs cut on the host)
            config.lcl.steps_per_epoch = 100  # the schedule's epoch, without reading the data
    mesh = parallel.make_mesh()
    method_obj = methods.create(config)
    state = methods.init_state(method_obj, config, mesh, n)
    example = methods.example_batch(config, n)
    if method == "lesioncl":  # one lesion box per image, a patch's size
        side = float(config.lcl.patch_size)
        example["boxes"] = np.zeros((n, int(config.data.max_boxes), 4), np.float32)
        example["boxes"][:, 0] = (0.0, 0.0, side, side)
        example["num_boxes"] = np.ones((n,), np.int32)
    batch = parallel.global_batch(mesh, example)
    step = train.make_train_step(method_obj, config, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, 1).compile()
    compile_sec = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = {"flops": sum(c.get("flops", 0.0) for c in cost)}
    flops = float(cost.get("flops", 0.0))
    times = []
    for i in range(1 + opts["steps"]):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, i + 1)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    sec = sorted(times[1:])[len(times[1:]) // 2]
    return {
        "image_size": int(config.data.image_size),
        "flop_batch": n,
        "train_flops_per_image": flops / n,
        "compile_sec": compile_sec,
        "cpu_step_sec": sec,
        "cpu_train_images_per_sec": n / sec,
        "other_cpus_busy": load.cpus(),
        "peak_rss_bytes": bench_common.peak_rss_bytes(),
    }


# --- parent ---


def estimate(flops_per_image: float, images_per_core_sec: float, mfu: float) -> dict:
    """Host cores each TPU host needs to feed its chips (see the module docstring)."""
    out = {}
    for host, (chips, peak_tflops, vcpus) in HOSTS.items():
        per_chip = mfu * peak_tflops * 1e12 / flops_per_image
        cores = chips * per_chip / images_per_core_sec
        out[host] = {
            "chips": chips,
            "peak_tflops_bf16": peak_tflops,
            "host_vcpus": vcpus,
            "images_per_sec_per_chip": per_chip,
            "images_per_sec_per_host": chips * per_chip,
            "cores_needed": cores,
            "keeps_up": cores <= vcpus / 2,
        }
    return out


def _method(method: str, args: argparse.Namespace, runs: list) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"bench_pipeline_{method}_", dir=args.tmp_dir)
    try:
        flags = [f"--_tmp={tmp}", f"--seconds={args.seconds}", f"--batch={args.batch}"]
        flags += [f"--flop_batch={args.flop_batch}", f"--steps={args.steps}"]
        flags += ["--smoke"] if args.smoke else []
        result: dict[str, Any] = {"config": CASES[method]["config"]}
        part = bench_common.spawn_child(__file__, f"prepare:{method}", flags)
        runs.append((f"{method} prepare", part))
        result["prepare"] = part
        if "error" in part:
            return result
        sources = [
            f"{source}:{variant}" if variant else source
            for source in ("tfds", "folder")
            for variant in _variants(method)
        ]
        for name in sources:
            part = bench_common.spawn_child(__file__, f"pipeline:{method}:{name}", flags)
            runs.append((f"{method} {name}", part))
            result[name] = part
            _log(f"{method} {name}: {part.get('images_per_core_sec')} images per core-second")
        part = bench_common.spawn_child(__file__, f"model:{method}", flags)
        runs.append((f"{method} model", part))
        result["model"] = part
        if "error" not in part:
            result["hosts"] = {
                name: estimate(
                    part["train_flops_per_image"], result[name]["images_per_core_sec"], args.mfu
                )
                for name in sources
                if result[name].get("images_per_core_sec")
            }
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_pipeline.json")
    p.add_argument("--methods", default=",".join(CASES))
    p.add_argument("--seconds", type=float, default=15.0, help="timed pipeline seconds per source")
    p.add_argument("--batch", type=int, default=32, help="pipeline batch size")
    p.add_argument("--flop_batch", type=int, default=2, help="batch of the lowered training step")
    p.add_argument("--steps", type=int, default=2, help="timed CPU training steps")
    p.add_argument("--mfu", type=float, default=0.5, help="assumed fraction of the chip's peak")
    p.add_argument("--tmp_dir", default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--_child", default="")
    p.add_argument("--_result", default="")
    p.add_argument("--_tmp", default="")
    args = p.parse_args(argv)
    if args._child:
        kind, _, rest = args._child.partition(":")
        method, _, rest = rest.partition(":")
        source, _, variant = rest.partition(":")
        opts = {
            "seconds": args.seconds,
            "batch": args.batch,
            "flop_batch": args.flop_batch,
            "steps": args.steps,
        }
        if kind == "prepare":
            result = run_prepare(method, args._tmp, args.smoke)
        elif kind == "pipeline":
            result = run_pipeline(method, args._tmp, source, variant, opts)
        else:
            result = run_model(method, args._tmp, opts)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in CASES]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; use any of {', '.join(CASES)}")
    if args.smoke:
        args.seconds, args.batch = min(args.seconds, 2.0), min(args.batch, 8)
    runs: list[tuple[str, dict]] = []
    report = {
        "env": bench_common.env(),
        "mfu": args.mfu,
        "hosts_assumed": {
            h: dict(zip(("chips", "peak_tflops_bf16", "vcpus"), v, strict=True))
            for h, v in HOSTS.items()
        },
        "methods": {m: _method(m, args, runs) for m in names},
    }
    return bench_common.write_report(report, runs, args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
