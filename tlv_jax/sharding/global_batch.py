"""Global batches from per-process data: each process loads only the rows that live on its own devices.

With several processes the batch dimension is split over (data, fsdp) across all devices; `process_rows` says
which rows of the global batch this process holds, and `global_batch` turns the process-local numpy rows into one
global `jax.Array` per key (`jax.make_array_from_process_local_data`). On one process both are the identity.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from tlv_jax.sharding.mesh import batch_sharding


def process_rows(mesh: Mesh, global_rows: int) -> slice:
    """The contiguous rows of a `global_rows` batch that live on this process's devices."""
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_rows % split:
        raise ValueError(f"global batch of {global_rows} does not split over data x fsdp = {split} devices")
    index = batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows,))
    blocks = sorted({idx[0].indices(global_rows)[:2] for idx in index.values()})
    if any(a[1] != b[0] for a, b in zip(blocks, blocks[1:])):
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {blocks} on mesh "
                         f"{dict(mesh.shape)}")
    return slice(blocks[0][0], blocks[-1][1])


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh,
                 keys: Optional[Sequence[str]] = None) -> dict[str, jax.Array]:
    """Process-local rows -> global arrays, batch dimension over data x fsdp (`keys`: the ones to keep)."""
    keys = list(local) if keys is None else [k for k in keys if k in local]
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(local[k])), np.asarray(local[k]))
            for k in keys}
