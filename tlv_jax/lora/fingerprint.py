"""What ties adapters to the base they were trained on: a checkpoint of a LoRA run holds only the adapters, so a
resume (or an export) rebuilds the base from the run's config and must prove it is the same one before any step.

The fingerprint is the LoRA settings plus, per base parameter, its shape and a digest of 64 elements spread over it
(a different base, a retrained or re-converted one, differs in nearly every tensor, and the digest costs a few small
reads however large the model). A mismatch names the first setting or parameter that differs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SAMPLES = 64


class BaseMismatchError(ValueError):
    """Adapters restored onto a base (or with LoRA settings) other than the ones they were trained with."""


@jax.jit
def _samples(arrays: list[jax.Array]) -> list[jax.Array]:
    """The elements each digest reads, all parameters in one compiled program: op by op, each parameter would be
    copied whole by `ravel` and cost its own small executables (the mid-size bench model: 55 MiB of RSS)."""
    return [jnp.ravel(x)[::max(1, x.size // SAMPLES)][:SAMPLES] for x in arrays]


def _digest(sample: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(sample, np.float32).tobytes()).hexdigest()[:16]


def fingerprint(base: nnx.Module, lora: dict[str, Any], source: str) -> dict[str, Any]:
    """The fingerprint of `base` (the model before adapters are added) adapted with the settings `lora`; `source`
    (where the base came from) is only reported."""
    flat = nnx.to_flat_state(nnx.state(base, nnx.Param))
    samples = jax.device_get(_samples([var[...] for _, var in flat]))
    params = {".".join(str(p) for p in path): [list(var.shape), _digest(sample)]
              for (path, var), sample in zip(flat, samples)}
    return {"source": source, "lora": lora, "params": params}


def check(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Raises `BaseMismatchError` (one line, naming the first difference) unless `current` matches `saved`."""
    for key in sorted(set(saved["lora"]) | set(current["lora"])):
        if saved["lora"].get(key) != current["lora"].get(key):
            raise BaseMismatchError(f"{where}: adapters trained with lora.{key}={saved['lora'].get(key)!r}, this run "
                                    f"has {current['lora'].get(key)!r}")
    mine, theirs = current["params"], saved["params"]
    missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
    if missing or extra:
        what = f"has no {missing[0]}" if missing else f"has an extra {extra[0]}"
        raise BaseMismatchError(f"{where}: adapters trained on another base ({saved['source']}): this run's base "
                                f"({current['source']}) {what}")
    for name in sorted(theirs):
        if theirs[name] != mine[name]:
            (s_shape, _), (c_shape, _) = theirs[name], mine[name]
            how = f"shape {s_shape} vs {c_shape}" if s_shape != c_shape else "different values"
            raise BaseMismatchError(f"{where}: adapters trained on another base: {name} differs ({how}) between "
                                    f"the checkpoint's base ({saved['source']}) and this run's ({current['source']})")
