"""Annotation entries -> tokenised text and sampled frames, with `BadSample` for whatever the data gets wrong.

Shared by the training loader (`pipeline`) and the TFDS preparer (`tfds_builder`), which must read an entry the same
way for their batches to be identical; generation loads its tokenizer here too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
from transformers import AutoTokenizer, PretrainedConfig

from tlv_jax.data.bad_samples import MALFORMED, MISMATCH, MISSING_VIDEO, NO_IMAGE, UNDECODABLE_VIDEO, BadSample
from tlv_jax.data.frames import VideoDecodeError, read_frames
from tlv_jax.data.templates import IMAGE_TOKEN_INDEX, EncodedText, MalformedConversation, encode_conversation


def load_tokenizer(tokenizer_dir: str) -> Any:
    """The Hugging Face tokenizer of the LLM (transformers 5 gives the same ids for the original's use_fast=False).
    An empty config stops transformers from reading the directory's config.json, whose `tinyllava` model type it
    does not know (it warns on every load); the class comes from tokenizer_config.json."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False, config=PretrainedConfig())
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no pad token; the original set pad = eos for Qwen/phi")
    return tokenizer


def load_annotations(path: str) -> list[Any]:
    """A LLaVA-Video-178K style JSON list of {'id', 'video', 'conversations'} (entries are checked per sample)."""
    with open(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def sample_id(record: Any, index: int) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


def encode_record(record: Any, tokenizer: Any, template: str) -> EncodedText:
    """Tokenised text of one annotation entry; raises `BadSample` for no/several '<image>', bad structure, mismatch."""
    if not isinstance(record, dict) or "conversations" not in record:
        raise BadSample(MALFORMED, "not a mapping with 'conversations'")
    try:
        encoded = encode_conversation(record["conversations"], tokenizer, template)
    except MalformedConversation as e:
        raise BadSample(MALFORMED, str(e)) from None
    placeholders = int(np.sum(encoded.input_ids == IMAGE_TOKEN_INDEX))
    if placeholders == 0:
        raise BadSample(NO_IMAGE, "no '<image>' in the conversation")
    if placeholders > 1:
        raise BadSample(MALFORMED, f"{placeholders} '<image>' placeholders for one video")
    if encoded.mismatch:
        raise BadSample(MISMATCH, f"label rounds do not add up to the tokenised prompt ...{encoded.prompt[-160:]!r}")
    return encoded


def read_record_frames(record: dict, video_dir: str, num_frames: int, max_frames: Optional[int],
                       decode_threads: int = 0) -> np.ndarray:
    """Sampled uint8 (F, H, W, 3) frames of the entry's video; raises `BadSample` for missing or undecodable files."""
    if not isinstance(record.get("video"), str):
        raise BadSample(MISSING_VIDEO, "no 'video' path in the entry")
    path = os.path.join(video_dir, record["video"])
    if not os.path.isfile(path):
        raise BadSample(MISSING_VIDEO, f"{path} does not exist")
    try:
        return read_frames(path, num_frames=num_frames, max_frames=max_frames, num_threads=decode_threads)
    except VideoDecodeError as e:
        raise BadSample(UNDECODABLE_VIDEO, str(e)) from None
