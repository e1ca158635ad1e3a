"""Runs a command of this repository with one function made to fail at its N-th call, so that a test meets the same
fault at the same point of a write every time (no sleeps, no timing):

    python tests/fault_at.py KIND MARKER MODULE:QUALNAME N -m PACKAGE.MODULE ARGS...   (or: ... N SCRIPT.py ARGS...)

The N-th call of MODULE.QUALNAME (a function or a method) creates the file MARKER, then with KIND 'stall' sleeps
until the process is killed (`kill_at_marker`), with 'enospc' raises the OSError of a full disk. The calls before it
run as usual.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("stall", "enospc")


def inject(kind: str, target: str, n: int, marker: Path) -> None:
    """Replaces MODULE:QUALNAME by a wrapper whose `n`-th call creates `marker` and then stalls or fails."""
    module, qualname = target.split(":")
    *parents, name = qualname.split(".")
    owner = functools.reduce(getattr, parents, importlib.import_module(module))
    original: Callable[..., Any] = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            marker.touch()
            if kind == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            while True:
                time.sleep(60)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def start(kind: str, marker: Path, target: str, n: int, command: list[Any], log: Path,
          env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """`python [command]` with the `kind` fault at `target`'s `n`-th call; stdout and stderr go to `log` (a pipe
    nobody reads could fill up and block the process before it reaches the fault)."""
    assert kind in KINDS, kind
    env = dict(os.environ if env is None else env)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's command has
    env["PYTHONPATH"] = str(ROOT)
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, __file__, kind, str(marker), target, str(n), *map(str, command)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def kill_at_marker(proc: subprocess.Popen, marker: Path, log: Path, timeout: float = 600) -> None:
    """SIGKILLs `proc` once it has created `marker` (it then hangs at the stalled call)."""
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended (rc {proc.returncode}) before the stall: {log.read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no stall in {timeout} s: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()


def main(argv: list[str]) -> None:
    kind, marker, target, n, *command = argv
    inject(kind, target, int(n), Path(marker))
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
