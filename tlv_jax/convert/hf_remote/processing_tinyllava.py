"""Turns a question and a video into TinyLLaVA-Video's inputs the way the model was trained and evaluated: frames
sampled uniformly over the whole video (`num_frames`, or 1 per second up to `max_frames` when `num_frames` is -1),
SigLIP preprocessing, and the chat prompt of the export (`prompt_format`, with `<image>` where the video goes),
tokenised piece by piece around `<image>` with -200 in its place.

Shipped inside every PyTorch export and loaded with `trust_remote_code=True`: imports torch, numpy and transformers
only.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import is_decord_available
from transformers.video_utils import load_video

IMAGE_TOKEN = "<image>"
QUESTION = "{question}"


def frame_indices(total: int, duration: float, num_frames: int, max_frames: Optional[int]) -> np.ndarray:
    """`num_frames` indices spread evenly over [0, total - 1] (truncated), or with -1 one per second of
    `duration`, at least 1 and at most `max_frames`."""
    if num_frames == -1:
        num_frames = max(1, int(duration)) if max_frames is None else min(max_frames, max(1, int(duration)))
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or -1 (1 fps), got {num_frames}")
    return np.linspace(0, total - 1, num_frames, dtype=int)


class TinyLlavaProcessor(ProcessorMixin):
    """SigLIP's image processor (PIL) and the LLM's tokenizer; `processor_config.json` holds the rest."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, prompt_format: str = "",
                 num_frames: int = 16, max_frames: Optional[int] = 16, **kwargs: Any):
        if QUESTION not in prompt_format or IMAGE_TOKEN not in prompt_format:
            raise ValueError(f"prompt_format (processor_config.json) must hold {QUESTION} and {IMAGE_TOKEN}, "
                             f"got {prompt_format!r}")
        self.prompt_format = prompt_format
        self.num_frames = num_frames
        self.max_frames = max_frames
        super().__init__(image_processor, tokenizer, **kwargs)

    def read_video(self, video: Any) -> Any:
        """A path is decoded (decord when installed, else PyAV) at the sampled frames; uint8 frames (F, H, W, 3)
        and lists of PIL images are taken as they are."""
        if not isinstance(video, (str, os.PathLike)):
            return list(video)
        frames, _ = load_video(
            str(video), backend="decord" if is_decord_available() else "pyav",
            sample_indices_fn=lambda metadata, **_: frame_indices(
                metadata.total_num_frames, metadata.duration, self.num_frames, self.max_frames))
        return list(frames)

    def prompt_ids(self, question: str) -> list[int]:
        """The chat prompt's ids: each piece around `<image>` tokenised on its own, joined by -200. A BOS the
        tokenizer puts at the start of every piece is kept once (Gemma)."""
        prompt = self.prompt_format.replace(QUESTION, question.replace(IMAGE_TOKEN, "").strip())
        pieces = [list(self.tokenizer(piece).input_ids) for piece in prompt.split(IMAGE_TOKEN)]
        bos = self.tokenizer.bos_token_id
        skip = 1 if pieces[0] and bos is not None and pieces[0][0] == bos else 0
        ids = pieces[0][:skip]
        for i, piece in enumerate(pieces):
            ids += ([-200] if i else []) + piece[skip:]
        return ids

    def __call__(self, text: Union[str, Sequence[str]], videos: Any = None, return_tensors: str = "pt"
                 ) -> BatchFeature:
        """`text`: a question or a list of questions; `videos`: one video for all of them or one per question
        (a path, uint8 frames (F, H, W, 3) or a list of PIL images). Returns torch tensors: `input_ids` and
        `attention_mask` (right padded) and `video`, (B, F, 3, S, S) frames or, when frame counts differ, a list of
        (F_b, 3, S, S)."""
        if return_tensors != "pt":
            raise ValueError(f"the processor returns torch tensors (return_tensors='pt'), not {return_tensors!r}")
        if videos is None:
            raise ValueError("no video given: pass a path, uint8 frames (F, H, W, 3) or a list of PIL images")
        questions = [text] if isinstance(text, str) else list(text)
        videos = [videos] * len(questions) if is_one_video(videos) else list(videos)
        if len(videos) != len(questions):
            raise ValueError(f"{len(videos)} videos for {len(questions)} questions: give one, or one per question")
        rows = [self.prompt_ids(q) for q in questions]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        frames = [torch.from_numpy(self.image_processor(images=self.read_video(v), return_tensors="np")["pixel_values"])
                  for v in videos]
        video = torch.stack(frames) if len({f.shape for f in frames}) == 1 else frames
        return BatchFeature({"input_ids": ids, "attention_mask": mask, "video": video})


def is_one_video(video: Any) -> bool:
    """A path, a (F, H, W, 3) array or a list of PIL images (as opposed to a list of such videos)."""
    if isinstance(video, (str, os.PathLike)):
        return True
    if isinstance(video, np.ndarray):
        return video.ndim == 4
    return isinstance(video, (list, tuple)) and bool(video) and hasattr(video[0], "convert")
