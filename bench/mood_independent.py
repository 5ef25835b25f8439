r"""The MOOD DPA pipeline on brain volumes the demo's generator did not make.

  python bench/mood_independent.py --out=DIR [--size=48] [--steps_scale=1] [--head_norm=none]

`python -m jaxad.mood demo` trains and scores on procedural heads (`jaxad.data.brain_phantom`)
written together with the method. This script makes another population from a real brain,
nilearn's MNI152 template (2 mm, skull stripped), each subject under its own rotation (up to 8
degrees about each axis), scale (+-6 %), shift, smooth elastic warp, multiplicative bias field,
gamma and noise inside the brain, intensities in [0, 1], and runs every stage of the demo on it
(`jaxad.mood.demo.run_demo`: SimCLR, a DPA per axis, the solution's synthetic anomalies on the
test subjects, the submission's 3-D inference, the official metric) beside the per-voxel
z-score baseline. `--head_norm=batch` trains SimCLR with the batch-normalised head
(`model.head_norm`). DIR/population holds the volumes (made once), DIR/run_<head_norm> the runs
and `demo_summary.json`; DIR/result_<head_norm>.json the two methods' pixel and sample AP.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

PROG = "bench/mood_independent.py"


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    out = np.eye(3)
    for axis, a in enumerate(np.deg2rad(rng.uniform(-max_deg, max_deg, 3))):
        r = np.eye(3)
        j, k = [x for x in range(3) if x != axis]
        r[j, j] = r[k, k] = np.cos(a)
        r[j, k], r[k, j] = -np.sin(a), np.sin(a)
        out = out @ r
    return out


def subject(template: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One subject of `size`^3 from the template (module docstring)."""
    from scipy import ndimage

    grid = np.indices((size,) * 3, dtype=np.float32).reshape(3, -1) - (size - 1) / 2
    q = _rotation(rng, 8.0) @ (grid / rng.uniform(0.94, 1.06, (3, 1))) + (size - 1) / 2
    q += rng.uniform(-0.04, 0.04, (3, 1)) * size
    warp = rng.normal(0.0, 0.03 * size, (3, 5, 5, 5))
    q += np.stack([ndimage.zoom(w, size / 5, order=3) for w in warp]).reshape(3, -1)
    scale = np.asarray(template.shape, np.float32)[:, None] / size
    v = ndimage.map_coordinates(template, (q + 0.5) * scale - 0.5, order=1).reshape((size,) * 3)
    brain = v > 0.02
    bias = ndimage.zoom(rng.normal(0.0, 0.08, (3, 3, 3)), size / 3, order=3)
    v = np.clip(v * np.exp(bias), 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    v = v + rng.normal(0.0, 0.015, v.shape)
    return np.where(brain, np.clip(v, 0.0, 1.0), 0.0).astype(np.float32)


def make_population(root: pathlib.Path, size: int, n_train: int, n_test: int, seed: int) -> None:
    """`root/train` and `root/test` as `jaxad.mood.demo` reads a population (made once; one
    made with other settings is refused, so that results never mix two populations)."""
    import nibabel as nib
    from nilearn import datasets

    from jaxad.data import demo

    info = {"seed": seed, "size": size, "n_train": n_train, "n_test": n_test, "source": "MNI152"}
    if (root / demo.MARKER).exists():
        made = json.loads((root / demo.MARKER).read_text())
        if made != info:
            diff = ", ".join(f"{k}={made.get(k)}" for k in info if made.get(k) != info[k])
            raise ValueError(f"{root} was made with {diff}: give another --out or those flags")
        return
    template = datasets.load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    template /= template.max()
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            v = subject(template, size, rng)
            nib.save(nib.Nifti1Image(v, np.eye(4)), str(root / split / f"mni_{i:03d}.nii.gz"))
    (root / demo.MARKER).write_text(json.dumps(info, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=48, help="Volume side (voxels).")
    p.add_argument("--n_train", type=int, default=48)
    p.add_argument(
        "--n_test", type=int, default=16, help="Each gets a normal and an anomalous copy."
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps_scale", type=float, default=1.0)
    p.add_argument("--head_norm", default="none", choices=("none", "batch"))
    args = p.parse_args(argv)
    try:
        import nilearn  # noqa: F401
    except ImportError:
        print(f"{PROG}: error: needs nilearn (pip install nilearn)", file=sys.stderr)
        return 2
    from jaxad.mood import demo as mood_demo

    out = pathlib.Path(args.out).expanduser()
    population = out / "population"
    try:
        make_population(population, args.size, args.n_train, args.n_test, args.seed)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    summary = mood_demo.run_demo(
        out / f"run_{args.head_norm}",
        steps_scale=args.steps_scale,
        data_root=population,
        seed=args.seed,
        simclr_overrides={"model.head_norm": args.head_norm},
    )
    res = summary["results"]
    result = {
        task: {"dpa_ap": res["dpa"][task]["ap"], "zscore_ap": res["baseline"][task]["ap"]}
        for task in mood_demo.TASKS
    }
    result["settings"] = {**summary["settings"], "head_norm": args.head_norm}
    (out / f"result_{args.head_norm}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
