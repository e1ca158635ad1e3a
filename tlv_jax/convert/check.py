"""The one check every load and conversion path runs before it touches anything: are the tensors found exactly the
tensors expected, each with the expected shape? The first problem becomes one `CheckpointError` line naming the file
and the tensor, so a bad checkpoint fails fast and leaves the destination (model or directory) as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Hashable, Iterable, Mapping, Optional

import numpy as np

from tlv_jax.convert.safetensors_io import CheckpointError

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Expected:
    """One tensor a checkpoint must hold: its shape, and (for messages) what it is for."""

    shape: Shape
    role: str = ""  # e.g. the parameter an HF tensor fills ('llm.final_norm.scale')


def check_tensors(found: Iterable[Hashable], shape_of: Callable[[Hashable], Shape],
                  expected: Mapping[Hashable, Expected], where: str, *, noun: str = "tensor",
                  name: Callable[[Hashable], str] = repr, ignore_unexpected: tuple[str, ...] = (),
                  dtype_of: Optional[Callable[[Hashable], np.dtype]] = None) -> None:
    """Raises one CheckpointError line for the first missing, unexpected or mis-shaped tensor (and, with `dtype_of`,
    the first that is not floating point). `found` are the keys present, `shape_of(key)` their shapes; `name(key)`
    spells a key in messages; keys whose name starts with one of `ignore_unexpected` may be present in excess."""
    present = set(found)
    for key, want in expected.items():
        if key not in present:
            role = f" (for {want.role})" if want.role else ""
            raise CheckpointError(f"{where}: missing {noun} {name(key)}{role}")
    extra = sorted(name(k) for k in present - set(expected) if not str(k).startswith(ignore_unexpected))
    if extra:
        raise CheckpointError(f"{where}: unexpected {noun} {extra[0]}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for key, want in expected.items():
        got = tuple(shape_of(key))
        if got != tuple(want.shape):
            raise CheckpointError(f"{where}: {noun} {name(key)} has shape {list(got)}, expected {list(want.shape)}")
        if dtype_of is not None:
            dtype = np.dtype(dtype_of(key))
            if dtype.kind != "f" and dtype.name != "bfloat16":
                raise CheckpointError(f"{where}: {noun} {name(key)} has dtype {dtype}, expected a float type")
