"""Command-line flags of a multi-process run (absl). Only absl is imported here, so a CLI that defines them still
answers `--help` at once; `distributed.DistributedConfig(**values())` turns them into the start-up config."""

from __future__ import annotations

from typing import Any, Callable

from absl import flags


def define_distributed_flags() -> Callable[[], dict[str, Any]]:
    """Defines the flags (explicit coordinator; on Cloud TPU and SLURM everything is auto-detected) and returns a
    function giving their values as `DistributedConfig` fields once the flags are parsed."""
    holders = {
        "coordinator_address": flags.DEFINE_string(
            "coordinator_address", "", "host:port of process 0, for multi-process runs JAX cannot auto-detect "
            "(Cloud TPU and SLURM need nothing)"),
        "num_processes": flags.DEFINE_integer("num_processes", 1, "processes taking part (with --coordinator_address)"),
        "process_id": flags.DEFINE_integer("process_id", 0, "this process's index (with --coordinator_address)"),
        "initialization_timeout_s": flags.DEFINE_integer(
            "distributed_timeout_s", 300, "seconds to wait for every process to join before failing"),
    }
    return lambda: {name: holder.value for name, holder in holders.items()}
