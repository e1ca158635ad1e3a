"""absl's `app.run` for our commands, except that asking for help is an answer, not an error (absl ends `--help` with
status 1, which reads as a failure to shells and CI; here it prints the same text and exits 0), and a wrong command
line is one `error:` line with status 2 (absl prints a page of usage, or 'FATAL Flags parsing error', and exits 1)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from absl import app, flags

from tlv_jax import cli_errors
from tlv_jax.train.config_file import load_config

SHORT_HELP = ("--help", "--helpshort", "-?")


def run(main: Callable[[list[str]], None], argv: Optional[Sequence[str]] = None) -> None:
    """`app.run(main, argv)`, with `--help` / `--helpfull` answered (exit 0) before the required flags are checked,
    and the `--config` file and its overrides checked before absl reads them. `main` gets no positional arguments:
    our commands take none."""
    argv = list(sys.argv if argv is None else argv)
    asked = [a for a in argv[1:] if a in SHORT_HELP or a == "--helpfull"]
    if asked:
        app.usage(shorthelp=asked[0] != "--helpfull", writeto_stdout=True, exitcode=0)
    error = config_error(argv[1:])
    if error:
        sys.exit(cli_errors.usage_error(error))
    app.run(main, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        args = flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(cli_errors.usage_error(f"{e} (--help lists the flags)"))
    if len(args) > 1:
        sys.exit(cli_errors.usage_error(f"unexpected arguments: {' '.join(args[1:])} (--help lists the flags)"))
    return args


def config_error(argv: Sequence[str]) -> Optional[str]:
    """A one-line error for a `--config` file that is missing or does not load, or for the first `--config.a.b=...`
    naming a key the file does not have, listing the valid keys at that level (ml_collections would raise a traceback
    from inside flag parsing, or report 'Configuration is not available' later)."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[list(argv).index("--config") + 1]
    if path is None:
        return None
    if not Path(path).is_file():
        return f"--config {path}: no such file"
    try:
        config = load_config(path)
    except Exception as e:  # noqa: BLE001 - any failure of the user's config file is reported, naming it
        return f"--config {path} does not load: {type(e).__name__}: {e}"
    for arg in argv:
        m = re.match(r"--(?:no)?config\.([\w.]+)", arg)
        if not m:
            continue
        node, done = config, []
        for key in m.group(1).split("."):
            keys = sorted(node.keys()) if hasattr(node, "keys") else []
            if key not in keys:
                where = ".".join(done) or "the top level"
                return (f"unknown config key {'.'.join(done + [key])!r} in {arg!r} ({path}). "
                        f"Valid keys at {where}: {', '.join(keys) if keys else '(none: it is a value)'}")
            node, done = node[key], done + [key]
    return None
