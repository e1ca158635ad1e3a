"""A checkpoint saved on a (2, 4, 1) mesh restores on (1, 8, 1) and on a single device, into an abstract tree that
carries the current shardings, bit for bit, and training continues with the same losses as the run that never
moved."""

import jax
import numpy as np
import pytest

from tlv_jax.sharding.mesh import make_mesh
from tlv_jax.train.checkpoint import Checkpointer, abstract_like

from .tiny import Trainer, assert_trees_close


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(checkpoint dir, host copy of the state saved at step 2, losses of steps 2-3 without moving)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    trainer = Trainer(make_mesh(2, 4, 1))
    state, _ = trainer.run(trainer.init(), range(2))
    ckpt = Checkpointer(directory, every=1000, keep=2)
    ckpt.save(2, state, {"next_step": 2}, force=True)
    ckpt.close()
    host = jax.device_get(state)
    _, losses = trainer.run(state, range(2, 4))
    return directory, host, losses


@pytest.mark.parametrize("target", ["mesh 1x8x1", "one device"])
def test_restore_on_another_mesh_then_train_on(saved, target):
    directory, host, losses = saved
    mesh = make_mesh(1, 8, 1) if target == "mesh 1x8x1" else make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = Trainer(mesh)
    ckpt = Checkpointer(directory, every=1000, keep=2)
    state, position = ckpt.restore(ckpt.latest_step(), abstract_like(trainer.abstract, trainer.shardings))
    ckpt.close()
    assert position == {"next_step": 2} and int(state.step) == 2

    got = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, jax.Array))
    want = jax.tree.leaves(trainer.shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    assert all(x.sharding == s for x, s in zip(got, want, strict=True))
    kernel = state.params["llm"]["layers"][0]["mlp"]["gate"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == ((4, 64) if target == "mesh 1x8x1" else (32, 64))
    assert_trees_close(state, host, rtol=0, atol=0)

    _, moved = trainer.run(state, range(2, 4))
    np.testing.assert_allclose(moved, losses, rtol=1e-5)
