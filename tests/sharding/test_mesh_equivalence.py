"""One training step of the real TinyLLaVA-Video (tiny sizes) with the trainer's step gives the same loss and the
same updated parameters and optimizer state on every (data, fsdp, tensor) mesh of 8 devices as on one device, and
tensor parallelism never splits a KV head."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tlv_jax.sharding.mesh import make_mesh

from .tiny import Trainer, assert_trees_close, tiny_config

MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]


@pytest.fixture(scope="module")
def single():
    trainer = Trainer(make_mesh(1, 1, 1, devices=jax.devices()[:1]), tx="sgd")
    return trainer.run(trainer.init(), range(1))


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_one_step_on_a_mesh_equals_one_device(single, shape):
    ref_state, ref_losses = single
    trainer = Trainer(make_mesh(*shape), tx="sgd")
    state, losses = trainer.run(trainer.init(), range(1))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_trees_close(state.params, ref_state.params)
    assert_trees_close(state.opt_state, ref_state.opt_state)
    assert_trees_close(state.frozen, ref_state.frozen, rtol=0, atol=0)  # frozen: untouched, bit for bit
    kernel = state.params["llm"]["layers"][0]["mlp"]["gate"]["kernel"]
    assert kernel.sharding.spec == trainer.shardings.params["llm"]["layers"][0]["mlp"]["gate"]["kernel"].spec
    expected = tuple(a if shape[i] > 1 else None for i, a in ((1, "fsdp"), (2, "tensor")))
    assert kernel.sharding.spec == P(*expected)
    assert kernel.addressable_shards[0].data.shape == (32 // shape[1], 64 // shape[2])


def test_tensor_parallel_keeps_kv_heads_whole(single):
    """2 KV heads on tensor=4: the k/v kernels stay whole on the tensor axis (their fused width of 16 would divide
    by 4 and split heads), q/o/MLP still split, and the step still equals one device."""
    cfg = tiny_config(num_heads=4, num_kv_heads=2)
    trainer = Trainer(make_mesh(1, 2, 4), cfg, tx="sgd")
    rules = dict(trainer.rules)
    assert rules["kv_heads"] is None and rules["heads"] == "tensor"
    attn = trainer.shardings.params["llm"]["layers"][0]["attn"]
    assert attn["k"]["kernel"].spec == P("fsdp", None) == attn["v"]["kernel"].spec
    assert attn["q"]["kernel"].spec == P("fsdp", "tensor")
    assert attn["o"]["kernel"].spec == P("tensor", "fsdp")
    assert trainer.shardings.params["llm"]["layers"][0]["mlp"]["up"]["kernel"].spec == P("fsdp", "tensor")

    ref_state, ref_losses = single  # the default tiny config has these head counts
    assert ref_state.params["llm"]["layers"][0]["attn"]["k"]["kernel"].shape == (32, 16)
    state, losses = trainer.run(trainer.init(), range(1))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_trees_close(state.params, ref_state.params)
