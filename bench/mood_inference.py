r"""Seconds per volume of the MOOD DPA submission pipeline (pixel task), against plain NIfTI I/O.

    python bench/mood_inference.py --out=bench_mood.json [--cases=brain,abdom] [--volumes=N]
    python bench/mood_inference.py --out=smoke.json --smoke      # small volumes, seconds

Cases (random network weights, which take as long as trained ones; a phantom volume, an
ellipsoid with intensities in [0.1, 0.9], written once as .nii.gz before anything is timed):
- `brain`: a 256^3 volume, three axis models (axes 0, 1, 2), each nf = latent = 128 with VGG19
  layer r32, as the brain pixel models of the submission.
- `abdom`: a 512^3 volume, two axis models: axis 0 nf = latent = 64 and axis 2 nf = latent = 128,
  both with r42, as the abdominal pixel models.
The pipeline settings are the submission's: 128 px slices, slices with an intensity sum above
4000, chunks of 128 slices (`--batch_size`), a 128^3 intermediate cube.

Per case, in its own process (`bench/common.spawn_child`), `--volumes` times the same volume
through `jaxad.mood.inference` (check_volume, read_volume, predict_volume, resize_to_input,
write_pixel), each phase timed with `jax.block_until_ready`:
- `read_sec`: header check and float32 voxels (nibabel, gzip);
- `models_sec`: slice selection, resizing, autoencoder, VGG19, maps, assembly and the average
  over models; the first volume includes compiling (`first_volume`), later ones do not
  (`volumes`: one entry per volume; `steady_*` is the median over volumes after the first);
- `resample_write_sec`: the trilinear resize to the input's shape, the copy to the host and the
  float32 .nii.gz write.
`kept_slices` lists the slices each axis model ran on.

Baseline (same process, timed first): reading the volume and writing a float32 .nii.gz of its
shape with nibabel, nothing else: `baseline_io_sec`, and `steady_vs_io` = steady seconds per
volume / that, what the models cost over the file I/O that any submission pays.

Also per case: `peak_rss_bytes` (the process's peak resident memory) and `other_cpus_busy` (how
many CPUs other processes used meanwhile; timings mean something only when it is about 0).
`--smoke` replaces the volumes by 32^3 and 48^3, the networks by nf = 8 at 16 px, the cube by
16^3 and the threshold by 20, to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common as bench_common  # bench/common.py, next to this script

REPO = Path(__file__).resolve().parents[1]
CASES = ("brain", "abdom")

# (volume edge, [(axis, nf = latent_dim, VGG layer)]) per case: the pixel models of the submission.
PAPER = {
    "brain": (256, [(0, 128, "r32"), (1, 128, "r32"), (2, 128, "r32")]),
    "abdom": (512, [(0, 64, "r42"), (2, 128, "r42")]),
}
SMOKE = {
    "brain": (32, [(0, 8, "r32"), (1, 8, "r32"), (2, 8, "r32")]),
    "abdom": (48, [(0, 8, "r42"), (2, 8, "r42")]),
}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _env() -> dict:
    import jax
    import jaxlib

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Baseline I/O, then `args.volumes` passes of the pipeline on one phantom volume."""
    load = bench_common.OtherLoad()
    import jax
    import nibabel as nib
    import numpy as np

    from data_builders.mood import fake_data
    from jaxad.mood import inference

    jax.config.update("jax_enable_compilation_cache", False)
    edge, specs = (SMOKE if args.smoke else PAPER)[case]
    image_size = 16 if args.smoke else 128
    options = inference.Options(
        cube_size=16 if args.smoke else inference.CUBE_SIZE,
        batch_size=args.batch_size,
        min_intensity_sum=20.0 if args.smoke else inference.MIN_INTENSITY_SUM,
    )
    out: dict = {
        "env": _env(),
        "volume_shape": [edge] * 3,
        "models": [
            {"axis": a, "nf": nf, "latent_dim": nf, "vgg_layer": layer} for a, nf, layer in specs
        ],
        "image_size": image_size,
        "options": {
            k: getattr(options, k) for k in ("cube_size", "batch_size", "min_intensity_sum")
        },
        "smoke": args.smoke,
    }
    key = jax.random.key(0)
    models = [
        inference.random_axis_models(
            jax.random.fold_in(key, i),
            (a,),
            nf=nf,
            latent_dim=nf,
            vgg_layer=layer,
            image_size=image_size,
        )[0]
        for i, (a, nf, layer) in enumerate(specs)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "00000.nii.gz")
        volume = fake_data.phantom(edge, np.random.default_rng(0))
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image(volume, affine), src)
        del volume
        _log(f"{case}: wrote a {edge}^3 phantom")

        # Baseline: the file I/O alone.
        t0 = time.perf_counter()
        image = nib.load(src)
        data = np.asarray(image.get_fdata(dtype=np.float32, caching="unchanged"))
        t1 = time.perf_counter()
        nib.save(nib.Nifti1Image(data, image.affine, image.header), os.path.join(tmp, "io.nii.gz"))
        t2 = time.perf_counter()
        out["baseline_read_sec"], out["baseline_write_sec"] = t1 - t0, t2 - t1
        out["baseline_io_sec"] = t2 - t0
        del data
        _log(f"{case}: baseline read {t1 - t0:.2f} s, write {t2 - t1:.2f} s")

        kept = []
        probe = jax.numpy.asarray(inference.read_volume(inference.check_volume(src)))
        for m in models:
            sums = inference.slice_sums(probe, m.axis)
            k, _ = inference.select_slices(sums, options.min_intensity_sum, True)
            kept.append(int(k.size))
        del probe
        out["kept_slices"] = kept

        volumes = []
        for i in range(args.volumes):
            t0 = time.perf_counter()
            image = inference.check_volume(src)
            data = inference.read_volume(image)
            t1 = time.perf_counter()
            p = jax.block_until_ready(inference.predict_volume(data, models, options))
            t2 = time.perf_counter()
            full = np.asarray(inference.resize_to_input(p, tuple(data.shape)))
            inference.write_pixel(os.path.join(tmp, f"pred_{i}.nii.gz"), full, image)
            t3 = time.perf_counter()
            del data, full, p
            v = {"read_sec": t1 - t0, "models_sec": t2 - t1, "resample_write_sec": t3 - t2}
            v["total_sec"] = t3 - t0
            volumes.append(v)
            _log(
                f"{case}: volume {i + 1}/{args.volumes} "
                + ", ".join(f"{k} {s:.2f}" for k, s in v.items())
            )
    out["first_volume"] = volumes[0]
    out["volumes"] = volumes
    steady = volumes[1:] or volumes
    for name in ("read_sec", "models_sec", "resample_write_sec", "total_sec"):
        out[f"steady_{name}"] = statistics.median(v[name] for v in steady)
    out["steady_vs_io"] = out["steady_total_sec"] / out["baseline_io_sec"]
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/mood_inference.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", help="where to write the JSON (required)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: brain,abdom")
    p.add_argument("--volumes", type=int, default=2, help="passes over the volume (first compiles)")
    p.add_argument("--batch_size", type=int, default=128, help="slices per chunk (128)")
    p.add_argument("--smoke", action="store_true", help="small volumes and networks")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.out:
        p.error("--out=FILE.json is required")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        p.error(f"--cases: unknown {unknown or cases}; use a subset of {','.join(CASES)}")
    args.cases = cases
    for name in ("volumes", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.smoke and args.batch_size == 128:
        args.batch_size = 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args._child:
        sys.path.insert(0, str(REPO))  # `import jaxad` from a checkout without `pip install -e`.
        result = run_case(args._child, args)
        with open(args._result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0
    flags = [f"--volumes={args.volumes}", f"--batch_size={args.batch_size}"]
    if args.smoke:
        flags.append("--smoke")
    cases = {case: bench_common.spawn_child(__file__, case, flags) for case in args.cases}
    envs = [r.pop("env") for r in cases.values() if "env" in r]
    report = {"env": envs[0] if envs else {}, "cases": cases}
    return bench_common.write_report(report, list(report["cases"].items()), args.out, _log)


if __name__ == "__main__":
    sys.exit(main())
