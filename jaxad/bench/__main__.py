r"""Compare the methods: `python -m jaxad.bench quality|speed [flags]` (`--help` on each)."""

from __future__ import annotations

import sys

USAGE = "usage: python -m jaxad.bench {quality,speed} [--help] [flags]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("quality", "speed"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "quality":
        from jaxad.bench import quality as command
    else:
        from jaxad.bench import speed as command
    return command.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
