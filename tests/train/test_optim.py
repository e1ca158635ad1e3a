"""The optimizer matches the original recipe (HF Trainer's AdamW, cosine with warm-up, clipping) and freezes by
component: frozen parameters get no optimizer state and are stored in the compute dtype."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tlv_jax.models.layers.linear import Dense
from tlv_jax.train import optim
from tlv_jax.train.step import split_model


class Toy(nnx.Module):
    def __init__(self):
        self.vision = Dense(3, 4, ("vit_embed", "vit_mlp"), rngs=nnx.Rngs(0))
        self.connector = Dense(4, 4, ("embed", "mlp"), rngs=nnx.Rngs(1))
        self.llm = Dense(4, 2, ("mlp", "embed"), rngs=nnx.Rngs(2))


def hf_cosine(lr, total, warmup_ratio):
    """transformers.get_cosine_schedule_with_warmup, as the original Trainer builds it (lr at each update)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    from transformers import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, math.ceil(warmup_ratio * total), total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


@pytest.mark.parametrize("total,ratio", [(100, 0.03), (7, 0.03), (50, 0.0), (1000, 0.1)])
def test_schedule_equals_hf_cosine_with_warmup(total, ratio):
    ours = np.array([float(optim.make_schedule(1e-4, total, ratio)(s)) for s in range(total)])
    np.testing.assert_allclose(ours, hf_cosine(1e-4, total, ratio), rtol=1e-5, atol=1e-6 * 1e-4)  # float32 cosine near 0


def test_adamw_with_clipping_equals_torch_adamw_after_clip_grad_norm():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) * s for s in (0.1, 3.0, 0.5)]  # the 2nd is clipped
    sched = optim.make_schedule(1e-2, 3, 0.0, "constant")
    tx = optim.make_optimizer(sched, weight_decay=0.1, clip=1.0)
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    tw = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.AdamW([tw], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = jax.tree.map(jnp.add, params, updates)
        tw.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([tw], 1.0)
        topt.step()
    np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_no_weight_decay_on_biases_and_norm_scales():
    sched = optim.make_schedule(1.0, 10, 0.0, "constant")
    tx = optim.make_optimizer(sched, weight_decay=0.5, clip=0.0)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0
    assert float(jnp.abs(updates["bias"]).max()) == 0 and float(jnp.abs(updates["scale"]).max()) == 0


def test_freezing_splits_components_and_keeps_frozen_in_compute_dtype():
    filt = optim.trainable_filter({"llm": "frozen", "vision": "frozen", "connector": "full"})
    _, params, frozen, _ = split_model(Toy(), filt, jnp.bfloat16)
    assert set(params.keys()) == {"connector"}
    assert set(frozen.keys()) == {"vision", "llm"}
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
    # Adam moments exist only for what trains.
    tx = optim.make_optimizer(optim.make_schedule(1e-3, 10, 0.1))
    n_moment = sum(x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim > 0)
    assert n_moment == 2 * sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("freeze,message", [
    ({"llm": "full", "vison": "full"}, "unknown component 'vison'; valid components: vision, connector, llm"),
    ({"llm": "lora"}, "freeze.llm='lora'"),
    ({"llm": "frozen", "vision": "frozen", "connector": "frozen"}, "nothing would train"),
])
def test_bad_freeze_settings_are_named(freeze, message):
    from tlv_jax.train.lora_state import check_freeze

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_freeze(freeze, None)  # optim.check_freeze, and (without LoRA) something must train
