"""Multi-host start-up: `jax.distributed.initialize` (auto-detected on Cloud TPU and SLURM, explicit coordinator
flags otherwise), per-process log files, and a check that every process runs the same thing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from tlv_jax.paths import is_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedConfig:
    """Empty coordinator => single process unless a TPU pod or SLURM job is detected."""

    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: Optional[tuple[int, ...]] = None
    initialization_timeout_s: int = 300


def detected_cluster() -> Optional[str]:
    """Names the cluster environment JAX would auto-detect, or None for a plain single process."""
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID") or jax_detects_tpu_cluster():
        return "tpu"
    return None


def jax_detects_tpu_cluster() -> bool:
    """Whether JAX's own Cloud TPU cluster detection finds this machine part of one. A TPU VM (v4, v5e, v5p, v6e)
    sets none of the variables above: JAX asks the GCE metadata server instead, once `import jax` found libtpu.
    The registry is private to JAX, so a JAX without it counts as no cluster."""
    try:
        from jax._src import clusters

        envs = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        return False
    return any("Tpu" in env.__name__ and not getattr(env, "opt_in_only_method", False) and env.is_env_present()
               for env in envs)


def initialize(cfg: DistributedConfig) -> None:
    """Initialises the JAX distributed runtime when more than one process takes part (idempotent per process)."""
    if cfg.coordinator_address:
        if cfg.num_processes < 1 or not 0 <= cfg.process_id < cfg.num_processes:
            raise ValueError(f"bad distributed config: process_id={cfg.process_id} num_processes={cfg.num_processes}")
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
            process_id=cfg.process_id,
            local_device_ids=list(cfg.local_device_ids) if cfg.local_device_ids is not None else None,
            initialization_timeout=cfg.initialization_timeout_s)
    elif detected_cluster():
        jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout_s)


def per_process_log(workdir: str | Path) -> Path:
    """Adds a log file `workdir/logs/process_<i>.log` so a hang on one host can be read after the fact (a remote
    workdir such as gs://... logs to ./logs on each host instead)."""
    base = Path("logs") if is_url(workdir) else Path(workdir) / "logs"
    path = base / f"process_{jax.process_index()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("tlv_jax").setLevel(logging.INFO)  # our progress lines reach the file (stderr keeps its level)
    return path


def fingerprint(text: str) -> int:
    """A 31-bit stable hash (fits int32 on every backend)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def assert_same_across_processes(**values: int) -> None:
    """Raises a clear error naming the value and each process's view when processes disagree (config hash, step)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    names = sorted(values)
    local = np.asarray([values[n] for n in names], np.int64).astype(np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), len(names))
    for j, name in enumerate(names):
        column = everyone[:, j]
        if not np.all(column == column[0]):
            views = ", ".join(f"process {i}: {int(v)}" for i, v in enumerate(column))
            raise RuntimeError(f"processes disagree on {name}: {views}")


def config_fingerprint(config: Any) -> int:
    """The fingerprint of a run's config (an ml_collections ConfigDict, or its JSON text), key order ignored."""
    text = config if isinstance(config, str) else config.to_json_best_effort(sort_keys=True)
    return fingerprint(text)


def startup(cfg: DistributedConfig, workdir: str | Path, config: Any) -> int:
    """Multi-host start of a run: joins the other processes, logs to `workdir/logs/process_<i>.log`, and fails
    with a clear error unless every process runs the same config. Returns the config fingerprint (check the
    resumed step with `assert_same_across_processes(config_hash=..., step=...)` once it is known)."""
    initialize(cfg)
    if jax.process_count() > 1:
        per_process_log(workdir)
    log.info("process %d/%d up: %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    config_hash = config_fingerprint(config)
    try:
        assert_same_across_processes(config_hash=config_hash)
    except RuntimeError as e:
        log.error("%s", e)
        raise
    log.info("config fingerprint %d agreed by %d process(es)", config_hash, jax.process_count())
    return config_hash
