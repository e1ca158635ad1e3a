"""Applies a conversion table to an NNX model: load HF tensors into it, or stream its tensors out in HF form.

Loading checks the whole key set and every shape before touching the model, so a bad checkpoint fails with one
line naming the key and leaves the model as it was.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.convert.check import Expected, check_tensors
from tlv_jax.convert.rules import Entry
from tlv_jax.convert.safetensors_io import CheckpointError, TensorReader


def get_variable(model: nnx.Module, path: tuple[str | int, ...]) -> nnx.Variable:
    node: Any = model
    for p in path:
        try:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        except (AttributeError, IndexError, KeyError) as e:
            raise CheckpointError(f"model has no parameter {'.'.join(map(str, path))}") from e
    if not isinstance(node, nnx.Variable):
        raise CheckpointError(f"{'.'.join(map(str, path))} is not a parameter")
    return node


def expected_tensors(model: nnx.Module, entries: list[Entry]) -> dict[str, Expected]:
    """The HF tensor each entry needs, shaped from the model's parameter (concrete or from `nnx.eval_shape`)."""
    return {e.hf: Expected(e.transform.hf_shape(tuple(get_variable(model, e.path).shape)), e.path_str)
            for e in entries}


def load_into(model: nnx.Module, reader: TensorReader, entries: list[Entry], source: str,
              ignore_unexpected: tuple[str, ...] = (), sharding_for: Optional[Any] = None) -> None:
    """Validates, then copies every tensor into the model (converted to each parameter's dtype)."""
    check_tensors(reader.keys(), reader.shape, expected_tensors(model, entries), source,
                  ignore_unexpected=ignore_unexpected)
    for e in entries:
        var = get_variable(model, e.path)
        arr = e.transform.to_ours(reader.get(e.hf)).astype(var.dtype)
        value = jnp.asarray(arr) if sharding_for is None else jax.device_put(arr, sharding_for(e.path))
        var.set_value(value)  # full replace: also works on an abstract (eval_shape) model


def export_tensors(model: nnx.Module, entries: list[Entry], dtype: Optional[Any] = None
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (hf_key, array in HF layout), one tensor at a time; `dtype` casts (e.g. back to bfloat16)."""
    for e in entries:
        arr = np.asarray(jax.device_get(get_variable(model, e.path)[...]))
        if dtype is not None:
            arr = arr.astype(dtype)
        yield e.hf, e.transform.to_hf(arr)
