"""Checkpoint faults lose no complete checkpoint: a save that hits a full disk stops with one line naming the step, the
cause and the step that is left (raised by the next wait, save or close when it failed in the background), and an
unreadable latest checkpoint is skipped with a warning, set aside, and the one before it restored."""

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from tlv_jax.train.checkpoint import CheckpointRestoreError, Checkpointer, CheckpointSaveError, abstract_like

FILES = type(epath.Path("/"))  # the local-path class every Python write of Orbax and Grain goes through


def state(step):
    return {"w": jnp.arange(64.0) + step, "b": jnp.full(3, float(step))}


def target():
    return abstract_like(state(0), jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def saved(directory, steps, async_save=True, keep=3):
    ckpt = Checkpointer(directory, every=1, keep=keep, async_save=async_save)
    for step in steps:
        ckpt.save(step, state(step), {"position": step})
    ckpt.wait()
    return ckpt


def disk_full_for(monkeypatch, name):
    """Every write of a file called `name` fails as on a full disk (ENOSPC), as Orbax sees it from the OS."""
    write_text = FILES.write_text

    def full(self, *args, **kwargs):
        if self.name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(FILES, "write_text", full)


def assert_only_step_1_left(directory):
    ckpt = Checkpointer(directory, every=1, keep=3)
    step, restored, position = ckpt.restore_latest(target())
    assert (step, ckpt.all_steps(), position) == (1, [1], {"position": 1})
    np.testing.assert_array_equal(restored["w"], state(1)["w"])
    ckpt.save(2, state(2), {"position": 2})  # the same step saves again; the failed one's temporary files are gone
    ckpt.close()
    assert sorted(p.name for p in directory.iterdir() if "tmp" in p.name) == []


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_a_full_disk_while_save_blocks_raises_there(tmp_path, monkeypatch, async_save):
    ckpt = saved(tmp_path, [1], async_save)
    disk_full_for(monkeypatch, "process_0-of-1.json")  # the data position: written before `save` returns
    with pytest.raises(CheckpointSaveError) as failure:
        ckpt.save(2, state(2), {"position": 2})
    message = str(failure.value)
    assert message.startswith(f"checkpoint of step 2 not saved in {tmp_path} (OSError: [Errno 28] No space left")
    assert message.endswith("the last complete checkpoint is step 1: fix the cause and rerun the same command")
    assert "\n" not in message
    ckpt.close()
    monkeypatch.undo()
    assert_only_step_1_left(tmp_path)


@pytest.mark.parametrize("surfaces_at", ["wait", "save", "close"])
def test_a_full_disk_in_a_background_write_surfaces_at_the_next_call(tmp_path, monkeypatch, surfaces_at):
    ckpt = saved(tmp_path, [1])
    disk_full_for(monkeypatch, "_METADATA")  # the state's tree metadata: written after `save` returned
    ckpt.save(2, state(2), {"position": 2})
    with pytest.raises(CheckpointSaveError, match=r"^checkpoint of step 2 not saved .*No space left on device.*; the "
                                                  r"last complete checkpoint is step 1"):
        {"wait": ckpt.wait, "close": ckpt.close, "save": lambda: ckpt.save(3, state(3), {"position": 3})}[surfaces_at]()
    ckpt.close()  # reported once
    monkeypatch.undo()
    assert_only_step_1_left(tmp_path)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damaged", ["iter/process_0-of-1.json", "state/manifest.ocdbt", "state/_METADATA"])
def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_one_before_restored(tmp_path, damaged):
    saved(tmp_path, [1, 2]).close()
    truncate(tmp_path / "2" / damaged)
    ckpt = Checkpointer(tmp_path, every=1, keep=3)
    with pytest.warns(UserWarning, match=rf"^{tmp_path}/2: cannot be restored \(\w+: .*\); kept as 2.unreadable; "
                                         r"using step 1$"):
        step, restored, position = ckpt.restore_latest(target())
    assert (step, position, ckpt.all_steps()) == (1, {"position": 1}, [1])
    np.testing.assert_array_equal(restored["b"], state(1)["b"])
    ckpt.save(2, state(2), {"position": 2})  # the run saves step 2 again; the unreadable one is kept beside it
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["1", "2", "2.unreadable"]


def test_a_reader_skips_an_unreadable_checkpoint_without_moving_it(tmp_path):
    saved(tmp_path, [1, 2]).close()
    truncate(tmp_path / "2" / "state" / "manifest.ocdbt")
    reader = Checkpointer(tmp_path, every=1, keep=3, read_only=True)
    with pytest.warns(UserWarning, match=r"2: cannot be restored .*\); using step 1$"):
        assert reader.restore_latest(target(), with_iter=False)[0] == 1
    assert reader.all_steps() == [1, 2] and (tmp_path / "2").is_dir()


def test_when_no_checkpoint_restores_the_run_stops_and_nothing_moves(tmp_path):
    saved(tmp_path, [1, 2]).close()
    for step in (1, 2):
        truncate(tmp_path / str(step) / "iter" / "process_0-of-1.json")
    ckpt = Checkpointer(tmp_path, every=1, keep=3)
    with pytest.raises(CheckpointRestoreError, match=rf"^{tmp_path}: none of its checkpoints \(steps \[1, 2\]\) can be "
                                                     r"restored, the newest: JSONDecodeError: .*; nothing was changed"):
        ckpt.restore_latest(target())
    assert ckpt.all_steps() == [1, 2] and not list(tmp_path.glob("*.unreadable*"))
