"""The training loop: steps, checkpoints, metrics, SIGTERM and NaN. `train` is set-up, loop, export in three calls.

Re-running the same command resumes from the last checkpoint in `workdir/checkpoints` that restores (train state and
data position of the same step), so a run killed at any moment and restarted produces the same losses as one never
interrupted. A save that fails stops the run with `checkpoint.CheckpointSaveError` (the earlier steps are kept).
Workdir layout:

    checkpoints/<step>/{state,iter}   Orbax, the last `checkpoint.keep` steps
    metrics.jsonl, tensorboard/       one row / scalar set per logged step
    config.json                       the resolved config of the run
    model/                            at the end: our checkpoint layout (what `tlv_jax.load` and finetuning read)
    export/                           at the end: the PyTorch layout (when `export.torch`)

The host waits for the device only at log and save steps: each step's metrics stay on the device until then, and
every step's loss and gradient norm since the last wait are checked together, so a non-finite step stops the run
before its state (or any later one) is saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np

from tlv_jax.models.tinyllava_config import ModelConfig
from tlv_jax.sharding.global_batch import global_batch
from tlv_jax.train import export
from tlv_jax.train import flops as flops_lib
from tlv_jax.train import optim
from tlv_jax.train import setup
from tlv_jax.train.checkpoint import PreemptionFlag
from tlv_jax.train.metrics import MetricsWriter
from tlv_jax.train.workdir import Workdir


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm: the run stopped before saving the bad state."""


@dataclasses.dataclass
class RunResult:
    step: int  # optimizer steps done
    total_steps: int
    stopped: str  # 'done' | 'preempted'
    last_checkpoint: Optional[int]
    resumed_from: Optional[int]  # the checkpoint step this run started from (None: from the start)
    model_dir: Optional[Path]
    export_dir: Optional[Path]
    wall_s: float


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, data: Optional[setup.DataSource] = None,
          peak_tflops: float = 0.0) -> RunResult:
    """Trains (or resumes) the run of `config` in `workdir` and, when it finishes, exports the model. `data`
    replaces the configured data pipeline (the demo passes its own)."""
    start = time.time()
    run = setup.prepare(config, workdir, data=data)
    try:
        stopped, last_saved = run_loop(run, flops_lib.peak_tflops(override=peak_tflops or config.log.peak_tflops))
    finally:
        run.checkpoints.close()  # waits for the last save
    model_dir, export_dir = export.at_end(run) if stopped == "done" else (None, None)
    return RunResult(step=run.step, total_steps=run.total_steps, stopped=stopped, last_checkpoint=last_saved,
                     resumed_from=run.resumed_from, model_dir=model_dir, export_dir=export_dir,
                     wall_s=time.time() - start)


def run_loop(run: setup.Run, peak: Optional[float]) -> tuple[str, Optional[int]]:
    """Steps `run` to its end or to SIGTERM (saving that step first); returns ('done' | 'preempted', last saved
    step). Raises `TrainingDiverged` without saving when a step's loss or gradient norm is not finite."""
    config, ckpt = run.config, run.checkpoints
    writer = MetricsWriter(run.workdir.local, total_steps=run.total_steps, initial_step=run.step,
                           enabled=jax.process_index() == 0, tensorboard=config.log.tensorboard,
                           progress=config.log.progress)
    if run.resumed_from is not None:
        writer.log(f"resumed from step {run.resumed_from} in {ckpt.directory}")
    window = Window(run.source.config.model, optim.check_freeze(config.freeze), peak)
    unchecked: list[tuple[int, dict[str, jax.Array]]] = []  # (step, metrics on the device) since the last check
    preempt = PreemptionFlag()
    last_saved, stopped = run.resumed_from, "done"
    ndims = setup.batch_ndims(config)  # the arrays the jitted step takes
    try:
        while run.step < run.total_steps:
            t_data = time.time()
            batch = next(run.iterator)
            position = run.iterator.get_state()  # the data position after this step's batch: saved with this step
            window.add(batch, time.time() - t_data)
            run.state, metrics = run.train_step(run.state, device_batch(batch, run.mesh, ndims))
            run.step += 1
            unchecked.append((run.step, metrics))
            preempted = preempt.requested
            log = run.step % config.log.every == 0 or run.step == run.total_steps
            save = preempted or ckpt.should_save(run.step) or run.step == run.total_steps
            if log or save:
                checked = check_finite(jax.device_get(unchecked), last_saved, ckpt.directory)
                unchecked = []
                if log:
                    writer.write(run.step, {**checked, **window.summary()})
            writer.advance()
            if save:
                ckpt.save(run.step, run.state, position, force=preempted or run.step == run.total_steps)
                last_saved = run.step
                push_logs(run.workdir, writer)
            if preempted:
                ckpt.wait()  # 'saved' only once it is
                stopped = "preempted"
                writer.log(f"SIGTERM: saved step {run.step}; rerun the same command to resume")
                break
    finally:
        ckpt.wait()
        writer.close()
        push_logs(run.workdir, writer)
        preempt.restore_handlers()
        if hasattr(run.iterator, "close"):
            run.iterator.close()
    return stopped, last_saved


def push_logs(workdir: Workdir, writer: MetricsWriter) -> None:
    """Copies the config and metrics log up to a remote run directory (process 0; nothing for a local one). A
    failed copy is reported and training goes on: the checkpoints are Orbax's and the next push carries the log."""
    if workdir.remote is None or jax.process_index() != 0:
        return
    try:
        workdir.push()
    except Exception as e:  # noqa: BLE001 - any filesystem's error (gcsfs raises its own): the run goes on
        writer.log(f"warning: could not copy the run's log to {workdir.name}: {e}")


def device_batch(batch: Mapping[str, np.ndarray], mesh: Any,
                 ndims: Mapping[str, int] = setup.BATCH_NDIMS) -> dict[str, jax.Array]:
    """This process's rows -> the global batch, with exactly the arrays the jitted step takes (`ndims`)."""
    missing = [k for k in ndims if k not in batch]
    if missing:
        raise ValueError(f"a training batch lacks {missing}; every batch holds {sorted(ndims)}")
    return global_batch(batch, mesh, tuple(ndims))


def check_finite(steps: list[tuple[int, Mapping[str, Any]]], last_saved: Optional[int],
                 directory: Path) -> dict[str, float]:
    """The last step's metrics as floats, after checking every step's loss and gradient norm."""
    for step, metrics in steps:
        loss, norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise TrainingDiverged(
                f"non-finite loss ({loss}) or grad norm ({norm}) at step {step}; stopped without saving it, the last "
                f"good checkpoint is {'step ' + str(last_saved) if last_saved is not None else 'none'} in "
                f"{directory}")
    return {k: float(v) for k, v in steps[-1][1].items()}


class Window:
    """Throughput since the last log step. With asynchronous dispatch one step's wall time means nothing until the
    host waits, so step time, tokens/s and MFU are averages over the steps between two log steps."""

    def __init__(self, cfg: ModelConfig, freeze: Mapping[str, str], peak: Optional[float]):
        self.cfg, self.freeze, self.peak = cfg, freeze, peak
        self._reset()

    def _reset(self) -> None:
        self.start, self.steps, self.data_s, self.tokens, self.flops = time.time(), 0, 0.0, 0.0, 0.0

    def add(self, batch: Mapping[str, np.ndarray], data_s: float) -> None:
        """One step's host batch (this process's rows; every process sees as many) and the time it took to read."""
        frames, lengths = batch_stats(batch, self.cfg)
        self.steps += 1
        self.data_s += data_s
        self.tokens += float(lengths.sum()) * jax.process_count()
        self.flops += flops_lib.train_flops(self.cfg, self.freeze, frames, lengths) * jax.process_count()

    def summary(self) -> dict[str, Optional[float]]:
        """Per-step means since the last summary (the caller has just waited for the device), then starts anew."""
        elapsed = time.time() - self.start
        out = {"step_time": elapsed / self.steps, "data_time": self.data_s / self.steps,
               "tokens_per_s": self.tokens / elapsed,
               "mfu": flops_lib.mfu(self.flops, elapsed, jax.device_count(), self.peak)}
        self._reset()
        return out


def batch_stats(batch: Mapping[str, np.ndarray], cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(real frames per sample, decoder tokens per sample with the video's tokens in place of its placeholder)."""
    frames = np.asarray(batch["frames_mask"]).sum(-1)
    if "segment_ids" in batch:  # packed rows: sample v of a row is segment v + 1, its video tokens already in place
        segments = np.asarray(batch["segment_ids"])
        slots = np.arange(1, frames.shape[-1] + 1)
        lengths = (segments[:, None, :] == slots[None, :, None]).sum(-1)
        real = np.asarray(batch["sample_index"]) >= 0
        return frames[real], lengths[real]
    has_video = (np.asarray(batch["input_ids"]) < 0).any(-1)
    video = np.array([cfg.video_tokens(int(f)) for f in frames])
    return frames, np.asarray(batch["attention_mask"]).sum(-1) + has_video * (video - 1)
