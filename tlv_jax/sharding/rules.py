"""The one table that maps logical axis names (carried by every parameter as `axes` metadata) onto mesh axes.

Vocabulary of logical names used by the models:
  LLM:        vocab, embed, heads (fused q heads*head_dim), kv_heads (fused kv heads*head_dim), mlp
  vision:     vit_embed, vit_heads (fused), vit_mlp, vit_patch (patch kernel dims), vit_pos (positions)
  connector:  queries (latents), res_heads (fused perceiver inner dim), res_mlp (feed-forward hidden)
  activations: batch, length, frames
Unlisted names (and None) are replicated.
"""

from __future__ import annotations

from typing import Optional, Sequence

from jax.sharding import PartitionSpec as P

MeshAxes = Optional[str | tuple[str, ...]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vit_embed", "fsdp"),
    ("vit_heads", "tensor"),
    ("vit_mlp", "tensor"),
    ("res_heads", "tensor"),
    ("res_mlp", "tensor"),
    ("queries", None),
    ("length", None),
    ("frames", None),
    ("vit_patch", None),
    ("vit_pos", None),
)


def logical_to_spec(axes: Sequence[Optional[str]], rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES) -> P:
    """PartitionSpec for one tensor; a mesh axis is used at most once per tensor (first dimension wins)."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in axes:
        target = table.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n not in used)
        used.update(names)
        spec.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*spec)
