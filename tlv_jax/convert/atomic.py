"""Output directories that appear whole or not at all.

A writer builds in a temporary directory next to its target (same file system) and renames it into place at the
end, so an error, Ctrl-C or a crash never leaves a half-written directory under the target name. Replacing an
existing target renames it aside first (`.NAME.old-*`) and deletes it once the new one is in place.

A writer killed outright (SIGKILL, power loss) leaves its `.NAME.tmp-*` (and maybe `.NAME.old-*`) behind. They are
named `<kind>-<host>-<pid>-<random>`, and the next writer of the same target removes those that are provably stale:
written on this host by a process that no longer exists. A live writer's (its pid exists: two writers never delete
each other's work) and another host's (on a shared file system its pid means nothing here) are left alone; a reused
pid only makes a stale one wait for a later run. A stale `.old-*` whose target is missing is the previous complete
target, killed between the two renames of a replacement: it is put back instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

_LEFTOVER = re.compile(r"(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[^-]*")


def check_target(dst: str | os.PathLike, force: bool = False) -> Path:
    """Clears what killed writers of `dst` left beside it, then fails early (before any work) when `dst` exists and
    may not be replaced."""
    dst = Path(dst)
    _remove_stale(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{dst}: already exists (pass --force to replace it)")
    return dst


def _remove_stale(dst: Path) -> None:
    """Removes the stale `.tmp-*` / `.old-*` leftovers of `dst` (or puts the old target back; see the module)."""
    if not dst.parent.is_dir():
        return
    for path in sorted(dst.parent.glob(f".{glob.escape(dst.name)}.*")):
        m = _LEFTOVER.fullmatch(path.name[len(dst.name) + 2:])
        if m is None or m["host"] != socket.gethostname() or _alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not dst.exists() and not dst.is_symlink():
            os.rename(path, dst)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _name(dst: Path, kind: str) -> str:
    """The prefix of this process's `kind` ('tmp' or 'old') directories beside `dst`."""
    return f".{dst.name}.{kind}-{socket.gethostname()}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory; on success it becomes `dst`, on any exception it is deleted."""
    dst = check_target(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_name(dst, "tmp"), dir=dst.parent))
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
    old = dst.parent / (_name(dst, "old") + uuid.uuid4().hex[:8])
    os.rename(dst, old)  # the old target stays complete until the new one is in place
    os.rename(tmp, dst)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
