"""Greedy answers for several videos' questions in one batch, data-parallel over this process's devices.

The parameters are replicated over a one-axis mesh of the local devices and every batch (videos for the vision tower,
questions for prefill and decode) is split along that axis, so jit runs each device's share in parallel. Processes
never talk to each other here: a multi-host evaluation gives each process its own videos (`shards.mine`).

Shapes are padded to a few buckets so a handful of compilations serve a whole benchmark: the video count and the
question count to powers of two (at least one per device), frames and prompt lengths to the generator's buckets.
Padding rows repeat the last real row, so they compute something valid and are dropped afterwards.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from flax import nnx

from tlv_jax.data.preprocess import siglip_preprocess
from tlv_jax.generate import _decode_all, _prefill, Generator, sample
from tlv_jax.inference import encode


def padded_size(n: int, multiple: int) -> int:
    """The smallest power of two >= n that is also a multiple of `multiple` (the device count)."""
    size = 1 << max(n - 1, 0).bit_length()
    return -(-size // multiple) * multiple


def pad_rows(rows: Sequence[Any], size: int) -> list[Any]:
    """`rows` extended to `size` by repeating the last one."""
    return list(rows) + [rows[-1]] * (size - len(rows))


class BatchedAnswerer:
    """The evaluation's answerer over a `Generator`: greedy, EOS the only stop, text as the original's
    `batch_decode(..., skip_special_tokens=True)` gives it (not stripped).

    `prepare` (frames -> model pixels) is thread-safe and meant for the reader pool; `answer_videos` packs the
    questions of consecutive videos into batches of at most `max_batch` questions.
    """

    def __init__(self, generator: Generator, max_batch: int = 8, devices: Optional[Sequence[jax.Device]] = None):
        self.generator = generator
        self.devices = list(devices or jax.local_devices())
        mesh = Mesh(np.array(self.devices), ("data",))
        self.split = NamedSharding(mesh, PartitionSpec("data"))
        self.graphdef, state = nnx.split(generator.model)
        self.state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        self.max_batch = padded_size(max(max_batch, 1), len(self.devices))

    # -- the Answerer protocol --

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """Decoded uint8 frames (F, H, W, 3) -> the model's float32 pixels (F, S, S, 3)."""
        return siglip_preprocess(frames, self.generator.model.cfg.vision.image_size)

    def answer(self, frames: np.ndarray, prompts: list[str], max_new_tokens: int) -> list[str]:
        return self.answer_videos([self.prepare(frames)], [prompts], max_new_tokens)[0]

    def answer_videos(self, pixels: Sequence[np.ndarray], prompts: Sequence[Sequence[str]], max_new_tokens: int
                      ) -> list[list[str]]:
        """Prepared videos and each one's prompts -> each one's answers, batched across videos."""
        flat = [(v, p) for v, ps in enumerate(prompts) for p in ps]
        texts: list[str] = []
        for start in range(0, len(flat), self.max_batch):
            chunk = flat[start:start + self.max_batch]
            used = sorted({v for v, _ in chunk})
            where = {v: i for i, v in enumerate(used)}
            texts += self._batch([pixels[v] for v in used], [where[v] for v, _ in chunk], [p for _, p in chunk],
                                 max_new_tokens)
        out, at = [], 0
        for ps in prompts:
            out.append(texts[at:at + len(ps)])
            at += len(ps)
        return out

    # -- one batch --

    def _batch(self, pixels: list[np.ndarray], video_of: list[int], prompts: list[str], max_new_tokens: int
               ) -> list[str]:
        n_dev = len(self.devices)
        tokens, counts = self._encode(pad_rows(pixels, padded_size(len(pixels), n_dev)))
        rows = padded_size(len(prompts), n_dev)
        index = jax.device_put(np.asarray(pad_rows(video_of, rows), np.int32), self.split)
        tokens = jax.device_put(tokens[index], self.split)
        counts = None if counts is None else jax.device_put(counts[index], self.split)
        ids, mask = self.generator.prompt_ids(pad_rows(prompts, rows))
        ids, mask = jax.device_put((ids, mask), self.split)
        logits, cache = _prefill(self.graphdef, self.state, ids, mask, tokens, counts, max_new_tokens)
        key, temperature, top_p = jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0)
        first = sample(logits, jax.random.fold_in(key, 0), temperature, top_p)
        out = _decode_all(self.graphdef, self.state, first, cache, key, jnp.int32(self.generator.eos), temperature,
                          top_p, max_new_tokens)
        return [self._decode(row) for row in np.asarray(out)[:len(prompts)]]

    def _encode(self, pixels: list[np.ndarray]) -> tuple[jax.Array, Optional[jax.Array]]:
        batch, mask = jax.device_put(self.generator.pad_frames(pixels), self.split)
        return encode(self.graphdef, self.state, batch, mask), self.generator.model.video_token_counts(mask)

    def _decode(self, row: np.ndarray) -> str:
        tokens = [int(t) for t in row]
        if self.generator.eos in tokens:
            tokens = tokens[:tokens.index(self.generator.eos)]
        return self.generator.tokenizer.decode(tokens, skip_special_tokens=True)
