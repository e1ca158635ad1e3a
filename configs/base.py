"""Shared defaults of every training run, and the pieces the recipe files combine.

A recipe file is `get_config()` returning this config with a few fields changed: the stage (`pretrain` or
`finetune`), the LLM and the connector. Every field can be overridden on the command line:
`python -m tlv_jax.train --config configs/NAME.py --config.optim.lr=2e-5 --workdir DIR`.

Batch sizes are global (all devices, all processes): `train.global_batch` samples per optimizer step, processed as
`global_batch / micro_batch` accumulated micro-batches (the original: 8 per GPU x 4 GPUs x 4 (pretrain) or 2
(finetune) accumulation steps).
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 42

    c.model = ml_collections.ConfigDict(dict(
        init="hf",  # 'hf': LLM + SigLIP Hugging Face dirs (pretrain); 'pretrained': our / PyTorch TinyLLaVA-Video dir;
        # 'scratch': random init from model.scratch (the demo)
        llm_path="",  # init='hf': Hugging Face Qwen2.5 / Phi-2 directory (also gives the tokenizer)
        vision_path="",  # init='hf': Hugging Face SigLIP directory
        pretrained_path="",  # init='pretrained': output of the pretrain stage (`<workdir>/model`) or a published model
        connector="groupresampler",  # groupresampler | naiveresampler | mlp2x_gelu
        num_queries=512,
        group=16,
        num_resampler_layers=3,
        vision_feature_layer=-2,
        vision_feature_select_strategy="patch",
        max_length=3072,  # tokenizer_model_max_length: sequence length after the video tokens are inserted
        dtype="bfloat16",  # compute dtype; parameters that train stay float32 (masters), frozen ones use this dtype
        remat="full",  # '' (off) | full | dots | dots_no_batch: what each decoder block keeps for the backward pass
        vision_remat=False,  # recompute each vision block in the backward pass (matters when the tower trains)
        attn_impl="auto",  # auto (by platform and shape) | xla | cpu | cudnn | splash
    ))

    # 'frozen' or 'full' per component (the original's tune_type_llm / tune_type_vision_tower / tune_type_connector).
    c.freeze = ml_collections.ConfigDict(dict(llm="full", vision="frozen", connector="full"))

    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-5, schedule="cosine", warmup_ratio=0.03, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip=1.0))

    c.train = ml_collections.ConfigDict(dict(
        global_batch=64,
        micro_batch=32,
        epochs=1.0,  # length of the run in passes over the data (used when num_steps == 0)
        num_steps=0,  # > 0: run exactly this many optimizer steps
    ))

    c.data = ml_collections.ConfigDict(dict(
        annotation_files=("dataset/text_files/cleaned_video_openqa.json",),
        video_dirs=("dataset",),
        prepared_dirs=(),  # instead of annotation files: dirs written by `python -m tlv_jax.data.prepare`
        weights=(),  # mixing weights, one per source; () = proportional to the sources' sizes
        tokenizer_dir="",  # '' = the tokenizer of the model's source (llm_path / pretrained_path)
        template="qwen2_base",  # pretrain | qwen2_base | phi | gemma
        num_frames=16,  # uniform frames per video; -1 = 1 fps capped at max_frames
        max_frames=0,
        length_buckets=(1024, 2048, 3072),  # padded sequence lengths after video tokens; one compile per bucket
        num_workers=8,
        read_threads=2,
        worker_buffer_size=1,
        max_bad_fraction=0.01,  # more skipped samples than this stops the run (TooManyBadSamples) ...
        min_samples_for_bad_check=500,  # ... once this many were seen (an all-bad stream stops after this many)
        preflight_samples=64,  # at start-up, the first N entries of each annotation file must name readable files
        # Sequence packing (docs/packing.md): rows of model.max_length tokens holding several samples (length_buckets
        # unused); train.global_batch / micro_batch then count rows. videos_per_row: video slots per row (0: as many
        # as the shortest sample could need); samples_per_row: the expected fill, for sizing epochs in steps.
        packing=False,
        videos_per_row=0,
        samples_per_row=1,
    ))

    # LoRA / QLoRA (docs/lora.md): rank 0 = off. With rank > 0 the layers `targets` names (regular expressions over
    # module paths such as 'llm/layers/3/attn/q') get adapters that train; `freeze` still says which components train
    # in full (an adapted one must be 'frozen'). base_dtype: the frozen base in bfloat16 / float32, or quantised
    # (int8 / int4: QLoRA).
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, base_dtype="bfloat16",
                                            targets=(r"llm/layers/\d+/(attn|mlp)/\w+",)))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=2, async_save=True))
    # dcn_data > 1 splits the data axis into that many groups of devices that share a fast interconnect (one per
    # TPU slice, or per host without one): only the gradient all-reduce crosses between groups.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
    c.log = ml_collections.ConfigDict(dict(every=1, tensorboard=True, progress=True, peak_tflops=0.0))
    # At the end: our checkpoint layout in <workdir>/model, and (torch=True) the PyTorch layout in <workdir>/export.
    c.export = ml_collections.ConfigDict(dict(torch=True, dtype="bfloat16"))
    return c


# ---- pieces the recipe files combine --------------------------------------------------------------------------

def packed(c: ml_collections.ConfigDict, samples_per_row: int = 4, videos_per_row: int = 0) -> None:
    """Sequence packing, batch sizes in rows: about 4 LLaVA-Video-178K samples (512 video tokens + a short
    question and answer) fill a 3072-token row, so both batch sizes are divided by 4, keeping the samples per step
    and the tokens per micro-batch of the unpacked recipe. `videos_per_row` 0: as many slots as the shortest
    sample could need."""
    c.data.update(dict(packing=True, samples_per_row=samples_per_row, videos_per_row=videos_per_row))
    c.train.global_batch = max(1, c.train.global_batch // samples_per_row)
    c.train.micro_batch = max(1, c.train.micro_batch // samples_per_row)


def pretrain_stage(c: ml_collections.ConfigDict) -> None:
    """LLM and vision frozen, connector trained, captions (template 'pretrain'), batch 128, lr 1e-4."""
    c.model.init = "hf"
    c.freeze.update(dict(llm="frozen", vision="frozen", connector="full"))
    c.optim.lr = 1e-4
    c.train.global_batch = 128
    c.data.template = "pretrain"
    c.data.annotation_files = ("dataset/text_files/cleaned_video_caption.json",)
    packed(c)


def finetune_stage(c: ml_collections.ConfigDict, pretrain_name: str, template: str = "qwen2_base") -> None:
    """From the pretrain output: LLM and connector trained, vision frozen, open QA, batch 64, lr 2e-5."""
    c.model.init = "pretrained"
    c.model.pretrained_path = f"workdirs/{pretrain_name}/model"
    c.freeze.update(dict(llm="full", vision="frozen", connector="full"))
    c.optim.lr = 2e-5
    c.train.global_batch = 64
    c.data.template = template
    c.data.annotation_files = ("dataset/text_files/cleaned_video_openqa.json",)
    # 4 video slots, not the 5 a 3072-token row could take: open-QA samples are ~620+ tokens, so a 5th fits in only
    # ~1 row in 5, and an empty slot still costs a whole video encode (docs/packing.md: more real tokens per second).
    packed(c, videos_per_row=4)


def qwen25_3b(c: ml_collections.ConfigDict) -> None:
    c.model.llm_path = "checkpoints/Qwen2.5-3B"
    c.model.vision_path = "checkpoints/siglip-so400m-patch14-384"
    c.model.dtype = "bfloat16"


def qwen3_1p7b(c: ml_collections.ConfigDict) -> None:
    """The base (not post-trained) Qwen3-1.7B, as the published models start from Qwen2.5 base: its tokenizer's eos
    is `<|endoftext|>`, which the `qwen2_base` template closes every answer with (the post-trained model's eos
    `<|im_end|>` would make every finetune sample's labels mismatch)."""
    c.model.llm_path = "checkpoints/Qwen3-1.7B-Base"
    c.model.vision_path = "checkpoints/siglip-so400m-patch14-384"
    c.model.dtype = "bfloat16"


def phi2(c: ml_collections.ConfigDict) -> None:
    """The original trains Phi-2 in fp16; bf16 here (same range as fp32, no loss scaling needed)."""
    c.model.llm_path = "checkpoints/phi-2"
    c.model.vision_path = "checkpoints/siglip-so400m-patch14-384"
    c.model.dtype = "bfloat16"


def group16(c: ml_collections.ConfigDict) -> None:
    c.model.update(dict(connector="groupresampler", num_queries=512, group=16))
    c.data.update(dict(num_frames=16, max_frames=0))


def group_1fps(c: ml_collections.ConfigDict) -> None:
    """1 fps frames capped at 64 (the maintainers' advice); batches carry a frames mask."""
    c.model.update(dict(connector="groupresampler", num_queries=512, group=16))
    c.data.update(dict(num_frames=-1, max_frames=64))


def lora_llm(c: ml_collections.ConfigDict, base_dtype: str = "bfloat16") -> None:
    """The Factory's LoRA recipe on the LLM (r 128, alpha 256, lr 2e-4), connector trained in full; base_dtype
    'int8' / 'int4' is its QLoRA."""
    c.freeze.update(dict(llm="frozen", vision="frozen", connector="full"))
    c.lora.update(dict(rank=128, alpha=256.0, dropout=0.05, base_dtype=base_dtype))
    c.optim.lr = 2e-4


def naive16(c: ml_collections.ConfigDict) -> None:
    c.model.update(dict(connector="naiveresampler", num_queries=512, group=1))
    c.data.update(dict(num_frames=16, max_frames=0))
