"""`python -m tlv_jax.train --config configs/NAME.py --workdir DIR [--config.optim.lr=2e-5 ...] [--peak_tflops N]`.

Restarting the same command resumes from the last checkpoint in DIR. Heavy imports happen after the flags are
parsed, so `--help` and config errors answer at once.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from tlv_jax.sharding.flags import define_distributed_flags
from tlv_jax.train import cli
from tlv_jax.train.config_file import load_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/demo.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, logs, exported model (resumes if present)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "per-device peak TFLOP/s for MFU (default: the built-in device table)")
_DISTRIBUTED = define_distributed_flags()  # --coordinator_address/--num_processes/--process_id (else auto-detect)
flags.mark_flags_as_required(["config", "workdir"])


def override_error(argv: Sequence[str]) -> Optional[str]:
    """A one-paragraph error for the first `--config.a.b=...` naming a key the config file does not have, listing
    the valid keys at that level (ml_collections would raise a traceback from inside flag parsing)."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[list(argv).index("--config") + 1]
    if path is None:
        return None
    try:
        config = load_config(path)
    except Exception:  # noqa: BLE001 - the flag parser reports problems with the file itself
        return None
    for arg in argv:
        m = re.match(r"--(?:no)?config\.([\w.]+)", arg)
        if not m:
            continue
        node, done = config, []
        for key in m.group(1).split("."):
            keys = sorted(node.keys()) if hasattr(node, "keys") else []
            if key not in keys:
                where = ".".join(done) or "the top level"
                return (f"error: unknown config key {'.'.join(done + [key])!r} in {arg!r} ({path}).\n"
                        f"Valid keys at {where}: {', '.join(keys) if keys else '(none: it is a value)'}")
            node, done = node[key], done + [key]
    return None


def run(config: ml_collections.ConfigDict, workdir: str, peak_tflops: float = 0.0) -> Any:
    """The demo config runs the demo (train + held-out evaluation), any other config trains. Exit status 3: the
    run diverged (the last good checkpoint is kept); 143: stopped by SIGTERM after saving (the same command
    resumes)."""
    if "demo" in config:
        from tlv_jax.train import demo

        return demo.run(config, workdir, peak_tflops=peak_tflops)
    from tlv_jax.train.loop import TrainingDiverged, train

    try:
        result = train(config, workdir, peak_tflops=peak_tflops)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    if result.stopped == "preempted":
        sys.exit(143)  # 128 + SIGTERM: schedulers see an interrupted job; the same command resumes it
    return result


def _main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; our progress goes to the bar
    from tlv_jax.sharding import distributed

    distributed.startup(distributed.DistributedConfig(**_DISTRIBUTED()), _WORKDIR.value, _CONFIG.value)
    run(_CONFIG.value, _WORKDIR.value, peak_tflops=_PEAK.value)


def main() -> None:
    error = override_error(sys.argv[1:])
    if error:
        print(error, file=sys.stderr)
        sys.exit(2)
    cli.run(_main)


if __name__ == "__main__":
    main()
