"""How every command line ends a failure: one line `error: <message>` on stderr and an exit status a script can act
on, never a traceback for a failure the user can fix. The traceback goes to the log files the process writes (a
training run's `<workdir>/logs/process_<i>.log`; other commands write none) and, with `--verbose`, to stderr. A bug
keeps its traceback on stderr, and its last line says so and where the log is.

Exit statuses (README "Train" lists them for users):
  1    the command failed: a bad value (of a flag, a config field, in a file), a path that cannot be read or
       written, too many bad samples, a failed save (and a bug, as Python's own status for an uncaught exception)
  2    the command line was refused before any work: an unknown or malformed flag, an unexpected argument, an
       unknown config key, a config file that is missing or does not load
  3    training diverged (the last good checkpoint is kept)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM after saving (the same command resumes)

Leaf module (standard library only), so every entry point can use it before its heavy imports.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable, Mapping

FAILED, USAGE, DIVERGED, INTERRUPTED, PREEMPTED = 1, 2, 3, 130, 143
VERBOSE_HELP = "on an error, also print its traceback (always written to the run's log file, if it has one)"


def expected(error: BaseException) -> bool:
    """Whether `error` is the input's or the environment's fault, its message the whole story. Caught by base class
    so no entry point imports the modules that define them: ValueError (config values, malformed files:
    CheckpointError, DataError, VideoDecodeError), OSError (paths), RuntimeError (a run that cannot go on:
    TooManyBadSamples, TrainingDiverged, CheckpointSaveError, XLA running out of memory). NotImplementedError and
    RecursionError are RuntimeErrors that mean a bug."""
    return (isinstance(error, (ValueError, OSError, RuntimeError))
            and not isinstance(error, (NotImplementedError, RecursionError)))


def error_line(message: object) -> str:
    """`error: <message>` on one line (multi-line messages collapsed), as every failure is reported."""
    return "error: " + " ".join(str(message).split())


def usage_error(message: str) -> int:
    """Reports a wrong command line (caught before any work starts) and returns its status."""
    print(error_line(message), file=sys.stderr)
    return USAGE


def run(command: Callable[[], object], *, verbose: bool = False,
        statuses: Mapping[type[BaseException], int] | None = None) -> int:
    """Calls `command`: 0 when it returns; otherwise the failure reported as this module says and its exit status
    (`statuses` gives some exception types their own, e.g. TrainingDiverged -> 3). SystemExit passes through."""
    try:
        command()
    except KeyboardInterrupt as e:  # its message, if any, says what was left undone
        return _report(e, "interrupted" + (f": {e}" if str(e) else ""), INTERRUPTED, verbose)
    except Exception as e:  # noqa: BLE001 - every failure ends here, as one line or as a reported bug
        status = next((s for kind, s in (statuses or {}).items() if isinstance(e, kind)), None)
        if status is None and not expected(e):
            logs = _to_logs(e, f"unexpected {type(e).__name__}: {e}")
            traceback.print_exception(e, file=sys.stderr)
            where = f"; also in {', '.join(logs)}" if logs else ""
            print(error_line(f"unexpected {type(e).__name__}: a bug, please report it with the traceback above"
                             f"{where}"), file=sys.stderr)
            return FAILED
        return _report(e, str(e) or type(e).__name__, FAILED if status is None else status, verbose)
    return 0


def _report(error: BaseException, message: str, status: int, verbose: bool) -> int:
    _to_logs(error, message)
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(error_line(message), file=sys.stderr)
    return status


def _to_logs(error: BaseException, message: str) -> list[str]:
    """Writes the traceback to the root logger's log files only (never to its stderr handlers); returns their paths."""
    files = [h for h in logging.getLogger().handlers
             if isinstance(h, logging.FileHandler) and h.baseFilename != os.devnull]
    record = logging.LogRecord("tlv_jax", logging.ERROR, __file__, 0, error_line(message), None,
                               (type(error), error, error.__traceback__))
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]
