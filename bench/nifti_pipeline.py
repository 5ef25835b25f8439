r"""Slices/s of the NIfTI folder source, without and with its slice cache, next to SimCLR's step.

    python bench/nifti_pipeline.py --out=bench_nifti.json     # about 10 minutes on 2 cores
    python bench/nifti_pipeline.py --out=smoke.json --smoke   # small volumes, seconds

Data: `--volumes` (12) phantom volumes per size, 48^3, 128^3 and 256^3 (`--sizes`), float32 as
the MOOD challenge's (an ellipsoid with intensities in [0.1, 0.9] and a 12-bit noise texture, 0
outside), written once as `.nii.gz` and once as `.nii` into a temporary folder, with the
slice cache in another (`$JAXAD_DATA_DIR` is set to it): nothing outside them is touched.

Settings, read through the library as a user runs them (`configs/simclr_vgg19.py` with
`--config.data.name=nifti_folder --config.data.root=DIR`, slices along axes 0, 1 and 2):
- `demo`: `:demo` with `--config.data.resize=0` (slices at the volume's own size, resized to
  48 px by the pipeline; read in the main process on 2 threads);
- `paper`: no variant (slices area-resized to 256, >= 4000 positive pixels, 256 px images; 2
  worker processes, 8 threads each, the default).

Per size, in its own process (`bench/common.spawn_child`), for each format and setting:
- `before`: the slice cache off (`data.nifti_cache=False`) and the area resize's former
  one-call-per-window pooling where sizes do not divide: each record reads its volume (a
  compressed one is decoded whole, two kept in memory; a plain `.nii` is memory-mapped and
  sliced) and prepares its slice; `after`: the cache on, read back by a later source.
- `index_sec`: building the slice index (all volumes decoded once); `fill_sec`: the first
  source with the cache on (decodes every volume again and writes its slices); `cache_bytes`:
  the slice files' size.
- `source`: records of the source alone (`source[i]`, one thread, a seeded shuffled order, for
  at least `--seconds` and 8 records); `pipeline`: `jaxad.data.pipeline.train_iterator` with
  the setting's reading options and batches of `--pipeline_batch` (the first batch, which
  starts threads and workers, is not timed; then at least `--seconds`). `slices_per_sec` each,
  and `after_vs_before` = after / before. The paper setting's pipeline is timed after only:
  without the cache, its workers need minutes for a first batch of 256^3 volumes.
- `stages_ms` (one `.nii.gz` volume, one thread): decoding a volume (`decode_gz_ms`,
  `decode_nii_ms`, per volume) and, per record averaged over slices of the three axes, the
  float32 copy of a slice (`slice_ms`), the area resize to 256 and to 224 (`resize_256_ms`,
  `resize_224_ms`; `*_loop_ms` the one-call-per-window pooling that the vectorised windows
  replaced where the sizes do not divide), the filter (`filter_ms`), the float16 rounding
  (`round_ms`), a cached record's read (`cached_read_ms`), the training transform to 48 px and
  to 256 px (`transform_48_ms`, `transform_256_ms`) and the batch stacking (`batch_ms`, per
  record).

Model (`model`, its own process): SimCLR's training step on synthetic batches through
`methods.create`, `methods.init_state` and `train.make_train_step`, compiled ahead: `demo`
(`:demo`, batch 32, 48 px) and `paper` (VGG19 width 64, 96 px views, batch `--paper_batch`,
32 by default: the published 256 needs more memory and minutes per step on a CPU; images/s
hardly depend on it). `steps_per_sec` and `images_per_sec` (median of `--steps`, for the paper
`--paper_steps`, steps after one warm-up). `pipeline_vs_model` (top level) divides the largest
size's `.nii.gz` pipeline slices/s (after) by the model's images/s, per setting: above 1, the
input pipeline outpaces the step.

Every process reports `other_cpus_busy` (CPUs other processes used meanwhile; the timings mean
something only when it is about 0) and `peak_rss_bytes`. Page caches are warm: the files were
just written. `--smoke` uses 24^3 and 32^3 volumes, 3 of them, short timings and the demo model.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as bench_common  # bench/common.py, next to this script

REPO = Path(__file__).resolve().parents[1]
SIZES = (48, 128, 256)
FORMATS = (".nii.gz", ".nii")
SETTINGS = ("demo", "paper")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- data --------------------------------------------------------------------------------------


def _volume(edge: int, seed: int):
    """float32 [edge]^3: the MOOD fake-data phantom with a 12-bit multiplicative noise texture."""
    import numpy as np

    from data_builders.mood import fake_data

    rng = np.random.default_rng(seed)
    volume = fake_data.phantom(edge, rng)
    noise = rng.standard_normal(volume.shape, dtype=np.float32)
    volume *= 1 + 0.05 * noise
    np.clip(volume, 0, 1, out=volume)
    return np.round(volume * 4096) / np.float32(4096)


def _write_folders(tmp: Path, edge: int, n: int) -> dict[str, Path]:
    import nibabel as nib
    import numpy as np

    roots = {fmt: tmp / f"vols{edge}{fmt.replace('.', '_')}" for fmt in FORMATS}
    for i in range(n):
        img = nib.Nifti1Image(_volume(edge, i), np.eye(4))
        for fmt, root in roots.items():
            root.mkdir(parents=True, exist_ok=True)
            nib.save(img, str(root / f"{i:05d}{fmt}"))
    return roots


def _data_config(setting: str, root: Path, *, cache: bool, smoke: bool):
    from configs import simclr_vgg19

    config = simclr_vgg19.get_config("demo" if setting == "demo" else None)
    d = config.data
    d.name = "nifti_folder"
    d.tfds_name = ""
    d.root = str(root)
    d.nifti_cache = cache
    if setting == "demo":
        d.resize = 0
    if smoke:
        d.num_workers = 0
        d.num_threads = 2
    return d


# --- timing ------------------------------------------------------------------------------------


def _source_rate(src, seconds: float, min_records: int, seed: int) -> dict:
    """Records of `src` in a seeded shuffled order, one thread, for at least `seconds`."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(src))
    t0 = time.perf_counter()
    n = 0
    while n < len(order) and (n < min_records or time.perf_counter() - t0 < seconds):
        src[int(order[n])]
        n += 1
    sec = time.perf_counter() - t0
    return {"records": n, "sec": sec, "slices_per_sec": n / sec}


def _pipeline_rate(data_cfg, args: argparse.Namespace, min_batches: int) -> dict:
    """Training batches of `args.pipeline_batch`, after a first untimed one, for at least
    `args.seconds` and `min_batches`."""
    from jaxad.data import pipeline

    batch, seconds = args.pipeline_batch, args.seconds
    t0 = time.perf_counter()
    it = pipeline.train_iterator(
        data_cfg, "train", local_batch_size=batch, seed=0, process_index=0, process_count=1
    )
    next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    while n < min_batches or time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    sec = time.perf_counter() - t0
    del it
    gc.collect()
    return {
        "batch_size": batch,
        "first_batch_sec": first,
        "batches": n,
        "sec": sec,
        "slices_per_sec": n * batch / sec,
    }


def _ms(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def _stages(path_gz: Path, path_nii: Path, cached_src, reps: int) -> dict:
    """Milliseconds of each step a record takes (see the module docstring)."""
    import numpy as np

    from jaxad.data import nifti, pipeline, slices

    out = {
        "decode_gz_ms": _ms(lambda: nifti.read_volume(path_gz), 2),
        "decode_nii_ms": _ms(lambda: nifti.read_volume(path_nii), 2),
    }
    volume = nifti.read_volume(path_gz)
    edge = volume.shape[0]
    picks = [(a, i) for a in (0, 1, 2) for i in np.linspace(edge // 4, 3 * edge // 4, 4, dtype=int)]
    cut = [np.array(slices.slice_along(volume, a, i), np.float32) for a, i in picks]

    def per_record(fn) -> float:
        return _ms(lambda: [fn(a, i, x) for (a, i), x in zip(picks, cut, strict=True)], reps) / len(
            picks
        )

    out["slice_ms"] = per_record(
        lambda a, i, x: np.array(slices.slice_along(volume, a, i), np.float32)
    )
    for size in (256, 224):
        out[f"resize_{size}_ms"] = per_record(lambda a, i, x, s=size: slices.area_resize(x, s))
        with _loop_resize():
            out[f"resize_{size}_loop_ms"] = per_record(
                lambda a, i, x, s=size: slices.area_resize(x, s)
            )
    out["filter_ms"] = per_record(lambda a, i, x: slices.keep_slice(x, 4000))
    out["round_ms"] = per_record(lambda a, i, x: x.astype(np.float16).astype(np.float32))
    n = len(cached_src)
    out["cached_read_ms"] = _ms(lambda: [cached_src[k] for k in range(0, n, max(n // 12, 1))], reps)
    out["cached_read_ms"] /= len(range(0, n, max(n // 12, 1)))
    rec = cached_src[n // 2]
    rng = np.random.default_rng(0)
    examples = {}
    for size in (48, 256):
        fn = functools.partial(
            pipeline._train_example, rec, rng, size=size, channels=1, mean=(0.0,), std=(1.0,)
        )
        out[f"transform_{size}_ms"] = _ms(lambda fn=fn: fn(**_no_aug()), reps * 4)
        examples[size] = fn(**_no_aug())
    rows = [examples[256]] * 32
    out["batch_ms"] = _ms(lambda: {k: np.stack([r[k] for r in rows]) for k in rows[0]}, reps) / len(
        rows
    )
    return out


@contextlib.contextmanager
def _loop_resize():
    """The area resize as it was before: one numpy call per window when sizes do not divide."""
    from jaxad.data import slices

    saved, slices._SEQUENTIAL = slices._SEQUENTIAL, 0
    try:
        yield
    finally:
        slices._SEQUENTIAL = saved


def _no_aug() -> dict:
    return {"hflip": False, "vflip": False, "flip_fov": False}


def _cache_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.npy"))


def run_size(edge: int, args: argparse.Namespace) -> dict:
    """Before and after, for both formats and settings, on `args.volumes` volumes of `edge`^3."""
    load = bench_common.OtherLoad()
    from jaxad.data import nifti

    out: dict[str, Any] = {"volume_shape": [edge] * 3, "volumes": args.volumes}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["JAXAD_DATA_DIR"] = str(tmp / "jaxad_data")
        cache_dir = nifti.default_cache_dir()
        t0 = time.perf_counter()
        roots = _write_folders(tmp, edge, args.volumes)
        out["write_sec"] = time.perf_counter() - t0
        out["file_bytes"] = {
            fmt: statistics.mean(p.stat().st_size for p in root.iterdir())
            for fmt, root in roots.items()
        }
        _log(f"{edge}^3: wrote {args.volumes} volumes in each format")
        for fmt, root in roots.items():
            for setting in SETTINGS:
                name = f"{edge}^3 {fmt} {setting}"
                res: dict[str, Any] = {}
                before_cfg = _data_config(setting, root, cache=False, smoke=args.smoke)
                after_cfg = _data_config(setting, root, cache=True, smoke=args.smoke)
                t0 = time.perf_counter()
                with _loop_resize():
                    before = nifti.source_from_config(before_cfg, "train")
                res["index_sec"] = time.perf_counter() - t0
                res["records"] = len(before)
                if not len(before):
                    raise ValueError(f"{name}: the filter keeps no slice; use larger volumes")
                size0 = _cache_bytes(cache_dir)
                t0 = time.perf_counter()
                nifti.source_from_config(after_cfg, "train")
                res["fill_sec"] = time.perf_counter() - t0
                res["cache_bytes"] = _cache_bytes(cache_dir) - size0
                after = nifti.source_from_config(after_cfg, "train")
                with _loop_resize():
                    b = _source_rate(before, args.seconds, 8, 0)
                    if setting == "demo":  # See the module docstring for the paper setting.
                        res["pipeline"] = {"before": _pipeline_rate(before_cfg, args, 1)}
                a = _source_rate(after, args.seconds, 8, 0)
                res["source"] = {"before": b, "after": a}
                res.setdefault("pipeline", {})["after"] = _pipeline_rate(after_cfg, args, 3)
                for part in res["source"], res["pipeline"]:
                    if "before" in part:
                        ratio = part["after"]["slices_per_sec"] / part["before"]["slices_per_sec"]
                        part["after_vs_before"] = ratio
                _log(
                    f"{name}: source {b['slices_per_sec']:.1f} -> {a['slices_per_sec']:.1f} "
                    f"slices/s, pipeline -> {res['pipeline']['after']['slices_per_sec']:.1f}"
                )
                out[fmt] = {**out.get(fmt, {}), setting: res}
        paper = _data_config("paper", roots[".nii.gz"], cache=True, smoke=args.smoke)
        cached = nifti.source_from_config(paper, "train").parts[0]
        out["stages_ms"] = _stages(
            next(roots[".nii.gz"].iterdir()), next(roots[".nii"].iterdir()), cached, args.reps
        )
        _log(f"{edge}^3 stages (ms): " + json.dumps(out["stages_ms"]))
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


# --- model -------------------------------------------------------------------------------------


def run_model(args: argparse.Namespace) -> dict:
    """SimCLR's training step at the demo and the paper settings, on synthetic batches."""
    load = bench_common.OtherLoad()
    import jax
    import numpy as np

    from configs import simclr_vgg19
    from jaxad import methods, parallel, train

    jax.config.update("jax_enable_compilation_cache", False)
    out: dict[str, Any] = {"env": bench_common.env()}
    for variant in ("demo",) if args.smoke else ("demo", "paper"):
        config = simclr_vgg19.get_config("demo" if variant == "demo" else None)
        if variant == "paper":
            config.batch_size = args.paper_batch
        config.simclr.steps_per_epoch = 100  # Not counted on data: no dataset is read.
        mesh = parallel.make_mesh()
        method = methods.create(config)
        local_bs = parallel.local_batch_size(config.batch_size, mesh)
        state = jax.block_until_ready(methods.init_state(method, config, mesh, local_bs))
        local = methods.example_batch(config, local_bs)
        rng = np.random.default_rng(0)
        local["image"] = rng.uniform(0, 1, local["image"].shape).astype(np.float32)
        batch = parallel.global_batch(mesh, local)
        step_fn = train.make_train_step(method, config, mesh)
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch, 1).compile()
        compile_sec = time.perf_counter() - t0
        times = []
        steps = args.steps if variant == "demo" else args.paper_steps
        for i in range(1 + steps):
            t0 = time.perf_counter()
            state, metrics = jax.block_until_ready(compiled(state, batch, i + 1))
            times.append(time.perf_counter() - t0)
            _log(f"model {variant}: step {i + 1}/{1 + steps} {times[-1]:.2f} s")
        sec = statistics.median(times[1:])
        out[variant] = {
            "config": "configs/simclr_vgg19.py" + (":demo" if variant == "demo" else ""),
            "batch_size": config.batch_size,
            "image_size": config.data.image_size,
            "crop_size": config.simclr.crop_size,
            "vgg_width": config.model.vgg_width,
            "compile_sec": compile_sec,
            "sec_per_step_all": times[1:],
            "sec_per_step": sec,
            "steps_per_sec": 1 / sec,
            "images_per_sec": config.batch_size / sec,
            "loss": float(metrics["loss"]),
        }
        del state, compiled
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


# --- driver ------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/nifti_pipeline.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", help="where to write the JSON (required)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="volume edges: 48,128,256")
    p.add_argument("--volumes", type=int, default=12, help="volumes per size and format")
    p.add_argument("--seconds", type=float, default=3.0, help="least time per rate measured")
    p.add_argument("--pipeline_batch", type=int, default=32, help="batch of the pipeline rates")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each stage timing")
    p.add_argument("--paper_batch", type=int, default=32, help="batch of the paper model step")
    p.add_argument("--steps", type=int, default=5, help="timed demo steps after a warm-up")
    p.add_argument("--paper_steps", type=int, default=1, help="timed paper steps after a warm-up")
    p.add_argument("--no_model", action="store_true", help="skip the model's steps")
    p.add_argument("--smoke", action="store_true", help="small volumes, short timings")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    if args.smoke:
        args.sizes, args.volumes, args.seconds, args.reps, args.steps = "24,32", 3, 0.3, 1, 1
        args.pipeline_batch = 8
    try:
        args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes: comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 8 or args.volumes < 2:
        p.error("--sizes must be >= 8 and --volumes >= 2 (one is held out for validation)")
    return args


def _flags(args: argparse.Namespace) -> list[str]:
    flags = [
        f"--sizes={','.join(map(str, args.sizes))}",
        f"--volumes={args.volumes}",
        f"--seconds={args.seconds}",
        f"--pipeline_batch={args.pipeline_batch}",
        f"--reps={args.reps}",
        f"--paper_batch={args.paper_batch}",
        f"--steps={args.steps}",
        f"--paper_steps={args.paper_steps}",
    ]
    return flags + (["--smoke"] if args.smoke else [])


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        sys.path.insert(0, str(REPO))  # `import jaxad` from a checkout without `pip install -e`.
        if args._child == "model":
            result = run_model(args)
        else:
            result = run_size(int(args._child), args)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0
    runs = {
        str(edge): bench_common.spawn_child(__file__, str(edge), _flags(args))
        for edge in args.sizes
    }
    report: dict[str, Any] = {"sizes": runs}
    if not args.no_model:
        model = bench_common.spawn_child(__file__, "model", _flags(args))
        report["env"] = model.pop("env", {})
        report["model"] = model
        runs = {**runs, "model": model}
        big = report["sizes"].get(str(max(args.sizes)), {})
        rates = {
            setting: big.get(".nii.gz", {}).get(setting, {}).get("pipeline", {})
            for setting in SETTINGS
        }
        report["pipeline_vs_model"] = {
            setting: rates[setting]["after"]["slices_per_sec"] / model[variant]["images_per_sec"]
            for setting, variant in (("demo", "demo"), ("paper", "paper"))
            if "after" in rates[setting] and variant in model
        }
    return bench_common.write_report(report, list(runs.items()), args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
