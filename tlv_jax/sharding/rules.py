"""The one table that maps logical axis names (carried by every parameter as `axes` metadata) onto mesh axes.

Vocabulary of logical names used by the models:
  LLM:        vocab, embed, heads (fused q heads*head_dim), kv_heads (fused kv heads*head_dim), mlp
  vision:     vit_embed, vit_heads (fused), vit_mlp, vit_patch (patch kernel dims), vit_pos (positions)
  connector:  queries (latents), res_heads (fused perceiver inner dim), res_mlp (feed-forward hidden)
  activations: batch, length, frames
Unlisted names (and None) are replicated.

The fused head axes (heads, kv_heads, vit_heads, res_heads) may only be split between whole heads: `fit_rules`
maps a head axis to None when its head count does not divide over its mesh axes (Qwen2.5 has 2 KV heads, so with
tensor=4 its k/v kernels stay whole on the tensor axis while q, o and the MLP still split).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from jax.sharding import PartitionSpec as P

MeshAxes = Optional[str | tuple[str, ...]]
Rules = Sequence[tuple[str, MeshAxes]]

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

HEAD_AXES = ("heads", "kv_heads", "vit_heads", "res_heads")


def mesh_axes(target: MeshAxes) -> tuple[str, ...]:
    """One rule's target as a tuple of mesh axis names (None -> ())."""
    return (target,) if isinstance(target, str) else tuple(target or ())


def logical_to_spec(axes: Sequence[Optional[str]], rules: Rules = DEFAULT_RULES) -> P:
    """PartitionSpec for one tensor; a mesh axis is used at most once per tensor (first dimension wins)."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in axes:
        names = tuple(n for n in mesh_axes(table.get(name) if name is not None else None) if n not in used)
        used.update(names)
        spec.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*spec)


def head_counts(cfg: Any) -> dict[str, int]:
    """Heads behind each fused head axis of a `ModelConfig` (vision, connector, llm)."""
    return {"heads": cfg.llm.num_heads, "kv_heads": cfg.llm.num_kv_heads, "vit_heads": cfg.vision.num_heads,
            "res_heads": cfg.connector.heads}


def fit_rules(mesh_shape: Mapping[str, int], counts: Mapping[str, int],
              rules: Rules = DEFAULT_RULES) -> tuple[tuple[str, MeshAxes], ...]:
    """`rules` with each head axis named in `counts` mapped to None where its heads do not divide over its mesh
    axes, so no device ever holds part of a head."""
    def fits(name: str, target: MeshAxes) -> bool:
        return counts[name] % math.prod(mesh_shape.get(a, 1) for a in mesh_axes(target)) == 0

    return tuple((name, target if name not in counts or fits(name, target) else None) for name, target in rules)


def model_rules(cfg: Any, mesh_shape: Mapping[str, int], rules: Rules = DEFAULT_RULES
                ) -> tuple[tuple[str, MeshAxes], ...]:
    """The rules table fitted to one model's head counts on one mesh (what training and planning use)."""
    return fit_rules(mesh_shape, head_counts(cfg), rules)
