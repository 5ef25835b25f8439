r"""`python -m jaxad.convert`: the originals' PyTorch weights <-> jaxad run directories.

Into jaxad (a run directory that predict, eval, the MOOD CLI, init_from and training take):

  python -m jaxad.convert --config=configs/lesion2void.py --workdir=runs/l2v \
      --weights=best_validation_weights.safetensors
  python -m jaxad.convert --config=configs/dpa.py:brain_pixel_axis0 --workdir=runs/bp0 \
      --weights=brain_pixel_axis0.safetensors --weights=vgg19=simclr_exp_1.safetensors

`--weights=[NAME=]PATH` (repeatable): a `.safetensors` or `.npz` file with the original's key
names; NAME is one of the method's networks (lesion2void: unet, patchgan; dpa: enc, dec, vgg19;
simclr: simclr; picard: gen, localD, globalD; morphaeus: morphaeus; lesioncl: backbone, head;
dr_grading: resnet). Without NAME, the file the original saves for the method (every network
it holds). The config (with any `--config.key=value` overrides) must give the networks the
widths of the files.

Back to PyTorch (one file per network, with the original's key names):

  python -m jaxad.convert --to=torch --workdir=runs/l2v --out=exported/
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from jaxad import cli

PROG = "jaxad.convert"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the run to write, e.g. configs/lesion2void.py.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory to write (or to export).")
_WEIGHTS = flags.DEFINE_multi_string(
    "weights", [], "[NAME=]PATH of the original's weights (.safetensors or .npz)."
)
_TO = flags.DEFINE_enum("to", "jaxad", ["jaxad", "torch"], "Direction of the conversion.")
_OUT = flags.DEFINE_string("out", None, "--to=torch: folder for the exported files.")
_FORMAT = flags.DEFINE_enum("format", "safetensors", ["safetensors", "npz"], "Exported format.")
_PREFER = flags.DEFINE_enum(
    "prefer", "best", ["best", "latest"], "--to=torch: the best validated or the latest state."
)
_DATA_STATE = flags.DEFINE_bool(
    "data_state", True, "Save the training-data position (needs the data) so training resumes."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.die(PROG, f"unexpected arguments {argv[1:]}; see --help.")
    if not _WORKDIR.value:
        cli.die(PROG, "--workdir=DIR is required.")
    from jaxad import writers
    from jaxad.convert import runs

    writers.setup_logging()
    try:
        if _TO.value == "torch":
            if not _OUT.value:
                cli.die(PROG, "--to=torch needs --out=FOLDER.")
            for path in runs.export_run(
                _WORKDIR.value, _OUT.value, prefer=_PREFER.value, fmt=_FORMAT.value
            ):
                print(path)
            return
        if _CONFIG.value is None or not _WEIGHTS.value:
            cli.die(PROG, "--config=configs/<method>.py and --weights=[NAME=]PATH are required.")
        config = _CONFIG.value
        weights = runs.parse_weights(_WEIGHTS.value, runs.networks(config))
        workdir = runs.import_run(config, _WORKDIR.value, weights, data_state=_DATA_STATE.value)
        print(workdir)
    except (OSError, ValueError) as e:
        cli.die(PROG, str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, PROG))
