"""Tiny training set-ups shared by the training tests: a synthetic video-QA set, a BPE tokenizer trained on it,
tiny Hugging Face SigLIP / Qwen2 directories (the pretrain recipe's starting point) and config files for the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Small enough to compile and run a step in seconds on 2 CPU cores.
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
LLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def make_data(root: Path, videos: int = 24) -> tuple[Path, Path, Path]:
    """(qa annotation file, caption annotation file, tokenizer dir) over `videos` 4-frame 32x32 clips."""
    from tlv_jax.data.synthetic import generate_dataset
    from tlv_jax.train.demo import train_tokenizer

    qa = generate_dataset(root, videos, seed=1, frames=4, size=32, split="train", workers=1,
                          question_types=("color", "direction", "order"))
    records = json.loads(qa.read_text())
    train_tokenizer(records, "qwen2_base", 1000, root / "tokenizer")
    return qa, root / "train_caption.json", root / "tokenizer"


def make_hf_backbones(root: Path, tokenizer_dir: Path) -> tuple[Path, Path]:
    """Random tiny SigLIP and Qwen2 saved by transformers (the LLM dir also holds the tokenizer)."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision_dir, llm_dir = root / "siglip", root / "qwen2"
    SiglipVisionModel(SiglipVisionConfig(**VISION)).save_pretrained(vision_dir)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    cfg = Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, rope_theta=10000.0, **LLM)
    Qwen2ForCausalLM(cfg).save_pretrained(llm_dir)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, llm_dir / f.name)
    return vision_dir, llm_dir


def shrink(config, data_root: Path, annotation: Path, steps: int, global_batch: int = 8, micro_batch: int = 4):
    """Shrinks any recipe to a few CPU steps on the tiny data (float32, so frozen weights compare bit for bit)."""
    config.data.update(dict(annotation_files=(str(annotation),), video_dirs=(str(data_root),), num_frames=4,
                            length_buckets=(160,), num_workers=0, read_threads=1))
    config.model.update(dict(max_length=160, num_queries=8, group=4, num_resampler_layers=1, dtype="float32"))
    config.train.update(dict(num_steps=steps, global_batch=global_batch, micro_batch=micro_batch))
    config.log.update(dict(progress=False))
    config.checkpoint.update(dict(every=1, keep=2))
    return config


SCRATCH_CONFIG = '''
import ml_collections
from tlv_jax.train.config_file import load_module
base = load_module({base!r})

def get_config():
    c = base.get_config()
    c.model.init = "scratch"
    c.model.scratch = ml_collections.ConfigDict(dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=32, patch_size=8,
                    use_head=False),
        llm=dict(family="qwen2", vocab_size={vocab}, hidden_size=32, intermediate_size=64, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0, tie_word_embeddings=True),
        connector=dict(), posemb_init="sincos2d"))
    c.freeze.update(dict(llm="full", vision="full", connector="full"))
    c.optim.update(dict(lr=3e-3, warmup_ratio=0.2))
    c.data.update(dict(tokenizer_dir={tokenizer!r}, template="qwen2_base", annotation_files=({annotation!r},),
                       video_dirs=({data!r},), num_frames=4, length_buckets=(160,), num_workers=0, read_threads=1))
    c.model.update(dict(max_length=160, num_queries=8, group=4, num_resampler_layers=1, dtype="float32", remat=""))
    c.train.update(dict(num_steps=8, global_batch=4, micro_batch=2))
    c.checkpoint.update(dict(every=3, keep=2))
    c.log.update(dict(progress=False))
    c.export.torch = False
    return c
'''


def write_scratch_config(path: Path, tokenizer_dir: Path, annotation: Path, data_root: Path) -> Path:
    """A config file for the CLI: a tiny model trained from scratch for 8 steps, checkpoints every 3."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    path.write_text(SCRATCH_CONFIG.format(base=str(ROOT / "configs" / "base.py"), vocab=vocab,
                                          tokenizer=str(tokenizer_dir), annotation=str(annotation),
                                          data=str(data_root)))
    return path


def train_command(config: Path | str, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "tlv_jax.train", "--config", str(config), "--workdir", str(workdir), *overrides]


def cli_env(compile_cache: Path | None = None) -> dict[str, str]:
    """The environment of a user's run (one CPU device), optionally sharing a persistent compilation cache."""
    import os

    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = str(ROOT)
    if compile_cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env
