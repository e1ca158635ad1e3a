"""Training checkpoints: an Orbax `CheckpointManager` holding the train state and the data iterator's position in
the same step, async saves every N steps and on SIGTERM, the last K kept, restore onto the current shardings.

The iterator state saved with step s is a snapshot taken right after the batch of step s was drawn, so a restart
from s draws exactly the batches an uninterrupted run would have drawn next. It goes through Grain's Orbax handler
(one `process_<i>-of-<n>.json` per process) via a small stand-in holding the snapshot, so any iterator with
`get_state()`/`set_state()` (dict or bytes states) works, and the snapshot cannot drift while an async save runs.
A save that a SIGKILL interrupts leaves only a temporary directory, which Orbax ignores on restart.
"""

from __future__ import annotations

import json
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import grain.checkpoint as grain_ckpt
import jax
import orbax.checkpoint as ocp


class IteratorSnapshot:
    """Stands in for the data iterator in Grain's checkpoint handler (which calls get_state/set_state)."""

    def __init__(self, state: Any = None):
        self.state = state

    def get_state(self) -> bytes:
        if isinstance(self.state, (bytes, bytearray)):
            return json.dumps({"bytes": bytes(self.state).decode()}).encode()
        return json.dumps({"state": self.state}).encode()

    def set_state(self, raw: bytes) -> None:
        d = json.loads(raw)
        self.state = d["bytes"].encode() if "bytes" in d else d["state"]

    def start_prefetch(self) -> None:  # called by Grain's handler after a restore
        pass


class Checkpointer:
    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every={every} keep={keep}: both must be >= 1")
        self.directory = Path(directory).absolute()
        # Every `every` steps, and when JAX's multi-host preemption notice arrives (no save at step 1).
        policy = ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(every),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
        options = ocp.CheckpointManagerOptions(save_decision_policy=policy, max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "iter"), options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, iter_state: Any = None, *, force: bool = False) -> bool:
        """Starts a save of step `step` (async unless disabled); `force` saves off the interval (SIGTERM, end)."""
        items = {"state": ocp.args.StandardSave(state)}
        if iter_state is not None:
            items["iter"] = grain_ckpt.CheckpointSave(IteratorSnapshot(iter_state))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, with_iter: bool = True) -> tuple[Any, Any]:
        """(state, iterator state or None) of `step`, placed on the shardings carried by `abstract_state`.

        The data position is per process: saved by another number of processes it cannot be split or merged, so it
        is left out with a warning (the train state still restores onto this run's mesh)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        iter_dir = self.directory / str(step) / "iter"
        has_iter = with_iter and iter_dir.exists()
        mine = iter_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if has_iter and not mine.exists():
            saved = sorted(p.name for p in iter_dir.glob("process_*.json"))
            warnings.warn(f"{iter_dir}: data position saved by other processes ({', '.join(saved) or 'none'}), "
                          f"this run has {jax.process_count()}: the data restarts from its first batch (the train "
                          f"state of step {step} is restored)", stacklevel=2)
            has_iter = False
        if has_iter:
            items["iter"] = grain_ckpt.CheckpointRestore(IteratorSnapshot())
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], (restored["iter"].state if has_iter else None)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the *current* shardings (`shardings` may be a prefix tree of `state`): the
    restore lands on whatever mesh this run uses, not the one that saved."""
    full = jax.tree.broadcast(shardings, state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, full)


class PreemptionFlag:
    """Set by SIGTERM (and SIGINT when asked): the loop saves at the end of the current step and stops."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signum = signum
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
