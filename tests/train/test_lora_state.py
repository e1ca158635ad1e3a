"""A LoRA run on packed rows (`data.packing`): the packer's rows (several samples per row, each with its own video
slot, positions restarting per sample) go through the same split, loss and step as a LoRA run's, and the step
trains: the loss is finite and falls over a few steps on the same rows, and only the adapters change (the frozen
base and every other variable stay bit for bit as they were)."""

import grain
import jax
import ml_collections
import numpy as np
from flax import nnx

from tests.lora.test_adapters import tiny
from tlv_jax.data.packing import PACKED_BATCH_NDIMS, ExpandVideo, pack
from tlv_jax.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tlv_jax.lora.adapters import B
from tlv_jax.lora.spec import LoraSpec
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.train import lora_state, optim, setup
from tlv_jax.train import step as step_lib

FRAMES, LENGTH, VIDEOS = 4, 48, 3


def packed_batch(cfg, rows: int = 2) -> dict[str, np.ndarray]:
    """`rows` rows the loader's packer fills from short samples (a video, a question, an answer to learn)."""
    rng = np.random.default_rng(0)
    size = cfg.vision.image_size

    def sample(i: int) -> dict:
        question, answer = rng.integers(1, 64, 3 + i % 3), rng.integers(1, 64, 2 + i % 2)
        ids = np.concatenate([[IMAGE_TOKEN_INDEX], question, answer]).astype(np.int32)
        labels = np.where(np.arange(len(ids)) > len(question), ids, IGNORE_INDEX).astype(np.int32)
        return {"input_ids": ids, "labels": labels, "frames_mask": np.ones(FRAMES, bool), "sample_index": i,
                "pixel_values": rng.normal(size=(FRAMES, size, size, 3)).astype(np.float32)}

    samples = grain.MapDataset.source([sample(i) for i in range(8)]).map(
        ExpandVideo(cfg.video_tokens(FRAMES))).to_iter_dataset()
    it = iter(pack(samples, length=LENGTH, videos=VIDEOS, pad_id=0, bins=2))
    found = [next(it) for _ in range(rows)]
    return {k: np.stack([r[k] for r in found]) for k in PACKED_BATCH_NDIMS}


def test_a_packed_lora_run_trains_only_the_adapters():
    cfg = tiny("qwen2", "group")
    batch = packed_batch(cfg)
    assert batch["segment_ids"].max(axis=1).min() >= 2  # every row holds several samples
    lora = LoraSpec(rank=4, alpha=8.0, dropout=0.05)  # the recipes' LoRA: every LLM projection, dropout on
    freeze = lora_state.check_freeze(dict(vision="frozen", connector="frozen", llm="frozen"), lora)
    model, _ = lora_state.adapt(TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)), lora, "test", seed=0)
    graphdef, params, frozen, rest = setup.split(model, freeze, lora)
    assert params and all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(params))
    tx = optim.make_optimizer(optim.make_schedule(1e-2, 100, 0.0, "constant"))
    loss = lora_state.with_dropout_rng(setup.loss_fn(ml_collections.ConfigDict({"data": {"num_frames": -1}})),
                                       lora, seed=0)
    train_step = jax.jit(step_lib.make_train_step(graphdef, tx, loss))
    state = step_lib.init_state(params, frozen, rest, tx)
    before = jax.tree.map(np.asarray, (state.params, state.frozen, state.rest))
    losses = []
    for _ in range(5):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.1, losses
    trained = dict(nnx.to_flat_state(state.params))
    for path, old in nnx.to_flat_state(before[0]):
        if path[-1] == B:  # each B left zero: every adapter of the packed forward trained
            assert not np.allclose(np.asarray(trained[path][...]), old[...]), path
    same = jax.tree.map(lambda old, new: bool(np.array_equal(old, np.asarray(new))), before[1:],
                        (state.frozen, state.rest))
    assert all(jax.tree.leaves(same))

