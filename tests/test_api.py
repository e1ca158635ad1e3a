"""The public entry points: `tlv_jax.load` on our checkpoint directory and on both PyTorch layouts, and
`load_weights` into a model built from its own config."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tlv_jax
from tlv_jax.convert.orbax_io import write_meta
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.generate import VideoSampling
from tlv_jax.loading import model_config

FIXTURES = ("qwen2-group-f16", "phi-naive-f4")


def params_of(model) -> dict:
    return {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), k


def test_public_names():
    assert callable(tlv_jax.load) and callable(tlv_jax.load_weights)
    from tlv_jax.models.tinyllava import TinyLlavaVideo

    assert tlv_jax.TinyLlavaVideo is TinyLlavaVideo
    assert {"load", "LoadedModel", "load_model", "load_weights", "TinyLlavaVideo", "TinyLlavaConfig",
            "ModelConfig"} <= set(tlv_jax.__all__)
    with pytest.raises(AttributeError):
        tlv_jax.not_a_name  # noqa: B018


@pytest.mark.parametrize("name", FIXTURES)
def test_both_pytorch_layouts_load_to_the_same_model_and_outputs(fixtures_dir, name):
    d = fixtures_dir / name
    ref = dict(np.load(d / "reference.npz"))
    published, pretrain = tlv_jax.load(d / "finetune"), tlv_jax.load(d / "pretrain")
    assert isinstance(published, tlv_jax.LoadedModel) and isinstance(published.model, tlv_jax.TinyLlavaVideo)
    assert_same_params(published.model, pretrain.model)
    video = [ref["pixel_values"][0].transpose(0, 2, 3, 1)]
    outs = [m.forward(ref["input_ids"], video, ref["attention_mask"], ref["labels"]) for m in (published, pretrain)]
    np.testing.assert_array_equal(np.asarray(outs[0].logits), np.asarray(outs[1].logits))
    assert float(outs[0].loss) == float(outs[1].loss)
    err = np.abs(np.asarray(outs[0].logits) - ref["logits"]).max() / np.abs(ref["logits"]).max()
    assert err <= 1e-4 and abs(float(outs[0].loss) - float(ref["loss"])) <= 1e-5


def test_our_checkpoint_directory_loads_the_same_model(fixtures_dir, tmp_path):
    from tlv_jax.convert.torch2jax import convert

    src = fixtures_dir / "qwen2-group-f16" / "finetune"
    ours = convert(src, tmp_path / "ours", progress=False)
    assert_same_params(tlv_jax.load(ours).model, tlv_jax.load(src).model)
    bf16 = tlv_jax.load(ours, dtype="bfloat16")
    cfg = bf16.model.cfg
    assert cfg.llm.dtype == "bfloat16"
    frames = np.zeros((2, cfg.vision.image_size, cfg.vision.image_size, 3), np.float32)
    tokens = bf16.encode_video(frames)
    assert tokens.shape == (cfg.connector.num_queries, cfg.llm.hidden_size)
    assert tokens.dtype == jnp.bfloat16 and bool(jnp.isfinite(tokens.astype(jnp.float32)).all())


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        tlv_jax.load(tmp_path)
    write_meta(tmp_path, {"kind": "llm"})
    with pytest.raises(CheckpointError, match="not a TinyLLaVA-Video model"):
        tlv_jax.load(tmp_path)


@pytest.mark.parametrize("layout", ["pytorch", "ours"])
def test_inference_stores_parameters_in_the_compute_dtype(fixtures_dir, tmp_path, layout):
    """`param_dtype="bfloat16"` keeps every parameter in bf16 (half the bytes a decode step reads), each equal to
    the fp32 value rounded once; the outputs stay as close to the original's fp32 ones as bf16 compute over fp32
    masters does."""
    from tlv_jax.convert.torch2jax import convert

    d = fixtures_dir / "qwen2-group-f16"
    src = d / "finetune" if layout == "pytorch" else convert(d / "finetune", tmp_path / "ours", progress=False)
    half = tlv_jax.load(src, dtype="bfloat16", param_dtype="bfloat16")
    masters = tlv_jax.load(src, dtype="bfloat16")
    p_half, p_full = params_of(half.model), params_of(masters.model)
    assert p_half.keys() == p_full.keys()
    for k in p_half:
        assert p_half[k].dtype == jnp.bfloat16 and p_full[k].dtype == np.float32, k
        np.testing.assert_array_equal(p_half[k], p_full[k].astype(jnp.bfloat16), err_msg=k)
    ref = dict(np.load(d / "reference.npz"))
    video = [ref["pixel_values"][0].transpose(0, 2, 3, 1)]
    for model in (half, masters):
        out = model.forward(ref["input_ids"], video, ref["attention_mask"], ref["labels"])
        err = np.abs(np.asarray(out.logits, np.float32) - ref["logits"]).max() / np.abs(ref["logits"]).max()
        assert err <= 0.03 and abs(float(out.loss) - float(ref["loss"])) <= 0.01


@pytest.mark.parametrize("layout", ["pytorch", "ours"])
def test_load_weights_fills_a_model_built_from_its_own_config(fixtures_dir, tmp_path, layout):
    """Training builds the model from its config first (its remat and attention choices), then reads the weights:
    the same parameters as `load`, and a model of another shape is refused before anything is assigned."""
    from tlv_jax.convert.torch2jax import convert
    from tlv_jax.models.tinyllava import TinyLlavaVideo

    src = fixtures_dir / "qwen2-group-f16" / "finetune"
    path = src if layout == "pytorch" else convert(src, tmp_path / "ours", progress=False)
    cfg = model_config(path)
    model = nnx.eval_shape(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)))
    tlv_jax.load_weights(model, path)
    assert_same_params(model, tlv_jax.load(path).model)
    shallower = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, num_layers=cfg.llm.num_layers - 1))
    with pytest.raises(CheckpointError):
        tlv_jax.load_weights(nnx.eval_shape(lambda: TinyLlavaVideo(shallower, rngs=nnx.Rngs(0))), path)


def test_inference_settings_travel_with_the_loaded_object(fixtures_dir, tmp_path):
    """Our checkpoints record a template and frame sampling, PyTorch directories none; they belong to the loaded
    object, so two settings can share one model."""
    from tlv_jax.convert.torch2jax import convert

    src = fixtures_dir / "qwen2-group-f16" / "finetune"
    original = tlv_jax.load(src)
    assert (original.template, original.sampling) == (None, VideoSampling())
    ours = tlv_jax.load(convert(src, tmp_path / "ours", progress=False, num_frames=-1))
    assert (ours.template, ours.sampling) == ("qwen2_base", VideoSampling(-1, 64))
    assert ours.generator.template == original.generator.template == "qwen2_base"
    eight = dataclasses.replace(ours, sampling=VideoSampling(8, 8))
    assert eight.model is ours.model and eight.generator.sampling == VideoSampling(8, 8)
    assert ours.generator.sampling == VideoSampling(-1, 64)
