"""A TinyLLaVA-Video with a Qwen3 decoder through a whole run: the Qwen3-1.7B finetune recipe, shrunk, started
straight from Hugging Face SigLIP and Qwen3 directories, trains the Qwen3 weights (q/k norms included), exports
both layouts, and each export loads with `tlv_jax.load` and answers the same. Both Qwen3 recipes plan from presets
before any weights are downloaded."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tlv_jax
from tlv_jax.convert.orbax_io import ParamsReader, read_meta
from tlv_jax.train import loop
from tlv_jax.train.config_file import load_config
from tlv_jax.train.metrics import read_jsonl
from tlv_jax.train.setup import model_source

from . import tiny_run

RECIPES = {stage: tiny_run.ROOT / "configs" / f"{stage}_qwen3_1p7b_group16.py" for stage in ("pretrain", "finetune")}


def save_tiny_qwen3(directory: Path, tokenizer_dir: Path) -> Path:
    """A random tiny Qwen3 (tied, head_dim 12 != 32 / 4 heads) sized to the tokenizer, which it holds too."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    cfg = Qwen3Config(vocab_size=vocab, head_dim=12, tie_word_embeddings=True, rope_theta=10000.0, **tiny_run.LLM)
    Qwen3ForCausalLM(cfg).save_pretrained(directory)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, directory / f.name)
    return directory


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_run")
    qa, _, tokenizer = tiny_run.make_data(root / "data")
    vision, _ = tiny_run.make_hf_backbones(root, tokenizer)  # its SigLIP (the Qwen2 it also writes goes unused)
    llm = save_tiny_qwen3(root / "qwen3", tokenizer)
    cfg = load_config(RECIPES["finetune"])
    tiny_run.shrink(cfg, root / "data", qa, steps=3)
    cfg.model.update(dict(init="hf", llm_path=str(llm), vision_path=str(vision)))
    cfg.export.dtype = "float32"  # the recipe exports bf16; float32 lets both exports compare bit for bit
    workdir = root / "run"
    return loop.train(cfg, workdir), workdir, llm, json.loads(qa.read_text())[0], root / "data"


def test_qwen3_trains_from_hugging_face_backbones(run):
    result, workdir, llm, _, _ = run
    assert result.step == 3 and result.stopped == "done"
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in read_jsonl(workdir / "metrics.jsonl"))
    from safetensors.numpy import load_file

    hf = load_file(llm / "model.safetensors")
    params = ParamsReader(result.model_dir)
    for ours, key in ((("llm", "layers", 0, "attn", "q_norm", "scale"), "model.layers.0.self_attn.q_norm.weight"),
                      (("llm", "layers", 1, "mlp", "gate", "kernel"), "model.layers.1.mlp.gate_proj.weight")):
        assert params.get(ours).shape == hf[key].T.shape and not np.array_equal(params.get(ours), hf[key].T), key


def test_both_exports_load_and_answer_the_same(run):
    result, workdir, _, record, data_dir = run
    assert (result.model_dir, result.export_dir) == (workdir / "model", workdir / "export")
    assert read_meta(result.model_dir)["defaults"]["template"] == "qwen2_base"
    text_config = json.loads((result.export_dir / "config.json").read_text())["text_config"]
    assert (text_config["model_type"], text_config["head_dim"]) == ("qwen3", 12)
    video, question = str(data_dir / record["video"]), record["conversations"][0]["value"].replace("<image>", "")
    answers = [tlv_jax.load(d).generate(video=video, prompt=question.strip(), max_new_tokens=6)
               for d in (result.model_dir, result.export_dir)]
    assert isinstance(answers[0], str) and answers[0] == answers[1]


@pytest.mark.parametrize("stage", sorted(RECIPES))
def test_recipes_plan_qwen3_1p7b_before_any_download(stage):
    source = model_source(load_config(RECIPES[stage]), presets=True)
    llm = source.config.model.llm
    assert (llm.family, llm.hidden_size, llm.num_layers, llm.head_dim) == ("qwen3", 2048, 28, 128)
    assert source.config.model.connector.kind == "group"
