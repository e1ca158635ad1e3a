"""Which keys each query may see, kept as the pieces fused kernels take (a causal flag, per-sample query offsets,
key validity, segment ids) rather than as a dense (T, S) matrix, so that every backend reads the same value: splash
and cuDNN map the pieces onto their own arguments, the written-out backends call `dense`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Query i of sample b may see key j iff every piece that is set allows it:

    - `causal`: j <= offsets[b] + i. Without `offsets` query i sits at key slot i (a prompt or training sequence);
      a KV-cache step passes the slots already written, so its first query sits at `offsets[b]`.
    - `key_valid[b, j]` (B, S) bool: padding keys are False.
    - `q_segments[b, i] == kv_segments[b, j]`, (B, T) and (B, S) ints: several sequences packed into one row only
      see themselves. Both or neither.

    Nothing set: every query sees every key. A query that sees no key at all (a padding row) gets an unspecified
    finite output that callers must ignore; backends differ there and only there.
    """

    causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
    offsets: Optional[jax.Array] = None
    key_valid: Optional[jax.Array] = None
    q_segments: Optional[jax.Array] = None
    kv_segments: Optional[jax.Array] = None

    def check(self, b: int, t: int, s: int) -> None:
        """Raises ValueError unless the pieces fit queries (B, T) and keys (B, S)."""
        if (self.q_segments is None) != (self.kv_segments is None):
            raise ValueError("q_segments and kv_segments go together: pass both or neither")
        if self.offsets is not None and not self.causal:
            raise ValueError("offsets place queries on a causal mask; they mean nothing with causal=False")
        expected = {"offsets": (b,), "key_valid": (b, s), "q_segments": (b, t), "kv_segments": (b, s)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"attention mask {name} has shape {tuple(value.shape)}, expected {shape}")

    def dense(self, t: int, s: int) -> Optional[jax.Array]:
        """(B or 1, T, S) bool, True where query i may see key j; None when every key is visible."""
        parts = []
        if self.causal:
            q_pos = jnp.arange(t)[None, :] + (0 if self.offsets is None else self.offsets[:, None])
            parts.append(jnp.arange(s)[None, None, :] <= q_pos[:, :, None])
        if self.key_valid is not None:
            parts.append(self.key_valid.astype(bool)[:, None, :])
        if self.q_segments is not None:
            parts.append(self.q_segments[:, :, None] == self.kv_segments[:, None, :])
        return functools.reduce(jnp.logical_and, parts) if parts else None
