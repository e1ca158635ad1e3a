"""Outputs appear whole or not at all: a conversion killed mid-write leaves nothing at its destination, and the next
writer of that destination removes what a killed writer left beside it, never what a live one is writing."""

import os
import socket
import subprocess
import sys

from tests import fault_at
from tlv_jax.convert.atomic import atomic_directory

from . import leftovers


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def leftover(parent, name, kind, pid, host=None):
    path = parent / f".{name}.{kind}-{host or socket.gethostname()}-{pid}-abcd1234"
    path.mkdir()
    (path / "part").write_text(kind)
    return path


def test_leftovers_of_dead_writers_on_this_host_are_removed_others_kept(tmp_path):
    dead = dead_pid()
    stale = leftover(tmp_path, "out", "tmp", dead)
    live = leftover(tmp_path, "out", "tmp", os.getpid())  # a writer at work
    remote = leftover(tmp_path, "out", "tmp", dead, host="other-host")  # a shared file system: not ours to judge
    unnamed = tmp_path / ".out.tmp-x1y2z3"  # no host and pid in its name (an older writer): cannot be judged
    unnamed.mkdir()
    other_target = leftover(tmp_path, "other", "tmp", dead)
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "new").write_text("new")
    assert not stale.exists() and (tmp_path / "out" / "new").exists()
    assert all(p.exists() for p in (live, remote, unnamed, other_target))


def test_a_replacement_killed_between_its_renames_gets_the_old_target_back(tmp_path):
    old = leftover(tmp_path, "out", "old", dead_pid())  # the complete previous `out`, renamed aside
    leftover(tmp_path, "out", "tmp", dead_pid())  # the complete new one, never renamed into place
    with atomic_directory(tmp_path / "out", force=True) as tmp:
        assert (tmp_path / "out" / "part").read_text() == "old" and not old.exists()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new"] and leftovers(tmp_path) == []


def test_a_killed_conversion_leaves_no_destination_and_the_next_one_cleans_up(fixtures_dir, tmp_path):
    dst, marker, log = tmp_path / "dst", tmp_path / "m", tmp_path / "log"
    command = [fault_at.ROOT / "convert_weights.py", "torch2jax", fixtures_dir / "phi-naive-f4" / "finetune", dst,
               "--no-progress"]
    # Killed when everything is written and only the rename into place is left.
    proc = fault_at.start("stall", marker, "tlv_jax.convert.atomic:_commit", 1, command, log)
    fault_at.kill_at_marker(proc, marker, log)
    (left,) = leftovers(tmp_path)
    assert not dst.exists() and left.startswith(".dst.tmp-") and (tmp_path / left / "tlv_jax.json").exists()

    done = subprocess.run([sys.executable, *map(str, command)], cwd=fault_at.ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(fault_at.ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (dst / "tlv_jax.json").exists() and leftovers(tmp_path) == []
