"""The key tables of whole checkpoints, read in both directions: SigLIP's own, each decoder family's and each
connector's (from their units), and the composed TinyLLaVA-Video layout with its component prefixes.
The rule vocabulary (`Rule`, `Transform`, `expand`) is `tlv_jax.convert.rules`.
"""

from __future__ import annotations

from tlv_jax.config import ConnectorConfig, LLMConfig, VisionConfig
from tlv_jax.convert.rules import C, Entry, L, Rule, dense, expand, layernorm
from tlv_jax.models import connectors, families
from tlv_jax.models.tinyllava_config import ModelConfig


# ---- SigLIP vision tower (keys of `SiglipVisionModel`) -------------------------------------------------------

def siglip_rules(cfg: VisionConfig) -> list[Rule]:
    p, lp = "vision_model.", "vision_model.encoder.layers.{i}."
    rules = [
        Rule(p + "embeddings.patch_embedding.weight", "patch_embed.kernel", C),
        Rule(p + "embeddings.patch_embedding.bias", "patch_embed.bias"),
        Rule(p + "embeddings.position_embedding.weight", "pos_embed.embedding"),
        *layernorm(lp + "layer_norm1", "layers.{i}.ln1"),
        *dense(lp + "self_attn.q_proj", "layers.{i}.attn.q"),
        *dense(lp + "self_attn.k_proj", "layers.{i}.attn.k"),
        *dense(lp + "self_attn.v_proj", "layers.{i}.attn.v"),
        *dense(lp + "self_attn.out_proj", "layers.{i}.attn.o"),
        *layernorm(lp + "layer_norm2", "layers.{i}.ln2"),
        *dense(lp + "mlp.fc1", "layers.{i}.mlp.fc1"),
        *dense(lp + "mlp.fc2", "layers.{i}.mlp.fc2"),
        *layernorm(p + "post_layernorm", "post_ln"),
    ]
    if cfg.use_head:
        h = p + "head."
        rules += [
            Rule(h + "probe", "head.probe"),
            Rule(h + "attention.in_proj_weight", "head.attn_in.kernel", L),
            Rule(h + "attention.in_proj_bias", "head.attn_in.bias"),
            *dense(h + "attention.out_proj", "head.attn_out"),
            *layernorm(h + "layernorm", "head.ln"),
            *dense(h + "mlp.fc1", "head.mlp.fc1"),
            *dense(h + "mlp.fc2", "head.mlp.fc2"),
        ]
    return rules


def llm_rules(cfg: LLMConfig) -> list[Rule]:
    """Keys of the decoder's own HF checkpoint (`model.…`, `lm_head.…`), from its family."""
    return families.get(cfg.family).key_rules(cfg)


def connector_rules(cfg: ConnectorConfig) -> list[Rule]:
    """Keys of the original `_connector` module, from the connector's unit."""
    return connectors.get(cfg.kind).key_rules(cfg)


# ---- The composed TinyLLaVA-Video model -----------------------------------------------------------------------

#: (our attribute, HF state-dict prefix) of the three components of `TinyLlavaVideo`.
COMPONENT_PREFIXES = {
    "vision": "vision_tower._vision_tower.",
    "connector": "connector._connector.",
    "llm": "language_model.",
}


def tinyllava_entries(cfg: ModelConfig, components: tuple[str, ...] = ("vision", "connector", "llm"),
                      published: bool = True) -> list[Entry]:
    """Every tensor of a TinyLLaVA-Video checkpoint. `published=True` gives the flat published layout's keys
    (with component prefixes); False gives each component's own keys (pretrain-stage subfolders), while our
    paths always carry the component attribute ('llm.layers.0...')."""
    parts = {
        "vision": (siglip_rules(cfg.vision), cfg.vision.num_layers),
        "connector": (connector_rules(cfg.connector), cfg.connector.num_layers),
        "llm": (llm_rules(cfg.llm), cfg.llm.num_layers),
    }
    out: list[Entry] = []
    for name in components:
        rules, n = parts[name]
        hf_prefix = COMPONENT_PREFIXES[name] if published else ""
        out += expand(rules, n, hf_prefix, name + ".")
    return out
