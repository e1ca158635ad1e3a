"""`python -m tlv_jax.train --config configs/NAME.py --workdir DIR [--config.optim.lr=2e-5 ...] [--peak_tflops N]`.

Restarting the same command resumes from the last checkpoint in DIR. Heavy imports happen after the flags are
parsed, so `--help` and config errors answer at once. A failure is one `error:` line and an exit status
(`tlv_jax.cli_errors`); its traceback goes to `DIR/logs/process_<i>.log`, and to stderr with `--verbose`.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from tlv_jax import cli_errors
from tlv_jax.sharding.flags import define_distributed_flags
from tlv_jax.train import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/demo.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, logs, exported model (resumes if present)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "per-device peak TFLOP/s for MFU (default: the built-in device table)")
_DISTRIBUTED = define_distributed_flags()  # --coordinator_address/--num_processes/--process_id (else auto-detect)
_VERBOSE = flags.DEFINE_bool("verbose", False, cli_errors.VERBOSE_HELP)
flags.mark_flags_as_required(["config", "workdir"])


def run(config: ml_collections.ConfigDict, workdir: str, peak_tflops: float = 0.0) -> Any:
    """The demo config runs the demo (train + held-out evaluation), any other config trains. Exit status 143: stopped
    by SIGTERM after saving (the same command resumes)."""
    if "demo" in config:
        from tlv_jax.train import demo

        return demo.run(config, workdir, peak_tflops=peak_tflops)
    from tlv_jax.train.loop import train

    result = train(config, workdir, peak_tflops=peak_tflops)
    if result.stopped == "preempted":
        sys.exit(cli_errors.PREEMPTED)  # 128 + SIGTERM: schedulers see an interrupted job; the same command resumes it
    return result


def _start_and_run() -> None:
    import jax

    from tlv_jax.sharding import distributed
    from tlv_jax.train.workdir import Workdir

    Workdir.of(_WORKDIR.value)  # a malformed URL fails before anything starts
    distributed.startup(distributed.DistributedConfig(**_DISTRIBUTED()), _WORKDIR.value, _CONFIG.value)
    if jax.process_count() == 1:  # startup opens the per-process logs of a multi-process run
        distributed.per_process_log(_WORKDIR.value)  # where a failure's traceback goes
    run(_CONFIG.value, _WORKDIR.value, peak_tflops=_PEAK.value)


def _main(argv: Sequence[str]) -> None:
    del argv  # cli.run refuses positional arguments
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; our progress goes to the bar
    from tlv_jax.train.loop import TrainingDiverged

    sys.exit(cli_errors.run(_start_and_run, verbose=_VERBOSE.value,
                            statuses={TrainingDiverged: cli_errors.DIVERGED}))  # the last good checkpoint is kept


def main() -> None:
    cli.run(_main)


if __name__ == "__main__":
    main()
