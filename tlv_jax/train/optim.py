"""The optimizer of the original recipes: AdamW after global-norm clipping, linear warm-up then cosine to zero, and
per-component freezing.

Freezing is structural, not a mask: the model is split into trainable parameters (fp32 masters, the only ones the
optimizer sees, so only they carry Adam moments) and frozen parameters (stored in the compute dtype, never updated).
The schedule is HF Trainer's `get_cosine_schedule_with_warmup` (num_cycles 0.5): warm-up steps =
ceil(warmup_ratio * total), the first update uses lr 0, cosine from the peak to 0 at `total_steps`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

COMPONENTS = ("vision", "connector", "llm")
TUNE_TYPES = ("frozen", "full")
SCHEDULES = ("cosine", "constant")

Schedule = Callable[[jax.Array], jax.Array]


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(warmup_ratio * total_steps)


def make_schedule(lr: float, total_steps: int, warmup_ratio: float, kind: str = "cosine") -> Schedule:
    """lr at optimizer step s (0-based): s/warmup * lr during warm-up, then cosine (or constant) to the end."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warm = warmup_steps(total_steps, warmup_ratio)

    def schedule(step: jax.Array) -> jax.Array:
        s = jnp.asarray(step, jnp.float32)
        ramp = s / max(warm, 1)
        progress = (s - warm) / max(total_steps - warm, 1)
        after = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0))) if kind == "cosine" else 1.0
        return lr * jnp.where(s < warm, ramp, after)

    return schedule


def _decays(path: tuple[Any, ...], _: Any) -> bool:
    """Weight decay on matrices and tables only (HF's rule: no decay on biases and norm parameters)."""
    return path[-1] not in ("bias", "scale")


def make_optimizer(schedule: Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, clip: float = 1.0) -> optax.GradientTransformation:
    """Clip by global norm (skipped when clip <= 0), then AdamW with the schedule."""

    def decay_mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda p, x: _decays(tuple(_key_name(k) for k in p if _key_name(k) != "value"), x), params)

    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw


def _key_name(k: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def check_freeze(freeze: Mapping[str, str]) -> dict[str, str]:
    """Validates `{component: 'frozen'|'full'}` for every component, with an error naming the bad entry. (Whether
    anything trains at all, adapters included, is `tlv_jax.train.lora_state.check_freeze`'s question.)"""
    unknown = sorted(set(freeze) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"freeze: unknown component {unknown[0]!r}; valid components: {', '.join(COMPONENTS)}")
    out = {c: freeze.get(c, "frozen") for c in COMPONENTS}
    for c, t in out.items():
        if t not in TUNE_TYPES:
            raise ValueError(f"freeze.{c}={t!r}; expected one of {TUNE_TYPES}")
    return out


def trainable_filter(freeze: Mapping[str, str]) -> Callable[[tuple[Any, ...], Any], bool]:
    """An NNX filter selecting the parameters of the components marked 'full' (paths start with the component)."""
    trained = {c for c, t in check_freeze(freeze).items() if t == "full"}

    def is_trainable(path: tuple[Any, ...], value: Any) -> bool:
        return isinstance(value, nnx.Param) and bool(path) and path[0] in trained

    return is_trainable


def cast_floating(state: Any, dtype: Any) -> Any:
    """Frozen parameters in the compute dtype: half the memory, and the matmuls read them as they are."""
    def cast(x: Any) -> Any:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):  # an abstract model (resuming): only the dtype changes
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(cast, state)
