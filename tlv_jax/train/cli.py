"""absl's `app.run` for our commands, except that asking for help is an answer, not an error: absl ends `--help` with
status 1, which reads as a failure to shells and CI; here it prints the same text and exits 0."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from absl import app

SHORT_HELP = ("--help", "--helpshort", "-?")


def run(main: Callable[[list[str]], None], argv: Optional[Sequence[str]] = None) -> None:
    """`app.run(main, argv)`, with `--help` / `--helpfull` answered (exit 0) before the required flags are checked."""
    argv = list(sys.argv if argv is None else argv)
    asked = [a for a in argv[1:] if a in SHORT_HELP or a == "--helpfull"]
    if asked:
        app.usage(shorthelp=asked[0] != "--helpfull", writeto_stdout=True, exitcode=0)
    app.run(main, argv=argv)
