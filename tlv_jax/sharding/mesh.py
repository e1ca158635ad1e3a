"""Device mesh (`data`, `fsdp`, `tensor`) and the shardings of parameters and batches derived from the rules table.

The mesh uses Auto axis types (GSPMD-style propagation): parameters and batches get explicit shardings at the jit
boundary, XLA propagates the rest. Parameters whose logical axes do not divide evenly over their mesh axes, and
tensors smaller than `min_shard_bytes`, are replicated (training and planning use `SMALL_TENSOR_BYTES`: sharding a
norm scale or a bias saves nothing and costs a collective).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tlv_jax.sharding.rules import DEFAULT_RULES, Rules, logical_to_spec, mesh_axes

AXES = ("data", "fsdp", "tensor")
SMALL_TENSOR_BYTES = 1 << 20  # below this a tensor is replicated: norms, biases, tiny tables
AUTO = (jax.sharding.AxisType.Auto,) * len(AXES)


def _sizes(data: int, fsdp: int, tensor: int, n: int) -> tuple[int, int, int]:
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"mesh {sizes}: {n} devices do not divide by {known}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {math.prod(sizes)} devices, "
                         f"{n} available")
    return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Optional[Sequence[Any]] = None,
              dcn_data: int = 1) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices; one size may be -1 (= the rest).

    `dcn_data` > 1 (multi-slice TPU, or several hosts without a fast interconnect) splits the data axis into that
    many groups of devices that share a slice (TPU) or a process (elsewhere), so the slow network between groups
    only carries the data-parallel gradient reduction, while fsdp and tensor stay inside a group."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = _sizes(data, fsdp, tensor, len(devices))
    if dcn_data > 1:
        if sizes[0] % dcn_data:
            raise ValueError(f"mesh data={sizes[0]} does not split into dcn_data={dcn_data} groups")
        slices = {getattr(d, "slice_index", 0) for d in devices}
        by_process = len(slices) == 1  # one slice (or no slices at all): the processes are the groups
        groups = {d.process_index for d in devices} if by_process else slices
        if len(groups) != dcn_data:
            raise ValueError(f"dcn_data={dcn_data} but the devices span {len(groups)} "
                             f"{'process' if by_process else 'slice'}(es)")
        grid = mesh_utils.create_hybrid_device_mesh((sizes[0] // dcn_data, sizes[1], sizes[2]), (dcn_data, 1, 1),
                                                    devices, process_is_granule=by_process)
        return Mesh(grid, AXES, axis_types=AUTO)
    if devices == list(jax.devices()):
        return jax.make_mesh(sizes, AXES, axis_types=AUTO)
    return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=AUTO)


def abstract_mesh(data: int, fsdp: int, tensor: int, devices: int) -> AbstractMesh:
    """The same mesh without devices: shardings and per-device shapes for a machine this one is not."""
    return AbstractMesh(_sizes(data, fsdp, tensor, devices), AXES, axis_types=AUTO)


def spec_for(shape: Sequence[int], axes: Optional[Sequence[Optional[str]]], mesh: Mesh | AbstractMesh,
             rules: Rules = DEFAULT_RULES, min_shard_bytes: int = 0, itemsize: int = 4) -> P:
    """The PartitionSpec of one tensor: the rules' spec, with any dimension that does not divide replicated."""
    if axes is None or math.prod(shape) * itemsize < min_shard_bytes:
        return P()
    spec = logical_to_spec(axes, rules)
    fixed = []
    for dim, s in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        size = math.prod(mesh.shape[n] for n in mesh_axes(s))
        fixed.append(s if size > 1 and dim % size == 0 else None)
    return P(*fixed)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(tree: Any, mesh: Mesh | AbstractMesh, rules: Rules = DEFAULT_RULES,
                   min_shard_bytes: int = 0) -> Any:
    """NamedShardings for a pytree holding NNX variables (sharded by their `axes` metadata) and plain arrays
    (replicated). Optimizer moments are built by mapping over the parameters, so they carry the same `axes` and
    shard alike."""
    def one(x: Any) -> NamedSharding:
        if _is_variable(x):
            spec = spec_for(x.shape, x.get_metadata().get("axes"), mesh, rules, min_shard_bytes,
                            np.dtype(x.dtype).itemsize)
            return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def path_name(path: Sequence[Any]) -> str:
    """'params.llm.layers.0.attn.q.kernel' from a pytree key path (NNX `value` wrappers dropped)."""
    parts = []
    for k in path:
        name = next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)), k)
        if name != "value":
            parts.append(str(name))
    return ".".join(parts)


def spec_table(tree: Any, shardings: Any) -> dict[str, str]:
    """{path: 'shape dtype PartitionSpec'} for every array of `tree` (concrete or abstract) and its shardings:
    a readable, diffable record of the layout (the golden test compares it)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    if len(leaves) != len(specs):
        raise ValueError(f"{len(leaves)} arrays but {len(specs)} shardings")
    return {path_name(p): f"{tuple(x.shape)} {np.dtype(x.dtype).name} {s.spec}" for (p, x), s in zip(leaves, specs)}


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes of `tree` on each device (every sharding here is even, so all devices hold the same amount)."""
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    return sum(math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, specs))


def place(tree: Any, shardings: Any) -> Any:
    """Host (or single-device) arrays -> global arrays on `shardings`, each process copying only the slices its own
    devices hold (the same `tree` on every process; works where a plain `device_put` cannot reach other hosts)."""
    leaves, treedef = jax.tree.flatten(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    if len(leaves) != len(specs):
        raise ValueError(f"{len(leaves)} arrays but {len(specs)} shardings")
    host = [np.asarray(x) for x in leaves]
    return treedef.unflatten([jax.make_array_from_callback(x.shape, s, lambda i, x=x: x[i])
                              for x, s in zip(host, specs)])


def batch_sharding(mesh: Mesh | AbstractMesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh | AbstractMesh) -> NamedSharding:
    return NamedSharding(mesh, P())
