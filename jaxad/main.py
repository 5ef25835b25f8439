r"""Entry point: `python -m jaxad.main --config=configs/<experiment>.py[:variant] --workdir=DIR`.

Any config field can be overridden with `--config.key=value` (e.g. `--config.batch_size=64`,
`--config.data.name=folder --config.data.root=PATH`, `--config.mode=eval`);
`--show_config` prints the resolved config and exits. A config path that does not exist from
the working directory (`configs/<experiment>.py`) is read from the installed `configs` package,
so the command works from any directory. Rerunning a workdir resumes it (see
`jaxad.run_config` for what a rerun may change). The work is done by `jaxad.train.run`, which
tests and notebooks can call directly.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from jaxad import cli

PROG = "jaxad"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/lesion2void.py:demo.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print the resolved config (file, variant and overrides) and exit."
)


# --- the config file --------------------------------------------------------------------------


def installed_configs_dir() -> str:
    """The folder of the `configs` package that jaxad was installed with."""
    import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def resolve_config_path(value: str) -> str:
    """`value` (PATH[:variant]) with PATH found: as given, else in the installed configs.

    `configs/x.py` (or `x.py`) that does not exist from the working directory is looked up as
    `x.py` of the installed `configs` package.

    Raises:
      FileNotFoundError: naming both places looked in.
    """
    path, sep, variant = value.partition(":")
    if os.path.exists(os.path.expanduser(path)):
        return os.path.expanduser(path) + sep + variant
    parts = os.path.normpath(path).split(os.sep)
    rel = parts[1:] if parts[0] == "configs" and len(parts) > 1 else parts
    candidate = os.path.join(installed_configs_dir(), *rel)
    if len(rel) == 1 and os.path.isfile(candidate):
        return candidate + sep + variant
    raise FileNotFoundError(
        f"config file {path} not found in {os.getcwd()} nor among the installed configs "
        f"({installed_configs_dir()}: {', '.join(_config_names())})"
    )


def _config_names() -> list[str]:
    return sorted(
        f for f in os.listdir(installed_configs_dir()) if f.endswith(".py") and f[0] != "_"
    )


def _rewrite_config_arg(argv: list[str]) -> list[str]:
    """`argv` with the `--config` value resolved by `resolve_config_path`."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            argv[i] = "--config=" + resolve_config_path(a.split("=", 1)[1])
        elif a == "--config" and i + 1 < len(argv):
            argv[i + 1] = resolve_config_path(argv[i + 1])
    return argv


def _config_value(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config(value: str) -> Any:
    """The config that `--config=value` names, loaded as config_flags does (no overrides)."""
    path, _, variant = value.partition(":")
    spec = importlib.util.spec_from_file_location("jaxad_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


# --- overrides ----------------------------------------------------------------------------------


def override_keys(argv: list[str]) -> list[str]:
    """The dotted keys of the `--config.KEY[=VALUE]` (and `--noconfig.KEY`) arguments, in order."""
    keys = []
    for a in argv:
        name = a.lstrip("-").split("=", 1)[0]
        if a.startswith("-") and name.startswith(("config.", "noconfig.")):
            keys.append(name.split(".", 1)[1])
    return keys


def all_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested config, sections included."""
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if hasattr(v, "items"):
            out.extend(all_keys(v, f"{prefix}{k}."))
    return out


def has_key(tree: Any, key: str) -> bool:
    node = tree
    for part in key.split("."):
        if "[" in part:  # An element of a sequence: config_flags checks those itself.
            return True
        if not hasattr(node, "items") or part not in node:
            return False
        node = node[part]
    return True


def unknown_key_message(config: Any, keys: list[str]) -> str | None:
    """A one-line error naming the first of `keys` that `config` lacks, with the nearest key."""
    for key in keys:
        if has_key(config, key):
            continue
        near = difflib.get_close_matches(key, all_keys(config), n=1, cutoff=0.6)
        hint = f" (did you mean --config.{near[0]}?)" if near else ""
        return f"unknown config key --config.{key}{hint}; --show_config lists every key."
    return None


# --- flags ------------------------------------------------------------------------------------


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags, turning a bad config file or key into one line that names it."""
    if cli.asks_for_help(argv):
        return cli.parse_flags(argv, PROG)
    try:
        argv = _rewrite_config_arg(argv)
    except FileNotFoundError as e:
        cli.die(PROG, str(e))
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        cli.die(PROG, _override_error(argv, e))
    except flags.Error as e:
        cli.die(PROG, _flag_error(argv, e))
    except (ValueError, FileNotFoundError, ImportError) as e:
        cli.die(PROG, f"could not load the config: {e}")


def _flag_error(argv: list[str], error: Exception) -> str:
    """A flag error; a config file that raised is reported by its exception, not its traceback."""
    text = str(error)
    if "Traceback (most recent call last)" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"could not load the config {_config_value(argv)}: {last}"


def _override_error(argv: list[str], error: Exception) -> str:
    """The message for an override that config_flags refused: the key that is wrong."""
    value = _config_value(argv)
    keys = override_keys(argv)
    try:
        message = unknown_key_message(_load_config(value), keys) if value else None
    except Exception:  # The config itself fails: config_flags' own words follow.
        message = None
    if message:
        return message
    text = " ".join(str(error).replace("\\n", " ").replace("\\'", "'").split()).strip("'\" ")
    return f"bad config override ({text}); --show_config lists every key."


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.die(PROG, f"unexpected arguments {argv[1:]}; use --config=... --workdir=...")
    if _CONFIG.value is None:
        cli.die(PROG, "--config=configs/<experiment>.py is required (and --workdir=DIR).")
    config = _CONFIG.value
    if _SHOW_CONFIG.value:
        print(config)
        return
    if not _WORKDIR.value:
        cli.die(PROG, "both --config=configs/<experiment>.py and --workdir=DIR are required.")
    from jaxad import train, writers  # Imported after flag parsing: keeps `--help` fast.

    writers.setup_logging()

    try:
        train.run(config, _WORKDIR.value)
    except (OSError, ValueError, FloatingPointError) as e:
        cli.die(PROG, str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
