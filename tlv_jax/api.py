"""`tlv_jax.load`: a checkpoint directory -> a `LoadedModel`, the model together with what inference needs beside it.

The model holds only traced methods and nothing is registered against it: the tokenizer and the generation defaults
travel in the loaded object, which answers questions about videos and runs the original forward.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import jax

from tlv_jax import inference
from tlv_jax.data.records import load_tokenizer
from tlv_jax.generate import Generator, VideoSampling, recorded_defaults
from tlv_jax.loading import load_model
from tlv_jax.models.tinyllava import TinyLlavaVideo


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model and its directory's inference settings: the prompt `template` (None: its family's chat template) and
    the frame `sampling` its checkpoint records. The tokenizer is read from `path` on first use, so a directory
    without one still runs `forward`."""

    model: TinyLlavaVideo
    path: Path
    template: Optional[str] = None
    sampling: VideoSampling = VideoSampling()

    @functools.cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(str(self.path))

    @functools.cached_property
    def generator(self) -> Generator:
        return Generator(self.model, self.tokenizer, self.template, self.sampling)

    def generate(self, video: Any, prompt: str | Sequence[str], **kwargs: Any) -> str | list[str]:
        """Answers `prompt` about `video` (a path, uint8 frames or PIL images); options as `Generator.generate`."""
        return self.generator.generate(video, prompt, **kwargs)

    def stream(self, video: Any, prompt: str, **kwargs: Any) -> Iterator[str]:
        """Yields the answer's text as it is generated; options as `Generator.stream`."""
        return self.generator.stream(video, prompt, **kwargs)

    def forward(self, input_ids: Any, videos: Any, attention_mask: Any = None, labels: Any = None
                ) -> inference.CausalLMOutput:
        """The original forward (`inference.forward`): `.logits` and `.loss`."""
        return inference.forward(self.model, input_ids, videos, attention_mask, labels)

    def encode_video(self, frames: Any) -> jax.Array:
        """One video's preprocessed frames (F, H, W, 3) -> the connector output (num_queries, hidden)."""
        return inference.encode_video(self.model, frames)


def load(path: str | Path, dtype: str = "float32", param_dtype: str = "float32") -> LoadedModel:
    """Loads a model for inference or fine-tuning. `dtype` is the compute dtype, `param_dtype` the one parameters
    are stored in: float32 masters for fine-tuning (the default); for inference pass the compute dtype, which halves
    the memory and the bytes every decode step reads (each tensor is cast as it is read).

    `path` is a directory written by `convert_weights.py torch2jax` or by training (config.json + tlv_jax.json +
    params/), or a PyTorch TinyLLaVA-Video directory in the published (flat safetensors / bin) or pretrain-stage
    (subfolders) layout, converted in memory. Any mismatch raises `CheckpointError` naming the file or tensor.
    """
    return LoadedModel(load_model(path, dtype, param_dtype), Path(path), **recorded_defaults(path))
