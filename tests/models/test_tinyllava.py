"""The composed TinyLLaVA-Video model against the original PyTorch code (fixtures, fp32), and the splice / loss
helpers against literal re-statements of the original algorithms."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.inference import encode_video, forward, pad_videos
from tlv_jax.loading import load_model
from tlv_jax.models.tinyllava import chunked_cross_entropy, shifted_cross_entropy, splice

FIXTURES = ("qwen2-group-f16", "phi-naive-f4")
IMAGE, IGNORE = -200, -100

vision_features = jax.jit(lambda m, px: m.vision_features(px))
encode_videos = jax.jit(lambda m, px, fm: m.encode_videos(px, fm))
embed_multimodal = jax.jit(lambda m, ids, mask, tokens, labels: m.embed_multimodal(ids, mask, tokens, labels))
forward_batch = jax.jit(lambda m, ids, labels, mask, px, fm, chunk: m.forward_batch(ids, labels, mask, px, fm,
                                                                                   ce_chunk=chunk),
                        static_argnames="chunk")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def channels_last(frames: np.ndarray) -> np.ndarray:
    """The fixtures store frames (F, 3, H, W) like PyTorch; our models take (F, H, W, 3)."""
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module", params=FIXTURES)
def case(request, fixtures_dir):
    """(model loaded from the published layout, reference arrays, the two videos of the batch)."""
    d = fixtures_dir / request.param
    ref = dict(np.load(d / "reference.npz"))
    videos = [channels_last(ref["pixel_values"][0]), channels_last(ref["batch_pixel_values_1"])]
    return load_model(d / "finetune"), ref, videos


def padded_batch(model, videos):
    pixels, frames_mask = pad_videos(videos, len(videos), model.cfg.vision.image_size)
    return jnp.asarray(pixels), jnp.asarray(frames_mask)


# ---- video -> tokens ---------------------------------------------------------------------------------------------

def test_vision_features_fold_frames_drop_patch0_frame_major(case):
    model, ref, videos = case
    pixels, _ = padded_batch(model, videos)  # 16 frames and 3 frames (+13 padding frames)
    feats = vision_features(model, pixels)
    n_b = ref["batch_vision_features_1"].shape[1]
    assert feats.shape[1] == pixels.shape[1] * model.cfg.tokens_per_frame
    assert rel_err(feats[0], ref["vision_features"][0]) <= 1e-5
    assert rel_err(feats[1, :n_b], ref["batch_vision_features_1"][0]) <= 1e-5


def test_connector_output_for_a_padded_batch_of_videos(case):
    model, ref, videos = case
    tokens = encode_videos(model, *padded_batch(model, videos))
    assert rel_err(tokens, ref["batch_connector_output"]) <= 1e-5
    assert rel_err(encode_video(model, videos[0]), ref["connector_output"][0]) <= 1e-5


# ---- splice ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [False, True])
def test_splice_matches_the_original(case, batch):
    model, ref, _ = case
    p = "batch_" if batch else ""
    tokens = ref["batch_connector_output"] if batch else ref["connector_output"]
    mm = embed_multimodal(model, jnp.asarray(ref[p + "input_ids"]), jnp.asarray(ref[p + "attention_mask"]),
                          jnp.asarray(tokens), jnp.asarray(ref[p + "labels"]))
    want = ref[p + "inputs_embeds"]
    assert mm.embeds.shape == want.shape  # L - 1 + Q for the longest sample
    assert rel_err(mm.embeds, want) <= 1e-6
    np.testing.assert_array_equal(np.asarray(mm.mask), ref[p + "llm_attention_mask"])
    np.testing.assert_array_equal(np.asarray(mm.labels), ref[p + "llm_labels"])


# ---- logits, loss, generation ------------------------------------------------------------------------------------

def test_logits_and_loss_single_sample(case):
    model, ref, videos = case
    out = forward(model, ref["input_ids"], videos[:1], ref["attention_mask"], ref["labels"])
    assert out.logits.shape == ref["logits"].shape
    assert rel_err(out.logits, ref["logits"]) <= 1e-4
    assert abs(float(out.loss) - float(ref["loss"])) <= 1e-5


def test_logits_and_loss_batch_of_two_with_different_lengths_and_frame_counts(case):
    model, ref, videos = case
    out = forward(model, ref["batch_input_ids"], videos, ref["batch_attention_mask"], ref["batch_labels"])
    assert out.logits.shape == ref["batch_logits"].shape
    assert rel_err(out.logits, ref["batch_logits"]) <= 1e-4
    assert abs(float(out.loss) - float(ref["batch_loss"])) <= 1e-5


def test_training_loss_is_chunked_and_matches(case):
    """7-position chunks: the 222 shifted positions do not divide evenly."""
    model, ref, videos = case
    loss, aux = forward_batch(model, jnp.asarray(ref["batch_input_ids"]), jnp.asarray(ref["batch_labels"]),
                              jnp.asarray(ref["batch_attention_mask"]), *padded_batch(model, videos), 7)
    assert abs(float(loss) - float(ref["batch_loss"])) <= 1e-5
    assert int(aux["num_tokens"]) == int((ref["batch_llm_labels"][:, 1:] != IGNORE).sum())


def test_eval_prompt_logits_and_greedy_generation(case):
    model, ref, videos = case
    out = forward(model, ref["gen_input_ids"], videos[:1])
    assert out.loss is None
    assert rel_err(out.logits, ref["gen_prompt_logits"]) <= 1e-4

    want = ref["gen_output_ids"][0]

    @jax.jit
    def greedy(m, ids, pixels):
        """Prefill, then one cached decode step per token; returns the logits each token was picked from."""
        logits, cache = m.prefill(ids, None, pixels, max_new_tokens=len(want))

        def step(carry, _):
            logits, cache = carry
            return m.decode(jnp.argmax(logits, -1), cache), logits

        _, scores = jax.lax.scan(step, (logits, cache), length=len(want))
        return jnp.moveaxis(scores, 0, 1)

    scores = greedy(model, jnp.asarray(ref["gen_input_ids"]), jnp.asarray(videos[0])[None])
    np.testing.assert_array_equal(np.asarray(jnp.argmax(scores, -1))[0], want)
    assert rel_err(scores, ref["gen_scores"]) <= 1e-4


def test_forward_rejects_bad_inputs(case):
    model, ref, videos = case
    ids = ref["input_ids"].copy()
    ids[0, 3] = IMAGE
    with pytest.raises(ValueError, match="placeholders"):
        forward(model, ids, videos[:1])
    with pytest.raises(ValueError, match="channels-last"):
        forward(model, ref["input_ids"], [ref["pixel_values"][0]])
    with pytest.raises(ValueError, match="one video per sample"):
        forward(model, ref["input_ids"], videos)


# ---- the splice and the loss against literal re-statements of the original -----------------------------------

def original_splice(ids, mask, labels, video, n_video, embed_table, max_len):
    """The splice as the original loops write it: drop masked tokens, cut at the first -200, insert the video,
    truncate, right pad to the longest sample."""
    embeds, labs = [], []
    for b in range(len(ids)):
        cur, lab = ids[b][mask[b]], labels[b][mask[b]]
        text = embed_table[np.maximum(cur, 0)]
        hits = np.flatnonzero(cur == IMAGE)
        if len(hits):
            p, v = hits[0], video[b][: n_video[b]]
            text = np.concatenate([text[:p], v, text[p + 1:]])
            lab = np.concatenate([lab[:p], np.full(len(v), IGNORE), lab[p + 1:]])
        embeds.append(text[:max_len])
        labs.append(lab[:max_len])
    n = max(len(e) for e in embeds)
    out = np.zeros((len(ids), n, embed_table.shape[1]), np.float32)
    out_labels = np.full((len(ids), n), IGNORE)
    out_mask = np.zeros((len(ids), n), bool)
    for b, (e, lab) in enumerate(zip(embeds, labs)):
        out[b, : len(e)], out_labels[b, : len(e)], out_mask[b, : len(e)] = e, lab, True
    return out, out_mask, out_labels


@pytest.mark.parametrize("seed,max_len,variable_video", [(0, 1000, False), (1, 9, False), (2, 1000, True),
                                                         (3, 11, True)])
def test_splice_equals_the_original_loop(seed, max_len, variable_video):
    """Placeholders anywhere or absent, holes in the attention mask, truncation, mlp-style video lengths."""
    rng = np.random.default_rng(seed)
    b, l, q, d, vocab = 5, 10, 6, 3, 20
    ids = rng.integers(0, vocab, (b, l))
    mask = rng.random((b, l)) < 0.8
    for i in range(b - 1):  # the last sample has no placeholder
        ids[i, rng.integers(0, l)] = IMAGE
    mask[0] = True
    labels = np.where(rng.random((b, l)) < 0.3, IGNORE, rng.integers(0, vocab, (b, l)))
    table = rng.normal(size=(vocab, d)).astype(np.float32)
    video = rng.normal(size=(b, q, d)).astype(np.float32)
    n_video = rng.integers(0, q + 1, b) if variable_video else np.full(b, q)
    mm = splice(jnp.asarray(table[np.maximum(ids, 0)]), jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(video),
                jnp.asarray(n_video) if variable_video else None, jnp.asarray(labels),
                image_token_index=IMAGE, ignore_index=IGNORE, max_length=max_len)
    want_e, want_m, want_l = original_splice(ids, mask, labels, video, n_video, table, max_len)
    n = want_e.shape[1]
    assert mm.embeds.shape[1] == min(l - 1 + q, max_len) >= n
    np.testing.assert_array_equal(np.asarray(mm.embeds[:, :n]), want_e)
    np.testing.assert_array_equal(np.asarray(mm.mask[:, :n]), want_m)
    np.testing.assert_array_equal(np.asarray(mm.labels[:, :n]), want_l)
    # the extra static columns are padding; positions run 0..S-1 as HF's default position_ids
    assert not np.asarray(mm.mask[:, n:]).any() and (np.asarray(mm.labels[:, n:]) == IGNORE).all()
    assert not np.asarray(mm.embeds[:, n:]).any()
    np.testing.assert_array_equal(np.asarray(mm.positions), np.broadcast_to(np.arange(mm.mask.shape[1]), mm.mask.shape))


@pytest.mark.parametrize("chunk", [1, 3, 8, 100])
def test_chunked_cross_entropy_equals_full_logits_loss_and_gradients(chunk):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 9, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 11)), jnp.float32)
    labels = jnp.asarray(np.where(rng.random((2, 9)) < 0.3, IGNORE, rng.integers(0, 11, (2, 9))))

    def full(h, w):
        return shifted_cross_entropy(h @ w, labels)[0]

    def chunked(h, w):
        return chunked_cross_entropy(h, lambda x: x @ w, labels, chunk)[0]

    (lf, gf), (lc, gc) = [jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(hidden, w) for f in (full, chunked)]
    assert abs(float(lf) - float(lc)) <= 1e-6
    for a, b in zip(gf, gc):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # the HF definition: mean over the supervised shifted targets
    logp = jax.nn.log_softmax(hidden @ w)[:, :-1]
    y = np.asarray(labels[:, 1:])
    picked = [float(logp[i, t, y[i, t]]) for i in range(2) for t in range(8) if y[i, t] != IGNORE]
    assert abs(float(lf) + np.mean(picked)) <= 1e-5
    assert int(chunked_cross_entropy(hidden, lambda x: x @ w, labels, chunk)[1]) == len(picked)


def test_bfloat16_model_runs_close_to_float32(fixtures_dir):
    d = fixtures_dir / "qwen2-group-f16"
    ref = dict(np.load(d / "reference.npz"))
    model = load_model(d / "finetune", dtype="bfloat16")
    assert model.cfg.llm.dtype == model.cfg.connector.dtype == model.cfg.vision.dtype == "bfloat16"
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out = forward(model, ref["input_ids"], [channels_last(ref["pixel_values"][0])], ref["attention_mask"],
                  ref["labels"])
    assert out.logits.dtype == jnp.bfloat16
    assert abs(float(out.loss) - float(ref["loss"])) < 0.05 * float(ref["loss"])


def test_config_mismatch_is_refused():
    from tlv_jax.config import LLMConfig, VisionConfig
    from tlv_jax.models.tinyllava import TinyLlavaVideo
    from tlv_jax.config import ConnectorConfig
    from tlv_jax.models.tinyllava_config import ModelConfig

    cfg = ModelConfig(vision=VisionConfig(hidden_size=8, num_heads=2, num_layers=1, image_size=28, patch_size=14),
                      llm=LLMConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                                    num_kv_heads=1, head_dim=4),
                      connector=ConnectorConfig(kind="naive", num_queries=4, num_layers=1, vision_hidden_size=8,
                                                hidden_size=16))
    with pytest.raises(ValueError, match="connector maps"):
        nnx.eval_shape(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)))
    ok = dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector, hidden_size=8))
    nnx.eval_shape(lambda: TinyLlavaVideo(ok, rngs=nnx.Rngs(0)))
