"""Generation: the original's greedy outputs, cache == full forward, batching, streaming, stop strings, CLI."""

import json

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax import generate
from tlv_jax.config import ConnectorConfig, LLMConfig, VisionConfig
from tlv_jax.generate import Generator, VideoSampling, bucket, cut_at_stop, main
from tlv_jax.inference import encode, forward
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig

FIXTURES = ["qwen2-group-f16", "phi-naive-f4"]


def load_case(d):
    ref = np.load(d / "reference.npz")
    meta = json.loads((d / "meta.json").read_text())
    gen = Generator.from_pretrained(d / "finetune")
    frames = ref["raw_frames"].transpose(0, 2, 3, 1)  # fixture (F, 3, h, w) -> ours (F, h, w, 3)
    return gen, ref, meta["prompts"]["eval_query"], frames


@pytest.fixture(scope="module", params=FIXTURES)
def each(request, fixtures_dir):
    """Both fixture models (group resampler + Qwen2, naive resampler + Phi-2)."""
    return load_case(fixtures_dir / request.param)


@pytest.fixture(scope="module")
def case(fixtures_dir):
    """One model for the behaviours that do not depend on the architecture."""
    return load_case(fixtures_dir / FIXTURES[0])


def test_prompt_ids_are_the_originals(each):
    gen, ref, question, _ = each
    ids, mask = gen.prompt_ids([question])
    assert ids.shape[1] == bucket(ref["gen_input_ids"].shape[1], gen.prompt_buckets)
    np.testing.assert_array_equal(ids[0][mask[0]], ref["gen_input_ids"][0])


def test_greedy_tokens_equal_the_original_generate(each):
    gen, ref, question, frames = each
    n = ref["gen_output_ids"].shape[1]
    tokens = gen.generate_tokens(frames, [question], max_new_tokens=n)
    np.testing.assert_array_equal(tokens, ref["gen_output_ids"])


def test_cached_decoding_equals_full_forward_greedy(each):
    """Each new token is the argmax of a full forward pass over the prompt plus the tokens so far."""
    gen, ref, question, frames = each
    n = 3
    tokens = gen.generate_tokens(frames, [question], max_new_tokens=8)[0]
    pixels = gen.frames(frames)
    ids = list(ref["gen_input_ids"][0])
    for t in range(n):
        out = forward(gen.model, np.asarray([ids]), [pixels])
        step_logits = np.asarray(out.logits[0, -1])
        assert int(np.argmax(step_logits)) == tokens[t]
        if t == 0:  # the first step's logits are the original's first score row
            np.testing.assert_allclose(step_logits, ref["gen_scores"][0, 0],
                                       atol=1e-4 * np.abs(ref["gen_scores"][0, 0]).max())
        ids.append(int(tokens[t]))


def test_questions_sharing_a_video_match_one_at_a_time(case):
    gen, _, question, frames = case
    prompts = [question, "Describe the video in detail please.", "What color?"]
    together = gen.generate_tokens(frames, prompts, max_new_tokens=8)
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(together[i], gen.generate_tokens(frames, [p], max_new_tokens=8)[0])


def test_streaming_and_stop_strings(case):
    gen, _, question, frames = case
    full = gen.generate(frames, question, max_new_tokens=8)
    pieces = list(gen.stream(frames, question, max_new_tokens=8))
    assert "".join(pieces) == full and len(pieces) >= 2
    seen = []
    assert gen.generate(frames, question, max_new_tokens=8, on_text=lambda i, d: seen.append(d)) == full
    assert "".join(seen) == full
    stop = full[-2:]
    cut = gen.generate(frames, question, max_new_tokens=8, stop=[stop])
    assert cut == cut_at_stop(full, [stop]).strip() and len(cut) < len(full)


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(case):
    gen, _, question, frames = case
    a = gen.generate_tokens(frames, [question], max_new_tokens=8, temperature=1.5, seed=3)
    b = gen.generate_tokens(frames, [question], max_new_tokens=8, temperature=1.5, seed=3)
    np.testing.assert_array_equal(a, b)
    greedy = gen.generate_tokens(frames, [question], max_new_tokens=8)
    nucleus = gen.generate_tokens(frames, [question], max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=1)
    np.testing.assert_array_equal(greedy, nucleus)


def test_loaded_model_generates_and_streams(fixtures_dir):
    """`tlv_jax.load(...)` answers with the tokenizer and defaults of its directory, as `Generator` does."""
    import tlv_jax

    d = fixtures_dir / "qwen2-group-f16"
    ref = np.load(d / "reference.npz")
    model = tlv_jax.load(d / "pretrain")  # the pretrain-stage layout, converted in memory
    frames = ref["raw_frames"].transpose(0, 2, 3, 1)
    text = model.generate(video=frames, prompt="What is happening in the video?", max_new_tokens=8)
    gen = Generator.from_pretrained(d / "finetune")
    assert text == gen.generate(frames, "What is happening in the video?", max_new_tokens=8)
    assert "".join(model.stream(frames, "What is happening in the video?", max_new_tokens=8)) == text


def write_mp4(path, frames, fps=4):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_cli_answers_about_a_video_file(fixtures_dir, tmp_path, capsys):
    d = fixtures_dir / "qwen2-group-f16"
    ref = np.load(d / "reference.npz")
    frames = np.ascontiguousarray(ref["raw_frames"].transpose(0, 2, 3, 1)[:, :44, :70])  # even sizes for x264
    video = tmp_path / "clip.mp4"
    write_mp4(video, np.repeat(frames, 2, axis=0))
    assert main(["--model", str(d / "finetune"), "--video", str(video), "--prompt", "What is this?",
                 "--prompt", "And then?", "--max-new-tokens", "4", "--num-frames", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    gen = Generator.from_pretrained(d / "finetune", sampling=VideoSampling(8, 8))
    assert lines == gen.generate(str(video), ["What is this?", "And then?"], max_new_tokens=4,
                                 stop=["<|endoftext|>"])


def test_cli_reports_an_unreadable_video_or_model_in_one_line(fixtures_dir, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    d = fixtures_dir / "qwen2-group-f16" / "finetune"
    assert main(["--model", str(d), "--video", str(bad), "--prompt", "What is this?"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: cannot read video {bad}")
    assert main(["--model", str(tmp_path / "missing"), "--video", str(bad), "--prompt", "What is this?"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing'}")


def test_bad_requests_fail_clearly(case):
    gen, _, question, frames = case
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(frames, question, max_new_tokens=0)
    with pytest.raises(ValueError, match="uint8"):
        gen.generate(frames.astype(np.float32), question)
    with pytest.raises(ValueError, match="2 videos for 3 prompts"):
        gen.generate([frames, frames], ["a", "b", "c"])


def test_bf16_weights_are_not_copied_to_float32_for_generation():
    """Batch-1 generation with bf16 weights: every compiled piece needs scratch memory of a small fraction of the
    weights. On CPU a one-row bf16 product used to fall back to float32 copies of the kernels, made before the first
    layer (or hoisted out of the decode loop), with the embedding table's for the token lookup: the decoder held
    twice more in float32, which took the released 3B model past 20 GB. Compiled only, nothing runs."""
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, image_size=16, patch_size=8,
                          dtype="bfloat16")
    llm = LLMConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=64, rope_theta=1e6, tie_word_embeddings=True, dtype="bfloat16")
    connector = ConnectorConfig(kind="group", num_queries=8, group=2, num_layers=1, vision_hidden_size=32,
                                hidden_size=256, dim_head=8, heads=2, dtype="bfloat16")
    model = nnx.eval_shape(lambda: TinyLlavaVideo(ModelConfig(vision=vision, llm=llm, connector=connector),
                                                  rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), state)
    weight_bytes = sum(x.size * 2 for x in jax.tree.leaves(nnx.state(model.llm, nnx.Param)))
    spec = jax.ShapeDtypeStruct
    pixels, frames_mask = spec((1, 4, 16, 16, 3), jnp.float32), spec((1, 4), jnp.bool_)
    ids, mask, new = spec((1, 16), jnp.int32), spec((1, 16), jnp.bool_), 8
    tokens = jax.eval_shape(lambda s: encode(graphdef, s, pixels, frames_mask), state)
    _, cache = jax.eval_shape(lambda s: generate._prefill(graphdef, s, ids, mask, tokens, None, new), state)
    token, key, scalar = spec((1,), jnp.int32), jax.random.key(0), spec((), jnp.float32)
    pieces = {
        "prefill": generate._prefill.lower(graphdef, state, ids, mask, tokens, None, new),
        "decode loop": generate._decode_all.lower(graphdef, state, token, cache, key, spec((), jnp.int32), scalar,
                                                  scalar, new),
        "streamed step": generate._decode_one.lower(graphdef, state, token, cache, key, scalar, scalar),
    }
    scratch = {name: lowered.compile().memory_analysis().temp_size_in_bytes for name, lowered in pieces.items()}
    assert all(b < weight_bytes / 4 for b in scratch.values()), f"scratch bytes {scratch}, weights {weight_bytes}"
