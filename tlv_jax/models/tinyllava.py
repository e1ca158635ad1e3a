"""TinyLLaVA-Video: SigLIP -> video connector -> tokens spliced into the LLM input at the `<image>` placeholder.

Reads top to bottom like the original forward:
1. `vision_features`: the frames of every video are folded into the batch for the vision tower;
   `hidden_states[vision_feature_layer]` with patch 0 dropped ('patch'), flattened frame-major per video.
2. `encode_videos`: the connector turns each video's tokens into `num_queries` tokens. Videos with different frame
   counts share one padded tensor plus a frames mask (valid frames first); the connector masks the rest.
3. `embed_multimodal`: a gather-based splice with static shapes. Per sample, the real tokens (attention mask) are
   kept in order, the first placeholder (-200) is replaced by the video tokens, the result is truncated to
   `tokenizer_model_max_length` and right padded (zero embeddings, label -100, mask 0). Positions are 0..S-1 over
   the whole row: the original passes `position_ids=None`, so HF numbers the padding too (this only changes the
   logits at padded positions; real tokens get 0..len-1 either way).
   The output length is `min(L - 1 + Q, max_length)` whatever the data; a sample without a placeholder gets no
   video tokens. Only one placeholder per sample is supported (the original would take the next sample's video).
   Packed rows (`splice_packed`, `forward_packed`; see `tlv_jax.data.packing`) hold several samples, each with
   its video already standing as a run of placeholders, so nothing moves: the placeholders become the video tokens
   of the sample's own slot, positions restart at 0 per sample and attention stays within a sample (segment ids).
4. The decoder, then the HF causal-LM loss: mean cross-entropy of the shifted labels, in float32.

`forward_batch` is the pure function the trainer jits (chunked loss, full logits never materialised);
`prefill` / `decode` split generation. Host-array entry points (the original forward, generation) live outside
`models/`: `tlv_jax.inference`, `tlv_jax.generate`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.models import connectors
from tlv_jax.models.families import build_decoder
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.models.siglip import SiglipVisionTower
from tlv_jax.models.tinyllava_config import ModelConfig


class Multimodal(NamedTuple):
    """The LLM inputs after the splice, all (B, S[, D]); `labels` is None when no labels were given."""

    embeds: jax.Array
    mask: jax.Array
    positions: jax.Array
    labels: Optional[jax.Array]
    segments: Optional[jax.Array] = None  # packed rows: which sample each position belongs to (0: padding)


def token_nll(logits: jax.Array, targets: jax.Array, ignore_index: int = -100) -> tuple[jax.Array, jax.Array]:
    """Sum of -log p(target) over the non-ignored targets, and their count, in float32."""
    logits = logits.astype(jnp.float32)
    valid = targets != ignore_index
    # A masked sum instead of a gather: its gradient is an elementwise select that fuses into the softmax
    # gradient, where a gather's is a scatter-add into a fresh (B, T, V) buffer.
    vocab = jnp.arange(logits.shape[-1], dtype=targets.dtype)
    picked = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.int32)


def shifted_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = -100
                          ) -> tuple[jax.Array, jax.Array]:
    """HF causal-LM loss from full logits: position t predicts labels[t + 1]. Returns (mean, token count);
    the mean is 0 (not NaN as in torch) when nothing is supervised."""
    total, count = token_nll(logits[:, :-1], labels[:, 1:], ignore_index)
    return total / jnp.maximum(count, 1), count


def chunked_cross_entropy(hidden: jax.Array, lm_head_fn: Callable[[jax.Array], jax.Array], labels: jax.Array,
                          chunk: int = 1024, ignore_index: int = -100) -> tuple[jax.Array, jax.Array]:
    """`shifted_cross_entropy(lm_head_fn(hidden), labels)` computed `chunk` positions at a time.

    Only one (B, chunk, V) block of float32 logits exists at once, forward and backward (each chunk is
    rematerialised), so a 150k vocabulary never costs B x S x V floats. Returns (mean loss, token count).
    A sequence that fits one chunk skips the loop and the rematerialisation (same peak memory, one head matmul
    fewer).
    """
    h, y = hidden[:, :-1], labels[:, 1:]
    b, s, d = h.shape
    if s <= chunk:
        total, count = token_nll(lm_head_fn(h), y, ignore_index)
        return total / jnp.maximum(count, 1), count
    chunk = max(1, chunk)
    n = -(-s // chunk)
    pad = n * chunk - s
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    y = jnp.pad(y, ((0, 0), (0, pad)), constant_values=ignore_index)
    hs = h.reshape(b, n, chunk, d).swapaxes(0, 1)
    ys = y.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def body(carry: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, jax.Array]) -> tuple[tuple, None]:
        total, count = token_nll(lm_head_fn(xs[0]), xs[1], ignore_index)
        return (carry[0] + total, carry[1] + count), None

    (total, count), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)), (hs, ys))
    return total / jnp.maximum(count, 1), count


def splice(text_embeds: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, video_tokens: jax.Array,
           video_lengths: Optional[jax.Array], labels: Optional[jax.Array], *, image_token_index: int,
           ignore_index: int, max_length: int) -> Multimodal:
    """The splice of the module docstring, as gathers. text_embeds (B, L, D) of `input_ids` (B, L), video_tokens
    (B, Q, D) of which sample b uses the first `video_lengths[b]` (all Q when None)."""
    b, l = input_ids.shape
    q = video_tokens.shape[1]
    out_len = min(l - 1 + q, max_length)
    mask = attention_mask.astype(bool)
    order = jnp.argsort(~mask, axis=1, stable=True)  # the real tokens first, in order
    take = lambda x: jnp.take_along_axis(x, order.reshape(b, l, *([1] * (x.ndim - 2))), axis=1)
    ids, embeds = take(input_ids), take(text_embeds)
    n_text = mask.sum(1)
    is_image = (ids == image_token_index) & (jnp.arange(l)[None, :] < n_text[:, None])
    has = is_image.any(1)
    at = jnp.argmax(is_image, axis=1)
    n_video = jnp.where(has, q if video_lengths is None else video_lengths, 0)
    length = jnp.minimum(n_text - has + n_video, out_len)

    j = jnp.arange(out_len)[None, :]
    at, n_video = at[:, None], n_video[:, None]
    in_video = (j >= at) & (j < at + n_video)
    text_index = jnp.clip(jnp.where(has[:, None] & (j >= at + n_video), j - n_video + 1, j), 0, l - 1)
    video_index = jnp.clip(j - at, 0, q - 1)
    valid = j < length[:, None]
    gather = lambda x, i: jnp.take_along_axis(x, i[..., None], axis=1)
    out = jnp.where(in_video[..., None], gather(video_tokens, video_index).astype(embeds.dtype),
                    gather(embeds, text_index))
    out = jnp.where(valid[..., None], out, 0)
    new_labels = None
    if labels is not None:
        new_labels = jnp.where(valid & ~in_video, jnp.take_along_axis(take(labels), text_index, axis=1),
                               ignore_index)
    return Multimodal(out, valid, jnp.broadcast_to(j, valid.shape).astype(jnp.int32), new_labels)


def splice_packed(text_embeds: jax.Array, input_ids: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                  video_tokens: jax.Array, labels: Optional[jax.Array], *, image_token_index: int,
                  ignore_index: int) -> Multimodal:
    """Packed rows: `input_ids` (B, L) are already the model's length, each sample's video a run of placeholders as
    long as its video tokens; segment s (1, 2, ...; 0 = padding) takes its tokens from slot s - 1 of video_tokens
    (B, V, Q, D). The k-th placeholder of a segment becomes token k of its slot. A segment's first label is
    dropped: the previous sample's last token would predict it (unpacked, nothing does)."""
    b, l = input_ids.shape
    v, q, d = video_tokens.shape[1:]
    real = segment_ids > 0
    is_video = (input_ids == image_token_index) & real
    slot = jnp.clip(segment_ids - 1, 0, v - 1)
    per_slot = jnp.sum(jax.nn.one_hot(slot, v, dtype=jnp.int32) * is_video[..., None], axis=1)  # (B, V)
    before = jnp.cumsum(per_slot, axis=1) - per_slot  # placeholders of the earlier segments
    k = jnp.cumsum(is_video, axis=1) - 1 - jnp.take_along_axis(before, slot, axis=1)
    index = slot * q + jnp.clip(k, 0, q - 1)
    video = jnp.take_along_axis(video_tokens.reshape(b, v * q, d), index[..., None], axis=1)
    out = jnp.where(is_video[..., None], video.astype(text_embeds.dtype), text_embeds)
    out = jnp.where(real[..., None], out, 0)
    new_labels = None
    if labels is not None:
        first = segment_ids != jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
        new_labels = jnp.where(real & ~is_video & ~first, labels, ignore_index)
    return Multimodal(out, real, jnp.where(real, positions, 0).astype(jnp.int32), new_labels,
                      segment_ids.astype(jnp.int32))


class TinyLlavaVideo(nnx.Module):
    """The composed model; attribute names `vision`, `connector`, `llm` match `tables.COMPONENT_PREFIXES`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        c = cfg.connector
        if c.hidden_size != cfg.llm.hidden_size or c.vision_hidden_size != cfg.vision.hidden_size:
            raise ValueError(f"connector maps {c.vision_hidden_size} -> {c.hidden_size} but the vision tower is "
                             f"{cfg.vision.hidden_size} wide and the LLM {cfg.llm.hidden_size}")
        self.cfg = cfg
        self.vision = SiglipVisionTower(cfg.vision, rngs=rngs)
        self.connector = connectors.build_connector(c, rngs=rngs)
        self.llm = build_decoder(cfg.llm, rngs=rngs)

    # ---- video -> tokens -----------------------------------------------------------------------------------------

    def vision_features(self, pixels: jax.Array) -> jax.Array:
        """pixels (B, F, H, W, 3) -> (B, F * tokens_per_frame, Dv): selected layer, patch 0 dropped, frame-major."""
        if pixels.ndim != 5:
            raise ValueError(f"expected pixels (B, F, H, W, 3), got shape {tuple(pixels.shape)}")
        b, f = pixels.shape[:2]
        h = self.vision(pixels.reshape(b * f, *pixels.shape[2:]), output_layer=self.cfg.vision_feature_layer)
        if self.cfg.vision_feature_select_strategy == "patch":
            h = h[:, 1:]
        return h.reshape(b, f * h.shape[1], h.shape[2])

    def video_lengths(self, frames_mask: Optional[jax.Array]) -> Optional[jax.Array]:
        """Real vision tokens per video (None: every frame is real)."""
        if frames_mask is None:
            return None
        return frames_mask.astype(jnp.int32).sum(1) * self.cfg.tokens_per_frame

    def encode_videos(self, pixels: jax.Array, frames_mask: Optional[jax.Array] = None) -> jax.Array:
        """pixels (B, F, H, W, 3), frames_mask (B, F) with the valid frames first -> (B, Q, D) video tokens
        (for the mlp connector Q = F * tokens_per_frame, of which sample b uses its real ones)."""
        return self.connector(self.vision_features(pixels), self.video_lengths(frames_mask))

    # ---- text + video -> LLM inputs ------------------------------------------------------------------------------

    def video_token_counts(self, frames_mask: Optional[jax.Array]) -> Optional[jax.Array]:
        """Video tokens each sample's video becomes, when that depends on the video (the connector's
        `variable_tokens`); None when every video gives the same number."""
        return self.video_lengths(frames_mask) if connectors.get(self.cfg.connector.kind).variable_tokens else None

    def embed_multimodal(self, input_ids: jax.Array, attention_mask: Optional[jax.Array], video_tokens: jax.Array,
                         labels: Optional[jax.Array] = None, video_lengths: Optional[jax.Array] = None
                         ) -> Multimodal:
        """Splices `video_tokens` (B, Q, D) into the embedded text at each sample's placeholder (module docstring)."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        text = self.llm.embed_tokens(jnp.maximum(input_ids, 0))  # the placeholder's own embedding is never used
        c = self.cfg
        return splice(text, input_ids, attention_mask, video_tokens, video_lengths, labels,
                      image_token_index=c.image_token_index, ignore_index=c.ignore_index,
                      max_length=c.tokenizer_model_max_length)

    def multimodal_inputs(self, input_ids: jax.Array, attention_mask: Optional[jax.Array], pixel_values: jax.Array,
                          frames_mask: Optional[jax.Array] = None, labels: Optional[jax.Array] = None) -> Multimodal:
        tokens = self.encode_videos(pixel_values, frames_mask)
        return self.embed_multimodal(input_ids, attention_mask, tokens, labels, self.video_token_counts(frames_mask))

    def packed_inputs(self, input_ids: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                      pixel_values: jax.Array, frames_mask: Optional[jax.Array] = None,
                      labels: Optional[jax.Array] = None) -> Multimodal:
        """Packed rows (B, L) with their video slots pixel_values (B, V, F, H, W, 3), frames_mask (B, V, F): every
        slot is encoded (an empty one is zeros and unused), then `splice_packed`."""
        b, v, f = pixel_values.shape[:3]
        if frames_mask is not None:  # an empty slot keeps one (zero) frame: a connector never sees a video of none
            frames_mask = (frames_mask | (jnp.arange(f) == 0)).reshape(b * v, f)
        tokens = self.encode_videos(pixel_values.reshape(b * v, *pixel_values.shape[2:]), frames_mask)
        text = self.llm.embed_tokens(jnp.maximum(input_ids, 0))
        c = self.cfg
        return splice_packed(text, input_ids, segment_ids, positions, tokens.reshape(b, v, *tokens.shape[1:]),
                             labels, image_token_index=c.image_token_index, ignore_index=c.ignore_index)

    def hidden_states(self, mm: Multimodal) -> jax.Array:
        hidden, _ = self.llm(mm.embeds, positions=mm.positions, attention_mask=mm.mask, segment_ids=mm.segments)
        return hidden

    # ---- training / evaluation -----------------------------------------------------------------------------------

    def forward_batch(self, input_ids: jax.Array, labels: jax.Array, attention_mask: jax.Array,
                      pixel_values: jax.Array, frames_mask: Optional[jax.Array] = None, *, ce_chunk: int = 1024
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The training loss (pure, jit it): mean token cross-entropy, chunked over the sequence.
        aux: `num_tokens` (supervised tokens; loss * num_tokens is the sum for token-weighted accumulation)."""
        mm = self.multimodal_inputs(input_ids, attention_mask, pixel_values, frames_mask, labels)
        return self._chunked_loss(mm, ce_chunk)

    def forward_packed(self, input_ids: jax.Array, labels: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                       pixel_values: jax.Array, frames_mask: Optional[jax.Array] = None, *, ce_chunk: int = 1024
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`forward_batch` on packed rows (`packed_inputs`): the same mean over the same target tokens."""
        mm = self.packed_inputs(input_ids, segment_ids, positions, pixel_values, frames_mask, labels)
        return self._chunked_loss(mm, ce_chunk)

    def _chunked_loss(self, mm: Multimodal, ce_chunk: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss, count = chunked_cross_entropy(self.hidden_states(mm), self.llm.logits, mm.labels, ce_chunk,
                                            self.cfg.ignore_index)
        return loss, {"num_tokens": count}

    def logits_and_loss(self, input_ids: jax.Array, attention_mask: Optional[jax.Array], pixel_values: jax.Array,
                        frames_mask: Optional[jax.Array] = None, labels: Optional[jax.Array] = None
                        ) -> tuple[jax.Array, Optional[jax.Array], Multimodal]:
        """Full logits (B, S, V) like the original forward, its loss (None without labels) and the spliced inputs."""
        mm = self.multimodal_inputs(input_ids, attention_mask, pixel_values, frames_mask, labels)
        logits = self.llm.logits(self.hidden_states(mm))
        loss = None if labels is None else shifted_cross_entropy(logits, mm.labels, self.cfg.ignore_index)[0]
        return logits, loss, mm

    # ---- generation ----------------------------------------------------------------------------------------------

    def prefill(self, input_ids: jax.Array, attention_mask: Optional[jax.Array], pixel_values: jax.Array,
                frames_mask: Optional[jax.Array] = None, *, max_new_tokens: int) -> tuple[jax.Array, KVCache]:
        """Encodes the videos, then `prefill_tokens`."""
        tokens = self.encode_videos(pixel_values, frames_mask)
        return self.prefill_tokens(input_ids, attention_mask, tokens, self.video_token_counts(frames_mask),
                                   max_new_tokens=max_new_tokens)

    def prefill_tokens(self, input_ids: jax.Array, attention_mask: Optional[jax.Array], video_tokens: jax.Array,
                       video_lengths: Optional[jax.Array] = None, *, max_new_tokens: int
                       ) -> tuple[jax.Array, KVCache]:
        """Runs the spliced prompt into a fresh KV cache with room for `max_new_tokens`; returns the logits of each
        sample's last real position only (B, V) and the cache (`cache.lengths` = spliced prompt lengths). Takes
        encoded videos so that several prompts can share one encoding."""
        mm = self.embed_multimodal(input_ids, attention_mask, video_tokens, video_lengths=video_lengths)
        b, s = mm.mask.shape
        cache = self.llm.init_cache(b, s + max_new_tokens)
        hidden, cache = self.llm(mm.embeds, positions=mm.positions, attention_mask=mm.mask, cache=cache)
        last = jnp.take_along_axis(hidden, jnp.maximum(cache.lengths - 1, 0)[:, None, None], axis=1)
        return self.llm.logits(last)[:, 0], cache

    def decode(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One step: tokens (B,) appended at each sample's `cache.lengths` -> next-token logits (B, V), new cache."""
        hidden, cache = self.llm(self.llm.embed_tokens(tokens[:, None]), positions=cache.lengths[:, None],
                                 cache=cache)
        return self.llm.logits(hidden)[:, 0], cache
