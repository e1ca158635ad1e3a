"""The vocabulary of HF key <-> parameter path tables: rules, their transforms and their expansion per layer.

A table is a list of `Rule(hf_key, path, transform)`; `{i}` in both strings is a layer index. Paths are dotted
attribute paths into our NNX modules (`layers.3.attn.q.kernel`). `Transform` says how a PyTorch tensor becomes
our array (`to_ours`) and back (`to_hf`); every transform is a pure permutation, so a round trip is bit-exact.
Each family and connector writes its own table with these pieces (`tlv_jax.models.families`, `.connectors`).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


def transpose2d(x: np.ndarray, tile: int = 256) -> np.ndarray:
    """`x.T` as a contiguous array, copied tile by tile through an unsigned view: 2-3x faster than numpy's strided
    copy of a large matrix (bf16 especially), which matters when converting billions of weights."""
    if x.ndim != 2 or x.size < tile * tile or x.dtype.itemsize not in (1, 2, 4, 8):
        return np.ascontiguousarray(x.T)
    src = x.view(f"u{x.dtype.itemsize}")
    out = np.empty(x.shape[::-1], src.dtype)
    for i in range(0, x.shape[0], tile):
        for j in range(0, x.shape[1], tile):
            out[j:j + tile, i:i + tile] = src[i:i + tile, j:j + tile].T
    return out.view(x.dtype)


class Transform(enum.Enum):
    IDENTITY = "identity"
    LINEAR = "linear"  # torch Linear weight (out, in) <-> kernel (in, out)
    CONV = "conv"  # torch Conv2d weight (O, I, kh, kw) <-> kernel (kh, kw, I, O)

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        if self is Transform.LINEAR:
            return transpose2d(x)
        if self is Transform.CONV:
            return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
        return x

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self is Transform.LINEAR:
            return transpose2d(x)
        if self is Transform.CONV:
            return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
        return x

    def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self is Transform.LINEAR:
            return tuple(reversed(our_shape))
        if self is Transform.CONV:
            kh, kw, i, o = our_shape
            return (o, i, kh, kw)
        return tuple(our_shape)


I, L, C = Transform.IDENTITY, Transform.LINEAR, Transform.CONV


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    path: str
    transform: Transform = Transform.IDENTITY


@dataclasses.dataclass(frozen=True)
class Entry:
    """One concrete tensor: HF key, our path (tuple of str/int), transform."""

    hf: str
    path: tuple[str | int, ...]
    transform: Transform

    @property
    def path_str(self) -> str:
        return ".".join(str(p) for p in self.path)


def _split_path(path: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def expand(rules: list[Rule], num_layers: int, hf_prefix: str = "", path_prefix: str = "") -> list[Entry]:
    """Instantiates `{i}` for every layer and prepends the prefixes (e.g. 'language_model.' / 'llm.')."""
    out = []
    for r in rules:
        indices = range(num_layers) if "{i}" in r.hf else [None]
        for i in indices:
            hf = r.hf if i is None else r.hf.replace("{i}", str(i))
            path = r.path if i is None else r.path.replace("{i}", str(i))
            out.append(Entry(hf_prefix + hf, _split_path(path_prefix + path), r.transform))
    return out


def dense(hf: str, ours: str, bias: bool = True) -> list[Rule]:
    """A torch Linear (`weight` (out, in), optional `bias`) <-> our Dense (`kernel` (in, out), `bias`)."""
    rules = [Rule(f"{hf}.weight", f"{ours}.kernel", L)]
    if bias:
        rules.append(Rule(f"{hf}.bias", f"{ours}.bias"))
    return rules


def layernorm(hf: str, ours: str) -> list[Rule]:
    """A torch LayerNorm (`weight`, `bias`) <-> ours (`scale`, `bias`)."""
    return [Rule(f"{hf}.weight", f"{ours}.scale"), Rule(f"{hf}.bias", f"{ours}.bias")]
