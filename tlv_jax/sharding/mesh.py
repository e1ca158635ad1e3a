"""Device mesh (`data`, `fsdp`, `tensor`) and the shardings of parameters and batches derived from the rules table.

The mesh uses Auto axis types (GSPMD-style propagation): parameters and batches get explicit shardings at the jit
boundary, XLA propagates the rest. Parameters whose logical axes do not divide evenly over their mesh axes, and
tensors smaller than `min_shard_bytes`, are replicated.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tlv_jax.sharding.rules import DEFAULT_RULES, MeshAxes, logical_to_spec

AXES = ("data", "fsdp", "tensor")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices; one size may be -1 (= the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {sizes}: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} available")
    axis_types = (jax.sharding.AxisType.Auto,) * 3
    if devices == list(jax.devices()):
        return jax.make_mesh(tuple(sizes), AXES, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=axis_types)


def spec_for(shape: Sequence[int], axes: Optional[Sequence[Optional[str]]], mesh: Mesh,
             rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES, min_shard_bytes: int = 0,
             itemsize: int = 4) -> P:
    """The PartitionSpec of one tensor: the rules' spec, with any dimension that does not divide replicated."""
    if axes is None or math.prod(shape) * itemsize < min_shard_bytes:
        return P()
    spec = logical_to_spec(axes, rules)
    fixed = []
    for dim, s in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (s,) if isinstance(s, str) else tuple(s or ())
        size = math.prod(mesh.shape[n] for n in names)
        fixed.append(s if size > 1 and dim % size == 0 else None)
    return P(*fixed)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES,
                    min_shard_bytes: int = 0) -> Any:
    """NamedShardings for every variable of an NNX state, read from each variable's `axes` metadata."""
    def one(v: nnx.Variable) -> NamedSharding:
        axes = v.get_metadata().get("axes")
        shape = v.shape
        itemsize = np.dtype(v.dtype).itemsize
        return NamedSharding(mesh, spec_for(shape, axes, mesh, rules, min_shard_bytes, itemsize))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
