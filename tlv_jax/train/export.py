"""Export a run's checkpoint: our layout in `<workdir>/model` and, with `export.torch`, the PyTorch (published) layout
in `<workdir>/export`, from the last (or a chosen) step, with the run's own config (`<workdir>/config.json`).

    python -m tlv_jax.train.export --workdir DIR [--step N]

A multi-process run exports this way when it ends: process 0 starts this in a fresh single-process Python while the
others wait. Orbax's saves are collectives over every process of a `jax.distributed` job, so one process cannot write
a model directory alone from inside the job; a new process restores the checkpoint onto its one device (like onto any
other mesh) and needs no coordination.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import jax
import ml_collections
import optax


def run_config(workdir: Path) -> ml_collections.ConfigDict:
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run config (is {workdir} a training workdir?)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def export_checkpoint(workdir: str | Path, step: Optional[int] = None) -> tuple[Path, Optional[Path]]:
    """Restores `step` (default: the last) of the run in `workdir` onto one device and exports it."""
    from tlv_jax.train import init as init_lib
    from tlv_jax.train import loop
    from tlv_jax.train import step as step_lib
    from tlv_jax.train.checkpoint import Checkpointer, abstract_like

    workdir = Path(workdir).absolute()
    config = run_config(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint.every, keep=config.checkpoint.keep,
                        async_save=False)
    try:
        steps = ckpt.all_steps()
        if step is None and not steps:
            raise FileNotFoundError(f"{ckpt.directory}: no checkpoint to export")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"{ckpt.directory}: no checkpoint of step {step}; there are {steps}")
        built = init_lib.build(config, abstract=True)
        tx = loop.optimizer(config, optax.constant_schedule(0.0))  # only the optimizer state's structure matters
        graphdef, params, frozen, rest = loop.split(config, built)
        abstract = jax.eval_shape(lambda: step_lib.init_state(params, frozen, rest, tx))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state, _ = ckpt.restore(step, abstract_like(abstract, device), with_iter=False)
    finally:
        ckpt.close()
    return init_lib.export(config, built, graphdef, state, workdir)


def export_in_subprocess(workdir: Path, step: int, torch: bool) -> tuple[Optional[Path], Optional[Path]]:
    """Called by every process of a multi-process run after its last save: process 0 exports in a fresh
    single-process Python (on the CPU, so it never competes for the job's accelerators), the others wait for it.
    `torch`: the run's `export.torch` (whether a PyTorch layout is written too)."""
    from jax.experimental import multihost_utils

    failed = 0
    if jax.process_index() == 0:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, "-m", "tlv_jax.train.export", "--workdir", str(workdir), "--step", str(step)]
        failed = subprocess.run(cmd, env=env).returncode
    failed = int(multihost_utils.broadcast_one_to_all(failed))
    if failed:
        raise RuntimeError(f"exporting step {step} of {workdir} failed (exit status {failed}); the checkpoint is "
                           f"kept: rerun `python -m tlv_jax.train.export --workdir {workdir} --step {step}`")
    if jax.process_index() != 0:
        return None, None
    return workdir / "model", (workdir / "export" if torch else None)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the training run's directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the last)")
    args = p.parse_args(argv)
    try:
        model_dir, export_dir = export_checkpoint(args.workdir, args.step)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"exported: {model_dir}" + (f" and {export_dir}" if export_dir else ""))


if __name__ == "__main__":
    main()
