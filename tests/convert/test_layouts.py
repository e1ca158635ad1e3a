"""Reading both PyTorch TinyLLaVA-Video layouts and plain HF backbones under one key space, checked against the
shapes of the model itself."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tlv_jax.convert.layouts import (backbone_spec, check_tensors, detect_layout, open_hf_backbone, open_tinyllava,
                                     tinyllava_spec)
from tlv_jax.convert.safetensors_io import CheckpointError, open_checkpoint

from . import FIXTURES, LAYOUTS, assert_same_tensors, copy_fixture, edit_flat, save_tiny_phi, save_tiny_qwen2, \
    save_tiny_siglip


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_layouts_present_the_published_keys(fixtures_dir, name, layout):
    d = fixtures_dir / name / layout
    cfg, reader = open_tinyllava(d)
    assert detect_layout(d) == ("pretrain" if layout == "pretrain" else "published")
    check_tensors(reader, tinyllava_spec(cfg), str(d))  # every key and shape as the table says
    assert sorted(reader.keys()) == sorted(open_checkpoint(fixtures_dir / name / "finetune").keys())


@pytest.mark.parametrize("name", FIXTURES)
def test_pretrain_layout_holds_the_same_tensors_as_the_published_one(fixtures_dir, name):
    _, flat = open_tinyllava(fixtures_dir / name / "finetune")
    _, pre = open_tinyllava(fixtures_dir / name / "pretrain")
    assert_same_tensors(flat, pre)


def test_tied_lm_head_absent_in_qwen_present_in_phi(fixtures_dir):
    qcfg, q = open_tinyllava(fixtures_dir / "qwen2-group-f16" / "finetune")
    pcfg, p = open_tinyllava(fixtures_dir / "phi-naive-f4" / "finetune")
    assert qcfg.model.llm.tie_word_embeddings and "language_model.lm_head.weight" not in q.keys()
    assert not pcfg.model.llm.tie_word_embeddings
    assert {"language_model.lm_head.weight", "language_model.lm_head.bias"} <= set(p.keys())


def test_tied_lm_head_saved_equal_is_accepted_and_hidden(fixtures_dir, tmp_path):
    d = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "ck")
    edit_flat(d, lambda t: t.__setitem__("language_model.lm_head.weight",
                                         t["language_model.model.embed_tokens.weight"].copy()))
    cfg, reader = open_tinyllava(d)
    assert "language_model.lm_head.weight" not in reader.keys()
    check_tensors(reader, tinyllava_spec(cfg), str(d))


def test_tied_lm_head_that_differs_is_an_error(fixtures_dir, tmp_path):
    d = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "ck")
    edit_flat(d, lambda t: t.__setitem__("language_model.lm_head.weight",
                                         t["language_model.model.embed_tokens.weight"] + 1))
    with pytest.raises(CheckpointError, match="lm_head.weight.*differs.*tie_word_embeddings"):
        open_tinyllava(d)


def test_pretrain_layout_missing_a_subfolder(fixtures_dir, tmp_path):
    d = copy_fixture(fixtures_dir, "phi-naive-f4", "pretrain", tmp_path / "ck")
    shutil.rmtree(d / "connector")
    with pytest.raises(CheckpointError, match="connector/"):
        open_tinyllava(d)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("connector._connector.layers.1.0.to_q.weight"), "missing tensor 'connector._connector.layers.1.0.to_q.weight'"),
    (lambda t: t.__setitem__("language_model.model.extra.weight", np.zeros(3, np.float32)), "unexpected tensor 'language_model.model.extra.weight'"),
    (lambda t: t.__setitem__("vision_tower._vision_tower.vision_model.post_layernorm.bias", np.zeros(31, np.float32)),
     r"'vision_tower._vision_tower.vision_model.post_layernorm.bias' has shape \[31\], expected \[32\]"),
])
def test_check_tensors_names_the_key(fixtures_dir, tmp_path, edit, message):
    d = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "ck")
    edit_flat(d, edit)
    cfg, reader = open_tinyllava(d)
    with pytest.raises(CheckpointError, match=message):
        check_tensors(reader, tinyllava_spec(cfg), str(d))


def test_hf_qwen2_backbone(tmp_path):
    save_tiny_qwen2(tmp_path)
    bb = open_hf_backbone(tmp_path)
    assert bb.component == "llm" and bb.config.family == "qwen2" and bb.config.tie_word_embeddings
    spec = backbone_spec("llm", bb.config)
    check_tensors(bb.reader, spec, str(tmp_path))
    assert all(e.path[0] == "llm" for e in spec.entries)


def test_hf_phi_backbone(tmp_path):
    save_tiny_phi(tmp_path)
    bb = open_hf_backbone(tmp_path)
    assert bb.component == "llm" and bb.config.family == "phi"
    check_tensors(bb.reader, backbone_spec("llm", bb.config), str(tmp_path))


@pytest.mark.parametrize("full", [False, True], ids=["SiglipVisionModel", "SiglipModel"])
def test_hf_siglip_backbone(tmp_path, full):
    save_tiny_siglip(tmp_path, full)
    raw_keys = open_checkpoint(tmp_path).keys()
    bb = open_hf_backbone(tmp_path)
    assert bb.component == "vision" and bb.config.num_layers == 2
    check_tensors(bb.reader, backbone_spec("vision", bb.config), str(tmp_path))  # text tower ignored
    assert all(k.startswith("vision_model.") for k in bb.reader.keys())
    if full:
        assert any(k.startswith("text_model.") for k in raw_keys)
        assert bb.hf_config()["model_type"] == "siglip_vision_model"
    else:  # transformers >= 5 writes the vision model's keys without the `vision_model.` prefix
        assert not any(k.startswith("vision_model.") for k in raw_keys)


def test_unknown_backbone_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="'llama'"):
        open_hf_backbone(tmp_path)


@pytest.mark.parametrize("name", FIXTURES)
def test_expected_shapes_come_from_the_model(fixtures_dir, name):
    """The spec's shapes are the model's own (`nnx.eval_shape`), and its table names every parameter once."""
    from flax import nnx

    from tlv_jax.models.tinyllava import TinyLlavaVideo

    cfg = open_tinyllava(fixtures_dir / name / "finetune")[0]
    spec = tinyllava_spec(cfg)
    model = nnx.eval_shape(lambda: TinyLlavaVideo(cfg.model, rngs=nnx.Rngs(0)))
    built = {tuple(path): tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert spec.shapes == built
    assert len({e.hf for e in spec.entries}) == len(built)
