"""What both decoders share: construction, the KV cache (prefill, chunked prefill, decode), greedy decoding,
load/save through the conversion table (bit-exact export, one-line errors), bf16 compute and remat."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from tlv_jax.config import LLMConfig
from tlv_jax.convert.safetensors_io import CheckpointError, open_checkpoint
from tlv_jax.models import families
from tlv_jax.models.decoder import default_positions, greedy_generate
from tlv_jax.convert.backbones import abstract, llm_entries, load_llm, read_config, save_backbone

from .hf_decoders import forward, hf_config, make_hf, rel_err, right_padded, run

KINDS = ["qwen2-tied", "qwen2-untied", "phi"]
LLM_AXES = {"vocab", "embed", "heads", "kv_heads", "mlp"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (HF model, its save_pretrained directory), built on first use."""
    made = {}

    def get(kind):
        if kind not in made:
            directory = tmp_path_factory.mktemp(kind)
            made[kind] = make_hf(kind, directory, seed=3), directory
        return made[kind]
    return get


def _cfg(kind: str, **overrides) -> LLMConfig:
    return families.config_from_hf(hf_config(kind).to_dict(), **overrides)


@pytest.mark.parametrize("kind", KINDS)
def test_build_decoder_picks_the_family_and_names_every_axis(kind):
    cfg = _cfg(kind)
    model = abstract(lambda: families.build_decoder(cfg, rngs=nnx.Rngs(0)))  # shapes only: nothing to initialise
    assert isinstance(model, families.get(cfg.family).decoder)
    assert len(model.layers) == cfg.num_layers
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert params
    for path, var in params:
        axes = var.get_metadata()["axes"]
        assert len(axes) == len(var.shape), path
        assert set(axes) <= LLM_AXES, (path, axes)
        assert var.dtype == jnp.float32, path


@pytest.mark.parametrize("kind", ["qwen2-tied", "phi"])
def test_cached_greedy_equals_full_forward(checkpoints, kind):
    """Each token the cached decode picks, and the logits it picked it from, equal a full forward pass over the
    prompt plus the tokens generated so far (right-padded batch, different prompt lengths)."""
    _, directory = checkpoints(kind)
    model = load_llm(directory)
    lengths, n_new = [9, 4, 6], 6
    ids, mask = right_padded(lengths, seed=4)
    out = greedy_generate(model, jnp.asarray(ids), jnp.asarray(mask), n_new, return_logits=True)
    tokens, step_logits = np.asarray(out.tokens), np.asarray(out.logits)
    assert tokens.shape == (3, n_new) and step_logits.shape == (3, n_new, model.cfg.vocab_size)

    full_lengths = [n + n_new for n in lengths]
    full_ids, full_mask = right_padded(full_lengths, seed=5)
    for b, n in enumerate(lengths):
        full_ids[b, :n + n_new] = np.concatenate([ids[b, :n], tokens[b]])
    full = np.asarray(forward(model, jnp.asarray(full_ids), jnp.asarray(full_mask)))
    for b, n in enumerate(lengths):
        ref = full[b, n - 1:n - 1 + n_new]
        assert rel_err(step_logits[b], ref) <= 1e-4
        np.testing.assert_array_equal(tokens[b], ref.argmax(-1))


@pytest.mark.parametrize("kind", ["qwen2-untied", "phi"])
def test_chunked_prefill_writes_at_each_samples_offset(checkpoints, kind):
    """A right-padded first chunk advances each sample by its real length; the second chunk overwrites the padding
    and sees exactly the real tokens before it."""
    _, directory = checkpoints(kind)
    model = load_llm(directory)
    first_lengths, t2 = [5, 2], 4
    ids1, mask1 = right_padded(first_lengths, seed=6)
    ids2 = np.random.RandomState(7).randint(0, 97, (2, t2))
    cache = model.init_cache(2, 16)
    _, _, cache = run(model, model.embed_tokens(jnp.asarray(ids1)), default_positions(jnp.asarray(mask1)),
                      jnp.asarray(mask1), cache)
    np.testing.assert_array_equal(np.asarray(cache.lengths), first_lengths)
    positions = cache.lengths[:, None] + jnp.arange(t2)[None, :]
    _, chunked, cache = run(model, model.embed_tokens(jnp.asarray(ids2)), positions, None, cache)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [n + t2 for n in first_lengths])

    # the same tokens without padding or cache: ids1's real tokens then ids2, right padded to one batch
    full_ids, full_mask = right_padded([n + t2 for n in first_lengths], seed=11)
    for b, n in enumerate(first_lengths):
        full_ids[b, :n + t2] = np.concatenate([ids1[b, :n], ids2[b]])
    full = np.asarray(forward(model, jnp.asarray(full_ids), jnp.asarray(full_mask)))
    for b, n in enumerate(first_lengths):
        assert rel_err(np.asarray(chunked[b]), full[b, n:n + t2]) <= 1e-4


def test_eos_ends_a_sample(checkpoints):
    _, directory = checkpoints("qwen2-tied")
    model = load_llm(directory)
    ids, mask = right_padded([6, 3], seed=8)
    free = np.asarray(greedy_generate(model, jnp.asarray(ids), jnp.asarray(mask), 5).tokens)
    eos = int(free[0, 1])
    stopped = np.asarray(greedy_generate(model, jnp.asarray(ids), jnp.asarray(mask), 5, eos_token_id=eos).tokens)
    for row, out in zip(free, stopped):
        hits = np.flatnonzero(row == eos)
        end = hits[0] + 1 if hits.size else len(row)  # up to and including the first eos: unchanged
        np.testing.assert_array_equal(out[:end], row[:end])
        assert (out[end:] == eos).all()
    assert (stopped[0, 1:] == eos).all()


def _assert_same_files(ours_dir, hf_dir):
    ours, ref = open_checkpoint(ours_dir), open_checkpoint(hf_dir)
    assert sorted(ours.keys()) == sorted(ref.keys())
    for key in ref.keys():
        a, b = ours.get(key), ref.get(key)
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_is_bit_exact(checkpoints, tmp_path, kind, dtype):
    """load -> save_backbone reproduces HF's own save_pretrained: same keys (no lm_head when tied), same bytes."""
    hf, directory = checkpoints(kind)
    if dtype == "bfloat16":
        directory = tmp_path / "hf-bf16"
        copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(directory)
    model = load_llm(directory)
    save_backbone(model, llm_entries(model.cfg), read_config(directory), tmp_path / "ours", dtype=dtype)
    _assert_same_files(tmp_path / "ours", directory)
    assert ("lm_head.weight" in open_checkpoint(tmp_path / "ours").keys()) == (kind != "qwen2-tied")


def _broken_copy(src, dst, edit):
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    dst.mkdir()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


@pytest.mark.parametrize("case, key", [
    ("missing", "model.layers.1.mlp.up_proj.weight"),
    ("unexpected", "model.layers.0.self_attn.rotary_emb.inv_freq"),
    ("shape", "model.layers.0.self_attn.k_proj.bias"),
])
def test_bad_checkpoint_fails_with_one_line_naming_the_key(checkpoints, tmp_path, case, key):
    _, directory = checkpoints("qwen2-untied")

    def edit(tensors):
        if case == "missing":
            del tensors[key]
        elif case == "unexpected":
            tensors[key] = np.zeros((4,), np.float32)
        else:
            tensors[key] = tensors[key][:-1].copy()
    broken = _broken_copy(directory, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError) as err:
        load_llm(broken)
    message = str(err.value)
    assert key in message and case.replace("shape", "has shape") in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["qwen2-tied", "phi"])
def test_bf16_compute_stays_close_to_fp32(checkpoints, kind):
    _, directory = checkpoints(kind)
    ids, mask = right_padded([10, 7], seed=9)
    ref = np.asarray(forward(load_llm(directory), jnp.asarray(ids), jnp.asarray(mask)))
    model = load_llm(directory, dtype="bfloat16")
    assert model.embed.embedding[...].dtype == jnp.float32  # params stay fp32
    got = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert got.dtype == jnp.bfloat16
    assert rel_err(np.asarray(got.astype(jnp.float32))[mask], ref[mask]) <= 3e-2
    assert model.init_cache(2, 8).k.dtype == jnp.bfloat16
    out = greedy_generate(model, jnp.asarray(ids), jnp.asarray(mask), 3, return_logits=True)
    assert out.tokens.shape == (2, 3) and np.isfinite(np.asarray(out.logits.astype(jnp.float32))).all()


@pytest.mark.parametrize("kind, remat", [("qwen2-untied", "full"), ("phi", "dots")])
def test_remat_keeps_loss_and_gradients(kind, remat):
    cfg = _cfg(kind)
    ids, mask = right_padded([8, 5], seed=10)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def loss_fn(model):
        logits = model.forward(ids[:, :-1], mask[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
        return jnp.sum(ce * mask[:, 1:]) / mask[:, 1:].sum()

    results = []
    for policy in (None, remat):
        model = families.build_decoder(dataclasses.replace(cfg, remat=policy), rngs=nnx.Rngs(0))
        loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
        results.append((float(loss), jax.tree.leaves(nnx.to_pure_dict(grads))))
    (loss0, grads0), (loss, grads) = results
    assert loss == pytest.approx(loss0, rel=1e-6)
    for g, g0 in zip(grads, grads0):
        np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="remat"):
        families.build_decoder(dataclasses.replace(cfg, remat="everything"), rngs=nnx.Rngs(0))


def test_init_cache_layout():
    cfg = _cfg("qwen2-tied")
    model = families.build_decoder(cfg, rngs=nnx.Rngs(0))
    cache = model.init_cache(3, 20)
    assert cache.k.shape == (cfg.num_layers, 3, 20, cfg.num_kv_heads, cfg.head_dim)
    assert cache.k.dtype == jnp.float32 and model.init_cache(1, 4, "bfloat16").v.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(cache.lengths), [0, 0, 0])
