"""A tiny TinyLLaVA-Video, deterministic synthetic batches and the trainer's step on any mesh: what the sharding
tests (and the two-process worker) train. Sizes divide by every mesh axis of 8 devices, so sharding is real."""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from tlv_jax.config import ConnectorConfig, LLMConfig, VisionConfig
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig
from tlv_jax.sharding.global_batch import global_batch, process_rows
from tlv_jax.sharding.mesh import place, tree_shardings
from tlv_jax.sharding.rules import model_rules
from tlv_jax.train import optim
from tlv_jax.train import step as st

FRAMES, IMAGE, TEXT, VOCAB = 4, 16, 10, 64
MIN_SHARD_BYTES = 512  # the tiny model's norms and biases stay replicated, its kernels shard
FREEZE = {"vision": "frozen", "connector": "full", "llm": "full"}


def tiny_config(dtype: str = "float32", num_heads: int = 4, num_kv_heads: int = 2) -> ModelConfig:
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, image_size=IMAGE,
                          patch_size=8, use_head=False, dtype=dtype)
    llm = LLMConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=num_heads,
                    num_kv_heads=num_kv_heads, head_dim=8, rope_theta=10000.0, dtype=dtype)
    connector = ConnectorConfig(kind="group", num_queries=8, group=2, num_layers=1, vision_hidden_size=32,
                                hidden_size=32, dim_head=8, heads=2, dtype=dtype)
    return ModelConfig(vision=vision, llm=llm, connector=connector, vision_feature_layer=-1,
                       tokenizer_model_max_length=64)


def make_batch(rows: int, seed: int) -> dict[str, np.ndarray]:
    """`rows` samples: text with the video placeholder at position 1, random right padding and targets."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (rows, TEXT)).astype(np.int32)
    ids[:, 1] = -200
    lengths = rng.integers(5, TEXT + 1, rows)
    mask = np.arange(TEXT)[None] < lengths[:, None]
    labels = np.where(mask & (np.arange(TEXT)[None] > 2), ids, -100).astype(np.int32)
    pixels = rng.normal(size=(rows, FRAMES, IMAGE, IMAGE, 3)).astype(np.float32)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels,
            "frames_mask": np.ones((rows, FRAMES), bool)}


def batch_for_step(step: int, rows: int = 8) -> dict[str, np.ndarray]:
    return make_batch(rows, seed=1000 + step)


def loss_fn(model: TinyLlavaVideo, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, target tokens), as the trainer's loss for uniformly sampled frames."""
    loss, aux = model.forward_batch(batch["input_ids"], batch["labels"], batch["attention_mask"],
                                    batch["pixel_values"], None, ce_chunk=8)
    count = aux["num_tokens"].astype(jnp.float32)
    return loss * count, count


def make_tx(kind: str) -> tuple[Any, Any]:
    """'adamw': the recipes' optimizer (clip, AdamW, warm-up then cosine over 20 steps). 'sgd': clip then SGD with
    momentum, a linear update: its parameters and momentum compare the gradients themselves, where AdamW's
    per-element normalisation turns fp32 summation-order noise of near-zero gradients into ~1e-6 steps."""
    if kind == "adamw":
        schedule = optim.make_schedule(1e-3, 20, 0.1)
        return optim.make_optimizer(schedule, weight_decay=0.01), schedule
    schedule = optim.make_schedule(0.5, 20, 0.0, "constant")
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(schedule, momentum=0.9)), schedule


@functools.lru_cache(maxsize=4)
def host_state(cfg: ModelConfig, seed: int, freeze: tuple[tuple[str, str], ...], tx: str) -> st.TrainState:
    """The initial train state as host arrays, built once per test module and placed on each mesh."""
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(seed))
    _, params, frozen, rest = st.split_model(model, optim.trainable_filter(dict(freeze)), jnp.dtype(cfg.llm.dtype))
    return jax.device_get(st.init_state(params, frozen, rest, make_tx(tx)[0]))


class Trainer:
    """The trainer's pieces (split model, optimizer, pure step) jitted with the sharding rules on
    `mesh`. XLA's backend optimisation is off: it halves the compile time and leaves the arithmetic alone."""

    def __init__(self, mesh: Mesh, cfg: Optional[ModelConfig] = None, *, seed: int = 0, tx: str = "adamw",
                 min_shard_bytes: int = MIN_SHARD_BYTES, freeze: Mapping[str, str] = FREEZE):
        self.cfg = cfg or tiny_config()
        self.mesh = mesh
        self.tx, schedule = make_tx(tx)
        self._host = host_state(self.cfg, seed, tuple(sorted(freeze.items())), tx)
        self.abstract = jax.eval_shape(lambda: self._host)
        graphdef = nnx.split(nnx.eval_shape(lambda: TinyLlavaVideo(self.cfg, rngs=nnx.Rngs(seed))),
                             optim.trainable_filter(freeze), nnx.Param, ...)[0]
        self.rules = model_rules(self.cfg, mesh.shape)
        self.shardings = tree_shardings(self.abstract, mesh, self.rules, min_shard_bytes)
        step_fn = st.make_train_step(graphdef, self.tx, loss_fn, schedule=schedule)
        ndims = {k: v.ndim for k, v in make_batch(1, 0).items()}
        self.step_fn = st.jit_train_step(step_fn, self.shardings, mesh, ndims,
                                         compiler_options={"xla_backend_optimization_level": 0})

    def init(self) -> st.TrainState:
        return place(self._host, self.shardings)

    def run(self, state: st.TrainState, steps: range, rows: int = 8) -> tuple[st.TrainState, list[float]]:
        """Trains on the batches of `steps`; each process feeds only its own rows of each global batch."""
        mine = process_rows(self.mesh, rows)
        losses = []
        for s in steps:
            local = {k: v[mine] for k, v in batch_for_step(s, rows).items()}
            state, metrics = self.step_fn(state, global_batch(local, self.mesh))
            losses.append(float(metrics["loss"]))
        return state, losses


def assert_trees_close(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Every array of `a` within `rtol` of `b`, relative to the largest |b| of that array (plus `atol`, far below
    any real update: a key bias has a zero gradient in exact arithmetic, so AdamW turns rounding noise into its
    step, on one device and on eight alike)."""
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        err = float(np.abs(x - y).max(initial=0.0))
        bound = rtol * float(np.abs(y).max(initial=0.0)) + atol
        assert err <= bound, f"{jax.tree_util.keystr(path)}: max |diff| {err:.3g} > {bound:.3g}"
