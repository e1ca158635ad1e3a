"""The model's compiled passes on host arrays: the original forward (ids with -200 at the video and one array of
preprocessed frames per sample -> logits and loss) and video encoding.

The model itself holds only traced methods; this is where numpy inputs are checked and padded and where those
methods are jitted, once per shape. Generation reuses `encode`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.models.tinyllava import TinyLlavaVideo


class CausalLMOutput(NamedTuple):
    logits: jax.Array
    loss: Optional[jax.Array]


def forward(model: TinyLlavaVideo, input_ids: Any, videos: Any, attention_mask: Any = None, labels: Any = None
            ) -> CausalLMOutput:
    """The original forward: `input_ids` (B, L) with -200 at the video, `videos` one (F, H, W, 3) float array of
    preprocessed frames per sample (F may differ). Logits are cut to the longest spliced sample."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
    placeholders = (ids == model.cfg.image_token_index).sum(1)
    if (placeholders > 1).any():
        raise ValueError(f"sample {int(np.argmax(placeholders > 1))} has {placeholders.max()} video placeholders; "
                         "one video per sample is supported")
    pixels, frames_mask = pad_videos(videos, len(ids), model.cfg.vision.image_size)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask, bool)
    graphdef, state = nnx.split(model)
    frames_mask = None if frames_mask.all() else frames_mask  # no padded frames: the connector's fast path
    logits, loss, real = _forward(graphdef, state, ids, mask, pixels, frames_mask,
                                  None if labels is None else np.asarray(labels))
    return CausalLMOutput(logits[:, : max(int(real.sum(1).max()), 1)], loss)


def encode_video(model: TinyLlavaVideo, frames: Any) -> jax.Array:
    """One video's preprocessed frames (F, H, W, 3) -> its (Q, D) video tokens."""
    frames = jnp.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected one video's frames (F, H, W, 3), got shape {tuple(frames.shape)}")
    graphdef, state = nnx.split(model)
    return encode(graphdef, state, frames[None], None)[0]


def pad_videos(videos: Any, batch: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A list of (F_b, H, W, 3) arrays (or a (B, F, H, W, 3) array) -> zero-padded (B, F_max, H, W, 3) float32 and the
    (B, F_max) frames mask. A None entry is a sample without video."""
    if not isinstance(videos, (list, tuple)):
        videos = list(videos)
    if len(videos) != batch:
        raise ValueError(f"got {len(videos)} videos for {batch} samples (one video per sample)")
    shape = (image_size, image_size, 3)
    arrays = []
    for i, v in enumerate(videos):
        v = np.zeros((0, *shape), np.float32) if v is None else np.asarray(v, np.float32)
        if v.ndim != 4 or v.shape[1:] != shape:
            hint = " (channels-last: transpose (F, 3, H, W) frames)" if v.ndim == 4 and v.shape[1] == 3 else ""
            raise ValueError(f"video of sample {i} has shape {v.shape}, expected (F, {image_size}, {image_size}, 3)"
                             + hint)
        arrays.append(v)
    f_max = max(1, max(len(v) for v in arrays))
    pixels = np.zeros((batch, f_max, *shape), np.float32)
    frames_mask = np.zeros((batch, f_max), bool)
    for i, v in enumerate(arrays):
        pixels[i, : len(v)] = v
        frames_mask[i, : len(v)] = True
    return pixels, frames_mask


@functools.partial(jax.jit, static_argnames=("graphdef",))
def encode(graphdef: Any, state: Any, pixels: jax.Array, frames_mask: Optional[jax.Array]) -> jax.Array:
    """`encode_videos` compiled: pixels (B, F, H, W, 3) with the valid frames first (None: all valid) -> (B, Q, D)."""
    return nnx.merge(graphdef, state).encode_videos(pixels, frames_mask)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef: Any, state: Any, ids: jax.Array, mask: jax.Array, pixels: jax.Array,
             frames_mask: Optional[jax.Array], labels: Optional[jax.Array]
             ) -> tuple[jax.Array, Optional[jax.Array], jax.Array]:
    logits, loss, mm = nnx.merge(graphdef, state).logits_and_loss(ids, mask, pixels, frames_mask, labels)
    return logits, loss, mm.mask
