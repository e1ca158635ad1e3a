"""The pure train step: gradient accumulation over k micro-batches equals one batch k times larger, frozen
parameters never move, the loss is the mean over target tokens of the whole global batch, and the jitted step keeps
the state on its shardings without recompiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.models.layers.linear import Dense
from tlv_jax.sharding.mesh import make_mesh, tree_shardings
from tlv_jax.train import optim
from tlv_jax.train import step as st


class Toy(nnx.Module):
    def __init__(self, seed=0):
        self.vision = Dense(6, 8, ("vit_embed", "vit_mlp"), rngs=nnx.Rngs(seed))
        self.connector = Dense(8, 8, ("embed", "mlp"), rngs=nnx.Rngs(seed + 1))
        self.llm = Dense(8, 5, ("mlp", "embed"), rngs=nnx.Rngs(seed + 2))


def toy_loss(model, batch):
    """Token cross-entropy summed over targets (labels -100 ignored), and the number of targets."""
    h = jax.nn.gelu(model.connector(jnp.tanh(model.vision(batch["x"]))))
    logits = model.llm(h).astype(jnp.float32)  # (B, T, V)
    labels = batch["labels"]
    valid = labels != -100
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
    return (ce * valid).sum(), valid.sum()


def make_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, (n, 7)).astype(np.int32)
    labels[rng.random((n, 7)) < 0.4] = -100  # uneven target counts per sample
    return {"x": rng.normal(size=(n, 7, 6)).astype(np.float32), "labels": labels}


def run(accum, mesh, steps=3, freeze=None, dtype=jnp.float32, batches=None):
    freeze = freeze or {"vision": "frozen", "connector": "full", "llm": "full"}
    schedule = optim.make_schedule(1e-2, 10, 0.1)
    tx = optim.make_optimizer(schedule)
    graphdef, params, frozen, rest = st.split_model(Toy(), optim.trainable_filter(freeze), dtype)
    state = st.init_state(params, frozen, rest, tx)
    shardings = tree_shardings(state, mesh)
    fn = st.jit_train_step(st.make_train_step(graphdef, tx, toy_loss, accum_steps=accum, schedule=schedule),
                           shardings, mesh, {"x": 3, "labels": 2})
    state = jax.device_put(state, shardings)
    losses = []
    for b in batches if batches is not None else [make_batch(16, s) for s in range(steps)]:
        state, m = fn(state, b)
        losses.append(float(m["loss"]))
    return state, losses, fn


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("k", [2, 4, 8])
def test_k_micro_batches_equal_one_batch_k_times_larger(k):
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    one, losses1, _ = run(1, mesh)
    acc, losses_k, _ = run(k, mesh)
    np.testing.assert_allclose(losses_k, losses1, rtol=1e-5)
    assert max_diff(one.params, acc.params) <= 1e-5
    assert max_diff(one.opt_state, acc.opt_state) <= 1e-5


def test_loss_is_the_token_mean_of_the_global_batch():
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    b = make_batch(8)
    state0, _, _ = run(1, mesh, batches=[])
    total, count = toy_loss(nnx.merge(*_merged(state0)), b)
    _, losses, _ = run(4, mesh, batches=[b])
    np.testing.assert_allclose(losses[0], float(total / count), rtol=1e-6)


def _merged(state):
    graphdef, *_ = st.split_model(Toy(), optim.trainable_filter({"connector": "full", "llm": "full"}), jnp.float32)
    return graphdef, state.params, state.frozen, state.rest


def test_frozen_parameters_are_bit_identical_and_trained_ones_move():
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    graphdef, params0, frozen0, _ = st.split_model(
        Toy(), optim.trainable_filter({"vision": "frozen", "connector": "full", "llm": "frozen"}), jnp.bfloat16)
    state, _, _ = run(2, mesh, freeze={"vision": "frozen", "connector": "full", "llm": "frozen"}, dtype=jnp.bfloat16)
    for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(state.frozen)):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
    assert set(state.params.keys()) == {"connector"}
    assert max_diff(params0, state.params) > 1e-4


def test_sharded_step_equals_single_device_and_compiles_once():
    single, losses1, _ = run(2, make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    sharded, losses8, fn = run(2, make_mesh(2, 2, 2))
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert max_diff(single.params, sharded.params) <= 1e-5
    assert fn._cache_size() == 1
    kernel = sharded.params["connector"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert sharded.opt_state[1][0].mu["connector"]["kernel"].sharding.spec == kernel.sharding.spec


def test_batch_that_does_not_split_into_micro_batches_is_rejected():
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="batch of 6 does not split into 4 micro-batches"):
        run(4, mesh, batches=[make_batch(6)])
