"""The video connectors of TinyLLaVA-Video in PyTorch, with the original's parameter names (`connector._connector.*`).

- `groupresampler`: the video's tokens in `group` contiguous chunks (the first `T % group` one token longer), each
  read by the same `num_queries / group` latents; the chunks' outputs are concatenated and get a sinusoidal
  position code.
- `naiveresampler` (legacy `resamplerwithpe`): the position code on the projected input, `num_queries` latents over
  the whole video.
- `mlpNx_gelu`: TinyLLaVA_Factory's projector, one output token per vision token.

Shipped inside every PyTorch export and loaded with `trust_remote_code=True`: imports torch and numpy only.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn


def position_code(length: int, dim: int) -> torch.Tensor:
    """The original's sinusoid (sin on even, cos on odd features), stored in float16 as the original stores it.
    Angles are formed in float32 and evaluated in float64, which reproduces the original's table bit for bit."""
    freq = np.exp((np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim)).astype(np.float64))
    angle = (np.arange(length, dtype=np.float32)[:, None] * freq.astype(np.float32)[None, :]).astype(np.float64)
    table = np.stack([np.sin(angle), np.cos(angle)], axis=-1).reshape(length, dim)
    return torch.from_numpy(table.astype(np.float32).astype(np.float16))


class PerceiverAttention(nn.Module):
    """Latents attend to [norm(media); norm(latents)] with 8 heads of 64; returns the update."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)  # keys first, then values
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.norm_latents(latents)
        keys, values = self.to_kv(torch.cat([self.norm_media(media), latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (self.to_q(latents), keys, values))
        weights = (q * self.scale @ k.transpose(-1, -2)).softmax(dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mult * dim, bias=False), nn.GELU(),
                         nn.Linear(mult * dim, dim, bias=False))


class Resampler(nn.Module):
    """Projection to the LLM width, learned latents through pre-norm attention + feed-forward layers, final norm."""

    def __init__(self, vision_dim: int, dim: int, num_latents: int, depth: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.linear = nn.Linear(vision_dim, dim)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim), feed_forward(dim)]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def perceive(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(media.shape[0], -1, -1)
        for attention, ff in self.layers:
            latents = attention(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class GroupResampler(Resampler):
    def __init__(self, vision_dim: int, dim: int, num_queries: int, depth: int, group: int):
        super().__init__(vision_dim, dim, num_queries // group, depth)
        self.group = group

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(1, T, vision_dim) -> (1, num_queries, dim)."""
        x = self.linear(features)
        if x.shape[1] % self.group == 0:  # equal chunks (e.g. one frame each): one pass over all of them
            out = self.perceive(x.reshape(self.group, -1, x.shape[-1])).reshape(1, -1, x.shape[-1])
        else:  # chunk sizes [a+1]*r + [a]*(G-r)
            out = torch.cat([self.perceive(chunk) for chunk in torch.tensor_split(x, self.group, dim=1)], dim=1)
        return out + position_code(out.shape[1], out.shape[2]).to(out)


class NaiveResampler(Resampler):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(1, T, vision_dim) -> (1, num_queries, dim)."""
        x = self.linear(features)
        return self.perceive(x + position_code(x.shape[1], x.shape[2]).to(x))


def build_connector(connector_type: str, vision_dim: int, dim: int, num_queries: int, depth: int,
                    group: int) -> nn.Module:
    """The module the original's `connector_type` names."""
    name = (connector_type or "").lower()
    if "groupresampler" in name:
        return GroupResampler(vision_dim, dim, num_queries, depth, group)
    if "naiveresampler" in name or "resamplerwithpe" in name:
        return NaiveResampler(vision_dim, dim, num_queries, depth)
    mlp = re.match(r"^mlp(\d+)x_gelu$", name)
    if mlp:
        layers: list[nn.Module] = [nn.Linear(vision_dim, dim)]
        for _ in range(int(mlp.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(dim, dim)]
        return nn.Sequential(*layers)
    raise ValueError(f"unsupported connector_type {connector_type!r} (expected groupresampler, naiveresampler, "
                     "resamplerwithpe or mlpNx_gelu)")
