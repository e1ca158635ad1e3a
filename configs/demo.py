"""The CPU demo (`make demo`): a tiny TinyLLaVA-Video trained from scratch on synthetic videos in a few minutes on
2 CPU cores, then scored on held-out multiple-choice questions about colour, motion and order (options shuffled).

Sizes follow ../shared/reference/demo-notes.md: 8 frames of 32x32, a 2-layer ViT (patch 8, width 64) whose position
table starts as fixed 2D sine-cosine values (motion is learnable then), a group resampler of 8 groups (one per frame) x 4 queries,
a 2-layer decoder of width 128; AdamW at 1e-3 with the loss on the answer tokens.
"""

import pathlib
import sys

import ml_collections

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.model.update(dict(init="scratch", connector="groupresampler", num_queries=32, group=8, num_resampler_layers=1,
                        vision_feature_layer=-1, max_length=256, dtype="float32", remat=""))
    c.model.scratch = ml_collections.ConfigDict(dict(
        vision=dict(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=2, image_size=32, patch_size=8,
                    use_head=False),
        llm=dict(family="qwen2", vocab_size=0, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=32, rope_theta=10000.0, tie_word_embeddings=True),
        connector=dict(),  # heads / dim_head stay the original's 8 x 64 (config.json has no field for them)
        posemb_init="sincos2d",  # 'normal' (SigLIP's init) leaves motion at chance for many minutes
        fan_in_init=("vision", "connector"),  # N(0, 1/fan_in) kernels instead of std 0.02 (tlv_jax.train.init)
    ))
    c.freeze.update(dict(llm="full", vision="full", connector="full"))
    c.optim.update(dict(lr=1e-3, warmup_ratio=0.05))
    c.train.update(dict(global_batch=64, micro_batch=64, num_steps=1000))
    # length_buckets is only an upper bound here: the demo pads every batch to its longest prompt (one compilation).
    c.data.update(dict(template="qwen2_base", num_frames=8, length_buckets=(256,), annotation_files=(),
                       video_dirs=()))
    c.checkpoint.update(dict(every=200, keep=1))
    c.log.update(dict(every=5))
    c.export.dtype = "float32"
    c.demo = ml_collections.ConfigDict(dict(
        # Question types cycle through this list: direction twice, as motion is the slowest to learn.
        train_videos=6000, test_videos=500,
        question_types=("color", "direction", "order", "color_change", "direction"),
        # How the training questions are answered (tlv_jax.train.demo.answer_formats): with the whole option line
        # ('B. cyan') or open (no options, 'cyan'). Held-out questions are the generated ones; the letter is scored.
        answer_formats=dict(option=0.6, open=0.4),
        frames=8, size=32, seed=0, vocab_size=1500, workers=2))
    return c
