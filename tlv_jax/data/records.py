"""Annotation entries -> tokenised text and sampled frames, with `BadSample` for whatever the data gets wrong.

Shared by the training loader (`pipeline`) and the TFDS preparer (`tfds_builder`), which must read an entry the same
way for their batches to be identical; generation loads its tokenizer here too.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np
from etils import epath
from transformers import AutoTokenizer, PretrainedConfig

from tlv_jax.data.bad_samples import MALFORMED, MISMATCH, MISSING_VIDEO, NO_IMAGE, BadSample
from tlv_jax.data.errors import DataError
from tlv_jax.data.frames import VideoDecodeError, check_file, read_frames
from tlv_jax.data.templates import IMAGE_TOKEN_INDEX, EncodedText, MalformedConversation, encode_conversation
from tlv_jax.paths import is_url


def load_tokenizer(tokenizer_dir: str) -> Any:
    """The Hugging Face tokenizer of the LLM (transformers 5 gives the same ids for the original's use_fast=False).
    An empty config stops transformers from reading the directory's config.json, whose `tinyllava` model type it
    does not know (it warns on every load); the class comes from tokenizer_config.json. A folder in a bucket
    (gs://..., as Beam workers of `prepare` get it) is copied to a local one first: transformers reads local files."""
    local = _local_copy(tokenizer_dir) if is_url(tokenizer_dir) else tokenizer_dir
    tokenizer = AutoTokenizer.from_pretrained(local, use_fast=False, config=PretrainedConfig())
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no pad token; the original set pad = eos for Qwen/phi")
    return tokenizer


# The files of a tokenizer folder that make its ids (a model folder also holds weights, not copied or hashed).
TOKENIZER_FILES = re.compile(r"(tokenizer|vocab|merges|special_tokens|added_tokens|chat_template).*")


@functools.lru_cache(maxsize=None)
def _local_copy(remote_dir: str) -> str:
    """A local temporary copy of the tokenizer files of `remote_dir` (once per process)."""
    local = tempfile.mkdtemp(prefix="tlv-tokenizer-")
    for path in epath.Path(remote_dir).iterdir():
        if TOKENIZER_FILES.fullmatch(path.name):
            path.copy(os.path.join(local, path.name))
    return local


def load_annotations(path: str) -> list[Any]:
    """A LLaVA-Video-178K style JSON list of {'id', 'video', 'conversations'} (entries are checked per sample);
    `DataError` naming the file when it cannot be read, is not JSON or not a list. The path may be a bucket
    (gs://...): Beam workers of `prepare` read it there."""
    try:
        with epath.Path(path).open(encoding="utf-8") as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {path}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(records, list):
        raise DataError(f"annotation file {path}: expected a JSON list of samples, got {type(records).__name__}")
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


def record_video(record: Any, video_dir: str) -> str:
    """The path of the entry's video under `video_dir`; `BadSample` when the entry names none."""
    if not isinstance(record, dict) or not isinstance(record.get("video"), str):
        raise BadSample(MISSING_VIDEO, "no 'video' path in the entry")
    return os.path.join(video_dir, record["video"])


@contextmanager
def _video_reasons() -> Iterator[None]:
    """A reader's `VideoDecodeError` -> `BadSample` under its code (missing, not a file, unreadable...)."""
    try:
        yield
    except VideoDecodeError as e:
        raise BadSample(e.code, str(e)) from None


def check_record_video(record: Any, video_dir: str) -> None:
    """Raises `BadSample` when the entry's video is not a readable file; decodes nothing (the start-up check)."""
    with _video_reasons():
        check_file(record_video(record, video_dir))


def read_record_frames(record: dict, video_dir: str, num_frames: int, max_frames: Optional[int],
                       decode_threads: int = 0) -> np.ndarray:
    """Sampled uint8 (F, H, W, 3) frames of the entry's video; raises `BadSample` (with the reader's reason) for
    files that are not there or do not decode."""
    with _video_reasons():
        return read_frames(record_video(record, video_dir), num_frames=num_frames, max_frames=max_frames,
                           num_threads=decode_threads)
