"""What jaxad's absl command lines share: `--help` that succeeds, and one-line errors (exit 2)."""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

EXIT_USAGE = 2
HELP_FLAGS = ("-h", "-?", "-help", "--help", "--helpshort", "--helpfull", "--helpxml")


def asks_for_help(argv: list[str]) -> bool:
    return any(a.split("=")[0] in HELP_FLAGS for a in argv[1:])


def die(prog: str, message: str) -> NoReturn:
    """Prints `prog: error: message` on one line to stderr and exits with code 2."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse_flags(argv: list[str], prog: str) -> list[str]:
    """absl's parsing, except that `--help` exits 0 (absl exits 1) and a bad flag exits 2."""
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:
        if e.code == 1 and asks_for_help(argv):  # absl printed the usage, then exited with 1.
            sys.exit(0)
        raise
    except flags.Error as e:
        die(prog, str(e))
