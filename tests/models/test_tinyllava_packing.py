"""Packed rows (several samples per row, `tlv_jax.data.packing`) train the same model as padded samples: the same
loss and gradients, positions and targets per sample, and no attention from one sample into another."""

from __future__ import annotations

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.sharding.tiny import FRAMES, IMAGE, VOCAB, tiny_config
from tlv_jax.config import ConnectorConfig
from tlv_jax.data.packing import ExpandVideo, pack
from tlv_jax.data.templates import collate
from tlv_jax.models.tinyllava import TinyLlavaVideo

LENGTH, SLOTS = 64, 4


def model_config(kind: str, impl: str = "xla"):
    cfg = tiny_config()
    if kind == "mlp":  # video tokens depend on the frame count (frames masked)
        cfg = dataclasses.replace(cfg, connector=ConnectorConfig(kind="mlp", vision_hidden_size=32, hidden_size=32))
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, attn_impl=impl),
                               vision=dataclasses.replace(cfg.vision, attn_impl=impl), tokenizer_model_max_length=LENGTH)


def samples(n: int, seed: int, variable_frames: bool) -> list[dict]:
    """Processed samples as the loader makes them: text with one placeholder, targets after the prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(6, 14))
        ids = rng.integers(1, VOCAB, length).astype(np.int32)
        ids[int(rng.integers(1, 3))] = -200
        labels = np.where(np.arange(length) > 3, ids, -100).astype(np.int32)
        frames = int(rng.integers(1, FRAMES + 1)) if variable_frames else FRAMES
        pixels = np.zeros((FRAMES, IMAGE, IMAGE, 3), np.float32)
        pixels[:frames] = rng.normal(size=(frames, IMAGE, IMAGE, 3))
        out.append({"input_ids": ids, "labels": labels, "pixel_values": pixels,
                    "frames_mask": np.arange(FRAMES) < frames, "sample_index": np.int64(i)})
    return out


def padded(items: list[dict]) -> dict[str, np.ndarray]:
    text = collate([s["input_ids"] for s in items], [s["labels"] for s in items], pad_id=0, eos_id=None)
    return {**text, "pixel_values": np.stack([s["pixel_values"] for s in items]),
            "frames_mask": np.stack([s["frames_mask"] for s in items])}


def packed(items: list[dict], cfg) -> dict[str, np.ndarray]:
    """The same samples through the loader's own packing (Grain first-fit), as one batch of rows."""
    tokens = tuple(cfg.video_tokens(n) for n in range(1, FRAMES + 1))
    ds = grain.MapDataset.source(items).map(ExpandVideo(cfg.video_tokens(FRAMES), tokens)).to_iter_dataset()
    rows = list(pack(ds, LENGTH, SLOTS, pad_id=0, bins=8))
    assert sorted(i for r in rows for i in r["sample_index"] if i >= 0) == list(range(len(items)))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def summed_loss(model: TinyLlavaVideo, batch: dict, masked: bool) -> tuple[jax.Array, jax.Array]:
    frames = jnp.asarray(batch["frames_mask"]) if masked else None
    if "segment_ids" in batch:
        loss, aux = model.forward_packed(batch["input_ids"], batch["labels"], batch["segment_ids"],
                                         batch["positions"], batch["pixel_values"], frames, ce_chunk=16)
    else:
        loss, aux = model.forward_batch(batch["input_ids"], batch["labels"], batch["attention_mask"],
                                        batch["pixel_values"], frames, ce_chunk=16)
    return loss * aux["num_tokens"], aux["num_tokens"]


@pytest.mark.parametrize("kind", ["group", "mlp"])
def test_packed_loss_and_gradients_equal_the_padded_ones(kind):
    cfg = model_config(kind)
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(0))
    items = samples(9, seed=1, variable_frames=kind == "mlp")
    graphdef, params = nnx.split(model, nnx.Param)
    rows = packed(items, cfg)
    assert rows["input_ids"].shape[0] < len(items)  # several samples share a row

    @jax.jit  # both layouts in one program: one compile per connector kind (eager autodiff is slower than that)
    def both(p, padded_batch, packed_batch):
        f = lambda q, b: summed_loss(nnx.merge(graphdef, q), b, masked=kind == "mlp")  # noqa: E731
        return [jax.value_and_grad(f, has_aux=True)(p, b) for b in (padded_batch, packed_batch)]

    ((total_a, count_a), grads_a), ((total_b, count_b), grads_b) = both(params, padded(items), rows)
    assert int(count_a) == int(count_b) > 0
    np.testing.assert_allclose(float(total_b), float(total_a), rtol=1e-5)
    flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(flat_a) == len(flat_b)
    scale = max(float(np.max(np.abs(a))) for a in flat_a)  # (some leaves' true gradient is 0: fp32 noise there)
    for a, b in zip(flat_a, flat_b):
        assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= 1e-5 * scale


def test_positions_and_targets_per_segment_equal_each_samples_own():
    cfg = model_config("group")
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(0))
    items = samples(7, seed=2, variable_frames=False)
    rows = packed(items, cfg)
    mm = jax.jit(model.packed_inputs)(rows["input_ids"], rows["segment_ids"], rows["positions"],
                                      rows["pixel_values"], labels=rows["labels"])
    alone = padded(items)  # every sample unpacked, in one padded batch: row i is sample i
    ref = jax.jit(model.multimodal_inputs)(alone["input_ids"], alone["attention_mask"], alone["pixel_values"],
                                           labels=alone["labels"])
    for r, row_indices in enumerate(rows["sample_index"]):
        for slot, index in enumerate(row_indices):
            if index < 0:
                continue
            n = int(ref.mask[index].sum())
            where = np.flatnonzero(np.asarray(mm.segments[r]) == slot + 1)
            assert len(where) == n
            np.testing.assert_array_equal(np.asarray(mm.positions[r, where]), np.arange(n))
            np.testing.assert_array_equal(np.asarray(mm.labels[r, where[1:]]), np.asarray(ref.labels[index, 1:n]))
            assert int(mm.labels[r, where[0]]) == -100  # nothing before a sample predicts its first token
            np.testing.assert_allclose(np.asarray(mm.embeds[r, where]), np.asarray(ref.embeds[index, :n]), rtol=1e-5,
                                       atol=1e-6)  # (the video tokens come from a batch of slots: fp32 rounding)


@pytest.mark.parametrize("impl", ["xla", "cpu", "splash"])
def test_perturbing_one_sample_leaves_the_others_logits_bit_identical(impl):
    cfg = model_config("group", impl)
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(0))
    items = samples(3, seed=3, variable_frames=False)
    rows = packed(items, cfg)
    assert rows["input_ids"].shape[0] == 1 and (rows["sample_index"][0] >= 0).sum() == 3

    @jax.jit  # one compile for both calls (eager dispatch of every op costs more)
    def jitted(ids, segments, positions, pixels):
        return model.llm.logits(model.hidden_states(model.packed_inputs(ids, segments, positions, pixels)))

    def logits(batch):
        return np.asarray(jitted(batch["input_ids"], batch["segment_ids"], batch["positions"], batch["pixel_values"]))

    before = logits(rows)
    changed = {k: v.copy() for k, v in rows.items()}
    middle = changed["segment_ids"] == 2
    text = middle & (changed["input_ids"] >= 0)
    changed["input_ids"][text] = (changed["input_ids"][text] + 7) % VOCAB
    changed["pixel_values"][:, 1] += 1.0
    after = logits(changed)
    others = (rows["segment_ids"][0] > 0) & ~middle[0]  # (padding positions see no key: unspecified, unused)
    assert others[~middle[0].cumsum().astype(bool)].any() and others[middle[0].cumsum() == middle[0].sum()].any()
    assert np.array_equal(before[0, others], after[0, others])
    assert not np.allclose(before[0, middle[0]], after[0, middle[0]])
