"""TinyLLaVA-Video in PyTorch on transformers' own classes: a SigLIP vision tower, a video connector, and the causal
LM its `text_config` names (Qwen2, Phi, Qwen3...), under the original's parameter names. It mirrors the original's
interface: `input_ids` hold `image_token_index` (-200) where the video goes, and `video` is a (B, F, 3, H, W)
tensor of preprocessed frames or a list with one (F_b, 3, H, W) tensor per sample (frame counts may differ).

Shipped inside every PyTorch export and loaded with `trust_remote_code=True`: imports torch and transformers only.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, SiglipVisionModel

from .configuration_tinyllava import TinyLlavaConfig
from .connector_tinyllava import build_connector

Videos = Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]


class VisionTower(nn.Module):
    """Holds SigLIP as `_vision_tower`, the original's attribute name (and so its checkpoint keys)."""

    def __init__(self, config: TinyLlavaConfig):
        super().__init__()
        self._vision_tower = SiglipVisionModel(config.vision_config)


class Connector(nn.Module):
    """Holds the connector as `_connector`, the original's attribute name."""

    def __init__(self, config: TinyLlavaConfig):
        super().__init__()
        self._connector = build_connector(config.connector_type, config.vision_hidden_size,
                                          config.text_config.hidden_size, config.num_queries,
                                          config.num_resampler_layers, config.group or 1)


class TinyLlavaForConditionalGeneration(PreTrainedModel):
    config_class = TinyLlavaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["VisionTower", "Connector"]

    def __init__(self, config: TinyLlavaConfig):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.vision_tower = VisionTower(config)
        self.connector = Connector(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """One video's frames (F, 3, H, W) -> its video tokens (Q, D): SigLIP's `vision_feature_layer` hidden
        states ('patch' drops the first patch), all frames' tokens in a row, then the connector."""
        tower = self.vision_tower._vision_tower
        frames = frames.to(device=tower.device, dtype=tower.dtype)
        hidden = tower(frames, output_hidden_states=True).hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "patch":
            hidden = hidden[:, 1:]
        return self.connector._connector(hidden.reshape(1, -1, hidden.shape[-1]))[0]

    def embed_multimodal(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], video: Videos,
                         labels: Optional[torch.Tensor] = None, pad_left: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The LLM's inputs: per sample, the real tokens (attention mask) embedded with the placeholder replaced by
        the sample's video tokens, cut to `tokenizer_model_max_length`, then padded (right as the original's
        forward; left for generation) with zero embeddings, mask 0 and label `ignore_index`."""
        cfg = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if len(video) != len(input_ids):
            raise ValueError(f"got {len(video)} videos for {len(input_ids)} samples (one video per sample)")
        embed = self.get_input_embeddings()
        rows, row_labels = [], []
        for b in range(len(input_ids)):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            lab = labels[b][keep] if labels is not None else torch.full_like(ids, cfg.ignore_index)
            text = embed(ids.clamp(min=0))
            at = (ids == cfg.image_token_index).nonzero().flatten().tolist()
            if len(at) > 1:
                raise ValueError(f"sample {b} has {len(at)} video placeholders; one video per sample is supported")
            if at:
                i, tokens = at[0], self.encode_video(video[b]).to(text.dtype)
                text = torch.cat([text[:i], tokens, text[i + 1:]])
                lab = torch.cat([lab[:i], lab.new_full((len(tokens),), cfg.ignore_index), lab[i + 1:]])
            rows.append(text[:cfg.tokenizer_model_max_length])
            row_labels.append(lab[:cfg.tokenizer_model_max_length])
        width = max(len(r) for r in rows)
        embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=embeds.device)
        new_labels = torch.full((len(rows), width), cfg.ignore_index, dtype=torch.long, device=embeds.device)
        for b, (row, lab) in enumerate(zip(rows, row_labels)):
            span = slice(width - len(row), width) if pad_left else slice(0, len(row))
            embeds[b, span], mask[b, span], new_labels[b, span] = row, 1, lab
        return embeds, mask, (new_labels if labels is not None else None)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, video: Optional[Videos] = None,
                inputs_embeds: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        """The original forward: logits over the spliced sequence and, with `labels`, the causal-LM loss (the
        video's positions are not supervised). Without `video` this is the language model's own forward."""
        if video is not None and inputs_embeds is None:
            inputs_embeds, attention_mask, labels = self.embed_multimodal(input_ids, attention_mask, video, labels)
            input_ids = None
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                   inputs_embeds=inputs_embeds, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 video: Optional[Videos] = None, **kwargs: Any) -> torch.Tensor:
        """The language model's `generate` on the spliced prompt (left padded); returns the new tokens only, as the
        original does. Greedy unless `do_sample=True`."""
        if video is None:
            return self.language_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        embeds, mask, _ = self.embed_multimodal(input_ids, attention_mask, video, pad_left=True)
        pad = getattr(self.config, "pad_token_id", None)  # None in the original's own config.json: pad = eos
        kwargs.setdefault("pad_token_id", self.language_model.generation_config.eos_token_id if pad is None else pad)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
