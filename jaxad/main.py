r"""Entry point: `python -m jaxad.main --config=configs/<experiment>.py[:variant] --workdir=DIR`.

Any config field can be overridden with `--config.key=value` (e.g. `--config.batch_size=64`,
`--config.data.name=folder --config.data.root=PATH`, `--config.mode=eval`). The work is done by
`jaxad.train.run`, which tests and notebooks can call directly.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/lesion2void.py:demo.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags, turning a bad config file or key into one line that names it."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\" ")
        match = re.match(r"'?(\w+)'?\s*(.*)", text)
        name, hint = (match.group(1), match.group(2)) if match else ("", text)
        keys = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        # The override whose last component the error names, else the first one.
        named = [k for k in keys if k.rsplit(".", 1)[-1] == name]
        key = (named or keys or ["--config.?"])[0]
        hint = f" ({hint})" if hint else ""
        _die(f"unknown config key {key}{hint}; see the config file for valid keys.")
    except flags.Error as e:
        _die(str(e))
    except (ValueError, FileNotFoundError, ImportError) as e:
        _die(f"could not load the config: {e}")


def _die(msg: str) -> None:
    print(f"jaxad: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _die(f"unexpected arguments {argv[1:]}; use --config=... --workdir=...")
    if _CONFIG.value is None or not _WORKDIR.value:
        _die("both --config=configs/<experiment>.py and --workdir=DIR are required.")
    from jaxad import train, writers  # Imported after flag parsing: keeps `--help` fast.

    writers.setup_logging()

    try:
        train.run(_CONFIG.value, _WORKDIR.value)
    except (OSError, ValueError, FloatingPointError) as e:
        _die(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
