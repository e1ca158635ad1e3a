"""Output directories that appear whole or not at all.

A conversion writes into a temporary directory next to its target (same file system) and renames it into place
at the end, so an error, Ctrl-C or a crash never leaves a half-written checkpoint under the target name. A crash
that kills the process outright (SIGKILL, power loss) can leave a hidden `.NAME.tmp-*` directory behind; it is never
read and can be deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


def check_target(dst: str | os.PathLike, force: bool = False) -> Path:
    """Fails early (before any work) when `dst` exists and may not be replaced."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{dst}: already exists (pass --force to replace it)")
    return dst


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory; on success it becomes `dst`, on any exception it is deleted."""
    dst = check_target(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new directory
    try:
        yield tmp
        _commit(tmp, dst, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, dst: Path, force: bool) -> None:
    if not dst.exists() and not dst.is_symlink():
        os.rename(tmp, dst)
        return
    check_target(dst, force)
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(dst, old)  # the old checkpoint stays complete until the new one is in place
    os.rename(tmp, dst)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
