"""The training run: build (or resume), loop over batches, log, checkpoint, stop on NaN or SIGTERM, export.

`run(config, workdir)` is what the CLI calls. Re-running the same command resumes from the last checkpoint in
`workdir/checkpoints` (train state and data position of the same step), so a run killed at any moment and
restarted produces the same losses as one never interrupted. Workdir layout:

    checkpoints/<step>/{state,iter}   Orbax, the last `checkpoint.keep` steps
    metrics.jsonl, tensorboard/       one row / scalar set per logged step
    config.json                       the resolved config of the run
    model/                            at the end: our checkpoint layout (what `tlv_jax.load` and finetuning read)
    export/                           at the end: the PyTorch layout (when `export.torch`)
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import ml_collections
import numpy as np

from tlv_jax.config import to_dtype
from tlv_jax.sharding import distributed
from tlv_jax.sharding.global_batch import global_batch
from tlv_jax.sharding.mesh import SMALL_TENSOR_BYTES, batch_sharding, make_mesh, place, replicated, tree_shardings
from tlv_jax.sharding.rules import model_rules
from tlv_jax.train import flops as flops_lib
from tlv_jax.train import init as init_lib
from tlv_jax.train import optim
from tlv_jax.train import step as step_lib
from tlv_jax.train.checkpoint import Checkpointer, PreemptionFlag, abstract_like
from tlv_jax.train.metrics import MetricsWriter


MODEL_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values", "frames_mask")


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


@dataclasses.dataclass
class DataSource:
    """The batches of a run: `make()` gives an iterator with get_state/set_state; `size` samples per epoch."""

    make: Callable[[], Iterator[Mapping[str, np.ndarray]]]
    size: Optional[int]


def run(config: ml_collections.ConfigDict, workdir: str, peak_tflops: float = 0.0) -> Any:
    """The CLI's entry: the demo config runs the demo (train + held-out evaluation), any other config trains."""
    if "demo" in config:
        from tlv_jax.train import demo

        return demo.run(config, workdir, peak_tflops=peak_tflops)
    try:
        result = train(config, workdir, peak_tflops=peak_tflops)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    if result.stopped == "preempted":
        sys.exit(143)  # 128 + SIGTERM: schedulers see an interrupted job; the same command resumes it
    return result


def total_steps(config: ml_collections.ConfigDict, dataset_size: Optional[int]) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if not dataset_size:
        raise ValueError("train.num_steps is 0 and the dataset size is unknown: set --config.train.num_steps")
    return max(1, math.ceil(config.train.epochs * dataset_size / config.train.global_batch))


def accumulation_steps(config: ml_collections.ConfigDict) -> int:
    g, m = config.train.global_batch, config.train.micro_batch
    if m < 1 or g % m:
        raise ValueError(f"train.global_batch={g} must be a multiple of train.micro_batch={m}")
    if g % jax.process_count():
        raise ValueError(f"train.global_batch={g} must split evenly over {jax.process_count()} processes")
    return g // m


def optimizer(config: ml_collections.ConfigDict, schedule: optim.Schedule) -> Any:
    o = config.optim
    return optim.make_optimizer(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, clip=o.clip)


def split(config: ml_collections.ConfigDict, built: init_lib.Built) -> tuple[Any, Any, Any, Any]:
    """(graphdef, trainable params, frozen params in the compute dtype, the rest); `built.model` is released."""
    freeze = optim.check_freeze(config.freeze)
    out = step_lib.split_model(built.model, optim.trainable_filter(freeze), to_dtype(config.model.dtype))
    built.model = None  # the three states hold the weights now
    return out


def check_batch_split(config: ml_collections.ConfigDict, mesh: Any) -> None:
    """Each step's global batch is split over the data x fsdp devices: say so before XLA's shape error does."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.global_batch % shards:
        raise ValueError(f"train.global_batch={config.train.global_batch} does not split over the mesh's data x fsdp = "
                         f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {shards} devices; use a multiple of {shards}")


def batch_stats(batch: Mapping[str, np.ndarray], num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(real frames per sample, decoder tokens per sample incl. the inserted video tokens)."""
    frames = np.asarray(batch["frames_mask"]).sum(-1)
    has_video = (np.asarray(batch["input_ids"]) < 0).any(-1)
    lengths = np.asarray(batch["attention_mask"]).sum(-1) + has_video * (num_queries - 1)
    return frames, lengths


def _save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, data: Optional[DataSource] = None,
          peak_tflops: float = 0.0, model_factory: Optional[Callable[..., init_lib.Built]] = None) -> RunResult:
    """Trains (or resumes) the run of `config` in `workdir`. `data` / `model_factory` replace the configured
    data pipeline / model initialisation (the demo passes its own)."""
    start = time.time()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _save_config(config, workdir)
    freeze = optim.check_freeze(config.freeze)
    accum = accumulation_steps(config)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, dcn_data=config.mesh.dcn_data)
    check_batch_split(config, mesh)
    ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint.every, keep=config.checkpoint.keep,
                        async_save=config.checkpoint.async_save)
    resume = ckpt.latest_step()

    built = (model_factory or init_lib.build)(config, abstract=resume is not None)
    model_cfg = built.config.model
    if data is None:
        data = init_lib.data_source(config, built)
    steps = total_steps(config, data.size)
    schedule = optim.make_schedule(config.optim.lr, steps, config.optim.warmup_ratio, config.optim.schedule)
    tx = optimizer(config, schedule)
    graphdef, params, frozen, rest = split(config, built)
    abstract_state = jax.eval_shape(lambda: step_lib.init_state(params, frozen, rest, tx))
    rules = model_rules(model_cfg, mesh.shape)  # head axes split only between whole heads
    shardings = tree_shardings(abstract_state, mesh, rules, SMALL_TENSOR_BYTES)

    iterator = data.make()
    if resume is not None:
        state, iter_state = ckpt.restore(resume, abstract_like(abstract_state, shardings))
        if iter_state is not None:
            iterator.set_state(iter_state)
    else:
        state = place(step_lib.init_state(params, frozen, rest, tx), shardings)
    params = frozen = rest = None
    step = int(jax.device_get(state.step))
    distributed.assert_same_across_processes(config_hash=distributed.config_fingerprint(config), step=step)

    loss_fn = init_lib.loss_fn(config)
    train_step = step_lib.make_train_step(graphdef, tx, loss_fn, accum_steps=accum, schedule=schedule)
    jitted: dict[tuple, Callable] = {}  # one jit per batch rank signature (shapes recompile inside jit's cache)

    peak = flops_lib.peak_tflops(override=peak_tflops or config.log.peak_tflops)
    writer = MetricsWriter(workdir, total_steps=steps, initial_step=step, enabled=jax.process_index() == 0,
                           tensorboard=config.log.tensorboard, progress=config.log.progress)
    if resume is not None:
        writer.log(f"resumed from step {resume} in {ckpt.directory}")
    preempt = PreemptionFlag()
    last_saved = resume
    stopped = "done"
    tick = time.time()
    try:
        while step < steps:
            t_data = time.time()
            batch = next(iterator)
            iter_state = iterator.get_state()  # the position after this step's batch: saved with this step
            t_data = time.time() - t_data
            arrays = global_batch(batch, mesh, MODEL_KEYS)
            key = tuple(sorted((k, v.ndim) for k, v in arrays.items()))
            if key not in jitted:
                jitted[key] = jax.jit(train_step,
                                      in_shardings=(shardings, {k: batch_sharding(mesh, nd) for k, nd in key}),
                                      out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,))
            state, metrics = jitted[key](state, arrays)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            step += 1
            now = time.time()
            step_time, tick = now - tick, now
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                raise TrainingDiverged(
                    f"non-finite loss ({metrics['loss']}) or grad norm ({metrics['grad_norm']}) at step {step}; "
                    f"stopped without saving it, the last good checkpoint is "
                    f"{'step ' + str(last_saved) if last_saved is not None else 'none'} in {ckpt.directory}")
            if step % config.log.every == 0 or step == steps:
                frames, lengths = batch_stats(batch, model_cfg.connector.num_queries or 0)
                tokens = float(lengths.sum()) * jax.process_count()
                flops = flops_lib.train_flops(model_cfg, freeze, frames, lengths) * jax.process_count()
                metrics.update(step_time=step_time, data_time=t_data, tokens_per_s=tokens / step_time,
                               mfu=flops_lib.mfu(flops, step_time, jax.device_count(), peak))
                writer.write(step, metrics)
            writer.advance()
            if preempt.requested or ckpt.should_save(step) or step == steps:
                ckpt.save(step, state, iter_state, force=preempt.requested or step == steps)
                last_saved = step
            if preempt.requested:
                stopped = "preempted"
                writer.log(f"SIGTERM: saved step {step}; rerun the same command to resume")
                break
    finally:
        ckpt.wait()
        writer.close()
        preempt.restore_handlers()
        if hasattr(iterator, "close"):
            iterator.close()

    model_dir = export_dir = None
    if stopped == "done" and jax.process_count() == 1:
        model_dir, export_dir = init_lib.export(config, built, graphdef, state, workdir)
    ckpt.close()  # waits for the last save
    if stopped == "done" and jax.process_count() > 1:
        from tlv_jax.train.export import export_in_subprocess

        model_dir, export_dir = export_in_subprocess(workdir, step, bool(config.export.torch))
    return RunResult(step=step, total_steps=steps, stopped=stopped, last_checkpoint=last_saved, resumed_from=resume,
                     model_dir=model_dir, export_dir=export_dir, wall_s=time.time() - start)
