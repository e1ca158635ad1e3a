"""What every connector shares: looked up by kind or by the original's `connector_type`, unknown names listed,
logical axes on every parameter, the fp16-rounded sinusoid of the original, bf16 compute over fp32 parameters."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.models import connectors
from tlv_jax.models.connectors.perceiver import positional_encoding, sinusoid_table_fp16
from tlv_jax.sharding.rules import DEFAULT_RULES

from .reference import call, rel_err, tiny_cfg


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown connector kind 'conv'.*\['group', 'mlp', 'naive'\]"):
        connectors.get("conv")
    with pytest.raises(ValueError, match="unsupported connector_type 'conv3d'"):
        connectors.parse_type("conv3d")


@pytest.mark.parametrize("kind", sorted(connectors.CONNECTORS))
def test_every_parameter_has_logical_axes(kind):
    known = {name for name, _ in DEFAULT_RULES}
    model = nnx.eval_shape(lambda: connectors.build_connector(tiny_cfg(kind), rngs=nnx.Rngs(0)))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = var.get_metadata().get("axes")
            assert axes is not None and len(axes) == var.ndim, path
            assert all(a in known for a in axes), (path, axes)


@pytest.mark.parametrize("name", ["qwen2-group-f16", "phi-naive-f4"])
def test_sinusoid_table_is_bit_exact(fixtures_dir, name):
    ref = np.load(fixtures_dir / name / "reference.npz")["pe_table_fp16"]
    ours = sinusoid_table_fp16(*ref.shape)
    assert ours.dtype == np.float16
    np.testing.assert_array_equal(ours.view(np.uint16), ref.view(np.uint16))
    # cast to the activation dtype from those fp16 values
    np.testing.assert_array_equal(np.asarray(positional_encoding(*ref.shape, jnp.float32)), ref.astype(np.float32))


@pytest.mark.parametrize("kind", ["group", "naive"])
def test_bfloat16_compute(kind):
    cfg32 = tiny_cfg(kind)
    m32 = connectors.build_connector(cfg32, rngs=nnx.Rngs(0))
    m16 = connectors.build_connector(dataclasses.replace(cfg32, dtype="bfloat16"), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 21, 12)).astype(np.float32))
    y16 = call(m16, x)
    assert y16.dtype == jnp.bfloat16
    assert m16.latents.dtype == jnp.float32  # parameters stay fp32
    assert rel_err(y16.astype(jnp.float32), call(m32, x)) < 5e-2
