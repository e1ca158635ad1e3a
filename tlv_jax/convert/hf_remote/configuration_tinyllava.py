"""TinyLLaVA-Video's config.json as a transformers config: the original's own fields and `model_type`, so the
original code base still reads the same file, with the LLM and SigLIP parts as real transformers configs.

Shipped inside every PyTorch export and loaded with `trust_remote_code=True`: imports transformers only.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from transformers import AutoConfig, PretrainedConfig, SiglipVisionConfig


class TinyLlavaConfig(PretrainedConfig):
    model_type = "tinyllava"
    sub_configs = {"text_config": AutoConfig, "vision_config": SiglipVisionConfig}

    def __init__(self, text_config: Union[dict, PretrainedConfig, None] = None,
                 vision_config: Union[dict, PretrainedConfig, None] = None, connector_type: str = "groupresampler",
                 num_queries: int = 512, group: int = 16, num_resampler_layers: int = 3,
                 vision_hidden_size: Optional[int] = None, vision_feature_layer: int = -2,
                 vision_feature_select_strategy: str = "patch", tokenizer_model_max_length: int = 3072,
                 image_token_index: int = -200, ignore_index: int = -100, **kwargs: Any):
        if not isinstance(text_config, PretrainedConfig):
            text_config = dict(text_config or {"model_type": "qwen2"})
            text_config = AutoConfig.for_model(text_config.pop("model_type"), **text_config)
        if not isinstance(vision_config, PretrainedConfig):
            vision_config = SiglipVisionConfig(**{k: v for k, v in (vision_config or {}).items() if k != "model_type"})
        self.text_config = text_config
        self.vision_config = vision_config
        self.connector_type = connector_type
        self.num_queries = num_queries
        self.group = group
        self.num_resampler_layers = num_resampler_layers
        self.vision_hidden_size = vision_hidden_size or vision_config.hidden_size
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.tokenizer_model_max_length = tokenizer_model_max_length
        self.image_token_index = image_token_index
        self.ignore_index = ignore_index
        kwargs.setdefault("tie_word_embeddings", False)  # the LLM ties its own head (text_config says whether)
        super().__init__(**kwargs)
        self.hidden_size = text_config.hidden_size
        self.vocab_size = text_config.vocab_size
