"""The one attention op: every backend that runs here gives the xla reference's values under every kind of mask
(gradients too), `auto` picks a backend from platform, dtype and shape alone, and wrong names or shapes are errors.

`splash` runs here in the Pallas interpreter; `cudnn` needs a GPU and must say so."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlv_jax.models.layers.attention import IMPLS, AttentionMask, attention, choose_impl, resolve_impl
from tlv_jax.models.layers.attention_cpu import QUERY_BLOCK
from tlv_jax.models.layers.platform import platform

RUN_HERE = ["cpu", "splash", "auto"]  # against "xla"; cudnn needs a GPU

Case = tuple[jax.Array, jax.Array, jax.Array, AttentionMask]


def _qkv(b: int, t: int, s: int, n: int, k: int, h: int = 16, dtype=jnp.float32) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(t * 1000 + s), 3)
    return tuple(jax.random.normal(key, (b, length, heads, h)).astype(dtype)
                 for key, length, heads in zip(keys, (t, s, s), (n, k, k)))


def _lengths(s: int, lengths: list[int]) -> jax.Array:
    return jnp.arange(s)[None, :] < jnp.asarray(lengths)[:, None]


def _segments(t: int, starts: list[list[int]]) -> jax.Array:
    """(B, T) ids: sample b's segment id rises by one at each position in starts[b]."""
    return jnp.stack([(jnp.arange(t)[:, None] >= jnp.asarray(row)[None, :]).sum(-1) for row in starts])


def causal_right_padded(dtype=jnp.float32) -> Case:
    """A prompt batch: 2 blocks of queries and a partial one, the second row right-padded after 170 tokens."""
    t = 2 * QUERY_BLOCK + 44
    return (*_qkv(2, t, t, 4, 2, dtype=dtype), AttentionMask(causal=True, key_valid=_lengths(t, [t, 170])))


def bidirectional_padded() -> Case:
    """Vision tokens or a resampler's keys: every query sees every valid key."""
    return *_qkv(2, 300, 300, 4, 2), AttentionMask(key_valid=_lengths(300, [300, 260]))


def cross_attention_padded() -> Case:
    """Few queries (latents) over many keys, padding in the middle of the keys as the resampler has it."""
    valid = _lengths(300, [300, 200]) | (jnp.arange(300) >= 280)[None, :]
    return *_qkv(2, 20, 300, 4, 4), AttentionMask(key_valid=valid)


def kv_cache_decode() -> Case:
    """Three new tokens per sample written after 5 and 0 cached ones: query i of sample b sits at slot offsets[b]+i."""
    mask = AttentionMask(causal=True, offsets=jnp.array([5, 0]), key_valid=_lengths(16, [8, 3]))
    return *_qkv(2, 3, 16, 4, 2), mask


def multi_query_heads() -> Case:
    """8 query heads sharing one KV head (the other cases group 4 query heads over 2 KV heads, or none)."""
    return *_qkv(2, 200, 200, 8, 1), AttentionMask(causal=True)


def packed_causal() -> Case:
    """Sequence packing: three and two sequences in a row, each sees itself only; the tail of row 1 is padding."""
    ids = _segments(300, [[100, 250], [200, 10 ** 6]])
    return (*_qkv(2, 300, 300, 4, 2),
            AttentionMask(causal=True, key_valid=_lengths(300, [300, 280]), q_segments=ids, kv_segments=ids))


def packed_bidirectional() -> Case:
    """Packing without causality (e.g. frames of several videos in one row): each segment sees itself only."""
    ids = _segments(300, [[64, 256], [150, 10 ** 6]])
    return *_qkv(2, 300, 300, 4, 2), AttentionMask(q_segments=ids, kv_segments=ids)


def unmasked_whole_blocks() -> Case:
    """No mask, lengths a multiple of every block: nothing to pad or mask."""
    return *_qkv(2, 256, 256, 4, 2), AttentionMask()


CASES: dict[str, Callable[[], Case]] = {f.__name__: f for f in (
    unmasked_whole_blocks, causal_right_padded, bidirectional_padded, cross_attention_padded, kv_cache_decode,
    multi_query_heads, packed_causal, packed_bidirectional)}


def _seen(mask: AttentionMask, b: int, t: int, s: int) -> np.ndarray:
    """(B, T): queries that see at least one key (the others' outputs are unspecified)."""
    dense = mask.dense(t, s)
    return np.ones((b, t), bool) if dense is None else np.broadcast_to(np.asarray(dense.any(-1)), (b, t))


@pytest.mark.parametrize("impl", RUN_HERE)
@pytest.mark.parametrize("case", CASES)
def test_every_backend_gives_the_references_values(case, impl):
    q, k, v, mask = CASES[case]()
    ref = attention(q, k, v, mask, impl="xla")
    rows = _seen(mask, q.shape[0], q.shape[1], k.shape[1])
    out = jax.jit(lambda q, k, v, m: attention(q, k, v, m, impl=impl))(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", RUN_HERE)
def test_bf16_inputs_keep_fp32_softmax_in_every_backend(impl):
    """bf16 in, bf16 out, within bf16 rounding of the fp32 reference of the same (bf16-valued) inputs."""
    q, k, v, mask = causal_right_padded(jnp.bfloat16)
    ref = attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask, impl="xla")
    out = attention(q, k, v, mask, impl=impl)
    assert out.dtype == jnp.bfloat16
    rows = _seen(mask, *q.shape[:2], k.shape[1])
    np.testing.assert_allclose(np.asarray(out, np.float32)[rows], np.asarray(ref)[rows], atol=2e-2, rtol=0)


@pytest.mark.parametrize("impl", ["cpu", "splash"])
@pytest.mark.parametrize("case", ["causal_right_padded", "packed_bidirectional"])
def test_every_backend_gives_the_references_gradients(case, impl):
    q, k, v, mask = CASES[case]()
    rows = jnp.asarray(_seen(mask, q.shape[0], q.shape[1], k.shape[1]))[:, :, None, None]
    loss = lambda impl: lambda q, k, v: jnp.sum(jnp.where(rows, attention(q, k, v, mask, impl=impl), 0) ** 2)
    ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    got = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", got, ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=f"d{name}")


def test_the_mask_spells_out_causality_offsets_padding_and_segments():
    """Query i of sample b sees key j iff j <= offsets[b] + i, key j is valid and both carry the same segment."""
    mask = AttentionMask(causal=True, offsets=jnp.array([2]), key_valid=jnp.array([[1, 1, 1, 1, 0]], bool),
                         q_segments=jnp.array([[0, 1]]), kv_segments=jnp.array([[0, 0, 1, 1, 1]]))
    np.testing.assert_array_equal(mask.dense(2, 5)[0], [[1, 1, 0, 0, 0],
                                                        [0, 0, 1, 1, 0]])
    assert AttentionMask().dense(2, 5) is None


@pytest.mark.parametrize("platform_name, dtype, q_shape, k_shape, mask, expected", [
    # CPU: split where one piece's logits would spill the cache, the plain reference elsewhere
    ("cpu", jnp.float32, (1, 1024, 14, 64), (1, 1024, 2, 64), AttentionMask(causal=True), "cpu"),
    ("cpu", jnp.float32, (1, QUERY_BLOCK, 14, 64), (1, QUERY_BLOCK, 2, 64), AttentionMask(causal=True), "xla"),
    ("cpu", jnp.float32, (4, 729, 16, 72), (4, 729, 16, 72), AttentionMask(), "cpu"),
    ("cpu", jnp.float32, (4, 16, 16, 72), (4, 16, 16, 72), AttentionMask(), "xla"),
    ("cpu", jnp.float32, (8, 64, 16, 64), (8, 2000, 16, 64), AttentionMask(), "xla"),
    ("cpu", jnp.float32, (2, 1, 14, 64), (2, 512, 2, 64), AttentionMask(causal=True, offsets=jnp.zeros(2)), "xla"),
    # GPU: cuDNN for half precision and head sizes it takes (a mask it must take as a bias: even lengths)
    ("gpu", jnp.bfloat16, (1, 1024, 14, 64), (1, 1024, 2, 64), AttentionMask(causal=True), "cudnn"),
    ("gpu", jnp.float16, (4, 729, 16, 72), (4, 729, 16, 72), AttentionMask(), "cudnn"),
    ("gpu", jnp.bfloat16, (2, 8, 14, 64), (2, 512, 2, 64), AttentionMask(causal=True, offsets=jnp.zeros(2)),
     "cudnn"),
    ("gpu", jnp.bfloat16, (2, 1, 14, 64), (2, 512, 2, 64), AttentionMask(causal=True, offsets=jnp.zeros(2)), "xla"),
    ("gpu", jnp.bfloat16, (2, 729, 16, 72), (2, 729, 16, 72), AttentionMask(key_valid=jnp.ones((2, 729))), "xla"),
    ("gpu", jnp.float32, (1, 1024, 14, 64), (1, 1024, 2, 64), AttentionMask(causal=True), "xla"),
    ("gpu", jnp.bfloat16, (1, 1024, 14, 100), (1, 1024, 2, 100), AttentionMask(causal=True), "xla"),
    ("gpu", jnp.bfloat16, (1, 1024, 4, 256), (1, 1024, 4, 256), AttentionMask(causal=True), "xla"),
    # TPU: splash for static masks over at least a block of queries and keys
    ("tpu", jnp.bfloat16, (1, 1024, 14, 64), (1, 1024, 2, 64), AttentionMask(causal=True), "splash"),
    ("tpu", jnp.float32, (4, 729, 16, 72), (4, 729, 16, 72), AttentionMask(), "splash"),
    ("tpu", jnp.bfloat16, (2, 1, 14, 64), (2, 512, 2, 64), AttentionMask(causal=True, offsets=jnp.zeros(2)), "xla"),
    ("tpu", jnp.bfloat16, (8, 64, 16, 64), (8, 2000, 16, 64), AttentionMask(), "xla"),
])
def test_auto_picks_by_platform_dtype_and_shape(platform_name, dtype, q_shape, k_shape, mask, expected):
    assert choose_impl(platform_name, dtype, q_shape, k_shape, mask) == expected


@pytest.mark.parametrize("old_default", ["", None])
def test_an_empty_impl_from_an_older_config_means_auto(old_default):
    shape, mask = (1, 1024, 14, 64), AttentionMask(causal=True)
    assert resolve_impl(old_default, jnp.float32, shape, shape, mask) == resolve_impl("auto", jnp.float32, shape,
                                                                                      shape, mask)


def test_an_unknown_impl_is_an_error_listing_the_known_ones():
    q, k, v, mask = kv_cache_decode()
    assert IMPLS == ("auto", "xla", "cpu", "cudnn", "splash")
    with pytest.raises(ValueError, match=r"'flash'.*\('auto', 'xla', 'cpu', 'cudnn', 'splash'\)"):
        attention(q, k, v, mask, impl="flash")


@pytest.mark.skipif(platform() == "gpu", reason="on a GPU cuDNN runs: the reference comparison covers it")
def test_cudnn_off_a_gpu_is_a_clear_error():
    q, k, v, mask = kv_cache_decode()
    with pytest.raises(ValueError, match="'cudnn' runs on a GPU only"):
        attention(q, k, v, mask, impl="cudnn")


@pytest.mark.parametrize("mask, message", [
    (AttentionMask(key_valid=jnp.ones((2, 15), bool)), r"key_valid has shape \(2, 15\), expected \(2, 16\)"),
    (AttentionMask(q_segments=jnp.zeros((2, 3), int)), "pass both or neither"),
    (AttentionMask(offsets=jnp.zeros(2, int)), "causal=False"),
])
def test_a_mask_that_does_not_fit_is_an_error(mask, message):
    q, k, v, _ = kv_cache_decode()
    with pytest.raises(ValueError, match=message):
        attention(q, k, v, mask)


def test_keys_and_queries_must_share_batch_and_head_size_and_group_evenly():
    q, k, v = _qkv(1, 4, 4, 3, 2)
    with pytest.raises(ValueError, match="N a multiple of K"):
        attention(q, k, v)
