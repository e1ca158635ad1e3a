"""Training checkpoints: an Orbax `CheckpointManager` holding the train state and the data iterator's position in
the same step, async saves every N steps and on SIGTERM, the last K kept, restore onto the current shardings.

The iterator state saved with step s is a snapshot taken right after the batch of step s was drawn, so a restart
from s draws exactly the batches an uninterrupted run would have drawn next. It goes through Grain's Orbax handler
(one `process_<i>-of-<n>.json` per process) via a small stand-in holding the snapshot, so any iterator with
`get_state()`/`set_state()` (dict or bytes states) works, and the snapshot cannot drift while an async save runs.

Faults lose no complete checkpoint:
- Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete, and deletes old steps only
  after that, so a save that fails (disk full) or is killed leaves the previous steps as they were. The temporary
  directory is ignored, and removed by the next writer of the directory (Orbax's `cleanup_tmp_directories`).
- A failed save raises `CheckpointSaveError` (one line: step, directory, cause, last complete step): at once when it
  fails while `save` blocks, else (a background write of an async save) at the next `save`, `wait` or `close`.
- Resuming takes the newest checkpoint that restores (`restore_latest`): one that does not (a truncated or corrupt
  file) is reported in one warning and set aside as `<step>.unreadable` (kept, invisible to Orbax, so the run can
  save that step again). If none restores, nothing is touched and `CheckpointRestoreError` stops the run: starting
  afresh would save new steps among the old ones and let `keep` delete them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import grain.checkpoint as grain_ckpt
import jax
import orbax.checkpoint as ocp
from etils import epath

from tlv_jax.paths import is_url


class CheckpointSaveError(RuntimeError):
    """A checkpoint was not saved (disk full, an I/O error): the run stops; the steps saved before it are intact."""


class CheckpointRestoreError(RuntimeError):
    """A checkpoint cannot be read back (a truncated or corrupt file, or one saved for another model or optimizer).
    `step` and `cause` are set when one step is meant."""

    def __init__(self, message: str, step: Optional[int] = None, cause: str = ""):
        super().__init__(message)
        self.step, self.cause = step, cause


def _brief(error: BaseException, limit: int = 300) -> str:
    """`Type: first line`, cut to `limit` characters: TensorStore's messages run to pages, and ours are one line."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    """The checkpoints of one run. `read_only` (exporting while the run may still be writing): nothing is created,
    cleaned up or set aside."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True,
                 read_only: bool = False):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every={every} keep={keep}: both must be >= 1")
        self.directory = epath.Path(directory) if is_url(directory) else Path(directory).absolute()
        self.read_only, self._async = read_only, async_save
        self._in_flight: Optional[int] = None  # the step of an async save not yet waited for
        # Every `every` steps, and when JAX's multi-host preemption notice arrives (no save at step 1).
        policy = ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(every),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
        # (Not Orbax's `read_only`, which warns about each option it overrides: a reader that never saves needs
        # only no directory made and no temporary directory, maybe a live save's, removed.)
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy, max_to_keep=keep, create=not read_only,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "iter", "base"), options=options)
        self.base: Optional[dict] = None

    def hold_adapters(self, base: dict) -> None:
        """Makes this a LoRA run's checkpointer: each step holds the state without its frozen base plus `base` (the
        fingerprint of `tlv_jax.lora.fingerprint`), and a step restores only onto a base that matches it."""
        self.base = base

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, iter_state: Any = None, *, force: bool = False) -> bool:
        """Starts a save of step `step` (async unless disabled) once the previous one is written; `force` saves off
        the interval (SIGTERM, end). Raises `CheckpointSaveError` for this save or the previous one."""
        self.wait()
        if self.base is not None:
            state = state.replace(frozen=None)
        items = {"state": ocp.args.StandardSave(state)}
        if self.base is not None:
            items["base"] = ocp.args.JsonSave(self.base)
        if iter_state is not None:
            items["iter"] = grain_ckpt.CheckpointSave(IteratorSnapshot(iter_state))
        with self._reporting(step):
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved and self._async:
            self._in_flight = step
        return saved

    def restore_latest(self, abstract_state: Any, with_iter: bool = True) -> Optional[tuple[int, Any, Any]]:
        """(step, state, iterator state or None) of the newest checkpoint that restores; None when there is none.
        Newer ones that do not restore are warned about and set aside (see the module docstring); when none
        restores, `CheckpointRestoreError` names the directory and nothing is changed."""
        steps, failed = self.all_steps(), []
        for step in reversed(steps):
            try:
                state, position = self.restore(step, abstract_state, with_iter)
            except CheckpointRestoreError as e:
                failed.append(e)
                continue
            for error in failed:
                kept = "" if self.read_only else f"; kept as {self._set_aside(error.step).name}"
                warnings.warn(f"{error}{kept}; using step {step}", stacklevel=2)
            if failed and not self.read_only:
                self.manager.reload()  # Orbax forgets the steps set aside: the run saves them anew
            return step, state, position
        if failed:
            raise CheckpointRestoreError(
                f"{self.directory}: none of its checkpoints (steps {steps}) can be restored, the newest: "
                f"{failed[0].cause}; nothing was changed: starting afresh there would mix a new run with them, so "
                f"repair or move {self.directory} to go on")
        return None

    def restore(self, step: int, abstract_state: Any, with_iter: bool = True) -> tuple[Any, Any]:
        """(state, iterator state or None) of `step`, placed on the shardings carried by `abstract_state`; raises
        `CheckpointRestoreError` (with `step` and `cause` set) when it cannot be read back.

        The data position is per process: saved by another number of processes it cannot be split or merged, so it
        is left out with a warning (the train state still restores onto this run's mesh)."""
        self.check_base(step)
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
        _drop_abandoned_reads()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - whatever a damaged file makes Orbax, TensorStore or JSON raise
            raise CheckpointRestoreError(f"{self.directory / str(step)}: cannot be restored ({_brief(e)})", step,
                                         _brief(e)) from e
        return restored["state"], (restored["iter"].state if has_iter else None)

    def check_base(self, step: int) -> None:
        """A LoRA run restores only adapters trained on its base, a full run only full states: raises
        `BaseMismatchError` (one line, nothing set aside) otherwise."""
        from tlv_jax.lora.fingerprint import BaseMismatchError, check

        where = self.directory / str(step)
        saved = where / "base"
        if self.base is None and saved.exists():
            raise BaseMismatchError(f"{where}: holds LoRA adapters, but this run has no lora (set the run's lora.* "
                                    "to resume it)")
        if self.base is None:
            return
        if not saved.exists():
            raise BaseMismatchError(f"{where}: holds a whole model's state, not LoRA adapters (this run has "
                                    "lora.rank > 0): use another workdir")
        try:
            theirs = self.manager.restore(step, args=ocp.args.Composite(base=ocp.args.JsonRestore()))["base"]
        except Exception as e:  # noqa: BLE001 - a damaged file, whatever Orbax raises for it
            raise CheckpointRestoreError(f"{where}: cannot be restored ({_brief(e)})", step, _brief(e)) from e
        check(theirs, self.base, str(where))

    def wait(self) -> None:
        """Blocks until the save in flight is written; raises `CheckpointSaveError` if it failed."""
        with self._reporting(self._in_flight):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    @contextlib.contextmanager
    def _reporting(self, step: Optional[int]) -> Iterator[None]:
        """Turns a failure of the save of `step` into one `CheckpointSaveError` naming what is left."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - OSError from Python writes, ValueError from TensorStore's
            self.manager.reload()  # after a failed async save Orbax's own list of steps is stale
            last = self.manager.latest_step()
            left = "no complete checkpoint yet" if last is None else f"the last complete checkpoint is step {last}"
            raise CheckpointSaveError(f"checkpoint of step {step} not saved in {self.directory} ({_brief(e)}); "
                                      f"{left}: fix the cause and rerun the same command") from e
        finally:
            self._in_flight = None

    def _set_aside(self, step: int) -> Path:
        """Renames the checkpoint of `step` to the first free `<step>.unreadable[N]` (process 0; all wait for it)."""
        names = (f"{step}.unreadable{n or ''}" for n in itertools.count())
        target = next(p for p in (self.directory / n for n in names) if not p.exists())
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"tlv_jax set aside checkpoint {step}")
        return target


class _AbandonedReadReports(logging.Filter):
    """Drops asyncio's '... exception was never retrieved' reports of Orbax's abandoned read tasks and futures."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message and ("orbax" in message or "tensorstore" in message))


_ABANDONED_READ_REPORTS = _AbandonedReadReports()


def _without_late_callbacks(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """`previous` (an unraisable hook), except for the 'Event loop is closed' errors of late TensorStore callbacks."""

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_late_callbacks = True
    return hook


def _drop_abandoned_reads() -> None:
    """When a restore fails, Orbax returns at the first failed read and closes its event loop while TensorStore
    still finishes the others: each late callback prints an 'Event loop is closed' traceback and each abandoned task
    an asyncio error, during the restore and after it (hundreds for one damaged file, burying the one-line warning).
    Exactly those are dropped from the first restore on; anything else still shows."""
    logging.getLogger("asyncio").addFilter(_ABANDONED_READ_REPORTS)  # added once: the same filter is not added twice
    if not getattr(sys.unraisablehook, "drops_late_callbacks", False):
        sys.unraisablehook = _without_late_callbacks(sys.unraisablehook)


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
