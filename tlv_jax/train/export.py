"""Exporting a run: our layout in `<workdir>/model` and, with `export.torch`, the PyTorch (published) layout in
`<workdir>/export`, with the run's own config (`<workdir>/config.json`). A finished run exports itself (`at_end`);
any checkpoint of a run exports from the command line:

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
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from tlv_jax import cli_errors
from tlv_jax.convert import layouts, orbax_io
from tlv_jax.data.templates import inference_template
from tlv_jax.models import families
from tlv_jax.models.tinyllava_config import TinyLlavaConfig
from tlv_jax.train import lora_state, setup
from tlv_jax.train.workdir import EXPORTS, Workdir


def save_model_dir(model: Any, cfg: TinyLlavaConfig, tokenizer_dir: str, dst: Path, source: str,
                   defaults: dict[str, Any]) -> Path:
    """Our checkpoint layout (config.json, tlv_jax.json with the inference `defaults`, params/, tokenizer files),
    written atomically (`convert.atomic`: a killed export leaves no `dst`; the next one removes its leftover), like
    the PyTorch layout `export_state` writes through the converter."""
    from tlv_jax.convert.atomic import atomic_directory

    dtypes: list[str] = []

    def params():
        for path, arr in orbax_io.iter_model_params(model):
            dtypes.append(np.dtype(arr.dtype).name)
            yield path, arr

    with atomic_directory(dst, force=True) as tmp:
        cfg.save(tmp)
        if tokenizer_dir:
            layouts.copy_side_files(tokenizer_dir, tmp, skip=("generation_config.json",))
        n = orbax_io.save_params(tmp, params())
        kinds = set(dtypes)
        orbax_io.write_meta(tmp, {"kind": "tinyllava", "dtype": kinds.pop() if len(kinds) == 1 else "mixed",
                                  "num_params": len(dtypes), "num_bytes": n,
                                  "source": {"path": source, "layout": "trained"}, "defaults": defaults})
    return dst


def export_state(config: ml_collections.ConfigDict, source: setup.ModelSource, graphdef: Any, state: Any,
                 workdir: Workdir) -> tuple[Path, Optional[Path]]:
    """`workdir/model` in our layout and, with `export.torch`, `workdir/export` in the PyTorch (published) layout
    through the converter, built locally (and copied up to a remote run directory). One process only (a
    multi-process run goes through `export_in_subprocess`)."""
    model = nnx.merge(graphdef, state.params, state.frozen, state.rest)
    lora = lora_state.spec(config)
    if lora is not None:  # the LLM's adapters in PEFT's format, then the merged model like any run's
        model = lora_state.export_adapters(model, lora, workdir.local / "adapter", source)
    # Generation reads videos the way this run's data did (a model trained on 8 frames is not asked about 16).
    family = families.get(source.config.model.llm.family)
    template = inference_template(config.data.template, family.chat_template)
    defaults = orbax_io.inference_defaults(template, config.data.num_frames, config.data.max_frames)
    model_dir = save_model_dir(model, source.config, source.tokenizer_dir, workdir.local / "model", workdir.name,
                               defaults)
    export_dir = None
    if config.export.torch:
        from tlv_jax.convert.jax2torch import convert

        export_dir = convert(model_dir, workdir.local / "export", dtype=config.export.dtype or None, force=True,
                             progress=config.log.progress)
    workdir.push(EXPORTS)
    return model_dir, export_dir


def at_end(run: setup.Run) -> tuple[Optional[Path], Optional[Path]]:
    """The export of a finished run, after its last save: here on one process, else in a fresh process."""
    if jax.process_count() == 1:
        return export_state(run.config, run.source, run.graphdef, run.state, run.workdir)
    return export_in_subprocess(run.workdir, run.step, bool(run.config.export.torch))


def run_config(workdir: Workdir) -> ml_collections.ConfigDict:
    path = workdir.local / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir.name}/config.json: no run config (is {workdir.name} a training workdir?)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def export_checkpoint(workdir: str | Path, step: Optional[int] = None) -> tuple[Path, Optional[Path]]:
    """Restores `step` (default: the last that restores, see `Checkpointer.restore_latest`) of the run in `workdir`
    onto one device and exports it. The checkpoints are only read: a run may still be writing them."""
    from tlv_jax.train.checkpoint import Checkpointer, abstract_like

    workdir = Workdir.of(workdir)
    workdir.pull()
    config = run_config(workdir)
    ckpt = Checkpointer(workdir.checkpoints, every=config.checkpoint.every, keep=config.checkpoint.keep,
                        async_save=False, read_only=True)
    try:
        steps = ckpt.all_steps()
        if step is None and not steps:
            raise FileNotFoundError(f"{ckpt.directory}: no checkpoint to export")
        if step is not None and step not in steps:
            raise ValueError(f"{ckpt.directory}: no checkpoint of step {step}; there are {steps}")
        source = setup.model_source(config)
        tx = setup.optimizer(config, optax.constant_schedule(0.0))  # only the optimizer state's structure matters
        lora = lora_state.spec(config)
        freeze = lora_state.check_freeze(config.freeze, lora)
        graphdef, abstract = setup.abstract_train_state(source.config.model, freeze, tx, lora)
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = abstract_like(abstract, one)
        if lora is not None:  # the base rebuilt from the run's config, checked against the adapters' fingerprint
            shardings = jax.tree.map(lambda _: one, abstract)
            _, state, _ = setup.start_lora(config, source, lora, freeze, tx, ckpt, abstract, shardings, step=step)
        elif step is None:
            _, state, _ = ckpt.restore_latest(target, with_iter=False)
        else:
            state, _ = ckpt.restore(step, target, with_iter=False)
    finally:
        ckpt.close()
    return export_state(config, source, graphdef, state, workdir)


def export_in_subprocess(workdir: Workdir, step: int, torch: bool) -> tuple[Optional[Path], Optional[Path]]:
    """Called by every process of a multi-process run after its last save: process 0 exports in a fresh
    single-process Python (on the CPU, so it never competes for the job's accelerators), the others wait for it.
    `torch`: the run's `export.torch` (whether a PyTorch layout is written too)."""
    from jax.experimental import multihost_utils

    failed = 0
    if jax.process_index() == 0:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, "-m", "tlv_jax.train.export", "--workdir", workdir.name, "--step", str(step)]
        failed = subprocess.run(cmd, env=env).returncode
    failed = int(multihost_utils.broadcast_one_to_all(failed))
    if failed:
        raise RuntimeError(f"exporting step {step} of {workdir.name} failed (exit status {failed}); the checkpoint "
                           f"is kept: rerun `python -m tlv_jax.train.export --workdir {workdir.name} --step {step}`")
    if jax.process_index() != 0:
        return None, None
    return workdir.local / "model", (workdir.local / "export" if torch else None)


def main(argv: Optional[list[str]] = None) -> int:
    """Status 0, or a failure (no run config, no checkpoint, one that does not restore) as one line:
    `tlv_jax.cli_errors`."""
    p = argparse.ArgumentParser(prog="python -m tlv_jax.train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the training run's directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the last)")
    p.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    args = p.parse_args(argv)

    def run() -> None:
        model_dir, export_dir = export_checkpoint(args.workdir, args.step)
        print(f"exported: {model_dir}" + (f" and {export_dir}" if export_dir else ""))

    return cli_errors.run(run, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
