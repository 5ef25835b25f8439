r"""Lesion2Void's original image score on trained quality-bench cells, at several component ranks.

  python bench/l2v_components.py --cells=DIR/runs/<dataset>/lesion2void --out=OUT.json \
      [--drop=1,2,3,30]

The original scores an image by the sum of its green residual over the above-Otsu components
of size rank 30..99 (`jaxad.ops.fundus_score`): at 224 px the 30 largest are the optic disc,
the vessels and the rim. At the quality bench's 64 px the vessels are not resolved and the disc
is a single blob, so far fewer components are normal anatomy. This re-scores each trained cell
of `python -m jaxad.bench quality` (`--cells`: the folder of its seed<k> workdirs) with
`score.image_score='postprocess'` (the green channel of RGB cells), the circle scaled to the
image (`score.radius=0`) and
`score.rank_lo` = each `--drop` value (`rank_hi` = it + 70), in a copy of the cell's checkpoint
under `OUT.json`'s folder (the cell is left as it is), and writes the image and pixel AUROC of
each cell and rank, and their mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

PROG = "bench/l2v_components.py"


def score_cell(cell: pathlib.Path, work: pathlib.Path, drop: int) -> dict[str, float]:
    """Image and pixel AUROC of one trained cell with the original score at `drop`."""
    from jaxad import train
    from jaxad.bench import quality
    from jaxad.evals import postprocess

    spec = json.loads((cell / "cell.json").read_text())
    ds = quality.Dataset.from_json(spec["dataset"])
    if not (work / "checkpoints").exists():
        shutil.copytree(cell / "checkpoints", work / "checkpoints")
    c = quality.cell_config("lesion2void", ds, spec["seed"], spec["steps"])
    c.score.image_score, c.score.radius = "postprocess", 0
    c.score.channel = 1 if c.data.channels == 3 else 0  # green, or the only channel
    c.score.rank_lo, c.score.rank_hi = drop, drop + postprocess.KEPT_COMPONENTS
    c.mode, c.eval.enabled = "eval", True
    train.run(c, os.fspath(work))
    m = json.loads((work / "eval" / "metrics.json").read_text())
    return {k: m[k] for k in ("image_auroc", "image_auprc", "pixel_auroc")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    p.add_argument("--cells", required=True, help="DIR/runs/<dataset>/lesion2void")
    p.add_argument("--out", required=True, help="The JSON file to write.")
    p.add_argument("--drop", default="1,2,3,30", help="Largest components dropped, each run.")
    args = p.parse_args(argv)
    cells_dir = pathlib.Path(args.cells).expanduser()
    cells = sorted(d for d in cells_dir.glob("seed*") if (d / "result.json").exists())
    if not cells:
        print(f"{PROG}: error: {cells_dir} has no finished seed<k> cell", file=sys.stderr)
        return 2
    try:
        drops = [int(d) for d in args.drop.split(",")]
        if min(drops) < 0:
            raise ValueError
    except ValueError:
        print(f"{PROG}: error: --drop={args.drop}: integers >= 0, e.g. 1,2,30", file=sys.stderr)
        return 2
    from jaxad.bench import quality

    out = pathlib.Path(args.out).expanduser()
    work = out.parent / f"{out.stem}_work"
    result: dict = {"cells": os.fspath(cells_dir), "by_drop": {}}
    for drop in drops:
        rows = {c.name: score_cell(c, work / f"{c.name}_drop{drop}", drop) for c in cells}
        stats = quality.summarise({"cells": {"l2v": list(rows.values())}})["cells"]["l2v"]
        summary = {key: stats[key] for key in ("image_auroc", "pixel_auroc")}
        result["by_drop"][str(drop)] = {"cells": rows, "summary": summary}
        print(
            f"drop {drop}: image AUROC {summary['image_auroc']['mean']:.3f} "
            f"± {summary['image_auroc']['std']:.3f}",
            flush=True,
        )
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
